"""
Measurements that need a process of their own (its peak RSS, its imports), run by the tests as
    python tests/measure.py NAME ARG...
Each prints its figures on one line, separated by spaces. Peak memory is /proc/self/status's
VmHWM (getrusage's ru_maxrss survives exec from the parent).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's modules, as pytest.ini's pythonpath gives the tests

import torch  # noqa: E402

import load  # noqa: E402
from model import GPT  # noqa: E402


def status(field):
    """A /proc/self/status field in bytes: VmRSS (resident now) or VmHWM (the process's peak)."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def touch(model):
    """Read every weight, as sampling will (packed weights were just written: resident already)."""
    for p in list(model.parameters()) + list(model.buffers()):
        if not p.is_mkldnn:
            p.max()  # no promotion: sum() would widen int8 to int64


def loading(source, fmt, rows):
    """RSS before loading, peak RSS after, weight bytes: source 'gpt2' (the hub) or a Hugging Face
    folder, fmt 'float32', 'int8', 'bfloat16 layout' or 'float32 layout' (then laid out for rows)."""
    before = status('VmRSS')
    quantize = 'int8' if fmt == 'int8' else None
    dtype = torch.bfloat16 if fmt.startswith('bfloat16') else torch.float32
    model = load.from_pretrained(GPT, source, dtype, quantize=quantize) if source == 'gpt2' else \
        load.from_hf(GPT, source, dtype, quantize=quantize)
    if fmt.endswith('layout'):  # then each weight copied into the layout sample.py chooses on this CPU
        from cpu.layout import choose_linear_layout_
        choose_linear_layout_(model, batch_sizes=(int(rows),))
    touch(model)
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
    return before, status('VmHWM'), sum(t.numel() * t.element_size() for t in tensors)


def mixed_layouts(cache):
    """RSS before, peak RSS, weight bytes and whether c_attn, c_fc, c_proj of layer 0 are still
    views of the file: gpt2 with timings in cache that convert the MLP's Linears only."""
    import cpu.layout
    from helpers import seed_cache
    before = status('VmRSS')
    model = load.from_pretrained(GPT, 'gpt2')
    seed_cache(cache, model, fast=lambda g: 'row' if 3072 in (g.in_features, g.out_features) else 'col')
    cpu.layout.choose_linear_layout_(model, layouts=('row', 'col'), decode_steps=10 ** 6, cache=cache)
    for p in model.parameters():  # touch every weight, as sampling will
        p.max()
    h = model.transformer.h[0]
    views = [not m.weight.untyped_storage().resizable() for m in (h.attn.c_attn, h.mlp.c_fc, h.mlp.c_proj)]
    return before, status('VmHWM'), sum(p.numel() * p.element_size() for p in model.parameters()), views


def gpt2_xl_on_cuda(rows, prompt, new):
    """Weight bytes, peak GPU memory once loaded and after sampling, peak host RSS: gpt2-xl in
    bfloat16 from the hub cache (as --init_from=gpt2-xl reads it), then rows x new tokens."""
    model = load.load_model(GPT, 'gpt2-xl', None, torch.bfloat16, 'cuda')
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # the tied wte / lm_head once
    loaded = torch.cuda.max_memory_allocated()
    x = torch.randint(0, 50257, (1, int(prompt)), device='cuda').expand(int(rows), -1)
    with torch.no_grad():
        model.generate(x, int(new), top_k=200)
    return weights, loaded, torch.cuda.max_memory_allocated(), status('VmHWM')


def imports_of_loading():
    """Whether loading gpt2 (safetensors) and the demo checkpoint imported transformers."""
    load.from_pretrained(GPT, 'gpt2')
    load.from_checkpoint(GPT, os.path.join(ROOT, 'out-shakespeare-char', 'ckpt.pt'))
    return 'transformers' in sys.modules,


if __name__ == '__main__':
    name, args = sys.argv[1], sys.argv[2:]
    print(*globals()[name](*args))
