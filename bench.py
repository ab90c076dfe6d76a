"""
Decoding speed against the references and the memory-bandwidth limit, all in one process.

For each case and weight format it measures, after a warm-up: our tokens/s (KV cache, nanoGPT's
draws), nanoGPT's reference loop (kv_cache=False; float32 only on CPU), Hugging Face
GPT2LMHeadModel.generate on the same weights (float32 on CPU, the first format on CUDA), our time
to first token, peak memory,
and the bandwidth roofline: weight bytes (with their scales for int8 / int4) + KV-cache bytes read per decode
step, over a bandwidth measured here (a large tensor read on CPU, a device-to-device copy on CUDA).
Weights are random, so nothing is downloaded. A table, then one JSON line last; progress on stderr.
With eval_data (Tiny Shakespeare's input.txt) it also reports the bundled demo model's validation
loss on the held-out last 10% in each format.

$ python bench.py                                          # GPT-2 124M shapes: float32, bfloat16, int8 on CPU
$ python bench.py --dtype=int8 --cases=b1_prompt5          # a subset
$ python bench.py --eval_data=path/to/input.txt --hf=False --ref=False
$ python bench.py --compile=True --cases=cuda_             # on CUDA: gpt2-xl and gpt2, batch 1 and 10, compiled and eager
"""
import json
import os
import resource
import sys
import time

from common import share_the_cpu
share_the_cpu()  # before torch: OpenMP threads that do not spin against a job beside us
import torch  # noqa: E402

# -----------------------------------------------------------------------------
model = 'gpt2' # shapes: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a path to a ckpt.pt
device = 'cuda' if torch.cuda.is_available() else 'cpu' # 'cpu', 'cuda', 'cuda:0'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32,bfloat16,int8' # weight formats, comma-separated: 'float32', 'bfloat16', 'float16', 'int8', 'int4' (weight-only, bf16 activations; int4: head int8)
cases = '' # comma-separated: run the cases named, or whose names start with one of these and '_' (b1_prompt5, b8, cuda_); '' = all
compile = False # compile the static decode step (CUDA graphs on CUDA)
hf = True # also time Hugging Face generate on the same weights (float32 on CPU, the first format on CUDA)
ref = True # also time nanoGPT's loop (kv_cache=False): float32 only on CPU, every format on CUDA
repeats = 1 # timed runs per measurement (the best is kept)
eval_data = '' # Tiny Shakespeare's input.txt: report out-shakespeare-char's validation loss per format
seed = 1337 # for weights and prompts
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
from cpu_layout import choose_linear_layout_  # noqa: E402
from load import CONV1D_WEIGHTS, GPT2_CONFIGS, assemble, from_checkpoint  # noqa: E402
from model import GPT  # noqa: E402

FORMATS = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16, 'int8': torch.float32,
           'int4': torch.float32}
KERNELS = {'int8': 'aten._weight_int8pack_mm', 'int4': 'aten._weight_int4pack_mm_for_cpu'}  # the quantized formats
quantize = lambda fmt: fmt if fmt in KERNELS else None  # load.assemble's quantize= for a format
formats = [f.strip() for f in dtype.split(',') if f.strip()]
bad = [f for f in formats if f not in FORMATS]
if bad or not formats:
    print(f"error: --dtype takes comma-separated formats from {', '.join(FORMATS)}, got {dtype!r}", file=sys.stderr)
    sys.exit(2)
is_cuda = device.startswith('cuda')
hf_dtype = formats[0] if is_cuda else 'float32'  # Hugging Face generate's: on CUDA, in bfloat16 as ours
for q in (f for f in formats if is_cuda and quantize(f)):
    print(f"error: --dtype={q} runs on the CPU only (its kernel, {KERNELS[q]}, is CPU-only here)", file=sys.stderr)
    sys.exit(2)


def progress(msg):
    """A line on stderr, so a long run shows where it is."""
    print(msg, file=sys.stderr, flush=True)


def sync():
    """Wait for queued CUDA work, so the timer reads finished work."""
    if is_cuda:
        torch.cuda.synchronize()


def build(name, fmt, rows=(1,)):
    """A GPT with random weights of the named shapes (or a checkpoint's) in weight format fmt on
    device, through the code sample.py runs: load.assemble lands (and for int8 / int4 quantizes) each
    tensor, then the CPU layouts are chosen for decoding rows rows at a time.
    Returns (model, the layouts chosen: a short string)."""
    torch.manual_seed(seed)
    if name in GPT2_CONFIGS:
        with torch.device(device if is_cuda else 'cpu'):  # a GPU draws gpt2-xl's random init in a second
            src = GPT(GPT2_CONFIGS[name])  # random float32 weights, as from a file
        tensors = ((k, v) for k, v in src.state_dict().items() if k != 'lm_head.weight')  # tied
        m = assemble(src.config, tensors, f"random {name} weights", FORMATS[fmt], device, quantize(fmt))
        del src, tensors
    else:
        m = from_checkpoint(name, FORMATS[fmt], device, quantize(fmt))
    if quantize(fmt):
        return m, f"{fmt} weight-only ({KERNELS[fmt]}{', head int8' if fmt == 'int4' else ''})"
    if is_cuda or compile:  # torch.compile cannot trace oneDNN's packed weights (sample.py does the same)
        return m, 'dense'
    report = choose_linear_layout_(m, batch_sizes=rows)
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
        if k.endswith(CONV1D_WEIGHTS):
            v = v.t()  # back to Conv1D's (in, out)
        sd[k] = v.to(dtype).contiguous()
    h.load_state_dict(sd, strict=False, assign=True)
    h.tie_weights()
    return h.eval()


def measure_bandwidth():
    """Bytes/s this device reads: a 1 GiB tensor summed (CPU) or copied device to device (CUDA)."""
    n = 1 << 28  # 2**28 float32 = 1 GiB
    x = torch.ones(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x) if is_cuda else None
    best = float('inf')
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        if is_cuda:
            y.copy_(x)
        else:
            x.sum()
        sync()
        best = min(best, time.perf_counter() - t0)
    return (2 if is_cuda else 1) * x.numel() * x.element_size() / best  # a copy reads and writes


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


def run_case(m, fmt, name, B, T, N, hf_s, decode_fn=None, ref_s=None):
    """One case: B rows from a T-token prompt (the same for every row), N new tokens each. hf_s and
    ref_s: Hugging Face's and nanoGPT's loop's seconds if measured already (ref_s None: timed here)."""
    torch.manual_seed(seed)
    x = torch.randint(0, min(50000, m.config.vocab_size), (1, T), device=device).expand(B, -1)
    with torch.no_grad():
        reset_peak_memory()
        ours, _ = timed(lambda: m.generate(x, N, temperature=1.0, top_k=200, decode_fn=decode_fn,
                                           free_caches=decode_fn is None))  # compiled: the same cache, replayed
        mem = peak_memory_mb()
        ttft, _ = timed(lambda: m.generate(x, 1, temperature=1.0, top_k=200))
        if ref_s is None and ref and (fmt == 'float32' or is_cuda):
            ref_s = timed(lambda: m.generate(x, N, temperature=1.0, top_k=200, kv_cache=False))[0]
    c = m.config
    avg_len = T + (N - 1) / 2  # cached positions read by an average decode step
    kv_bytes = 2 * c.n_layer * B * avg_len * c.n_embd * m.compute_dtype.itemsize
    roofline = B * bandwidth / (weight_bytes(m) + kv_bytes)  # tokens/s if every step only read its bytes
    tps = lambda s: B * N / s if s else None
    r = dict(name=name, format=fmt, batch=B, prompt=T, new_tokens=N, tokens_per_s=tps(ours),
             ref_tokens_per_s=tps(ref_s), hf_tokens_per_s=tps(hf_s), roofline_tokens_per_s=roofline,
             ttft_ms=ttft * 1000, peak_memory_mb=mem)
    r['vs_hf'] = r['tokens_per_s'] / r['hf_tokens_per_s'] if hf_s else None
    r['vs_ref'] = r['tokens_per_s'] / r['ref_tokens_per_s'] if ref_s else None
    r['of_roofline'] = r['tokens_per_s'] / roofline
    return r


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
    import pickle
    demo = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'out-shakespeare-char')
    with open(os.path.join(demo, 'meta.pkl'), 'rb') as f:
        stoi = pickle.load(f)['stoi']
    with open(path, encoding='utf-8') as f:
        text = f.read()
    val = torch.tensor([stoi[c] for c in text[int(0.9 * len(text)):]], dtype=torch.long)
    m = from_checkpoint(os.path.join(demo, 'ckpt.pt'), FORMATS[fmt], device, quantize(fmt))
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
    try:
        with open('/proc/cpuinfo') as f:
            return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or 'unknown CPU'


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
            progress(f"Hugging Face static cache failed ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
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
                     f"Hugging Face {fmt_cell(r['hf_tokens_per_s'])} {hf_options}; {100 * r['of_roofline']:.0f}% "
                     f"of the roofline" + (f"; compile warm-up {warmup:.1f} s" if warmup else ''))
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


bandwidth = measure_bandwidth()  # before the models: its 1 GiB tensor is freed again
progress(f"bandwidth {bandwidth / 1e9:.1f} GB/s")
results, layouts, hf_times = [], {}, {}
for fmt in formats:
    todo = [(f"{model}_{fmt}_{c[0]}", *c[1:]) for c in CASES if selected(f"{model}_{fmt}_{c[0]}", c[0])]
    if not todo:
        continue
    if hf and not hf_times and GPT2_CONFIGS.get(model, GPT2_CONFIGS['gpt2']).bias:  # HF's GPT-2 has biases
        torch.manual_seed(seed)  # the weights build() makes
        h = to_hf(GPT(GPT2_CONFIGS[model]).eval() if model in GPT2_CONFIGS else from_checkpoint(model),
                  FORMATS[hf_dtype]).to(device)
        for name, B, T, N in CASES:
            progress(f"Hugging Face generate, {hf_dtype}, {name} ...")
            hf_times[name] = hf_seconds(h, B, T, N)
        del h
    m, layouts[fmt] = build(model, fmt, rows=sorted({B for _, B, _, _ in todo}))
    progress(f"{fmt}: {layouts[fmt]}")
    decode_fn = m.compiled_decode_step() if compile else None
    for name, B, T, N in todo:
        progress(f"{name} ...")
        results.append(run_case(m, fmt, name, B, T, N, hf_times.get(name.split(f"{fmt}_", 1)[1]), decode_fn))
    del m, decode_fn
if is_cuda and compile:  # gpt2-xl and gpt2 shapes, batch 1 and 10, compiled and eager: see cuda_cases
    cuda_cases(formats[0])
losses = {}
if eval_data:
    for fmt in formats:
        progress(f"validation loss, {fmt} ...")
        losses[fmt] = validation_loss(fmt, eval_data)

dev_name = torch.cuda.get_device_name() if is_cuda else f"{cpu_name()} ({torch.get_num_threads()} threads)"
print(f"device: {dev_name}, measured bandwidth {bandwidth / 1e9:.1f} GB/s, torch {torch.__version__}")
for f, l in layouts.items():
    print(f"layout {f}: {l}")
hf_label = dict(float32='fp32', bfloat16='bf16', float16='fp16')[hf_dtype]
head = ['case', 'tok/s', 'ref tok/s', f'HF {hf_label} tok/s', 'roofline', 'x HF', 'x ref', '% roof', 'TTFT ms', 'peak MB']
print(' | '.join(head))
print(' | '.join('---' for _ in head))
for r in results:
    print(' | '.join([r['name'], fmt_cell(r['tokens_per_s']), fmt_cell(r['ref_tokens_per_s']), fmt_cell(r['hf_tokens_per_s']),
                      fmt_cell(r['roofline_tokens_per_s']), fmt_cell(r['vs_hf'], '.2f'), fmt_cell(r['vs_ref'], '.2f'),
                      fmt_cell(100 * r['of_roofline'], '.0f'), fmt_cell(r['ttft_ms']), fmt_cell(r['peak_memory_mb'], '.0f')]))
for r in (r for r in results if 'hf_options' in r):  # the CUDA cases
    print(f"{r['name']}: Hugging Face generate {r['hf_options']}" +
          (f"; compile warm-up {r['compile_warmup_s']:.1f} s" if r['compile_warmup_s'] else ''))
for f, l in losses.items():
    print(f"validation loss, out-shakespeare-char, {f}: {l:.4f}" +
          (f" ({l - losses['float32']:+.4f} against float32)" if 'float32' in losses and f != 'float32' else ''))
print(json.dumps(dict(device=dev_name, bandwidth_gb_s=bandwidth / 1e9, torch=torch.__version__, layouts=layouts,
                      cases=results, validation_loss=losses)))
