"""
Decoding speed against the references and the memory-bandwidth limit, all in one process.

For each case and weight format it measures, after a warm-up: our tokens/s (KV cache, nanoGPT's
draws), nanoGPT's reference loop (kv_cache=False; float32 only on CPU), Hugging Face
GPT2LMHeadModel.generate on the same weights (float32 on CPU, the first format on CUDA), our time
to first token, peak memory, and the bandwidth roofline: weight bytes (with their scales for int8 /
int4) + KV-cache bytes read per decode step, over the best bandwidth measured in this run. The
bandwidth is measured before each format and at the end, each time the best of several ways of
streaming 1 GiB (on CPU multi-threaded reductions and a copy counted as read + write; on CUDA a
device-to-device copy), so that one slow measurement cannot flatter the roofline; the rooflines
are computed once every case has run. On CPU each case's decode steps are then profiled
(torch.profiler): ms per step in the weight matmuls and outside them (the profiler's own overhead
makes the many small ops outside look dearer). When tools/build_llamacpp.sh has built llama.cpp
and its GPT-2 GGUF files (--llamacpp=DIR), each CPU case of 'gpt2' / 'gpt2-xl' also runs llama.cpp
on the matching GGUF type (float32 F32, bfloat16 BF16, int8 Q8_0, int4 Q4_0) with our threads,
right after ours. Weights are random, so nothing is downloaded. A table, then one JSON line last;
progress on stderr. With eval_data (Tiny Shakespeare's input.txt) it also reports the bundled demo
model's validation loss on the held-out last 10% in each format.

$ python bench.py                                          # GPT-2 124M shapes: float32, bfloat16, int8, int4 on CPU
$ python bench.py --dtype=int8 --cases=b1_prompt5          # a subset
$ python bench.py --llamacpp=path/to/llamacpp              # llama.cpp that tools/build_llamacpp.sh built there
$ python bench.py --eval_data=path/to/input.txt --hf=False --ref=False
$ python bench.py --compile=True --cases=cuda_             # on CUDA: gpt2-xl and gpt2, batch 1 and 10, compiled and eager
$ python bench.py --cases=spec_ --model=gpt2-xl             # speculative decoding: the demo's cases, gpt2-xl's verification cost
$ python bench.py --cases=startup --dtype=int4              # sample.py's start-up: eager, compiled first run, compiled later run

Speculative cases (spec_*, run only when --cases names them): on the bundled demo in float32, plain
decoding and speculation in the same run (tokens/s, and ids verified per forward pass of the model,
batch 1 and 8): 'ngram' on the demo's own prompt, 'ngram' on a prompt with repeats (at the demo's
temperature, 0.8, and greedy), and the demo with a drafter model (draft_model); then, on --model's shapes, the cost of one verification pass
over 2, 4 and 8 positions against one decode step at batch 1 (and gpt2's step, a drafter's), and the
speed-up those costs give at acceptance rates 0.5, 0.7 and 0.9.

The start-up case (startup, run only when --cases names it; CPU, GPT-2 shapes): `sample.py` run as a
user runs it, on a nanoGPT checkpoint of --model's shapes with random weights, for two tokens (the
second from the decode step): the seconds from process start to its end, eager, then compiled the first time (the step compiled) and
a later time (the step loaded), per format.
"""
import atexit
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from common import brief, share_the_cpu
LAUNCH_ENV = dict(os.environ)  # llama.cpp runs in the environment we were started with, not in our OpenMP settings
share_the_cpu()  # before torch: OpenMP threads that do not spin against a job beside us
import torch  # noqa: E402

# -----------------------------------------------------------------------------
model = 'gpt2' # shapes: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a path to a ckpt.pt
device = 'cuda' if torch.cuda.is_available() else 'cpu' # 'cpu', 'cuda', 'cuda:0'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32,bfloat16,int8,int4' # weight formats, comma-separated: 'float32', 'bfloat16', 'float16', 'int8', 'int4' (weight-only; int4: head int8)
cases = '' # comma-separated: run the cases named, or whose names start with one of these and '_' (b1_prompt5, b8, cuda_); '' = all
compile = None # None: CPU bfloat16 / int8 / int4 both eager and compiled (sample.py compiles compiled.FORMATS by default); True / False: compiled only / eager only (CUDA: CUDA graphs)
hf = True # also time Hugging Face generate on the same weights (float32 on CPU, the first format on CUDA)
ref = True # also time nanoGPT's loop (kv_cache=False): float32 only on CPU, every format on CUDA
repeats = 1 # timed runs per measurement (the best is kept)
eval_data = '' # Tiny Shakespeare's input.txt: report out-shakespeare-char's validation loss per format
seed = 1337 # for weights and prompts
draft_model = '' # speculative cases' drafter for the demo: a folder with ckpt.pt ('' = out-shakespeare-char-draft if there)
llamacpp = '' # llama.cpp's directory (build/bin, models/): '' = $LLAMACPP_DIR or ${TMPDIR:-/tmp}/llamacpp if built there; 'none' = skip
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
from cpu.compiled import CompiledStep  # noqa: E402
import cpu.cache  # noqa: E402
from cpu.speed import prepare_for_cpu  # noqa: E402
from cpu import int8  # noqa: E402
from gpt_config import BLOCK_WEIGHTS, GPT2_CONFIGS  # noqa: E402
from load import assemble, from_checkpoint  # noqa: E402
from model import GPT  # noqa: E402

FORMATS = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16, 'int8': torch.float32,
           'int4': torch.float32}
KERNELS = {'int8': 'Block Linears: the kernel int8.choose_int8_kernel_ picks per case; head ' + int8.KERNEL,
           'int4': 'aten._weight_int4pack_mm_for_cpu'}  # the quantized formats, with the kernel int8.py chose here
quantize = lambda fmt: fmt if fmt in KERNELS else None  # load.assemble's quantize= for a format
formats = [f.strip() for f in dtype.split(',') if f.strip()]
bad = [f for f in formats if f not in FORMATS]
if bad or not formats:
    print(f"error: --dtype takes comma-separated formats from {', '.join(FORMATS)}, got {dtype!r}", file=sys.stderr)
    sys.exit(2)
is_cuda = device.startswith('cuda')
os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='bench-inductor-')  # empty: each first compile is cold
atexit.register(shutil.rmtree, os.environ['TORCHINDUCTOR_CACHE_DIR'], ignore_errors=True)
hf_dtype = formats[0] if is_cuda else 'float32'  # Hugging Face generate's: on CUDA, in bfloat16 as ours
for q in (f for f in formats if is_cuda and quantize(f)):
    print(f"error: --dtype={q} runs on the CPU only (its int8 / int4 kernels have no CUDA path here)", file=sys.stderr)
    sys.exit(2)


def progress(msg):
    """A line on stderr, so a long run shows where it is."""
    print(msg, file=sys.stderr, flush=True)


def sync():
    """Wait for queued CUDA work, so the timer reads finished work."""
    if is_cuda:
        torch.cuda.synchronize()


def build(name, fmt, rows=(1,), plain=False):
    """A GPT with random weights of the named shapes (or a checkpoint's) in weight format fmt on
    device, through the code sample.py runs: load.assemble lands (and for int8 / int4 quantizes) each
    tensor, then the CPU layouts are chosen for decoding rows rows at a time (not for a compiled
    step, plain: Inductor packs the plain weights itself).
    Returns (model, the layouts chosen: a short string)."""
    torch.manual_seed(seed)
    if name in GPT2_CONFIGS:
        with torch.device(device if is_cuda else 'cpu'):  # a GPU draws gpt2-xl's random init in a second
            src = GPT(GPT2_CONFIGS[name])  # random float32 weights, as from a file
        tensors = ((k, v) for k, v in src.state_dict().items() if k != 'lm_head.weight')  # tied
        m = assemble(GPT, src.config, tensors, f"random {name} weights", FORMATS[fmt], device, quantize(fmt))
        del src, tensors
    else:
        m = from_checkpoint(GPT, name, FORMATS[fmt], device, quantize(fmt))
    if quantize(fmt):  # int8's kernel is chosen per case (int8_kernel)
        return m, f"{fmt} weight-only ({KERNELS[fmt]}{', head int8' if fmt == 'int4' else ''})"
    report = prepare_for_cpu(m, rows, compiled=plain).layouts  # as sample.py prepares it
    if not report:  # CUDA, or compiled: Inductor packs the plain weights itself
        return m, 'dense'
    return m, ', '.join(sorted({c.layout + (f"+onednn>={c.onednn_rows}" if c.onednn_rows else '')
                                for c in report.values()}))


def to_hf(m, dtype=torch.float32):
    """The same weights in a transformers GPT2LMHeadModel in dtype (all of them, LayerNorm too, as
    transformers runs it), row-major (Conv1D weights transposed back), on m's device. m must be a
    plain float model (before any layout change)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = m.config
    cfg = GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
                     n_positions=c.block_size, activation_function='gelu_new' if c.gelu == 'tanh' else 'gelu',
                     layer_norm_epsilon=c.layer_norm_eps)
    with torch.device('meta'):
        h = GPT2LMHeadModel(cfg)
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith(BLOCK_WEIGHTS):
            v = v.t()  # back to Conv1D's (in, out)
        sd[k] = v.to(dtype).contiguous()
    h.load_state_dict(sd, strict=False, assign=True)
    h.tie_weights()
    return h.eval()


def bandwidth_methods(x, y):
    """(name, callable, bytes it moves) for each way of streaming x (1 GiB) through memory: on CPU
    multi-threaded reductions (OpenMP) in two dtypes and a copy into y, which reads and writes; on
    CUDA a device-to-device copy. Which one comes nearest the memory's limit depends on the CPU,
    so measure_bandwidth keeps the best."""
    n = x.numel() * x.element_size()
    copy = ('copy', lambda: y.copy_(x), 2 * n)  # reads x, writes y
    if is_cuda:
        return [copy]
    return [('float32 sum', x.sum, n), ('float32 amax', x.amax, n),
            ('uint8 amax', lambda: x.view(torch.uint8).amax(), n), copy]


def measure_bandwidth(when, repeats=3):
    """The bytes/s this device streams, best over bandwidth_methods, each the best of repeats calls
    on a 1 GiB tensor (freed again); every method's figure is appended to bandwidth_samples (GB/s)
    with when (a label: 'before int8', 'at the end', ...) and printed. Returns the best of the whole run
    so far in bytes/s: one figure underestimates a memory that several reads or a copy move faster."""
    x = torch.ones(1 << 28, dtype=torch.float32, device=device)  # 2**28 float32 = 1 GiB
    y = torch.empty_like(x)
    now = []
    for method, fn, nbytes in bandwidth_methods(x, y):
        best = float('inf')
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        now.append(dict(when=when, method=method, gb_s=nbytes / best / 1e9))
    del x, y
    bandwidth_samples.extend(now)
    run_best = max(b['gb_s'] for b in bandwidth_samples)
    progress(f"bandwidth {when}: " + ', '.join(f"{b['method']} {b['gb_s']:.1f}" for b in now) +
             f" GB/s (best of the run so far {run_best:.1f})")
    return run_best * 1e9


def timed(fn):
    """(best seconds over repeats, result of the last call), after one untimed warm-up call."""
    fn()
    best = float('inf')
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def reset_peak_memory():
    """Start a new peak: CUDA's allocator statistics, or Linux's peak RSS (VmHWM) of this process."""
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists('/proc/self/clear_refs'):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')


def peak_memory_mb():
    """Peak memory in MiB since reset_peak_memory: allocated CUDA memory, or the process's peak RSS."""
    if is_cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    if os.path.exists('/proc/self/status'):
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) for l in f if l.startswith('VmHWM')) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def weight_bytes(m):
    """Bytes of every parameter and buffer a decode step reads (int8 weights and their scales, int4's
    packed bytes and their scales and zeros, packed weights), the tied wte / lm_head once; KV caches excluded."""
    seen, total = set(), 0
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if 'cache' in name or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size() if not t.is_mkldnn else t.to_dense().numel() * t.element_size()
    return total


def int8_kernel(m, B, plain=False):
    """On CPU, eager: give m's int8 Block Linears the kernel sample.py chooses for B rows
    (cpu.speed.prepare_for_cpu). Returns the kernel of the first Block's c_attn, or None if not int8."""
    c_attn = m.transformer.h[0].attn.c_attn
    if not isinstance(c_attn, int8.Int8Linear):
        return None
    prepare_for_cpu(m, (B,), compiled=plain)
    return c_attn.kernel


def run_case(m, fmt, name, B, T, N, hf_s, decode_fn=None, ref_s=None, step=None):
    """One case: B rows from a T-token prompt (the same for every row), N new tokens each. hf_s and
    ref_s: Hugging Face's and nanoGPT's loop's seconds if measured already (ref_s None: timed here).
    The roofline is left to add_rooflines, once the run's best bandwidth is known; on CPU the
    decode step is then profiled (decode_profile), and the time outside the matmuls is the timed
    run's step (step_ms, unprofiled) less the matmuls' profiled time (the profiler's cost per op
    falls on the hundreds of small ops, not on the few large matmuls); profiled_step_ms is the
    step under the profiler. step: a compiled.CompiledStep for the CPU (compiled already)."""
    torch.manual_seed(seed)
    x = torch.randint(0, min(50000, m.config.vocab_size), (1, T), device=device).expand(B, -1)
    with torch.no_grad():
        reset_peak_memory()
        ours, _ = timed(lambda: m.generate(x, N, temperature=1.0, top_k=200, decode_fn=decode_fn, step=step,
                                           free_caches=decode_fn is None and step is None))  # compiled: the same cache
        mem = peak_memory_mb()
        ttft, _ = timed(lambda: m.generate(x, 1, temperature=1.0, top_k=200))
        if ref_s is None and ref and (fmt == 'float32' or is_cuda):
            ref_s = timed(lambda: m.generate(x, N, temperature=1.0, top_k=200, kv_cache=False))[0]
    c = m.config
    avg_len = T + (N - 1) / 2  # cached positions read by an average decode step
    kv_bytes = 2 * c.n_layer * B * avg_len * c.n_embd * m.compute_dtype.itemsize
    tps = lambda s: B * N / s if s else None
    r = dict(name=name, format=fmt, batch=B, prompt=T, new_tokens=N, tokens_per_s=tps(ours),
             ref_tokens_per_s=tps(ref_s), hf_tokens_per_s=tps(hf_s), ttft_ms=ttft * 1000, peak_memory_mb=mem,
             bytes_per_step=weight_bytes(m) + kv_bytes)
    r['vs_hf'] = r['tokens_per_s'] / r['hf_tokens_per_s'] if hf_s else None
    r['vs_ref'] = r['tokens_per_s'] / r['ref_tokens_per_s'] if ref_s else None
    r.update(decode_profile(m, x, N, decode_fn, ours / N, step=step) if not is_cuda else NO_PROFILE)
    r['matmul_gb_s'] = weight_bytes(m) / r['matmul_ms'] / 1e6 if r.get('matmul_ms') else None
    if r['step_ms']:  # the profiler inflates the small ops: the step as timed, less the matmuls as profiled
        r['profiled_step_ms'], r['step_ms'] = r['step_ms'], 1000 * ours / N  # (its one prefill included)
        r['outside_matmul_ms'] = max(0.0, r['step_ms'] - r['matmul_ms'])
        r['outside_matmul_pct'] = 100 * r['outside_matmul_ms'] / r['step_ms']
    return r


def add_rooflines(results, bandwidth):
    """Each case's roofline, the tokens/s if every decode step only read its bytes (weights, scales,
    KV cache) at bandwidth (bytes/s: the best of the whole run), and its share of it."""
    for r in results:
        r['roofline_tokens_per_s'] = r['batch'] * bandwidth / r['bytes_per_step']
        r['of_roofline'] = r['tokens_per_s'] / r['roofline_tokens_per_s']


# the profiler's names of the weight matmuls, as found per format: float32 / bfloat16 in oneDNN's
# packed layout mkldnn::_linear_pointwise, row-major aten::addmm, the lm_head aten::mm; int8
# aten::_weight_int8pack_mm; int4 aten::_weight_int4pack_mm_for_cpu (its head int8); aten::_int_mm,
# oneDNN's int8 GEMM. Attention's products run inside SDPA's kernel: not weight matmuls, not counted.
MATMUL_OPS = ('aten::mm', 'aten::addmm', 'aten::_int_mm', 'aten::_weight_int8pack_mm',
              'aten::_weight_int4pack_mm_for_cpu', 'mkldnn::_linear_pointwise', 'onednn::qlinear_pointwise')
NO_PROFILE = dict(step_ms=None, profiled_step_ms=None, matmul_ms=None, outside_matmul_ms=None, outside_matmul_pct=None,
                  profiled_steps=None, matmul_ops=None)


def decode_profile(m, x, N, decode_fn, step_s, budget_s=1.0, most=16, step=None):
    """Where a decode step's time goes, in ms per step: wall time (step_ms), the weight matmuls'
    self CPU time (matmul_ms, MATMUL_OPS) and the rest (outside_matmul_ms: sampling, attention,
    LayerNorm, GELU, the small ops and Python between them), over about budget_s seconds of decode
    steps (step_s: seconds per step of the timed run; 1 to most steps) of the case's own generate
    (the same cache size, so a compiled decode_fn replays), after its prefill and one warm-up
    step, under torch.profiler (CPU). The profiler adds a few microseconds to every op, so the
    hundreds of small ops outside the matmuls look dearer than they are unprofiled, and step_ms
    is longer than the timed run's."""
    from torch.profiler import ProfilerActivity, profile
    from generate import generate_tokens
    if N < 3:
        return NO_PROFILE
    room = m.config.block_size - x.size(1) - 1  # decode steps before the context outgrows the cache
    steps = max(1, min(most, N - 2, room, int(budget_s / step_s)))
    g = generate_tokens(m, x, N, 1.0, 200, decode_fn=decode_fn, step=step, free_caches=decode_fn is None and step is None)
    try:
        for _ in range(2):
            next(g)  # the prefill and the first token, then one decode step as a warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                next(g)  # one decode step and its draw
            wall = time.perf_counter() - t0
    finally:
        g.close()  # frees the KV cache as the case's generate would
    events = prof.key_averages()
    found = [e for e in events if op_class(e.key) == 'matmul']
    step_ms, matmul_ms = 1000 * wall / steps, sum(e.self_cpu_time_total for e in found) / 1000 / steps
    classes = {}
    for e in events:
        classes[op_class(e.key)] = classes.get(op_class(e.key), 0.0) + e.self_cpu_time_total / 1000 / steps
    return dict(step_ms=step_ms, matmul_ms=matmul_ms, outside_matmul_ms=step_ms - matmul_ms,
                outside_matmul_pct=100 * (step_ms - matmul_ms) / step_ms, profiled_steps=steps,
                matmul_ops=sorted(e.key for e in found), op_classes_ms={k: round(v, 3) for k, v in classes.items()})


def op_class(name):
    """A profiled op's class: 'matmul' (MATMUL_OPS, or a compiled step's call of one through
    Inductor's C++ shim, aoti_torch_cpu_*mm* / *linear*), 'attention' (scaled_dot_product_*),
    'fused' (a compiled step's own C++ kernels, cpp_fused_*), 'sampling' (sort, topk, softmax,
    argmax, exponential_: our draws), 'compiled-call' (the compiled graph's entry and guards),
    or 'other'."""
    if name in MATMUL_OPS or name.startswith('aoti_torch_cpu_') and ('mm' in name or 'linear' in name):
        return 'matmul'
    if 'scaled_dot_product' in name:
        return 'attention'
    if 'cpp_fused' in name:
        return 'fused'
    if any(w in name for w in ('sort', 'topk', 'softmax', 'argmax', 'exponential', 'multinomial')):
        return 'sampling'
    if 'CompiledFxGraph' in name or 'Torch-Compiled' in name or 'Dynamo' in name or 'AOTDispatcher' in name:
        return 'compiled-call'
    return 'other'


def hf_seconds(h, B, T, N, **options):
    """Hugging Face generate's best time for the case, or None without it; options go to generate."""
    if h is None:
        return None
    torch.manual_seed(seed)
    x = torch.randint(0, 50000, (1, T), device=device).expand(B, -1)
    with torch.no_grad():
        return timed(lambda: h.generate(x, max_new_tokens=N, min_new_tokens=N, do_sample=True, top_k=200,
                                        pad_token_id=0, **options))[0]


def validation_loss(fmt, path, block_size=128, batch=16):
    """The bundled demo's mean cross-entropy (nats) over the last 10% of Tiny Shakespeare, in
    non-overlapping block_size windows: what train.py's val split holds out."""
    from tokenizer import load_meta  # plain data only: a meta.pkl cannot run code
    demo = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'out-shakespeare-char')
    stoi, _ = load_meta(os.path.join(demo, 'meta.pkl'))
    with open(path, encoding='utf-8') as f:
        text = f.read()
    val = torch.tensor([stoi[c] for c in text[int(0.9 * len(text)):]], dtype=torch.long)
    m = from_checkpoint(GPT, os.path.join(demo, 'ckpt.pt'), FORMATS[fmt], device, quantize(fmt))
    n = (len(val) - 1) // block_size
    x = val[:n * block_size].view(n, block_size)
    y = val[1:n * block_size + 1].view(n, block_size)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            logits, _ = m(x[i:i + batch].to(device), targets=y[i:i + batch].to(device))
            total += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y[i:i + batch].to(device).flatten(),
                                                       reduction='sum').item()
    return total / (n * block_size)


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), or the platform's processor string."""
    info = cpu.cache.cpu_info()
    if info and info[0]:
        return info[0]
    import platform
    return platform.processor() or 'unknown CPU'


# -----------------------------------------------------------------------------
# llama.cpp beside us: tools/build_llamacpp.sh builds it (build/bin) and converts GPT-2 to GGUF
# (models/gpt2-f32.gguf, ...); each CPU case runs it right after ours, with our threads

LLAMA_TYPES = {'float32': 'F32', 'bfloat16': 'BF16', 'float16': 'F16', 'int8': 'Q8_0', 'int4': 'Q4_0'}  # our format -> GGUF type


def find_llamacpp():
    """(llama.cpp's directory, its version) to run beside each CPU case, or (None, None) with a line
    on stderr saying why not (nothing for --llamacpp=none, or '' with no build at the default place)."""
    if llamacpp == 'none':
        return None, None
    root = llamacpp or os.environ.get('LLAMACPP_DIR') or os.path.join(os.environ.get('TMPDIR') or '/tmp', 'llamacpp')
    tools = [os.path.join(root, 'build', 'bin', b) for b in ('llama-bench', 'llama-batched-bench')]
    why = ('runs on the CPU cases only' if is_cuda else
           f"has GGUF files of 'gpt2' and 'gpt2-xl' only, not of {model!r}" if model not in ('gpt2', 'gpt2-xl') else
           f"not built under {root} (bash tools/build_llamacpp.sh {root} builds it)" if not all(map(os.path.isfile, tools)) else
           None)
    if why:
        if llamacpp or os.path.isdir(root):
            progress(f"llama.cpp not run: it {why}")
        return None, None
    try:
        p = subprocess.run([tools[0], '--version'], capture_output=True, text=True, timeout=60, env=LAUNCH_ENV)
        version = next((' '.join(l.split()) for l in (p.stdout + p.stderr).splitlines() if l.strip()), 'unknown')
    except (OSError, subprocess.SubprocessError) as e:
        version = f"unknown ({type(e).__name__})"
    return root, f"{version}, {root}"


def llamacpp_case(root, fmt, B, T, N):
    """(llama.cpp's tokens/s for the case in fmt's GGUF type, the configuration measured) or (None,
    why not), with torch's threads: batch 1 llama-bench after T tokens of context (-d), the best of
    3 runs; batch B llama-batched-bench, one T-token prompt shared by B sequences (-pps), its decode
    speed. A run killed by a signal (its repacked Q8_0 / Q4_0 weights crash with SIGSEGV on some
    CPUs once a prompt is processed) is run again with repacking off, and says so."""
    gguf = os.path.join(root, 'models', f"{model}-{LLAMA_TYPES[fmt].lower()}.gguf")
    if not os.path.isfile(gguf):
        return None, f"no {gguf}"
    t, bin_dir = str(torch.get_num_threads()), os.path.join(root, 'build', 'bin')
    if B == 1:
        cmd = [os.path.join(bin_dir, 'llama-bench'), '-m', gguf, '-t', t, '-p', '0', '-n', str(N), '-d', str(T),
               '-r', '3', '-o', 'json']
        no_repack = ['--repack', '0']
    else:
        cmd = [os.path.join(bin_dir, 'llama-batched-bench'), '-m', gguf, '-t', t, '-tb', t, '-c', str(max(2048, T + B * N)),
               '-npp', str(T), '-ntg', str(N), '-npl', str(B), '-pps', '--output-format', 'jsonl']
        no_repack = ['--no-repack']
    config, p = 'default (weights repacked where llama.cpp does)', None
    for extra in ([], no_repack):
        if extra:
            config = f"repacking off ({' '.join(extra)}): the default run died with signal {-p.returncode}"
        try:
            p = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=1800, env=LAUNCH_ENV)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"{type(e).__name__}: {e}"
        if p.returncode >= 0:
            break
    if p.returncode:
        return None, f"exit code {p.returncode} ({config}): {brief(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else '')}"
    try:
        if B == 1:
            return max(max(r.get('samples_ts') or [r['avg_ts']]) for r in json.loads(p.stdout)), config
        lines = [json.loads(l) for l in (p.stdout + '\n' + p.stderr).splitlines() if l.startswith('{')]
        return next(d['speed_tg'] for d in lines if d.get('pl') == B), config
    except (ValueError, KeyError, TypeError, StopIteration) as e:
        return None, f"unreadable output ({type(e).__name__}: {e})"


def add_llamacpp(r, root):
    """Put llama.cpp's figures for case r in it, with the configuration measured (None where not
    run or failed: a line on stderr; a line too where it ran with repacking off)."""
    lt = LLAMA_TYPES.get(r['format']) if root else None
    tps, said = llamacpp_case(root, r['format'], r['batch'], r['prompt'], r['new_tokens']) if lt else (None, None)
    if said and not tps:
        progress(f"llama.cpp {lt}, {r['name']}: not measured, {said}")
    elif said and said.startswith('repacking off'):
        progress(f"llama.cpp {lt}, {r['name']}: measured with {said}")
    r.update(llama_type=lt, llama_tokens_per_s=tps, vs_llama=r['tokens_per_s'] / tps if tps else None,
             llama_config=said if tps else None)


def fmt_cell(v, spec='.1f'):
    """A table cell: '-' for a figure not measured."""
    return '-' if v is None else format(v, spec)


# -----------------------------------------------------------------------------
# CUDA: gpt2-xl and gpt2 shapes, batch 1 and 10, compiled and eager, against nanoGPT's loop and Hugging
# Face generate in the same dtype on the same weights, with the compile warm-up timed

CUDA_CASES = [('b1_prompt5_new256', 1, 5, 256), ('b10_prompt5_new256', 10, 5, 256)]


def compile_warmup_seconds(m, B, T, N, decode_fn):
    """Seconds of the first compiled run of a case's shapes (torch.compile, then the CUDA-graph
    capture): what a user waits for once. The KV cache is kept, so the timed runs replay the graph."""
    x = torch.zeros(B, T, dtype=torch.long, device=device)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        m.generate(x, N, temperature=1.0, top_k=200, decode_fn=decode_fn, free_caches=False)
    sync()
    return time.perf_counter() - t0


def hf_cuda_seconds(h, B, T, N):
    """(Hugging Face generate's best seconds for the case on CUDA, the options it ran with). At batch 1
    (the targets' comparison) its static cache, which transformers compiles with torch.compile where it
    can; otherwise, or if that raises, its default dynamic cache, eager."""
    if B == 1:
        try:
            s = hf_seconds(h, B, T, N, cache_implementation='static')
            return s, 'static cache, ' + ('torch.compile' if getattr(h, '_compiled_call', None) else 'eager')
        except Exception as e:  # another transformers version: say so, and time its default
            progress(f"Hugging Face static cache failed ({type(e).__name__}: {brief(e, 160)}); "
                     f"timing its default cache instead")
    return hf_seconds(h, B, T, N), 'dynamic cache, eager'


def cuda_cases(fmt):
    """The CUDA cases selected, appended to results: per shape, Hugging Face first (its model then
    freed, so that our peak memory is ours alone), then ours compiled and eager per batch size,
    nanoGPT's loop timed once per batch size."""
    for shape in ('gpt2-xl', 'gpt2'):
        todo = [(f"cuda_{shape}_{mode}_{case}", mode, B, T, N) for mode in ('compiled', 'eager')
                for case, B, T, N in CUDA_CASES if selected(f"cuda_{shape}_{mode}_{case}")]
        if not todo:
            continue
        m, _ = build(shape, fmt)
        hf_runs = {}  # batch -> (seconds, options)
        if hf:
            h = to_hf(m, FORMATS[fmt])
            for _, _, B, T, N in todo:
                if B not in hf_runs:
                    progress(f"Hugging Face generate, {shape}, {fmt}, batch {B} ...")
                    hf_runs[B] = hf_cuda_seconds(h, B, T, N)
            del h
            torch._dynamo.reset()  # its compiled forward and CUDA graphs go with it
            torch.cuda.empty_cache()
        decode_fn, ref_runs = m.compiled_decode_step(), {}  # batch -> nanoGPT's loop's seconds
        for name, mode, B, T, N in todo:
            progress(f"{name} ...")
            warmup = compile_warmup_seconds(m, B, T, N, decode_fn) if mode == 'compiled' else None
            hf_s, hf_options = hf_runs.get(B, (None, None))
            hf_options = f"in {fmt} with {hf_options}" if hf_options else 'not run'
            r = run_case(m, fmt, name, B, T, N, hf_s, decode_fn if mode == 'compiled' else None, ref_runs.get(B))
            if r['ref_tokens_per_s']:
                ref_runs[B] = B * N / r['ref_tokens_per_s']
            r.update(hf_options=hf_options, compile_warmup_s=warmup)
            results.append(r)
            progress(f"{name}: {r['tokens_per_s']:.1f} tok/s; nanoGPT's loop {fmt_cell(r['ref_tokens_per_s'])}; "
                     f"Hugging Face {fmt_cell(r['hf_tokens_per_s'])} {hf_options}" +
                     (f"; compile warm-up {warmup:.1f} s" if warmup else ''))
        del m, decode_fn
        torch._dynamo.reset()
        torch.cuda.empty_cache()


CASES = [('b1_prompt5_new256', 1, 5, 256), ('b1_prompt512_new128', 1, 512, 128), ('b8_prompt5_new128', 8, 5, 128)]
wanted = [w.strip() for w in cases.split(',') if w.strip()]


def selected(*names):
    """True if --cases selects a case known by any of names (its full name, and for CPU cases its
    name without model and format): a word selects the names equal to it or starting with it and
    '_' (b1_prompt5 selects b1_prompt5_new256, not b1_prompt512_new128; cuda_ every CUDA case)."""
    return not wanted or any(n == w or n.startswith(w if w.endswith('_') else w + '_') for w in wanted for n in names)


import torch._inductor.config  # noqa: E402
torch._inductor.config.cpp.enable_kernel_profile = True  # the profiler then sees a compiled step's kernels


def modes(fmt):
    """How a format runs: 'eager' and / or 'compiled' (the CPU's compiled step, by default for every
    format it can run, sample.py's default (compiled.FORMATS) or not; CUDA: compiled_decode_step)."""
    if is_cuda:
        return ['compiled' if compile else 'eager']
    return {None: ['eager'] + (['compiled'] if fmt in ('bfloat16', 'int8', 'int4') else []), True: ['compiled'],
            False: ['eager']}[compile]


def compiled_start(m, B, T, N):
    """A CompiledStep for B rows and the KV cache of a case of N new tokens after a T-token prompt,
    made twice: with the cache folder empty (a first run: export and AOTInductor compile), then as
    a later run makes it, loading that package. Returns (step, seconds to the first decoded token
    each time: compile or load, the prefill, the first token and one step)."""
    from generate import generate_tokens
    x = torch.randint(0, min(50000, m.config.vocab_size), (1, T)).expand(B, -1)
    seconds = []
    for _ in range(2):
        step = CompiledStep(m, B, temperature=1.0, top_k=200, n_vocab=m.config.vocab_size)
        t0 = time.perf_counter()
        with torch.no_grad():
            steps = generate_tokens(m, x, N, temperature=1.0, top_k=200, step=step, free_caches=False)
            next(steps), next(steps)  # the cache for N new tokens: the length the case runs at
            steps.close()
        seconds.append(time.perf_counter() - t0)
    return step, seconds


def run_format(fmt, mode, todo):
    """Build fmt's model as sample.py runs it in mode, then run each case of todo."""
    m, layouts[f"{fmt} {mode}"] = build(model, fmt, rows=sorted({B for _, B, _, _ in todo}), plain=mode == 'compiled')
    progress(f"{fmt} {mode}: {layouts[f'{fmt} {mode}']}")
    decode_fn = step = None
    for name, B, T, N in todo:
        starts = None
        if mode == 'compiled' and not is_cuda:
            progress(f"{name}: compiling the step, then loading its package ...")
            step, starts = compiled_start(m, B, T, N)
        elif mode == 'compiled':  # a new compile per case: every case's shapes (and every format's) would
            torch._dynamo.reset()  # recompile one decode_step, and past torch._dynamo's recompile limit (8) it stops
            decode_fn = m.compiled_decode_step()
        kernel = int8_kernel(m, B, plain=mode == 'compiled')
        label = name + ('_compiled' if mode == 'compiled' and not is_cuda else '')
        progress(f"{label} ...")
        r = run_case(m, fmt, label, B, T, N, hf_times.get(name.split(f"{fmt}_", 1)[1]), decode_fn, step=step)
        r.update(int8_kernel=kernel, mode=mode, first_run_s=starts and starts[0], later_run_s=starts and starts[1])
        if (fmt, name) not in llama_runs:
            add_llamacpp(r, llama_dir)  # right after ours, nothing else running
            llama_runs[fmt, name] = {k: v for k, v in r.items() if k.startswith('llama')}
        else:  # measured beside this format's eager run
            llama = llama_runs[fmt, name]
            r.update(llama, vs_llama=r['tokens_per_s'] / llama['llama_tokens_per_s'] if llama['llama_tokens_per_s'] else None)
        results.append(r)
        progress(f"{label}: {r['tokens_per_s']:.1f} tok/s" + (
            f"; step {r['step_ms']:.1f} ms, outside the matmuls {r['outside_matmul_ms']:.1f} ms "
            f"({r['outside_matmul_pct']:.0f}%; matmuls profiled)" if r['step_ms'] else '') + (
            f"; llama.cpp {r['llama_type']} {r['llama_tokens_per_s']:.1f} tok/s" if r['llama_tokens_per_s'] else '') + (
            f"; first token {starts[0]:.1f} s compiling, {starts[1]:.1f} s from the cache" if starts else '') + (
            "; per step (profiled): " + ', '.join(f"{k} {v:.2f} ms" for k, v in sorted(r['op_classes_ms'].items()))
            if r.get('op_classes_ms') else ''))
    del m, decode_fn, step
    torch._dynamo.reset()


bandwidth_samples = []  # every measurement of the run: dict(when, method, gb_s)
llama_runs = {}  # (format, case) -> llama.cpp's figures, measured once
llama_dir, llama_version = find_llamacpp()
results, layouts, hf_times = [], {}, {}
for fmt in formats:
    todo = [(f"{model}_{fmt}_{c[0]}", *c[1:]) for c in CASES if selected(f"{model}_{fmt}_{c[0]}", c[0])]
    if not todo:
        continue
    measure_bandwidth(f"before {fmt}")  # no model in memory: its 1 GiB tensors are freed again
    if hf and not hf_times and GPT2_CONFIGS.get(model, GPT2_CONFIGS['gpt2']).bias:  # HF's GPT-2 has biases
        torch.manual_seed(seed)  # the weights build() makes
        h = to_hf(GPT(GPT2_CONFIGS[model]).eval() if model in GPT2_CONFIGS else from_checkpoint(GPT, model),
                  FORMATS[hf_dtype]).to(device)
        for name, B, T, N in CASES:
            progress(f"Hugging Face generate, {hf_dtype}, {name} ...")
            hf_times[name] = hf_seconds(h, B, T, N)
        del h
    for mode in modes(fmt):
        run_format(fmt, mode, todo)
if is_cuda and compile:  # gpt2-xl and gpt2 shapes, batch 1 and 10, compiled and eager: see cuda_cases
    measure_bandwidth('before the CUDA cases')
    cuda_cases(formats[0])
# -----------------------------------------------------------------------------
# speculative decoding (spec_* cases): the same text as plain decoding, in fewer passes of the model

SPEC_REPEATS = "To be, or not to be.\nTo be, or not to be.\nTo be"  # with 80 new ids, inside the demo's block_size (128)
SPEC_CASES = [  # (name, drafter, prompt, rows, new ids, temperature); all at top_k 200
    ('spec_demo_ngram_b1', 'ngram', '\n', 1, 120, 0.8), ('spec_demo_ngram_b8', 'ngram', '\n', 8, 120, 0.8),
    ('spec_repeats_ngram_b1', 'ngram', SPEC_REPEATS, 1, 80, 0.8), ('spec_repeats_ngram_b8', 'ngram', SPEC_REPEATS, 8, 80, 0.8),
    ('spec_repeats_greedy_b1', 'ngram', SPEC_REPEATS, 1, 80, 0.0), ('spec_repeats_greedy_b8', 'ngram', SPEC_REPEATS, 8, 80, 0.0),
    ('spec_demo_draft_b1', 'model', '\n', 1, 120, 0.8), ('spec_demo_draft_b8', 'model', '\n', 8, 120, 0.8)]


def spec_text_case(m, drafter, name, start, B, N, temperature):
    """Plain decoding and speculation on the same rows (the demo model m, float32): tokens/s of each,
    ids verified per forward pass, drafted and accepted ids. The texts must be the same (checked)."""
    from draws import NanoGPTDraws
    from generate import generate_tokens
    from speculative import generate_speculative
    stoi = {c: i for i, c in enumerate(DEMO_CHARS)}
    x = torch.tensor([[stoi[c] for c in start]], device=device).expand(B, -1)

    def run(fn, **kwargs):
        draws = NanoGPTDraws(B, N, torch.Generator().manual_seed(seed))
        return torch.cat(list(fn(m, x, N, temperature=temperature, top_k=200, draws=draws, **kwargs)), 1)
    with torch.no_grad():
        plain_s, plain = timed(lambda: run(generate_tokens))
        stats = {}
        spec_s, spec = timed(lambda: run(generate_speculative, draft=drafter, stats=stats))
    assert torch.equal(plain, spec), f"{name}: speculation changed the text"
    rounds = repeats + 1  # timed() ran it repeats + 1 times, each adding to stats
    return dict(name=name, batch=B, new_tokens=N, tokens_per_s=B * N / plain_s, spec_tokens_per_s=B * N / spec_s,
                speedup=plain_s / spec_s, tokens_per_forward=stats['tokens'] / B / stats['forwards'],
                drafted=stats['drafted'] // rounds, accepted=stats['accepted'] // rounds)


def verify_cost_case(name, positions=(2, 4, 8), prompt=64):
    """ms of one decode step at batch 1 and of one verification pass over n positions (a forward of
    n ids after prompt cached ones, every position's logits), on random weights of name's shapes in
    float32 with sample.py's layouts; each pass's own KV entries are simply written again."""
    m, _ = build(name, 'float32', rows=(1,) + tuple(positions))
    x = torch.randint(0, min(50000, m.config.vocab_size), (1, prompt + max(positions, default=1)), device=device)
    out = {}
    with torch.no_grad():
        m.setup_caches(1, prompt + max(positions, default=1))
        m(x[:, :prompt], pos=0)
        out['step_ms'] = 1000 * timed(lambda: m(x[:, prompt:prompt + 1], pos=prompt))[0]
        for n in positions:
            out[f'verify{n}_ms'] = 1000 * timed(lambda: m(x[:, prompt:prompt + n], pos=prompt, all_logits=True))[0]
        m.clear_caches()
    del m
    return out


def spec_speedups(step_ms, verify_ms, draft_ms, n, rates=(0.5, 0.7, 0.9)):
    """Expected speed-up over plain decoding per acceptance rate a (each drafted id accepted with
    probability a): a round drafts n ids (n drafter steps) and verifies n + 1 positions, and yields
    (1 - a^(n+1)) / (1 - a) ids on average."""
    return {a: (1 - a ** (n + 1)) / (1 - a) * step_ms / (verify_ms + n * draft_ms) for a in rates}


DEMO_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
spec_results, verify_costs = [], {}
spec_todo = [c for c in SPEC_CASES if wanted and selected(c[0])]
if spec_todo:
    from speculative import load_drafter
    from tokenizer import load_tokenizer, meta_paths
    demo_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'out-shakespeare-char')
    draft_dir = draft_model or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'out-shakespeare-char-draft')
    demo_model, _ = build(os.path.join(demo_dir, 'ckpt.pt'), 'float32', rows=(1, 8))
    for name, kind, start, B, N, temperature in spec_todo:
        if kind == 'model' and not os.path.isfile(os.path.join(draft_dir, 'ckpt.pt')):
            progress(f"{name}: skipped, no drafter at {draft_dir}")
            continue
        drafter = 'ngram' if kind == 'ngram' else load_drafter(
            draft_dir, demo_dir, torch.float32, device, load_tokenizer(meta_paths('resume', demo_dir, {}), 65))
        progress(f"{name} ...")
        spec_results.append(spec_text_case(demo_model, drafter, name, start, B, N, temperature))
    del demo_model
if wanted and selected('spec_verify'):
    progress(f"spec_verify: a verification pass against a decode step, {model} shapes ...")
    verify_costs[model] = verify_cost_case(model)
    if model != 'gpt2' and model in GPT2_CONFIGS:  # gpt2's step: the drafter of gpt2-medium .. gpt2-xl
        verify_costs['gpt2'] = verify_cost_case('gpt2', positions=())
# -----------------------------------------------------------------------------
# start-up (the 'startup' case, run only when --cases names it): sample.py as a user starts it

def write_random_checkpoint(folder, name):
    """A nanoGPT checkpoint (ckpt.pt) of name's shapes with random weights in folder, and a
    character meta.pkl of vocab_size characters (so that no BPE file is downloaded); returns folder."""
    torch.manual_seed(seed)
    src = GPT(GPT2_CONFIGS[name])
    c = src.config
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size, bias=c.bias,
                      vocab_size=c.vocab_size, dropout=0.0)
    torch.save(dict(model=src.state_dict(), model_args=model_args, iter_num=0, best_val_loss=torch.tensor(0.0),
                    config={}), os.path.join(folder, 'ckpt.pt'))
    itos = {i: chr(i if i < 0xD800 else i + 0x800) for i in range(c.vocab_size)}  # no surrogates: printable
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump(dict(vocab_size=c.vocab_size, itos=itos, stoi={ch: i for i, ch in itos.items()}), f)
    return folder


def startup_case(fmt, folder, env):
    """Seconds from process start to the end of a two-token `sample.py` run (the first token from the
    prefill, the second from the decode step: a compiled step is ready) on the checkpoint in folder, in weight format fmt: eager (after one run that fills the quantized-weight
    cache and the timings), then compiled with the compiled-step cache empty (a first run), then
    compiled again (a later run, which loads the package). The best of `repeats` where repeated."""
    args = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sample.py'),
            f'--out_dir={folder}', '--num_samples=1', '--max_new_tokens=2',
            f'--quantize={fmt}' if quantize(fmt) else f'--dtype={fmt}']

    def run(compiled):
        t0 = time.perf_counter()
        p = subprocess.run(args + [f'--compile={compiled}'], capture_output=True, text=True, env=env, timeout=3600)
        if p.returncode:
            raise RuntimeError(f"sample.py failed: {brief(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode)}")
        return time.perf_counter() - t0
    run(False)
    eager = min(run(False) for _ in range(repeats))
    first = run(True)
    later = min(run(True) for _ in range(repeats))
    return dict(eager_s=eager, compiled_first_s=first, compiled_later_s=later, later_vs_eager=later / eager)


startups = {}
if not is_cuda and wanted and selected('startup') and model in GPT2_CONFIGS:
    with tempfile.TemporaryDirectory(prefix='bench-startup-') as tmp:
        folder = write_random_checkpoint(tmp, model)
        env = dict(os.environ, NANOSAMPLE_CACHE_DIR=os.path.join(tmp, 'cache'),  # empty: nothing of the user's is timed
                   TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, 'inductor'))
        for fmt in formats:
            progress(f"startup {model} {fmt}: sample.py eager, then compiled twice ...")
            try:
                startups[fmt] = startup_case(fmt, folder, env)
            except (RuntimeError, subprocess.SubprocessError) as e:
                startups[fmt] = dict(error=brief(e))
bandwidth = measure_bandwidth('at the end')  # the best of the whole run
add_rooflines(results, bandwidth)
losses = {}
if eval_data:
    for fmt in formats:
        progress(f"validation loss, {fmt} ...")
        losses[fmt] = validation_loss(fmt, eval_data)

dev_name = torch.cuda.get_device_name() if is_cuda else f"{cpu_name()} ({torch.get_num_threads()} threads)"
best = max(bandwidth_samples, key=lambda b: b['gb_s'])
print(f"device: {dev_name}, measured bandwidth {bandwidth / 1e9:.1f} GB/s (best of {len(bandwidth_samples)}: "
      f"{best['method']}, {best['when']}), torch {torch.__version__}")
for f, l in layouts.items():
    print(f"layout {f}: {l}")
for r in (r for r in results if r.get('int8_kernel')):
    print(f"{r['name']}: int8 Block Linears through '{r['int8_kernel']}' (int8.choose_int8_kernel_)")
if llama_dir:
    print(f"llama.cpp: {llama_version}, {torch.get_num_threads()} threads")
hf_label = dict(float32='fp32', bfloat16='bf16', float16='fp16')[hf_dtype]
head = ['case', 'tok/s', 'ref tok/s', f'HF {hf_label} tok/s', 'roofline', 'x HF', 'x ref', '% roof', 'TTFT ms', 'peak MB',
        'step ms', 'outside mm ms', 'outside mm %', 'mm GB/s', 'first run s', 'later run s', 'llama.cpp', 'llama tok/s',
        'x llama']
print(' | '.join(head))
print(' | '.join('---' for _ in head))
for r in results:
    print(' | '.join([r['name'], fmt_cell(r['tokens_per_s']), fmt_cell(r['ref_tokens_per_s']), fmt_cell(r['hf_tokens_per_s']),
                      fmt_cell(r['roofline_tokens_per_s']), fmt_cell(r['vs_hf'], '.2f'), fmt_cell(r['vs_ref'], '.2f'),
                      fmt_cell(100 * r['of_roofline'], '.0f'), fmt_cell(r['ttft_ms']), fmt_cell(r['peak_memory_mb'], '.0f'),
                      fmt_cell(r['step_ms']), fmt_cell(r['outside_matmul_ms']), fmt_cell(r['outside_matmul_pct'], '.0f'),
                      fmt_cell(r.get('matmul_gb_s')), fmt_cell(r.get('first_run_s')), fmt_cell(r.get('later_run_s')),
                      r.get('llama_type') or '-', fmt_cell(r.get('llama_tokens_per_s')), fmt_cell(r.get('vs_llama'), '.2f')]))
for r in (r for r in results if 'hf_options' in r):  # the CUDA cases
    print(f"{r['name']}: Hugging Face generate {r['hf_options']}" +
          (f"; compile warm-up {r['compile_warmup_s']:.1f} s" if r['compile_warmup_s'] else ''))
for r in spec_results:
    print(f"{r['name']}: plain {r['tokens_per_s']:.1f} tok/s, speculative {r['spec_tokens_per_s']:.1f} tok/s "
          f"({r['speedup']:.2f}x), {r['tokens_per_forward']:.2f} ids per forward pass (a row), "
          f"{r['accepted']}/{r['drafted']} drafted ids accepted")
for name, c in verify_costs.items():
    print(f"spec_verify {name}: decode step {c['step_ms']:.1f} ms" + ''.join(
        f", verify {k[6:-3]} positions {v:.1f} ms ({v / c['step_ms']:.2f}x)" for k, v in c.items() if k.startswith('verify')))
if 'gpt2' in verify_costs and model in verify_costs and model != 'gpt2':
    c, d = verify_costs[model], verify_costs['gpt2']['step_ms']
    for n in (2, 4, 8):  # a pass over n positions verifies n - 1 drafted ids
        sp = spec_speedups(c['step_ms'], c[f'verify{n}_ms'], d, n - 1)
        print(f"spec {model} with a gpt2 drafter, {n - 1} drafted per pass: speed-up " +
              ', '.join(f"{x:.2f}x at acceptance {a}" for a, x in sp.items()))
for f, st in startups.items():
    print(f"startup {model} {f}: " + (st['error'] if 'error' in st else
          f"sample.py to its first decoded token: eager {st['eager_s']:.2f} s, compiled {st['compiled_first_s']:.2f} s the first "
          f"run, {st['compiled_later_s']:.2f} s later ({st['later_vs_eager']:.2f}x eager)"))
for f, l in losses.items():
    print(f"validation loss, out-shakespeare-char, {f}: {l:.4f}" +
          (f" ({l - losses['float32']:+.4f} against float32)" if 'float32' in losses and f != 'float32' else ''))
print(json.dumps(dict(device=dev_name, bandwidth_gb_s=bandwidth / 1e9, bandwidth_samples_gb_s=bandwidth_samples,
                      torch=torch.__version__, layouts=layouts, llamacpp=llama_version, cases=results,
                      validation_loss=losses, speculative=spec_results, verify_costs=verify_costs, startup=startups)))
