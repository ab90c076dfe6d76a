"""
Sample from a trained model: a nanoGPT checkpoint (init_from='resume') or OpenAI's GPT-2.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="Hello, my name is" --num_samples=3 --max_new_tokens=100
"""
import codecs
import os
import sys
from contextlib import nullcontext

import torch

# -----------------------------------------------------------------------------
init_from = 'resume' # 'resume' (out_dir/ckpt.pt), 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', a hub id or a local directory of a GPT-2-architecture model
out_dir = 'out' # where ckpt.pt (and maybe meta.pkl) live; used when init_from='resume'
start = "\n" # the prompt: text, "<|endoftext|>", or "FILE:prompt.txt" to read a UTF-8 file
num_samples = 10 # number of samples to draw
max_new_tokens = 500 # number of tokens generated in each sample
temperature = 0.8 # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = greedy (argmax)
top_k = 200 # retain only the top_k most likely tokens, clamp others to have 0 probability; None or 0 = off
top_p = 1.0 # nucleus: keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 = off
stop_at_eot = True # GPT-2 encodings: end a sample at <|endoftext|>; False samples on, as nanoGPT does
seed = 1337 # seeds torch's global generators, as nanoGPT
device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu' # 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float16' if torch.cuda.is_available() else 'float32' # 'float32', 'bfloat16' or 'float16'
compile = False # use PyTorch 2.0 to compile the decode step (CUDA graphs on CUDA) to be faster
kv_cache = True # prefill the prompt once, then decode one token per step from cached keys / values; False = nanoGPT's loop
batch_size = 0 # how many of the num_samples rows decode together; 0 = all of them at once
stream = True # print tokens as they are produced when samples decode one at a time (batch_size=1 or num_samples=1)
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read()) # overrides from command line or config file
# -----------------------------------------------------------------------------

from model import GPT, GPT2_SHAPES, LoadError  # noqa: E402  (after the configurator, so --help stays quick)


def quiet_interrupt(kind, value, tb):
    """Ctrl-C anywhere (loading included) ends without a traceback; sampling flushes first (below)."""
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)


sys.excepthook = quiet_interrupt


def fail(msg):
    """One line on stderr and exit code 2: how every user error ends."""
    msg = ' '.join(msg.splitlines())  # a path or value with line breaks must not split the line
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_config():
    """Reject out-of-range settings before any work is done."""
    if not 0 <= temperature < float('inf'):
        fail(f"--temperature must be a number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        fail(f"--top_k must be >= 0 (None or 0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        fail(f"--top_p must be in (0, 1] (1.0 = off), got {top_p}")
    if max_new_tokens < 0:
        fail(f"--max_new_tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        fail(f"--num_samples must be >= 1, got {num_samples}")
    if batch_size < 0:
        fail(f"--batch_size must be >= 0 (0 = all num_samples at once), got {batch_size}")
    if dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"--dtype={dtype!r} is not supported: use 'float32', 'bfloat16' or 'float16'")
    available = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) + (['mps'] if torch.backends.mps.is_available() else [])
    try:
        dev = torch.device(device)
    except RuntimeError:
        fail(f"--device={device!r} is not a device: available here: {', '.join(available)}")
    if dev.type not in available or (dev.type == 'cuda' and (dev.index or 0) >= torch.cuda.device_count()):
        fail(f"--device={device!r} is not available on this machine: available here: {', '.join(available)}")
    if dev.type == 'cuda' and dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        fail(f"--dtype=bfloat16 is not supported on {device}: use --dtype=float16 or --dtype=float32")


def read_prompt(start):
    """The prompt text: start itself, or the contents of the UTF-8 file named after 'FILE:'."""
    if not start.startswith('FILE:'):
        return start
    path = start[5:]
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        fail(f"prompt file {path!r} (from --start=FILE:{path}) does not exist")
    except UnicodeDecodeError:
        fail(f"prompt file {path!r} is not UTF-8 text: save it as UTF-8")
    except OSError as e:
        fail(f"cannot read prompt file {path!r}: {e.strerror}")


def load_meta(path):
    """stoi / itos of a character-level meta.pkl, through an unpickler that builds only plain
    data (dict, list, tuple, str, int, float), so a meta.pkl cannot run code."""
    import pickle

    class PlainUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")

    try:
        with open(path, 'rb') as f:
            meta = PlainUnpickler(f).load()
    except Exception as e:
        fail(f"{path}: not a plain-data meta.pkl ({type(e).__name__}: {str(e)[:120]})")
    if not isinstance(meta, dict) or not isinstance(meta.get('stoi'), dict) or not isinstance(meta.get('itos'), dict):
        fail(f"{path}: a meta.pkl needs 'stoi' and 'itos' dicts")
    stoi, itos = meta['stoi'], meta['itos']
    if not all(type(i) is int and isinstance(c, str) for c, i in stoi.items()) or \
            not all(type(i) is int and isinstance(c, str) for i, c in itos.items()):
        fail(f"{path}: stoi must map characters to ids and itos ids to characters")
    return stoi, itos


def load_tokenizer(checkpoint):
    """(encode, decode, token_bytes, n_vocab, eot_token) for the model: a character-level meta.pkl if the
    checkpoint has one (out_dir first, then data/<dataset>/ as nanoGPT), else GPT-2 BPE."""
    paths = [os.path.join(out_dir, 'meta.pkl')] if init_from == 'resume' else []
    dataset = (checkpoint or {}).get('config', {}).get('dataset') if init_from == 'resume' else None
    if isinstance(dataset, str) and dataset:
        paths.append(os.path.join('data', dataset, 'meta.pkl'))
    meta_path = next((p for p in paths if os.path.isfile(p)), None)
    if meta_path:
        print(f"Loading meta from {meta_path}...", file=sys.stderr)
        stoi, itos = load_meta(meta_path)

        def encode(s):
            unknown = sorted(set(c for c in s if c not in stoi))
            if unknown:
                shown = ', '.join(repr(c) for c in unknown[:5]) + (', ...' if len(unknown) > 5 else '')
                fail(f"the prompt has {len(unknown)} character(s) the model's vocabulary ({meta_path}) lacks: {shown}")
            return [stoi[c] for c in s]
        return encode, lambda l: ''.join(itos[i] for i in l), lambda i: itos[i].encode('utf-8'), len(itos), None
    import tiktoken
    print("No meta.pkl found, assuming GPT-2 encodings...", file=sys.stderr)
    enc = tiktoken.get_encoding("gpt2")
    encode = lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})
    return encode, enc.decode, enc.decode_single_token_bytes, enc.n_vocab, enc.eot_token


FORMS = ("'resume' (with --out_dir), 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', the Hugging Face hub id "
         "of a GPT-2-architecture model (e.g. 'distilgpt2'), or a local directory with config.json and model.safetensors")


def load_model():
    """(model in ptdtype on device, checkpoint or None) for init_from; exits with one line on error."""
    import re
    try:
        if init_from == 'resume':
            model, checkpoint = GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
            return model.to(device=device, dtype=ptdtype), checkpoint
        if init_from in GPT2_SHAPES:  # always the hub's, even if a folder of that name is here
            return GPT.from_pretrained(init_from, dict(dropout=0.0), ptdtype, device), None
        if os.path.isdir(init_from):
            return GPT.from_hf(init_from, ptdtype, device), None
    except LoadError as e:
        fail(str(e))
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", init_from) or init_from.startswith(('.', '/')) or '--' in init_from:
        fail(f"--init_from={init_from!r} is neither a local directory nor a hub id: use {FORMS}")
    try:
        return GPT.from_hf(init_from, ptdtype, device), None
    except LoadError as e:
        fail(f"{e}. --init_from takes {FORMS}")


def print_samples(x, rows):
    """Decode rows samples after the prompt x (1, T) together and print each, then a line of
    dashes, as nanoGPT; the prompt's implicit <|endoftext|> and a sample's final one are left out."""
    eot = eot_token if stop_at_eot else None
    y = model.generate(x.expand(rows, -1), max_new_tokens, **gen_args, eot_token=eot)
    for row in y.tolist():
        ids = row[x.size(1):]
        if eot is not None and eot in ids:
            ids = ids[:ids.index(eot)]
        print(decode(shown_prompt + ids))
        print('---------------')


def stream_sample(x):
    """Decode one sample after the prompt x (1, T), printing each token as it comes. The bytes
    go through an incremental UTF-8 decoder, so a character split across tokens is printed
    whole, and the text is exactly what print_samples prints."""
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
    out = sys.stdout
    out.write(utf8.decode(b''.join(token_bytes(i) for i in shown_prompt)))
    out.flush()
    for idx_next in model.generate_tokens(x, max_new_tokens, **gen_args):
        i = idx_next.item()
        if stop_at_eot and i == eot_token:
            break
        out.write(utf8.decode(token_bytes(i)))
        out.flush()
    out.write(utf8.decode(b'', final=True) + '\n---------------\n')
    out.flush()


check_config()
torch.manual_seed(seed)
torch.cuda.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
device_type = 'cuda' if 'cuda' in device else 'cpu'  # for later use in torch.autocast
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if device_type == 'cpu' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)

model, checkpoint = load_model()  # weights land in the compute dtype: half the bytes per decode step in bf16
model.eval()
if device_type == 'cpu':
    model.column_major_()  # weight matrices stored (in, out): faster small-batch matmuls with MKL
decode_fn = None
if compile and kv_cache:
    # a static-shape decode step, replayed as CUDA graphs on CUDA; the prefill stays eager
    decode_fn = torch.compile(model.decode_step, fullgraph=True, dynamic=False,
                              mode='reduce-overhead' if device_type == 'cuda' else 'default')
elif compile:
    model.compile()  # nanoGPT's loop: the whole forward, compiled in place

encode, decode, token_bytes, n_vocab, eot_token = load_tokenizer(checkpoint)
del checkpoint  # frees what is left of it

prompt = read_prompt(start)
start_ids = encode(prompt)
if not start_ids:
    if eot_token is None:
        fail("the prompt is empty: a character-level model needs at least one character, e.g. --start='\\n'")
    start_ids = [eot_token]  # unconditional: GPT-2 starts from <|endoftext|>
if max(start_ids) >= model.config.vocab_size:
    fail(f"the prompt encodes to id {max(start_ids)}, beyond the model's vocabulary of {model.config.vocab_size}: "
         f"is its meta.pkl missing from {out_dir} (or data/<dataset>/)?")
block_size = model.config.block_size
if len(start_ids) > block_size:
    print(f"warning: the prompt is {len(start_ids)} tokens; only its last {block_size} (block_size) condition the model",
          file=sys.stderr)
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]  # (1, T)
shown_prompt = start_ids[1:] if not prompt and eot_token is not None else start_ids  # the implicit <|endoftext|> is not printed
gen_args = dict(temperature=temperature, top_k=top_k, top_p=top_p, n_vocab=n_vocab, kv_cache=kv_cache, decode_fn=decode_fn)
rows = min(batch_size or num_samples, num_samples)

# run generation
try:
    with torch.no_grad(), ctx:
        for first in range(0, num_samples, rows):
            if stream and rows == 1:
                stream_sample(x)
            else:
                print_samples(x, min(rows, num_samples - first))
except BrokenPipeError:  # the reader went away (python sample.py | head): stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
except KeyboardInterrupt:  # Ctrl-C: keep what was printed, no traceback
    sys.stdout.flush()
    sys.exit(130)
