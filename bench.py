"""
Decoding speed against the references and the memory-bandwidth limit, all in one process.

For each case it measures, after a warm-up: our tokens/s (KV cache), nanoGPT's reference loop
(kv_cache=False), Hugging Face GPT2LMHeadModel.generate on the same weights, our time to first
token, peak memory, and the bandwidth roofline: weight bytes + KV-cache bytes read per decode
step, over a bandwidth measured here (a large tensor read on CPU, a device-to-device copy on
CUDA). Weights are random, so nothing is downloaded. A table, then one JSON line last.

$ python bench.py                                    # GPT-2 124M shapes, float32, CPU
$ python bench.py --model=gpt2-xl --compile=True     # on CUDA: adds the gpt2-xl compiled cases
"""
import json
import os
import resource
import time

import torch

from load import CONV1D_WEIGHTS, GPT2_CONFIGS, from_checkpoint
from model import GPT

# -----------------------------------------------------------------------------
model = 'gpt2' # shapes: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a path to a ckpt.pt
device = 'cuda' if torch.cuda.is_available() else 'cpu' # 'cpu', 'cuda', 'cuda:0'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32' # weights and compute: 'float32', 'bfloat16', 'float16'
compile = False # compile the static decode step (CUDA graphs on CUDA)
hf = True # also time Hugging Face generate on the same weights
ref = True # also time nanoGPT's loop (kv_cache=False)
repeats = 1 # timed runs per measurement (the best is kept)
seed = 1337 # for weights and prompts
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
is_cuda = device.startswith('cuda')


def sync():
    """Wait for queued CUDA work, so the timer reads finished work."""
    if is_cuda:
        torch.cuda.synchronize()


def build(name):
    """A GPT with random weights of the named shapes (or a checkpoint's), in ptdtype on device."""
    torch.manual_seed(seed)
    m = GPT(GPT2_CONFIGS[name]) if name in GPT2_CONFIGS else from_checkpoint(name)
    m = m.eval().cast_(ptdtype, device)
    return m.column_major_() if not is_cuda else m  # as sample.py does on CPU


def to_hf(m):
    """The same weights in a transformers GPT2LMHeadModel (Conv1D weights transposed back)."""
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
        sd[k] = v.contiguous()  # HF's own row-major layouts (shared storage where ours already is)
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
    """Peak memory in MiB since reset_peak_memory: allocated CUDA memory, or the process's peak RSS
    (everything resident, the weights and Hugging Face's copy of them included)."""
    if is_cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    if os.path.exists('/proc/self/status'):
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) for l in f if l.startswith('VmHWM')) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(m, h, name, B, T, N, decode_fn=None):
    """One case: B rows from a T-token prompt (the same for every row), N new tokens each."""
    torch.manual_seed(seed)
    x = torch.randint(0, min(50000, m.config.vocab_size), (1, T), device=device).expand(B, -1)
    with torch.no_grad():
        reset_peak_memory()
        ours, _ = timed(lambda: m.generate(x, N, temperature=1.0, top_k=200, decode_fn=decode_fn))
        mem = peak_memory_mb()
        ttft, _ = timed(lambda: next(iter(m.generate_tokens(x, N, temperature=1.0, top_k=200))))
        ref_s = timed(lambda: m.generate(x, N, temperature=1.0, top_k=200, kv_cache=False))[0] if ref else None
        hf_s = timed(lambda: h.generate(x, max_new_tokens=N, min_new_tokens=N, do_sample=True, top_k=200,
                                        pad_token_id=0))[0] if h is not None else None
    c = m.config
    weight_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    avg_len = T + (N - 1) / 2  # cached positions read by an average decode step
    kv_bytes = 2 * c.n_layer * B * avg_len * c.n_embd * torch.finfo(ptdtype).bits // 8
    roofline = B * bandwidth / (weight_bytes + kv_bytes)  # tokens/s if every step only read its bytes
    tps = lambda s: B * N / s if s else None
    r = dict(name=name, batch=B, prompt=T, new_tokens=N, tokens_per_s=tps(ours), ref_tokens_per_s=tps(ref_s),
             hf_tokens_per_s=tps(hf_s), roofline_tokens_per_s=roofline, ttft_ms=ttft * 1000, peak_memory_mb=mem)
    r['vs_hf'] = r['tokens_per_s'] / r['hf_tokens_per_s'] if hf_s else None
    r['vs_ref'] = r['tokens_per_s'] / r['ref_tokens_per_s'] if ref_s else None
    r['of_roofline'] = r['tokens_per_s'] / roofline
    return r


def fmt(v, spec='.1f'):
    """A table cell: '-' for a figure not measured."""
    return '-' if v is None else format(v, spec)


bandwidth = measure_bandwidth()  # before the models: its 1 GiB tensor is freed again
cases = [('b1_prompt5_new256', 1, 5, 256), ('b1_prompt512_new128', 1, 512, 128), ('b8_prompt5_new128', 8, 5, 128)]
results = []
m = build(model)
h = to_hf(m) if hf and m.config.bias else None  # Hugging Face's GPT-2 always has biases
decode_fn = torch.compile(m.decode_step, fullgraph=True, dynamic=False,
                          mode='reduce-overhead' if is_cuda else 'default') if compile else None
for name, B, T, N in cases:
    results.append(run_case(m, h, f"{model}_{name}", B, T, N, decode_fn))
if is_cuda and compile:  # the large-model cases: gpt2-xl, compiled, batch 1 and 10
    if model != 'gpt2-xl':
        del m, h, decode_fn
        m = build('gpt2-xl')
        h = to_hf(m) if hf else None
        decode_fn = torch.compile(m.decode_step, fullgraph=True, dynamic=False, mode='reduce-overhead')
    for name, B, T, N in [('b1_prompt5_new256', 1, 5, 256), ('b10_prompt5_new256', 10, 5, 256)]:
        results.append(run_case(m, h, f"gpt2-xl_compiled_{name}", B, T, N, decode_fn))

dev_name = torch.cuda.get_device_name() if is_cuda else f"cpu ({torch.get_num_threads()} threads)"
print(f"device: {dev_name}, dtype {dtype}, measured bandwidth {bandwidth / 1e9:.1f} GB/s, torch {torch.__version__}")
head = ['case', 'tok/s', 'ref tok/s', 'HF tok/s', 'roofline', 'x HF', 'x ref', '% roof', 'TTFT ms', 'peak MB']
print(' | '.join(head))
print(' | '.join('---' for _ in head))
for r in results:
    print(' | '.join([r['name'], fmt(r['tokens_per_s']), fmt(r['ref_tokens_per_s']), fmt(r['hf_tokens_per_s']),
                      fmt(r['roofline_tokens_per_s']), fmt(r['vs_hf'], '.2f'), fmt(r['vs_ref'], '.2f'),
                      fmt(100 * r['of_roofline'], '.0f'), fmt(r['ttft_ms']), fmt(r['peak_memory_mb'], '.0f')]))
print(json.dumps(dict(device=dev_name, dtype=dtype, bandwidth_gb_s=bandwidth / 1e9, torch=torch.__version__,
                      cases=results)))
