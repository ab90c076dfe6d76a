"""
Float weight layouts for decoding on the CPU (float32 and bfloat16), chosen per machine: the
fastest GEMM for a weight depends on the CPU, the dtype and the rows per call, so
choose_linear_layout_ times the model's own Linear shapes on the CPU at hand and stores each
weight in the layout that ran fastest there: oneDNN's prepacked blocks (PackedLinear), or
row- / column-major (DenseLinear). Every layout multiplies through the same kernel (oneDNN's
matmul, or the BLAS behind F.linear where oneDNN lacks the dtype), at least MIN_ROWS rows a call,
and a layout whose products differ from the current one's in any bit is never chosen: the text
of a seed depends neither on the batch size nor on what the timings chose. Each conversion
replaces one weight and drops the one it replaced, so no second copy of the weights is ever
resident. cpu.speed.prepare_for_cpu calls it for float models on CPU.

Given the decode steps a run will make (decode_steps), a group of Linears is converted only when
the decode time it saves exceeds the time the copy costs; the others stay as they are (a view of
the memory-mapped file: no copy at all). The timings are cached on disk per Linear shape and
machine (cpu.cache.cache_path(); safe to delete), so that runs choose alike and a cache hit times nothing.

Reference: torch.ops.mkldnn._reorder_linear_weight and _linear_pointwise, the oneDNN ops that
torch.compile (Inductor) emits for frozen Linears on CPU.
"""
import ctypes
import functools
import json
import mmap
import sys
import time
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn import functional as F

import cpu.cache
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

    rows_per_call = None  # see _padded; set where the kernel's rows change its bits

    def forward(self, x):
        return onednn_linear(x.to(self.weight.dtype), self.weight, self.bias, self.rows_per_call)

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


# Every CPU matmul of a float layout gets at least this many rows (zero rows pad a smaller call).
# GEMM libraries pick their algorithm by the rows of a call, and a row's last bits change with it
# (docs/measurements.md, 2026-12-06). With the calls padded, a row's product is the same in a batch
# of 1, 3 or 64 rows, so the text of a seed does not depend on batch_size
# (tests/test_batch_invariance.py). Where a kernel still changes with the rows,
# choose_linear_layout_ sets rows_per_call (_rows_per_call).
MIN_ROWS = 4


def _padded(fn, x, weight, bias, rows_per_call=None):
    """fn(x2, weight, bias) over x (..., in) -> (..., out), every call at least MIN_ROWS rows.
    rows_per_call: None, any number of rows a call; else every call is exactly MIN_ROWS rows, of
    which rows_per_call are x's (the rest zeros), and the positions of a prefill (B, T, in), T > 1,
    go one sequence a call: a row's product is then computed alike however many rows came with it."""
    if rows_per_call is not None and x.dim() > 2 and x.size(-2) > 1:
        seqs = x.reshape(-1, *x.shape[-2:])  # (B, T, in)
        y = torch.cat([_padded(fn, s, weight, bias) for s in seqs])  # (B * T, out)
        return y.view(*x.shape[:-1], y.size(-1))
    x2 = x.reshape(-1, x.size(-1))
    M = x2.size(0)
    step = M if rows_per_call is None else rows_per_call
    parts = []
    for i in range(0, max(M, 1), max(step, 1)):
        a = x2[i:i + step]
        n = a.size(0)
        if n < MIN_ROWS or rows_per_call is not None:
            a = F.pad(a, (0, 0, 0, MIN_ROWS - n))
        parts.append(fn(a, weight, bias)[:n])
    y = parts[0] if len(parts) == 1 else torch.cat(parts)
    return y.reshape(*x.shape[:-1], y.size(-1))


def onednn_linear(x, weight, bias=None, rows_per_call=None):
    """F.linear through oneDNN's matmul (torch.ops.mkldnn._linear_pointwise) instead of the BLAS
    that F.linear calls on CPU: x (..., in) and weight, a dense (out, in) tensor of any strides or
    a prepacked one, in the same dtype (float32 or bfloat16), bias (out,) or None ->
    (..., out), each call at least MIN_ROWS rows (rows_per_call: see _padded). CPU only; no
    backward. Raises RuntimeError from oneDNN on a dtype it lacks."""
    return _padded(_onednn_call, x, weight, bias, rows_per_call)


def _onednn_call(a, w, b):
    return torch.ops.mkldnn._linear_pointwise(a, w, b, 'none', [], '')


def blas_linear(x, weight, bias=None, rows_per_call=None):
    """F.linear (the BLAS on CPU) with every call at least MIN_ROWS rows (rows_per_call: see
    _padded): x (..., in) -> (..., out)."""
    return _padded(F.linear, x, weight, bias, rows_per_call)


class DenseLinear(nn.Linear):
    """nn.Linear (same weight, bias and state dict) that multiplies through oneDNN's matmul from
    onednn_rows rows on (x.numel() // in_features; None: never) and through the BLAS below
    (blas_linear), at least MIN_ROWS rows per call on CPU. choose_linear_layout_ sets
    onednn_rows to 1 wherever oneDNN takes the dtype: one kernel for every call, whatever the
    batch. Inference only from onednn_rows rows on: the oneDNN op has no backward."""

    onednn_rows = None
    rows_per_call = None  # see _padded; set where the kernel's rows change its bits

    def forward(self, x):
        if x.device.type != 'cpu':
            return F.linear(x, self.weight, self.bias)
        if self.onednn_rows is not None and x.numel() >= self.onednn_rows * self.in_features:
            return onednn_linear(x, self.weight, self.bias, self.rows_per_call)
        return blas_linear(x, self.weight, self.bias, self.rows_per_call)

    def extra_repr(self):
        return super().extra_repr() + f', onednn_rows={self.onednn_rows}' + (
            f', rows_per_call={self.rows_per_call}' if self.rows_per_call else '')


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


def _sample_blocks(mods, block_bytes, n_blocks, layout='row'):
    """Up to n_blocks (weight, bias) views of equal size, at most block_bytes each, taken from the
    Linears mods in order, without a copy: the sample a layout is timed on. For 'col', blocks of
    whole columns (out, k), the bias whole: a column-major weight is read as out-long runs, and
    blocks of a few rows would time it on short runs, slower per byte than the whole weight
    (docs/measurements.md). Otherwise blocks of whole rows (rows, in)."""
    w0 = mods[0].weight
    cols = layout == 'col'
    whole = w0.size(0) if cols else w0.size(1)  # the dimension every block keeps whole
    step = max(1, min(w0.size(1 if cols else 0), block_bytes // (whole * w0.element_size())))
    blocks = []
    for m in mods:
        for i in range(0, m.weight.size(1 if cols else 0) - step + 1, step):
            if cols:
                blocks.append((m.weight[:, i:i + step], m.bias))
            else:
                blocks.append((m.weight[i:i + step], None if m.bias is None else m.bias[i:i + step]))
            if len(blocks) == n_blocks:
                return blocks
    return blocks


def time_candidates(samples, candidates, batch_sizes, calls):
    """({(layout, kernel): [seconds per call at each batch size]}, {layout: seconds per byte to
    copy a weight into it}), kernel 'blas' (blas_linear) or 'onednn'; samples: {layout: the blocks
    (see _sample_blocks) its candidates run on}. Each call is timed alone, the candidates take
    turns call by call, and the blocks are cycled, so that every call reads its weights from
    memory as a decode step does; the fastest call counts (other jobs on a shared machine only
    ever make a call slower). The copy rate is the copies made to time on, their sources read
    first (keeping a weight reads it too): the writes, page faults and packing a conversion adds."""
    for blocks in samples.values():
        for w, _ in blocks:
            w.sum()  # the source pages resident, as the first decode step makes them either way
    convert, copies = {}, {}
    for c in candidates:  # a copy per candidate, freed on return: two kernels reading one copy in turn would find it in cache
        t0 = time.perf_counter()
        copies[c] = [(_copy_as_layout(w, c[0]), b) for w, b in samples[c[0]]]
        rate = (time.perf_counter() - t0) / sum(w.numel() * w.element_size() for w, _ in samples[c[0]])
        convert[c[0]] = min(rate, convert.get(c[0], rate))
    times = {c: [] for c in candidates}
    for M in batch_sizes:
        xs = {c: torch.randn(M, copies[c][0][0].size(1), generator=torch.Generator().manual_seed(0)).to(
            copies[c][0][0].dtype) for c in candidates}  # not the global generator: the samples own it
        best = {c: float('inf') for c in candidates}
        for c in candidates:
            (blas_linear if c[1] == 'blas' else onednn_linear)(xs[c], *copies[c][0])  # warm-up: oneDNN builds its kernel
        for i in range(calls):
            for c in candidates:
                fn, (w, b) = blas_linear if c[1] == 'blas' else onednn_linear, copies[c][i % len(copies[c])]
                t0 = time.perf_counter()
                fn(xs[c], w, b)
                best[c] = min(best[c], time.perf_counter() - t0)
        for c in candidates:
            times[c].append(best[c])
    return times, convert


def _time_group(mods, candidates, batch_sizes, block_bytes, n_blocks, calls):
    """time_candidates on samples of the Linears mods, its seconds scaled from a block to one
    whole Linear of the group (each layout's blocks have their own shape)."""
    samples = {l: _sample_blocks(mods, block_bytes, n_blocks, l) for l in {c[0] for c in candidates}}
    times, convert = time_candidates(samples, candidates, batch_sizes, calls)
    numel = mods[0].weight.numel()
    return {c: [t * numel / samples[c[0]][0][0].numel() for t in ts] for c, ts in times.items()}, convert


# ---------------------------------------------------------------- the timings cached on disk (cpu.cache)

def cache_key(group, batch_sizes, layouts):
    """The cache's key for the timings of a LinearGroup at batch_sizes over layouts, on this machine."""
    return json.dumps(cpu.cache.machine_key() + [group.in_features, group.out_features, str(group.dtype), group.tied,
                                    group.bias, list(batch_sizes), sorted(layouts)])


def _cached(path, key, candidates, n):
    """The (seconds, convert) cached for key, covering every candidate with n timings, else None."""
    try:
        entry = cpu.cache.cached_entry(path, key)
        times = {c: [float(t) for t in entry['seconds'][' '.join(c)]] for c in candidates}
        convert = {l: float(entry['convert'][l]) for l in {c[0] for c in candidates}}
        return (times, convert) if all(len(t) == n for t in times.values()) else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write_cache(path, key, times, convert, load):
    """Add the timings under key to the cache file at path (see write_entry)."""
    cpu.cache.write_entry(path, key, {'seconds': {' '.join(c): ts for c, ts in times.items()}, 'convert': convert}, load)


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
    seconds: dict  # {(layout, kernel 'blas' / 'onednn'): [best seconds per call of one of its Linears at each batch size]}; {} if not timed
    rows_per_call: int = None  # the Linears' rows_per_call (see _padded): None where the kernel's bits never change with the rows


def linear_groups(model):
    """{LinearGroup: [names of its nn.Linear / DenseLinear modules on CPU]}, in the model's order."""
    refs = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        refs[id(p)] = refs.get(id(p), 0) + 1
    groups = {}
    for name, mod in model.named_modules():
        if type(mod) in (nn.Linear, DenseLinear) and mod.weight.device.type == 'cpu':
            key = LinearGroup(mod.in_features, mod.out_features, mod.weight.dtype,
                              refs.get(id(mod.weight), 0) > 1, mod.bias is not None)
            groups.setdefault(key, []).append(name)
    return groups


@torch.no_grad()
def choose_linear_layout_(model, batch_sizes=(1,), layouts=LAYOUTS, block_bytes=8 << 20, n_blocks=4,
                          calls=24, margin=0.1, decode_steps=None, cache=True):
    """Store every nn.Linear / DenseLinear weight of model (float32 or bfloat16, on CPU) in the
    layout that runs fastest on this CPU, in place, one Linear at a time (each old weight dropped
    as its copy arrives). Only layouts whose products equal the current one's bit for bit are
    candidates (_same_numerics), so the choice never changes the text of a seed.

    batch_sizes: the rows per call decoding will use (ints >= 1). Each LinearGroup is timed on
    n_blocks blocks of block_bytes of its own weights in each candidate layout, calls times per
    batch size (scratch: at most 5 * n_blocks * block_bytes); a layout replaces the current one
    only if its score (the sum over batch sizes of its time over the best) is lower by more than
    margin. 'packed' is never used for a tied weight or a dtype oneDNN cannot pack.
    decode_steps: None (the faster layout always; views of a memory-mapped file are copied even
    where their layout stays, so each mapping closes), or the calls each Linear makes in this run
    at each batch size (an int, or one per batch size): a group moves only where the decode time
    saved exceeds its copy's time (_choose), and is not timed where even its whole decode time
    could not pay for a copy (_may_pay).
    cache: True (cpu.cache.cache_path()), a path, or False: each group's timings are read from this
    JSON file if there, else timed and added (see cpu.cache.cached_entry).
    Returns {LinearGroup: LayoutChoice}; a group with no usable layout keeps its own.
    """
    path = cpu.cache.cache_path() if cache is True else cache or None
    steps = None if decode_steps is None else \
        [decode_steps] * len(batch_sizes) if isinstance(decode_steps, int) else list(decode_steps)
    groups = linear_groups(model)
    report = {key: _choose(key, [model.get_submodule(n) for n in names], batch_sizes, layouts,
                           block_bytes, n_blocks, calls, margin, steps, path) for key, names in groups.items()}
    group_of = {name: key for key, names in groups.items() for name in names}
    # the tied head first: copied last, its file pages and its copy would both sit on top of all the others
    order = sorted((n for n, _ in model.named_modules() if n in group_of), key=lambda n: not group_of[n].tied)
    for name in order:
        choice = report[group_of[name]]
        _set_layout(model, name, model.get_submodule(name), *choice[:2], copy_views=steps is None)
        model.get_submodule(name).rows_per_call = choice.rows_per_call
        trim_heap()
    return report


def _choose(group, mods, batch_sizes, layouts, block_bytes, n_blocks, calls, margin, steps, path):
    """The LayoutChoice for one LinearGroup, its Linears mods (see choose_linear_layout_); steps:
    None or decode calls per batch size; path: the cache file or None."""
    current = _layout_of(mods[0])
    onednn = _is_packable(group.dtype)  # oneDNN's matmul takes the dtypes it can pack
    kernel, onednn_rows = ('onednn', 1) if onednn else ('blas', None)  # one kernel: no choice of rounding
    usable = [l for l in layouts if l != 'packed' or (not group.tied and onednn)]
    if steps is not None and usable and current not in usable:
        usable.append(current)  # keeping the layout is always a choice: time it too
    fn = onednn_linear if kernel == 'onednn' else blas_linear
    per_call = _rows_per_call(mods[0], fn, current, batch_sizes)
    usable = _same_numerics(mods[0], usable, current, functools.partial(fn, rows_per_call=per_call), batch_sizes)
    if not usable or usable == [current]:
        return LayoutChoice(current, onednn_rows, {}, per_call)
    candidates = [(l, kernel) for l in usable]
    key = cache_key(group, batch_sizes, usable)
    timed = path and _cached(path, key, candidates, len(batch_sizes))
    if not timed:
        if steps is not None and not _may_pay(mods, current, kernel, batch_sizes, block_bytes, steps):
            return LayoutChoice(current, onednn_rows, {}, per_call)
        load = cpu.cache.machine_load()
        timed = _time_group(mods, candidates, batch_sizes, block_bytes, n_blocks, calls)
        if path:
            write_cache(path, key, *timed, load)
    times, convert = timed
    per_layout = {l: times[(l, kernel)] for l in usable}
    best = [min(t[i] for t in per_layout.values()) for i in range(len(batch_sizes))]
    score = {l: sum(t / b for t, b in zip(ts, best)) for l, ts in per_layout.items()}
    choice = min(score, key=score.get)
    if current in score and score[choice] * (1 + margin) > score[current]:
        choice = current  # not clearly faster: keep what is there, no copy
    if steps is not None and choice != current:
        saved = len(mods) * sum(n * (k - c) for n, k, c in zip(steps, per_layout[current], per_layout[choice]))
        if saved <= len(mods) * _nbytes(mods[0].weight) * convert[choice]:
            choice = current  # the copy would cost more than this run gains
    return LayoutChoice(choice, None if choice == 'packed' else onednn_rows, times, per_call)


def _rows_per_call(mod, fn, layout, batch_sizes, rows=256):
    """The rows_per_call (see _padded) that makes fn's product of a row the same however many rows
    come with it, tried on the first rows of mod's weight stored in layout, at 2 to 9 rows and
    every batch size: None (any rows a call, the fast way) where the kernel already gives that;
    else MIN_ROWS (every call the same shape); else 1 (every row alone, at position 0 of a call)."""
    w, b = _first_rows(mod, rows)
    w = _copy_as_layout(w, layout)
    Ms = sorted(set(batch_sizes) | set(range(2, 2 * MIN_ROWS + 2)))
    x = torch.randn(max(Ms), w.size(1), generator=torch.Generator().manual_seed(1)).to(mod.weight.dtype)
    for per_call in (None, MIN_ROWS, 1):
        alone = torch.cat([fn(x[i:i + 1], w, b, rows_per_call=per_call) for i in range(x.size(0))])
        if all(torch.equal(fn(x[:M], w, b, rows_per_call=per_call), alone[:M]) for M in Ms):
            return per_call
    return 1


def _first_rows(mod, rows):
    """(weight, bias) of Linear mod's first rows output channels, views: what the numerics checks read."""
    return mod.weight.detach()[:rows], None if mod.bias is None else mod.bias.detach()[:rows]


def _same_numerics(mod, layouts, current, fn, batch_sizes, rows=256):
    """The layouts of layouts whose products equal the current layout's bit for bit at
    every batch size and at one row, on the first rows of mod's weight: a layout may change the
    speed, never the text (oneDNN may run packed and dense weights through different kernels)."""
    w, b = _first_rows(mod, rows)
    x = torch.randn(max(batch_sizes), w.size(1), generator=torch.Generator().manual_seed(0)).to(w.dtype)
    Ms = sorted(set(batch_sizes) | {1})
    # copies of the block, whole in each layout (a block viewed inside a column-major weight
    # would keep the weight's leading dimension, which oneDNN runs otherwise)
    want = [fn(x[:M], _copy_as_layout(w, current), b) for M in Ms]
    kept = []
    for l in layouts:
        w_l = _copy_as_layout(w, l)
        if l == current or all(torch.equal(fn(x[:M], w_l, b), y) for M, y in zip(Ms, want)):
            kept.append(l)
    return kept


def _nbytes(w):
    return w.numel() * w.element_size()


def _may_pay(mods, current, kernel, batch_sizes, block_bytes, steps):
    """Whether converting the Linears mods could pay at all: their whole decode time in their
    current layout through kernel (timed on one block, 3 calls) exceeds one copy of them (the
    cheapest conversion). A few milliseconds, where timing every candidate takes about a second."""
    times, convert = _time_group(mods, [(current, kernel)], batch_sizes, block_bytes, 1, 3)
    return sum(n * t for n, t in zip(steps, times[(current, kernel)])) > _nbytes(mods[0].weight) * convert[current]


def _set_layout(model, name, lin, layout, onednn_rows=None, copy_views=True):
    """Store Linear lin (model's submodule name) in layout, dropping its old weight. A weight that
    borrows its memory (a view of a memory-mapped file: its storage is not resizable) is copied
    even where its layout stays if copy_views: one view left in a layer would keep the whole
    layer's mapping alive, with the pages of the weights already copied out of it still resident
    (up to 2x). Either way, the file pages under a view that is copied are released (see
    release_file_pages), so a view kept beside it holds only its own."""
    parent, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent) if parent else model
    view = not lin.weight.untyped_storage().resizable()
    old = lin.weight.data
    if layout == 'packed':
        setattr(parent, attr, PackedLinear(lin.weight, lin.bias))
    elif view and (copy_views or _layout_of(lin) != layout):
        lin.weight.data = _copy_as_layout(lin.weight.data, layout)  # .data: a tied wte keeps sharing it
    elif _layout_of(lin) != layout:
        lin.weight.data = _as_layout(lin.weight.data, layout)
    if view and (layout == 'packed' or lin.weight.data.data_ptr() != old.data_ptr()):
        release_file_pages(old)
    if layout == 'packed':
        return
    if type(lin) is nn.Linear:
        dense = DenseLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, device='meta')
        dense.weight, dense.bias = lin.weight, lin.bias  # the same Parameters: ties and names kept
        setattr(parent, attr, dense)
        lin = dense
    lin.onednn_rows = onednn_rows


MADV_DONTNEED = 4  # Linux


def release_file_pages(t):
    """Take the whole pages under dense tensor t's bytes out of this process's resident memory
    (madvise MADV_DONTNEED), where they are pages of a mapped file, once t has been copied: its
    mapping stays open while other views of the layer are kept, and would hold them resident.
    Unmodified file pages only come back, from the file, if read again. Linux only; else a no-op."""
    global _madvise
    if not sys.platform.startswith('linux') or _madvise is False:
        return
    page = mmap.PAGESIZE
    start = t.data_ptr()
    lo, hi = -(-start // page) * page, (start + _nbytes(t)) // page * page  # pages wholly inside t
    if hi <= lo or not _in_file_mapping(lo, hi):
        return
    if _madvise is None:
        try:
            _madvise = ctypes.CDLL(None, use_errno=True).madvise
            _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            _madvise = False
            return
    _madvise(lo, hi - lo, MADV_DONTNEED)


_madvise = None  # libc's madvise, found on first use (False: none)


def _in_file_mapping(lo, hi):
    """Whether addresses [lo, hi) lie in one mapping of a file in /proc/self/maps (never anonymous
    memory: MADV_DONTNEED would zero it)."""
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                fields = line.split()
                a, b = (int(x, 16) for x in fields[0].split('-'))
                if a <= lo and hi <= b:
                    return len(fields) >= 6 and fields[4] != '0' and fields[5].startswith('/')
    except (OSError, ValueError):
        pass
    return False
