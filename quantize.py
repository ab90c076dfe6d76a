"""
Weight formats for decoding on the CPU, applied to a loaded GPT in place, one Linear at a time:

- int8 weight-only: Int8Linear holds int8 weights with one bfloat16 scale per output channel
  and multiplies through PyTorch's own kernel, aten._weight_int8pack_mm; quantize_int8_ converts
  a GPT, the tied wte / lm_head included (Int8Embedding reads the same int8 rows).
- float32 / bfloat16: choose_linear_layout_ times the model's own Linear shapes on the CPU at
  hand, at the batch sizes to be decoded, and stores each weight in the layout that runs
  fastest there: oneDNN's prepacked blocks (PackedLinear), or row- / column-major (DenseLinear,
  which multiplies through the BLAS behind F.linear or through oneDNN, per batch size).

Every conversion replaces one weight and drops the one it replaced, so no second copy of the
weights is ever resident. References:
1) int8 weight-only with per-channel absmax scales: gpt-fast's quantize.py (pytorch-labs),
   Dettmers et al. 2022 ("LLM.int8()") for absmax quantization.
2) oneDNN prepacked Linear weights: torch.ops.mkldnn._reorder_linear_weight and
   _linear_pointwise, the ops torch.compile (Inductor) emits for frozen Linears on CPU.
"""
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

K_MULTIPLE = 16  # _weight_int8pack_mm's AVX-512 loop reads 16 bf16 / 16 int8 at a time, aligned
ALIGN = 64  # bytes: its aligned vector loads fault on a misaligned activation or weight row
DEQUANT_ROWS = 16  # from this many rows on, a bf16 GEMM over the converted weight beats the kernel,
                   # whose cost grows with the rows (float32 vectors, 4 rows at a time)
KERNEL_ROWS = 4  # rows per kernel call: 8 rows in two calls of 4 took 10-35% less time than in one
                 # (AMD EPYC Zen 4, GPT-2 shapes); the same values, each row is computed alone


def _round_up(n, m):
    return (n + m - 1) // m * m


@torch.no_grad()
def quantize_rows(w, chunk_elems=1 << 18):
    """Symmetric int8 quantization with one scale per row (output channel): w ~= q * scales[:, None].

    w: (N, K) float tensor of any dtype and strides, or a load.Rows (a memory-mapped or transposed
    view is read about chunk_elems elements at a time: small temporaries, 1 MB by default, are
    reused from one chunk to the next, where large ones left holes in the heap that the process
    kept: loading gpt2-xl peaked at 1.4x its int8 bytes with 4096-row chunks, 1.2x with these).
    Returns (q, scales): q (N, Kp) int8, Kp = K rounded up to a multiple of 16, columns K.. zero;
    scales (N,) bfloat16, the row's absmax / 127 rounded up to a bfloat16, so |w / scale| <= 127
    and nothing is clipped (an all-zero row gets a tiny scale and zeros).
    """
    N, K = w.shape
    chunk_rows = max(1, chunk_elems // K)
    q = torch.zeros(N, _round_up(K, K_MULTIPLE), dtype=torch.int8)
    scales = torch.empty(N, dtype=torch.bfloat16)
    for i in range(0, N, chunk_rows):
        wc = w[i:i + chunk_rows].to(device='cpu', dtype=torch.float32)  # (n, K), a copy only of this chunk
        amax = torch.maximum(wc.amax(dim=1), -wc.amin(dim=1)).clamp_(min=1e-30)  # (n,), no |wc| copy
        s = (amax / 127).to(torch.bfloat16)
        s = torch.where(s.float() * 127 < amax, torch.nextafter(s, torch.full_like(s, float('inf'))), s)
        q[i:i + chunk_rows, :K] = torch.div(wc, s.float()[:, None]).round_().clamp_(-127, 127)  # whole numbers
        scales[i:i + chunk_rows] = s
    return q, scales


def _matmul_int8_as_bf16(a, q, scales, chunk_rows=4096):
    """a (M, K) bfloat16 times the int8 weight q (N, K) scaled by scales (N,): (M, N) float32.
    q is converted to bfloat16 chunk_rows rows at a time (exact: integers up to 127 fit its
    8-bit significand) for one bfloat16 GEMM each, and the scales multiply the output, so the
    rounding is the kernel's: a to bfloat16, the sum to bfloat16. Fastest for many rows."""
    out = torch.empty(a.size(0), q.size(0), dtype=torch.float32, device=a.device)
    for i in range(0, q.size(0), chunk_rows):
        part = F.linear(a, q[i:i + chunk_rows].to(torch.bfloat16))  # (M, n) bf16
        torch.mul(part, scales[i:i + chunk_rows].float(), out=out[:, i:i + chunk_rows])  # in float32: exact
    return out


def _aligned(t):
    """t itself, or a fresh (64-byte aligned) copy if its data does not start on a 64-byte boundary."""
    return t if t.data_ptr() % ALIGN == 0 else t.clone()


class Int8Linear(nn.Module):
    """Linear layer with int8 weights, one bfloat16 scale per output channel (weight-only
    quantization: activations are not quantized).

    Buffers: weight (out, in_pad) int8, in_pad = in_features rounded up to a multiple of 16,
    the extra columns zero; scales (out,) bfloat16; bias (out,) float32 or None.
    forward: x (..., in_features), float32 or bfloat16 -> (..., out_features) in x's dtype.
    On CPU the product runs in _weight_int8pack_mm (KERNEL_ROWS rows per call), or from
    DEQUANT_ROWS rows on (a prefill) as a bfloat16 GEMM over the weight converted a chunk at a
    time: either way x is rounded to bfloat16, products are summed in float32, and the sum is
    rounded to bfloat16 before the bias
    (relative error 2**-9 of the output on top of the weights' int8 rounding). Elsewhere (CUDA)
    it is a plain F.linear with the weight dequantized on the fly: slower, same values.
    compute_dtype (bfloat16) is the input dtype that costs no conversion; read it, not
    weight.dtype (int8), to choose what to feed this layer.
    """
    compute_dtype = torch.bfloat16

    def __init__(self, in_features, out_features, bias=True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        in_pad = _round_up(in_features, K_MULTIPLE)
        self.register_buffer('weight', torch.zeros(out_features, in_pad, dtype=torch.int8, device=device))
        self.register_buffer('scales', torch.ones(out_features, dtype=torch.bfloat16, device=device))
        self.register_buffer('bias', torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_float(cls, weight, bias=None):
        """Int8Linear for the float weight (out, in) (any dtype / strides, e.g. a memory-mapped
        Conv1D view) and optional bias (out,): peak memory is the int8 weight plus one chunk."""
        m = cls(weight.size(1), weight.size(0), bias=bias is not None, device='meta')
        m.weight, m.scales = quantize_rows(weight)
        if bias is not None:
            m.bias = bias.detach().to('cpu', torch.float32).clone()
        return m

    def dequantize(self):
        """The float32 weight (out, in) this layer multiplies by: weight * scales, padding dropped."""
        return self.weight[:, :self.in_features].float() * self.scales.float()[:, None]

    def forward(self, x):
        w, K = self.weight, self.in_features
        x2 = x.reshape(-1, K)  # (M, K)
        if x.device.type != 'cpu' or x2.size(0) == 0:
            y = F.linear(x2, self.dequantize().to(x.dtype))
        elif x2.size(0) >= DEQUANT_ROWS:  # a prefill: the kernel's cost grows with the rows
            y = _matmul_int8_as_bf16(x2.to(torch.bfloat16), w[:, :K], self.scales)
        else:
            if w.size(1) == K:  # a copy only if x is not bf16 and contiguous already
                a = x2.to(torch.bfloat16, memory_format=torch.contiguous_format)
            else:  # zero-pad K to the kernel's multiple: zero columns of the weight meet zeros here
                a = x2.new_zeros(x2.size(0), w.size(1), dtype=torch.bfloat16)
                a[:, :K] = x2
            # aligned rows: the kernel's vector loads fault on a misaligned address (no error, a crash);
            # a, w.size(1) columns wide (a multiple of 16 bf16), stays aligned at every 4th row
            if torch.compiler.is_compiling():
                a = a.clone()  # a fresh buffer: 64-byte aligned by PyTorch's CPU allocator
            else:
                a, w = _aligned(a), _aligned(w)
            if a.size(0) <= KERNEL_ROWS:  # a decode step of a small batch: one call, no concatenation
                y = torch.ops.aten._weight_int8pack_mm(a, w, self.scales)
            else:
                y = torch.cat([torch.ops.aten._weight_int8pack_mm(a[i:i + KERNEL_ROWS], w, self.scales)
                               for i in range(0, a.size(0), KERNEL_ROWS)])
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y.add_(self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.weight = _aligned(self.weight)  # a memory-mapped file may place it anywhere

    def extra_repr(self):
        return f'in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8'


class Int8Embedding(nn.Module):
    """Token embedding that reads the int8 rows and scales of a tied Int8Linear lm_head
    (the same tensors, so the embedding costs no memory): row i is weight[i, :dim] * scales[i].

    forward: idx (...) LongTensor -> (..., dim) in dtype (float32 unless given).
    """

    def __init__(self, weight, scales, embedding_dim, dtype=torch.float32):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.dtype = dtype
        self.register_buffer('weight', weight)  # (vocab, dim_pad) int8, shared with lm_head
        self.register_buffer('scales', scales)  # (vocab,) bfloat16, shared with lm_head

    def forward(self, idx):
        rows = self.weight[idx, :self.embedding_dim].float()  # (..., dim)
        return (rows * self.scales[idx].float().unsqueeze(-1)).to(self.dtype)

    def extra_repr(self):
        return f'{self.weight.size(0)}, {self.embedding_dim}, int8, tied'


# the four Linears of every block; lm_head is handled with the embedding it is tied to
BLOCK_LINEARS = ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')


@torch.no_grad()
def quantize_int8_(model, dtype=torch.float32):
    """Replace every Linear of a GPT (model.py) by an Int8Linear, in place, one at a time, and the
    tied wte / lm_head by an Int8Linear head plus an Int8Embedding over the same int8 tensors.

    Each float weight is released as soon as its replacement exists (unless the caller still
    holds it), so peak memory is the int8 model plus one layer's float weight: the model's
    float weights may be memory-mapped views (from_checkpoint / from_safetensors). LayerNorms,
    wpe and biases stay in float; the embedding returns dtype. Returns model.
    """
    for block in model.transformer.h:
        for name in BLOCK_LINEARS:
            parent_name, attr = name.split('.')
            parent = getattr(block, parent_name)
            lin = getattr(parent, attr)
            setattr(parent, attr, Int8Linear.from_float(lin.weight, lin.bias))
    wte = model.transformer.wte  # tied: wte.weight is lm_head.weight, (vocab, n_embd)
    model.lm_head, model.transformer.wte = int8_tied_head(wte.weight, dtype)
    return model


def int8_tied_head(weight, dtype=torch.float32):
    """(Int8Linear lm_head, Int8Embedding wte) over one int8 copy of the tied float weight
    (vocab, n_embd), any float dtype (or a load.Rows read a slice at a time): lm_head maps
    (..., n_embd) -> (..., vocab) logits, the embedding maps ids (...) -> (..., n_embd) in dtype."""
    head = Int8Linear.from_float(weight)
    return head, Int8Embedding(head.weight, head.scales, weight.size(1), dtype)


def tie_int8_(model):
    """Point model.transformer.wte (an Int8Embedding) at lm_head's int8 tensors again, after a
    load_state_dict(assign=True) that gave each its own. Returns model."""
    model.transformer.wte.weight = model.lm_head.weight
    model.transformer.wte.scales = model.lm_head.scales
    return model


# ----------------------------------------------------------------------------- float layouts

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


@torch.no_grad()
def choose_linear_layout_(model, batch_sizes=(1,), layouts=LAYOUTS, block_bytes=8 << 20, n_blocks=4,
                          calls=24, margin=0.1):
    """Store every nn.Linear weight of model (float32 or bfloat16, on CPU) in the layout, and pick
    the kernel per batch size, that run fastest on this CPU, measured on the model's own weights;
    in place, one Linear at a time, dropping each old weight.

    batch_sizes: the rows per call decoding will use (sample.py's num_samples): a layout is one
    copy of the weights, and the fastest one for 1 row is not the fastest for 8 on every CPU.
    Linears are grouped by (in, out, dtype, tied, bias). For each group, n_blocks blocks of rows
    (block_bytes each) of its weights are copied to every layout in layouts, once per kernel (BLAS
    behind F.linear, oneDNN), and timed at each batch size, calls calls each (see
    _time_candidates), then freed: 5 * n_blocks * block_bytes at most, 160 MB by default.
    A layout's score is the sum over batch sizes of its best kernel's time over the best
    time; a layout replaces the group's current one only if it scores lower by more than margin.
    'packed' becomes a PackedLinear, 'row' / 'col' a DenseLinear (oneDNN from the smallest batch
    size where it won). 'packed' is skipped for a weight tied to another module (lm_head / wte:
    an embedding cannot index packed blocks) and where oneDNN lacks the dtype. About 0.3 s for
    GPT-2 124M and one batch size.
    Returns {(in, out, dtype, tied, bias): (layout, onednn_rows, {(layout, kernel): [seconds per
    batch size]})}; a group with no usable layout keeps its own and times nothing.
    """
    refs = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        refs[id(p)] = refs.get(id(p), 0) + 1
    groups = {}
    for name, mod in model.named_modules():
        if type(mod) in (nn.Linear, DenseLinear) and mod.weight.device.type == 'cpu':
            tied = refs.get(id(mod.weight), 0) > 1
            key = (mod.in_features, mod.out_features, mod.weight.dtype, tied, mod.bias is not None)
            groups.setdefault(key, []).append(name)
    report, mods = {}, []
    for key, names in groups.items():
        K, N, dtype, tied, has_bias = key
        mods = [model.get_submodule(n) for n in names]
        current = _layout_of(mods[0])
        usable = [l for l in layouts if l != 'packed' or (not tied and _is_packable(dtype))]
        if not usable:
            report[key] = (current, getattr(mods[0], 'onednn_rows', None), {})
            continue
        onednn = _is_packable(dtype)  # oneDNN's matmul takes the dtypes it can pack
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
        report[key] = (choice, onednn_rows, times)
    # convert in the model's order, layer by layer: the weights of a memory-mapped file (load.py
    # maps it a layer at a time) then leave memory a layer at a time as their copies arrive
    # (group by group, every layer's file pages stayed resident until the last group: gpt2-xl in
    # float32 peaked at 1.6x its weights)
    del mods  # no reference to a replaced Linear may outlive its replacement
    group_of = {name: key for key, names in groups.items() for name in names}
    for name in [n for n, _ in model.named_modules() if n in group_of]:
        _set_layout(model, name, model.get_submodule(name), *report[group_of[name]][:2])
        trim_heap()
    return report


def trim_heap():
    """Give the C heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere).
    glibc keeps freed memory between live blocks: converting a model tensor by tensor, the
    temporaries' holes between the new weights would otherwise add 20-30% to the peak."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL('libc.so.6').malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # glibc's malloc_trim, found on first use (False: not glibc)


def _set_layout(model, name, lin, layout, onednn_rows=None):
    """Store Linear lin (model's submodule name) in layout, dropping its old weight."""
    parent, _, attr = name.rpartition('.')
    parent = model.get_submodule(parent) if parent else model
    if layout == 'packed':
        setattr(parent, attr, PackedLinear(lin.weight, lin.bias))
        return
    if _layout_of(lin) != layout:
        lin.weight.data = _as_layout(lin.weight.data, layout)  # .data: a tied wte keeps sharing it
    if type(lin) is nn.Linear:
        dense = DenseLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, device='meta')
        dense.weight, dense.bias = lin.weight, lin.bias  # the same Parameters: ties and names kept
        setattr(parent, attr, dense)
        lin = dense
    lin.onednn_rows = onednn_rows
