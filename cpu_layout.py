"""
Float weight layouts for decoding on the CPU (float32 and bfloat16), chosen per machine: the
fastest GEMM for a weight depends on the CPU, the dtype and the rows per call, so
choose_linear_layout_ times the model's own Linear shapes on the CPU at hand and stores each
weight in the layout that ran fastest there: oneDNN's prepacked blocks (PackedLinear), or
row- / column-major (DenseLinear, which multiplies through the BLAS behind F.linear or through
oneDNN, per batch size). Each conversion replaces one weight and drops the one it replaced, so no
second copy of the weights is ever resident. sample.py and bench.py call it for float models on CPU.

Reference: torch.ops.mkldnn._reorder_linear_weight and _linear_pointwise, the oneDNN ops that
torch.compile (Inductor) emits for frozen Linears on CPU.
"""
import time
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import trim_heap


class PackedLinear(nn.Module):
    """Linear layer whose weight lives only in oneDNN's prepacked (blocked) layout, the layout
    its GEMM reads without reordering; the product is torch.ops.mkldnn._linear_pointwise.

    Built from a dense float32 or bfloat16 weight (out, in) and optional bias (out,).
    forward: x (..., in_features) -> (..., out_features), in the weight's dtype (x is cast to it).
    state_dict() holds the plain dense weight under nanoGPT's key and loading packs it again, so
    checkpoints stay nn.Linear's. The packed tensor is opaque: no indexing, no .to(dtype).
    Inference only: the oneDNN op has no backward.
    """

    def __init__(self, weight, bias=None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer('weight', torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous()))
        self.register_buffer('bias', None if bias is None else bias.detach().to(weight.dtype).clone())

    @property
    def compute_dtype(self):
        return self.weight.dtype

    def forward(self, x):
        return onednn_linear(x.to(self.weight.dtype), self.weight, self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + 'weight'] = self.weight.to_dense()  # a dense copy, only while saving
        if self.bias is not None:
            destination[prefix + 'bias'] = self.bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for key in ('weight', 'bias'):
            if getattr(self, key) is not None and prefix + key not in state_dict:
                missing_keys.append(prefix + key)
        if prefix + 'weight' in state_dict:
            w = state_dict[prefix + 'weight']
            if tuple(w.shape) != (self.out_features, self.in_features):
                error_msgs.append(f'size mismatch for {prefix}weight: {tuple(w.shape)} in the checkpoint, '
                                  f'{(self.out_features, self.in_features)} here')
                return
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(self.weight.dtype).contiguous())
        if self.bias is not None and prefix + 'bias' in state_dict:
            self.bias = state_dict[prefix + 'bias'].detach().to(self.bias.dtype).clone()

    def extra_repr(self):
        return f'in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed'


def onednn_linear(x, weight, bias=None):
    """F.linear through oneDNN's matmul (torch.ops.mkldnn._linear_pointwise) instead of the BLAS
    that F.linear calls on CPU: x (..., in) and weight, a dense (out, in) tensor of any strides or
    a prepacked one, in the same dtype (float32 or bfloat16), bias (out,) or None ->
    (..., out). CPU only; no backward. Raises RuntimeError from oneDNN on a dtype it lacks."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


class DenseLinear(nn.Linear):
    """nn.Linear (same weight, bias and state dict) that multiplies through oneDNN's matmul from
    onednn_rows rows on (x.numel() // in_features; None: never) and through F.linear below.
    On CPUs where the BLAS has a slow small-batch GEMM, a batch of rows then stays fast without
    a second, repacked copy of the weight (the tied lm_head: wte indexes the same tensor).
    Inference only from onednn_rows rows on: the oneDNN op has no backward."""

    onednn_rows = None

    def forward(self, x):
        if self.onednn_rows is not None and x.numel() >= self.onednn_rows * self.in_features:
            return onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return super().extra_repr() + f', onednn_rows={self.onednn_rows}'


LAYOUTS = ('row', 'col', 'packed')  # how a weight is stored; row and col run through BLAS or oneDNN


def _is_packable(dtype):
    return dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available() and \
        (dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _layout_of(lin):
    """'packed', 'col' (weight stored transposed) or 'row' (stored as (out, in), or anything else)."""
    if isinstance(lin, PackedLinear):
        return 'packed'
    w = lin.weight
    return 'col' if w.stride() == (1, w.size(0)) and w.size(1) > 1 else 'row'


def _as_layout(w, layout):
    """Dense weight (out, in) stored in layout: 'row' contiguous, 'col' transposed in memory,
    'packed' oneDNN's blocks (an opaque tensor)."""
    if layout == 'row':
        return w.contiguous()
    if layout == 'col':
        return w if w.stride() == (1, w.size(0)) else w.t().contiguous().t()
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous())


def _copy_as_layout(w, layout):
    """A new copy of the dense weight w (out, in) in layout (see _as_layout)."""
    if layout == 'row':
        return w.clone(memory_format=torch.contiguous_format)
    if layout == 'col':
        return w.t().clone(memory_format=torch.contiguous_format).t()
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous())


def _sample_blocks(mods, block_bytes, n_blocks):
    """Up to n_blocks (weight rows, bias rows) views of equal size, at most block_bytes each,
    taken from the Linears mods in order: the sample a layout is timed on, without a copy."""
    w0 = mods[0].weight
    rows = max(1, min(w0.size(0), block_bytes // (w0.size(1) * w0.element_size())))
    blocks = []
    for m in mods:
        for i in range(0, m.weight.size(0) - rows + 1, rows):
            blocks.append((m.weight[i:i + rows], None if m.bias is None else m.bias[i:i + rows]))
            if len(blocks) == n_blocks:
                return blocks
    return blocks


def _time_candidates(blocks, candidates, batch_sizes, calls):
    """{(layout, kernel): [seconds per call at each batch size]}, kernel 'blas' (F.linear) or
    'onednn'. Each call is timed alone, the candidates take turns call by call, and the blocks
    are cycled, so that every call reads its weights from memory as a decode step does; the
    fastest call counts (other jobs on a shared machine only ever make a call slower)."""
    # a copy per candidate, freed on return: two kernels reading one copy in turn would find it in cache
    copies = {c: [(_copy_as_layout(w, c[0]), b) for w, b in blocks] for c in candidates}
    times = {c: [] for c in candidates}
    for M in batch_sizes:
        x = torch.randn(M, blocks[0][0].size(1), generator=torch.Generator().manual_seed(0)).to(blocks[0][0].dtype)  # not the global generator: the samples own it
        best = {c: float('inf') for c in candidates}
        for c in candidates:
            (F.linear if c[1] == 'blas' else onednn_linear)(x, *copies[c][0])  # warm-up: oneDNN builds its kernel
        for i in range(calls):
            for c in candidates:
                fn, (w, b) = F.linear if c[1] == 'blas' else onednn_linear, copies[c][i % len(blocks)]
                t0 = time.perf_counter()
                fn(x, w, b)
                best[c] = min(best[c], time.perf_counter() - t0)
        for c in candidates:
            times[c].append(best[c])
    return times


class LinearGroup(NamedTuple):
    """Linears that share a layout choice: same shape, dtype, tie and bias."""
    in_features: int
    out_features: int
    dtype: torch.dtype
    tied: bool  # the weight is also another module's (lm_head / wte): never packed
    bias: bool


class LayoutChoice(NamedTuple):
    """What choose_linear_layout_ chose for a LinearGroup, and the timings it chose from."""
    layout: str  # 'row', 'col' or 'packed'
    onednn_rows: int  # DenseLinear.onednn_rows: oneDNN from this many rows on; None: the BLAS always
    seconds: dict  # {(layout, kernel 'blas' / 'onednn'): [best seconds per call at each batch size]}


@torch.no_grad()
def choose_linear_layout_(model, batch_sizes=(1,), layouts=LAYOUTS, block_bytes=8 << 20, n_blocks=4,
                          calls=24, margin=0.1):
    """Store every nn.Linear / DenseLinear weight of model (float32 or bfloat16, on CPU) in the
    layout, with the kernel per batch size, that runs fastest on this CPU; in place, one Linear at
    a time, in the model's order, each old weight dropped as its copy arrives. Weights that are
    views of a memory-mapped file are always copied, so every mapping closes a layer at a time
    and peak memory stays near one copy of the weights.

    batch_sizes: the rows per call that decoding will use (ints >= 1). Linears are grouped (see
    LinearGroup); for each group, n_blocks blocks of block_bytes of its own weights are copied to
    each candidate (layout in layouts x kernel), timed calls times at each batch size, then freed
    (at most 5 * n_blocks * block_bytes of scratch). A layout's score is the sum over batch sizes
    of its best time over the best of all; it replaces the group's current layout only if it
    scores lower by more than margin. 'packed' is never used for a tied weight or a dtype oneDNN
    cannot pack. Returns {LinearGroup: LayoutChoice}; a group with no usable layout keeps its own.
    """
    refs = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        refs[id(p)] = refs.get(id(p), 0) + 1
    groups = {}
    for name, mod in model.named_modules():
        if type(mod) in (nn.Linear, DenseLinear) and mod.weight.device.type == 'cpu':
            key = LinearGroup(mod.in_features, mod.out_features, mod.weight.dtype,
                              refs.get(id(mod.weight), 0) > 1, mod.bias is not None)
            groups.setdefault(key, []).append(name)
    report = {key: _choose(key, [model.get_submodule(n) for n in names], batch_sizes, layouts,
                           block_bytes, n_blocks, calls, margin) for key, names in groups.items()}
    group_of = {name: key for key, names in groups.items() for name in names}
    # the tied head first: copied last, its file pages and its copy would both sit on top of all the others
    order = sorted((n for n, _ in model.named_modules() if n in group_of), key=lambda n: not group_of[n].tied)
    for name in order:
        _set_layout(model, name, model.get_submodule(name), *report[group_of[name]][:2])
        trim_heap()
    return report


def _choose(group, mods, batch_sizes, layouts, block_bytes, n_blocks, calls, margin):
    """The LayoutChoice for one LinearGroup, its Linears mods (see choose_linear_layout_)."""
    current = _layout_of(mods[0])
    usable = [l for l in layouts if l != 'packed' or (not group.tied and _is_packable(group.dtype))]
    if not usable:
        return LayoutChoice(current, getattr(mods[0], 'onednn_rows', None), {})
    onednn = _is_packable(group.dtype)  # oneDNN's matmul takes the dtypes it can pack
    candidates = [(l, k) for l in usable for k in (('onednn',) if l == 'packed' else
                                                    ('blas', 'onednn') if onednn else ('blas',))]
    times = _time_candidates(_sample_blocks(mods, block_bytes, n_blocks), candidates, batch_sizes, calls)
    best = [min(t[i] for t in times.values()) for i in range(len(batch_sizes))]
    per_layout = {l: [min(times[c][i] for c in candidates if c[0] == l) for i in range(len(batch_sizes))]
                  for l in usable}
    score = {l: sum(t / b for t, b in zip(ts, best)) for l, ts in per_layout.items()}
    choice = min(score, key=score.get)
    if current in score and score[choice] * (1 + margin) > score[current]:
        choice = current  # not clearly faster: keep what is there, no copy
    onednn_rows = None
    if choice != 'packed' and onednn:
        won = [M for i, M in enumerate(batch_sizes) if times[(choice, 'onednn')][i] < times[(choice, 'blas')][i]]
        onednn_rows = min(won) if won else None
    return LayoutChoice(choice, onednn_rows, times)


def _set_layout(model, name, lin, layout, onednn_rows=None):
    """Store Linear lin (model's submodule name) in layout, dropping its old weight. A weight that
    borrows its memory (a view of a memory-mapped file: its storage is not resizable) is copied
    even where its layout stays: one view left in a layer would keep the whole layer's mapping
    alive, with the pages of the weights already copied out of it still resident (up to 2x)."""
    parent, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent) if parent else model
    if layout == 'packed':
        setattr(parent, attr, PackedLinear(lin.weight, lin.bias))
        return
    if not lin.weight.untyped_storage().resizable():
        lin.weight.data = _copy_as_layout(lin.weight.data, layout)  # .data: a tied wte keeps sharing it
    elif _layout_of(lin) != layout:
        lin.weight.data = _as_layout(lin.weight.data, layout)
    if type(lin) is nn.Linear:
        dense = DenseLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, device='meta')
        dense.weight, dense.bias = lin.weight, lin.bias  # the same Parameters: ties and names kept
        setattr(parent, attr, dense)
        lin = dense
    lin.onednn_rows = onednn_rows
