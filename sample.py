"""
Sample from a trained model: a nanoGPT checkpoint (init_from='resume') or OpenAI's GPT-2.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="Hello, my name is" --num_samples=3 --max_new_tokens=100
"""
import os
import signal
import sys


def quiet_interrupt(kind, value, tb):
    """Ctrl-C anywhere, even while torch imports, ends without a traceback (exit code 130)."""
    if issubclass(kind, KeyboardInterrupt):
        os._exit(130)
    sys.__excepthook__(kind, value, tb)


sys.excepthook = quiet_interrupt
# Ctrl-C during `import torch` ends at once: a KeyboardInterrupt raised inside torch's C++ start-up
# aborts the process (pybind11 error_already_set) instead of reaching the hook above
signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
import torch  # noqa: E402
signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt again

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
quantize = None # None, or 'int8': int8 weight-only Linears (per-output-channel scales), activations in bfloat16; CPU only
compile = False # use PyTorch 2.0 to compile the decode step (CUDA graphs on CUDA) to be faster
kv_cache = True # prefill the prompt once, then decode one token per step from cached keys / values; False = nanoGPT's loop
batch_size = 0 # how many of the num_samples rows decode together; 0 = all of them at once
stream = True # print the first row of each batch token by token as it is produced
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read()) # overrides from command line or config file
# -----------------------------------------------------------------------------
import codecs  # noqa: E402
from collections import namedtuple  # noqa: E402

from generate import generate_tokens  # noqa: E402  (after the configurator, so --help stays quick)
from draws import advance_like_nanogpt_init  # noqa: E402
import load  # noqa: E402
from model import LoadError, device_problem, out_of_memory  # noqa: E402
from quantize import choose_linear_layout_  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


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
    if quantize not in (None, 'int8'):
        fail(f"--quantize={quantize!r} is not supported: use None (the weights as they are) or 'int8'")
    if quantize and not str(device).startswith('cpu'):
        fail(f"--quantize=int8 runs on the CPU only (its kernel, aten._weight_int8pack_mm, has no path for "
             f"{device} here): use --device=cpu, or --dtype=bfloat16 on {device}")
    if device_problem(device):
        fail(device_problem(device))
    dev = torch.device(device)
    if dev.type == 'cuda' and dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        fail(f"--dtype=bfloat16 is not supported on {device}: use --dtype=float16 or --dtype=float32")
    if dev.type == 'cpu' and dtype == 'float16':
        print("warning: float16 on CPU is several times slower than float32 (few CPUs compute in it); "
              "--dtype=bfloat16 halves the memory at float32's speed", file=sys.stderr)


# -----------------------------------------------------------------------------
# model

def load_model(init_from, out_dir, ptdtype, device, quantize):
    """The model for init_from, in eval mode, in ptdtype on device (quantized if quantize);
    exits with one line on error."""
    import re
    try:
        if init_from == 'resume':
            ckpt_path = os.path.join(out_dir, 'ckpt.pt')
            if not os.path.isfile(ckpt_path):
                demo = os.path.relpath(os.path.join(ROOT, 'out-shakespeare-char'))
                demo = demo if not demo.startswith('..') else os.path.join(ROOT, 'out-shakespeare-char')
                fail(f"no checkpoint at {os.path.abspath(ckpt_path)}: train one with train.py, sample the bundled "
                     f"demo with --out_dir={demo}, or GPT-2 with --init_from=gpt2")
            return load.from_checkpoint(ckpt_path, ptdtype, device, quantize)
        if init_from in load.GPT2_CONFIGS:  # always the hub's, even if a folder of that name is here
            return load.from_pretrained(init_from, ptdtype, device, quantize)
        if os.path.isdir(init_from):
            return load.from_hf(init_from, ptdtype, device, quantize)
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", init_from) or init_from.startswith(('.', '/')) or '--' in init_from:
            fail(f"--init_from={init_from!r} is neither a local directory nor a hub id: use 'resume' (with "
                 f"--out_dir), 'gpt2' to 'gpt2-xl', the Hugging Face hub id of a GPT-2-architecture model, or "
                 f"a local directory with config.json and model.safetensors")
        try:
            return load.from_hf(init_from, ptdtype, device, quantize)
        except LoadError as e:
            fail(f"{e}; --init_from also takes 'resume' or 'gpt2' to 'gpt2-xl'")
    except LoadError as e:
        fail(str(e))
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        fail(f"out of memory while loading the model in {dtype} on {device}: free memory, or use --dtype=bfloat16 "
             f"or a smaller model ({type(e).__name__}: {' '.join(str(e).split())[:120]})")


check_config()
torch.manual_seed(seed)
torch.cuda.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
device_type = 'cuda' if 'cuda' in device else 'cpu'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]

# weights land in the compute dtype (half the bytes per decode step in bf16); LayerNorm stays float32
model = load_model(init_from, out_dir, ptdtype, device, quantize)
if init_from == 'resume':
    # nanoGPT builds GPT(gptconf) after seeding, and its random init moves the CPU generator; we
    # build on the meta device, so replay those draws: the samples then draw what nanoGPT's draw
    advance_like_nanogpt_init(model.config)
rows = min(batch_size or num_samples, num_samples)  # decoded together
if device_type == 'cpu' and not quantize and not compile:  # torch.compile cannot trace oneDNN's packed weights
    choose_linear_layout_(model, batch_sizes=(min(rows, 64),))  # the weight layout that runs fastest on this CPU (timed at up to 64 rows)
decode_fn = None
if compile and kv_cache:
    print(f"compiling the decode step with torch.compile (the first run takes a while"
          f"{', about 20-40 s on CPU, where it pays off only with --quantize=int8' if device_type == 'cpu' else ''})...",
          file=sys.stderr)
    decode_fn = model.compiled_decode_step()
elif compile:
    model.compile()  # nanoGPT's loop: the whole forward, compiled in place

# -----------------------------------------------------------------------------
# tokenizer

Tokenizer = namedtuple('Tokenizer', 'encode decode token_bytes n_vocab eot_token')
Tokenizer.__doc__ = """encode: str -> list of ids; decode: ids -> str; token_bytes: id -> bytes (for streaming);
n_vocab: ids the tokenizer can decode (the model's vocab_size may be padded beyond it);
eot_token: the <|endoftext|> id, or None (character level)."""


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


def meta_paths(init_from, out_dir, train_config):
    """Where a character-level meta.pkl may be: out_dir, then data/<dataset>/ as nanoGPT looks."""
    if init_from != 'resume':
        return []
    paths = [os.path.join(out_dir, 'meta.pkl')]
    dataset = train_config.get('dataset')
    if isinstance(dataset, str) and dataset:
        paths.append(os.path.join('data', dataset, 'meta.pkl'))
    return paths


def load_tokenizer(paths, vocab_size):
    """A Tokenizer: the first character-level meta.pkl of paths that exists, else GPT-2 BPE
    (tiktoken), which a model with fewer than GPT-2's 50257 ids cannot be using."""
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
        return Tokenizer(encode, lambda l: ''.join(itos[i] for i in l), lambda i: itos[i].encode('utf-8'),
                         len(itos), None)
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    if vocab_size < enc.n_vocab:
        fail(f"the model's vocabulary has {vocab_size} ids, too few for GPT-2's encoding: its character-level "
             f"meta.pkl is missing (looked at {' and '.join(paths) or 'nothing'})")
    print("No meta.pkl found, assuming GPT-2 encodings...", file=sys.stderr)
    return Tokenizer(lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}), enc.decode,
                     enc.decode_single_token_bytes, enc.n_vocab, enc.eot_token)


tok = load_tokenizer(meta_paths(init_from, out_dir, getattr(model, 'train_config', {})), model.config.vocab_size)

# -----------------------------------------------------------------------------
# prompt

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


prompt = read_prompt(start)
start_ids = tok.encode(prompt)
if not start_ids:
    if tok.eot_token is None:
        fail("the prompt is empty: a character-level model needs at least one character, e.g. --start='\\n'")
    start_ids = [tok.eot_token]  # unconditional: GPT-2 starts from <|endoftext|>
if max(start_ids) >= model.config.vocab_size:
    fail(f"the prompt encodes to id {max(start_ids)}, beyond the model's vocabulary of {model.config.vocab_size}: "
         f"is its meta.pkl missing from {out_dir} (or data/<dataset>/)?")
block_size = model.config.block_size
if len(start_ids) > block_size:
    print(f"warning: the prompt is {len(start_ids)} tokens; only its last {block_size} (block_size) condition the model",
          file=sys.stderr)
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]  # (1, T)
shown_prompt = start_ids[1:] if not prompt and tok.eot_token is not None else start_ids  # the implicit <|endoftext|> is not printed

# -----------------------------------------------------------------------------
# run generation

def check_kv_cache_fits(model, rows, positions):
    """Exit with one line if the KV cache for rows x positions cannot fit in the memory left."""
    c = model.config
    need = 2 * c.n_layer * rows * positions * c.n_embd * model.compute_dtype.itemsize  # keys and values
    free = free_memory(model.transformer.wpe.weight.device)
    if free is not None and need > 0.9 * free:
        fail(f"the KV cache needs {need / 1e9:.1f} GB ({rows} rows x {positions} positions) and only "
             f"{free / 1e9:.1f} GB of memory is free: lower --batch_size (rows decoded together), "
             f"--num_samples or --max_new_tokens")


def free_memory(dev):
    """Bytes this process can still allocate on dev: CUDA's free memory, or on Linux the least of
    MemAvailable, the cgroup's limit less its usage, and the address-space limit less our size."""
    if dev.type == 'cuda':
        return torch.cuda.mem_get_info(dev)[0]
    if dev.type != 'cpu' or not os.path.exists('/proc/meminfo'):
        return None
    import resource
    with open('/proc/meminfo') as f:
        free = [int(l.split()[1]) * 1024 for l in f if l.startswith('MemAvailable:')]
    try:
        with open('/sys/fs/cgroup/memory.max') as f, open('/sys/fs/cgroup/memory.current') as g:
            limit = f.read().strip()
            if limit != 'max':
                free.append(int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    as_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if as_limit != resource.RLIM_INFINITY:
        with open('/proc/self/status') as f:
            size = next((int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize:')), 0)
        free.append(as_limit - size)
    return min(free) if free else None


def sample_batch(model, x, rows, shown_prompt, tok, out, gen_args):
    """Decode rows samples after the prompt x (1, T) together and print each, then a line of dashes, as
    nanoGPT does. Row 0 is printed token by token as it is produced (if stream), through an
    incremental UTF-8 decoder so the bytes equal the whole text's; the other rows follow once the
    batch is done. The prompt's implicit <|endoftext|> and a sample's final one are not printed."""
    eot = tok.eot_token if stop_at_eot else None
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
    if stream:
        out.write(utf8.decode(b''.join(tok.token_bytes(i) for i in shown_prompt)))
        out.flush()
    new, streaming = [], stream
    for idx_next in generate_tokens(model, x.expand(rows, -1), max_new_tokens, eot_token=eot, **gen_args):
        new.append(idx_next)
        i = idx_next[0, 0].item() if streaming else None
        if streaming and i != eot:
            out.write(utf8.decode(tok.token_bytes(i)))
            out.flush()
        streaming = streaming and i != eot
    for r, row in enumerate(torch.cat(new, dim=1).tolist() if new else [[] for _ in range(rows)]):
        if eot is not None and eot in row:
            row = row[:row.index(eot)]
        if r == 0 and stream:
            out.write(utf8.decode(b'', final=True) + '\n---------------\n')
        else:
            out.write(tok.decode(shown_prompt + row) + '\n---------------\n')
        out.flush()


if kv_cache:
    check_kv_cache_fits(model, rows, min(block_size, len(start_ids) + max_new_tokens))
gen_args = dict(temperature=temperature, top_k=top_k, top_p=top_p, n_vocab=tok.n_vocab, kv_cache=kv_cache,
                decode_fn=decode_fn, free_caches=False)  # the next batch of the same size reuses the cache
try:
    with torch.no_grad():
        for first in range(0, num_samples, rows):
            sample_batch(model, x, min(rows, num_samples - first), shown_prompt, tok, sys.stdout, gen_args)
except BrokenPipeError:  # the reader went away (python sample.py | head): stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
except KeyboardInterrupt:  # Ctrl-C: keep what was printed, end the line, no traceback
    sys.stdout.write('\n')
    sys.stdout.flush()
    sys.exit(130)
except (RuntimeError, MemoryError) as e:
    if not out_of_memory(e):
        raise
    fail(f"out of memory while sampling {rows} rows: lower --batch_size (rows decoded together), "
         f"--num_samples or --max_new_tokens")
