"""
Sample from a trained model: a nanoGPT checkpoint (init_from='resume') or OpenAI's GPT-2.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="Hello, my name is" --num_samples=3 --max_new_tokens=100
"""
import os
import shlex
import sys
from functools import partial
from types import SimpleNamespace

from common import import_torch_quietly
torch = import_torch_quietly()  # Ctrl-C from here on, even inside `import torch`, exits 130 with no traceback

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
quantize = None # None, 'int8' (weight-only Linears, per-output-channel scales) or 'int4' (Block Linears in groups of 32, head int8); CPU only
compile = None # compile the decode step with PyTorch 2 (CUDA graphs on CUDA); None = on the CPU in int4, where it pays, else off
kv_cache = True # prefill the prompt once, then decode one token per step from cached keys / values; False = nanoGPT's loop
batch_size = 0 # how many of the num_samples rows decode together; 0 = all of them at once
stream = True # print the first row of each batch token by token as it is produced
prompts = None # a file of prompts, each sampled num_samples times: .jsonl ({"prompt": "..."} per line) or one per line; start is then ignored
output = 'text' # 'text' (nanoGPT's) or 'jsonl': one JSON object per sample, with its token ids and their log-probabilities
stop = None # a string or a list of strings: a sample ends before the first of them in its text
min_p = 0.0 # keep only tokens at least min_p times as likely as the most likely one (after temperature); 0.0 = off
draft = None # speculative decoding, the same text faster: None = off, 'ngram' (the context's own repeats) or a smaller model of the same tokenizer (a folder with ckpt.pt, or as init_from)
draft_tokens = 4 # with draft: the most tokens a row drafts per forward pass of the model (fewer after rejections)
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read()) # overrides from command line or config file
# -----------------------------------------------------------------------------
import load  # noqa: E402  (after the configurator, so that --help stays quick)
from common import UserError, device_problem, exit_on_ctrl_c, fail, free_memory, out_of_memory  # noqa: E402
from cpu.compiled import CompiledStep  # noqa: E402
from cpu.speed import compiles_by_default, prepare_for_cpu  # noqa: E402
from draws import advance_like_nanogpt_init  # noqa: E402
from generate import generate_steps  # noqa: E402
from model import GPT  # noqa: E402
from speculative import load_drafter, speculative_steps  # noqa: E402
from draws import NanoGPTDraws, sample_starts  # noqa: E402
from output import Progress, Row, unescape, write_batch  # noqa: E402
from prompts import encode_prompt, plan_batches, read_prompt, read_prompts  # noqa: E402
from tokenizer import load_tokenizer, meta_paths  # noqa: E402


def typed(key):
    """The text of the last --key=... argument on the command line, as typed (a str), or None."""
    found = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith(f'--{key}=')]
    return found[-1] if found else None


def config_problem(c):
    """The first out-of-range setting of the config c (a namespace of this script's settings, as
    the configurator left them), as a one-line message saying what to use, or None."""
    if c.draft is not None and not (isinstance(c.draft, str) and c.draft):
        return f"--draft takes 'ngram' or a model (a folder with ckpt.pt, or as --init_from), got {c.draft!r}"
    if isinstance(c.draft_tokens, bool) or not isinstance(c.draft_tokens, int) or c.draft_tokens < 1:
        return f"--draft_tokens must be an integer >= 1, got {c.draft_tokens!r}"
    if c.compile not in (None, True, False):
        return f"--compile takes True, False or None (None: compiled where it pays), got {c.compile!r}"
    if c.draft is not None and (not c.kv_cache or c.compile):
        return (f"--draft speculates on the KV cache, eagerly: it cannot run with "
                f"{'--kv_cache=False' if not c.kv_cache else '--compile=True'}; drop one of them")
    if c.prompts is not None and not isinstance(c.prompts, str):  # the configurator read --prompts=2024 as a number
        name = typed('prompts') or repr(c.prompts)
        return (f"--prompts takes a file's path, got the {type(c.prompts).__name__} {c.prompts!r}: for a file named "
                f"{name}, write {shlex.quote('--prompts=./' + name)}")
    if not 0 <= c.min_p <= 1:
        return f"--min_p must be in [0, 1] (0.0 = off), got {c.min_p}"
    if c.output not in ('text', 'jsonl'):
        return f"--output={c.output!r} is not supported: use 'text' (nanoGPT's) or 'jsonl'"
    if c.stop is not None and not (isinstance(c.stop, str) and c.stop or isinstance(c.stop, (list, tuple)) and c.stop and
                                   all(isinstance(x, str) and x for x in c.stop)):
        return f"--stop must be a non-empty string or a list of them, e.g. --stop='\\n\\n' or --stop=\"['A:', 'B:']\", got {c.stop!r}"
    if not 0 <= c.temperature < float('inf'):
        return f"--temperature must be a number >= 0 (0 = greedy), got {c.temperature}"
    if c.top_k is not None and c.top_k < 0:
        return f"--top_k must be >= 0 (None or 0 = off), got {c.top_k}"
    if not 0 < c.top_p <= 1:
        return f"--top_p must be in (0, 1] (1.0 = off), got {c.top_p}"
    if c.max_new_tokens < 0:
        return f"--max_new_tokens must be >= 0, got {c.max_new_tokens}"
    if c.num_samples < 1:
        return f"--num_samples must be >= 1, got {c.num_samples}"
    if c.batch_size < 0:
        return f"--batch_size must be >= 0 (0 = all num_samples at once), got {c.batch_size}"
    if not -2**63 <= c.seed < 2**64:
        return f"--seed must be an integer from -2**63 to 2**64 - 1 (what torch.manual_seed takes), got {c.seed}"
    if c.dtype not in ('float32', 'bfloat16', 'float16'):
        return f"--dtype={c.dtype!r} is not supported: use 'float32', 'bfloat16' or 'float16'"
    if c.quantize not in (None, 'int8', 'int4'):
        return f"--quantize={c.quantize!r} is not supported: use None (the weights as they are), 'int8' or 'int4'"
    if c.quantize and not str(c.device).startswith('cpu'):
        kernel = 'aten._weight_int4pack_mm_for_cpu' if c.quantize == 'int4' else 'aten._weight_int8pack_mm'
        return (f"--quantize={c.quantize} runs on the CPU only (its kernel, {kernel}, has no path for "
                f"{c.device} here): use --device=cpu, or --dtype=bfloat16 on {c.device}")
    if device_problem(c.device):
        return device_problem(c.device)
    if torch.device(c.device).type == 'cuda' and c.dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        return f"--dtype=bfloat16 is not supported on {c.device}: use --dtype=float16 or --dtype=float32"
    return None


def kv_cache_problem(model, rows, positions):
    """A one-line message if the KV cache for rows x positions cannot fit in the memory left, else None."""
    c = model.config
    need = 2 * c.n_layer * rows * positions * c.n_embd * model.compute_dtype.itemsize  # keys and values
    free = free_memory(model.transformer.wpe.weight.device)
    if free is not None and need > 0.9 * free:
        return (f"the KV cache needs {need / 1e9:.1f} GB ({rows} rows x {positions} positions) and only "
                f"{free / 1e9:.1f} GB of memory is free: lower --batch_size (rows decoded together), "
                f"--num_samples or --max_new_tokens")
    return None


if isinstance(stop, str) and stop == typed('stop'):
    # plain text, kept as typed since it is no Python literal: --stop='\n\n' in a shell is a blank
    # line. A Python string (--stop="'\n\n'") or a config file's was read by Python: not unescaped again
    stop = unescape(stop)
problem = config_problem(SimpleNamespace(**{k: globals()[k] for k in config_keys}))
if problem:
    fail(problem)
if torch.device(device).type == 'cpu' and dtype == 'float16':
    print("warning: float16 on CPU is several times slower than float32 (few CPUs compute in it); "
          "--dtype=bfloat16 halves the memory at float32's speed", file=sys.stderr)
try:  # before the model loads: a missing or malformed file is reported at once
    texts = read_prompts(prompts) if prompts is not None else [read_prompt(start)]
except UserError as e:
    fail(e)
if prompts is not None:
    print(f"note: --prompts is set, so --start is not used: {len(texts)} prompts from {prompts}", file=sys.stderr)
torch.manual_seed(seed)
torch.cuda.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
device_type = 'cuda' if 'cuda' in device else 'cpu'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]

# -----------------------------------------------------------------------------
# model
try:  # weights land in the compute dtype (half the bytes per decode step in bf16); LayerNorm stays float32
    with exit_on_ctrl_c():  # Ctrl-C while loading: exit 130 at once, never an error about the file
        model = load.load_model(GPT, init_from, out_dir, ptdtype, device, quantize)
except UserError as e:
    fail(e)
if init_from == 'resume':
    # nanoGPT builds GPT(gptconf) after seeding, and its random init moves the CPU generator; we
    # build on the meta device, so replay those draws: the samples then draw what nanoGPT's draw
    advance_like_nanogpt_init(model.config)
# every prompt's samples, in prompt then sample order, batch by batch: nanoGPT's loop (kv_cache=False) cannot mix prompts
plan = plan_batches(len(texts), num_samples, batch_size, mix_prompts=kv_cache)  # lists of (prompt, sample) indices
rows = len(plan[0])  # rows decoded together
if compile is None:  # the CPU's compiled step where it pays: the same choice every run (see cpu/compiled.py)
    compile = compiles_by_default(device_type, quantize or dtype, kv_cache, draft)
# the CPU's weight layouts, or the fastest of the int8 kernels for each Linear, at this batch's rows, where a copy pays
prepare_for_cpu(model, batch_sizes=(rows,), decode_steps=max_new_tokens * len(plan), compiled=compile)
decode_fn = None
if compile:  # imported now, not mid-sample: under a CUDA build of torch without a GPU it warns on import
    import torch.utils.cpp_extension  # noqa: F401
if compile and kv_cache and device_type != 'cpu':
    print("compiling the decode step with torch.compile (the first run takes a while)...", file=sys.stderr)
    decode_fn = model.compiled_decode_step()
elif compile and not kv_cache:
    model.compile()  # nanoGPT's loop: the whole forward, compiled in place

# -----------------------------------------------------------------------------
# tokenizer and prompts
try:
    tok = load_tokenizer(meta_paths(init_from, out_dir, getattr(model, 'train_config', {})), model.config.vocab_size)
    # which prompt a message means: prompt i of a --prompts file is its line i + 1
    where = [f"{prompts}, line {i + 1}" for i in range(len(texts))] if prompts is not None else [None]
    prompt_ids = [encode_prompt(tok, t, model.config.vocab_size, out_dir, w) for t, w in zip(texts, where)]
    drafter = draft and load_drafter(draft, out_dir, ptdtype, device, tok)  # 'ngram', or a model of the same tokenizer
except UserError as e:
    fail(e)
block_size = model.config.block_size
for ids, w in zip(prompt_ids, where):
    if len(ids) > block_size:
        print(f"warning: {w + ': ' if w else ''}the prompt is {len(ids)} tokens; only its last {block_size} "
              f"(block_size) condition the model", file=sys.stderr)
xs = [torch.tensor(ids, dtype=torch.long, device=device) for ids in prompt_ids]  # (T,) each
# the implicit <|endoftext|> of an empty GPT-2 prompt is not printed
shown = [ids[1:] if not t and tok.eot_token is not None else ids for t, ids in zip(texts, prompt_ids)]
batches = [[Row(p, k, texts[p], shown[p]) for p, k in batch] for batch in plan]

# -----------------------------------------------------------------------------
# run generation
problem = kv_cache and kv_cache_problem(model, rows, min(block_size, max(map(len, prompt_ids)) + max_new_tokens))
if problem:
    fail(problem)
eot = tok.eot_token if stop_at_eot else None
step = CompiledStep(model, rows, temperature, top_k, top_p, min_p, tok.n_vocab) \
    if device_type == 'cpu' and compile and kv_cache else None
stops = [stop] if isinstance(stop, str) else list(stop or [])
gen_args = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, n_vocab=tok.n_vocab, eot_token=eot,
                kv_cache=kv_cache, decode_fn=decode_fn, free_caches=False,  # the next batch of the same size reuses the cache
                logprobs=output == 'jsonl')
# each prompt's sample k makes nanoGPT's draws for sample k, as a run of that prompt alone would
starts = sample_starts(num_samples, max_new_tokens, torch.empty(model.config.vocab_size, device=device)) \
    if len(texts) > 1 else None
progress = Progress(len(texts) * num_samples, show=prompts is not None or output == 'jsonl')
try:
    with torch.no_grad():
        for batch in batches:
            n, ids = len(batch), {r.prompt_index for r in batch}
            idx = xs[batch[0].prompt_index][None].expand(n, -1) if len(ids) == 1 else [xs[r.prompt_index] for r in batch]
            draws = NanoGPTDraws(n, max_new_tokens, starts=[starts[r.sample_index] for r in batch]) if starts else None
            decode = partial(generate_steps, model, idx, max_new_tokens, draws=draws, step=step, **gen_args) \
                if not draft else partial(speculative_steps, model, idx, max_new_tokens, draws=draws, draft=drafter,
                                          draft_tokens=draft_tokens, **gen_args)
            write_batch(sys.stdout, decode, batch, tok, output, stream, eot, stops, progress.update)
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
progress.close()
