"""
int8 weight-only quantization for decoding on the CPU: Int8Linear holds int8 weights with one
bfloat16 scale per output channel and multiplies through one of three kernels: on a CPU with
VNNI, oneDNN's int8 GEMM over the activations split into two int8 planes (more accurate than
bfloat16 activations, see two_planes), through torch._int_mm ('int_mm') or oneDNN's packed weight
('onednn'), which give the same bits; elsewhere PyTorch's weight-only aten._weight_int8pack_mm
over bfloat16 activations ('int8pack'). So the rounding is fixed per machine (VNNI or not), never
by a timing: choose_int8_kernel_ times the two VNNI kernels on a model's own layers at the decode
batch size and keeps the faster (cpu.speed.prepare_for_cpu calls it). Int8Embedding reads the
same int8 rows for the tied wte / lm_head; quantize_int8_ turns a GPT's matmul weights into them
(load.py calls it, through quantize.QUANTIZERS, as it reads a file).

References: gpt-fast's quantize.py (pytorch-labs; WeightOnlyInt8Linear), Dettmers et al. 2022
("LLM.int8()") for absmax quantization.
"""
import json
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import round_up, trim_heap
from cpu.cache import cache_path, cached_entry, machine_key, machine_load, write_entry
from cpu.layout import release_file_pages
from gpt_config import BLOCK_LINEARS

K_MULTIPLE = 16  # _weight_int8pack_mm's AVX-512 loop reads 16 bf16 / 16 int8 at a time, aligned
ALIGN = 64  # bytes: its aligned vector loads fault on a misaligned activation or weight row
DEQUANT_ROWS = 16  # from this many rows on, a bf16 GEMM over the converted weight beats the kernel,
                   # whose cost grows with the rows (float32 vectors, 4 rows at a time)
KERNEL_ROWS = 4  # rows per kernel call: more rows per call cost more than more calls (docs/measurements.md)
LO = 254  # the low plane's steps per step of the high plane (two_planes): |x / s - hi| <= 1/2 -> |lo| <= 127
ZERO_POINT = 128  # the packed kernel's activations are uint8: a plane's whole numbers in [-127, 127] + 128
VNNI = torch.backends.mkldnn.is_available() and torch.cpu._is_vnni_supported()  # int8 dot products in hardware
# the kernel of an Int8Linear until choose_int8_kernel_ sets one (the tied head always): 'int_mm' on a CPU
# with VNNI (exact integer sums, any batch), else 'int8pack'. Int8Linear.kernel overrides it per layer.
KERNEL = 'int_mm' if VNNI else 'int8pack'


@torch.no_grad()
def quantize_rows(w, chunk_elems=1 << 18):
    """Symmetric int8 quantization with one scale per row (output channel): w ~= q * scales[:, None].

    w: (N, K) float tensor of any dtype and strides, or a load.LazyTensor. It is read about chunk_elems
    elements at a time (1 MB of float32 by default): small temporaries, reused from chunk to chunk,
    leave no holes in the heap, so a memory-mapped weight is quantized at the cost of the int8 copy.
    Returns (q, scales): q (N, Kp) int8, Kp = K rounded up to a multiple of 16, columns K.. zero;
    scales (N,) bfloat16, the row's absmax / 127 rounded up to a bfloat16, so |w / scale| <= 127
    and nothing is clipped (an all-zero row gets a tiny scale and zeros).
    """
    N, K = w.shape
    chunk_rows = max(1, chunk_elems // K)
    q = torch.zeros(N, round_up(K, K_MULTIPLE), dtype=torch.int8)
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


def two_planes(x, k_pad, zero_point=0):
    """Activations x (M, K) float as two int8 planes for an int8 GEMM: hi = round(x / s) and
    lo = round((x / s - hi) * LO), s = the row's absmax / 127, so x = s * (hi + lo / LO) within
    s / (2 * LO) = absmax / 64516 per element (bfloat16 rounds each to 2**-9 of itself: for all
    but the row's smallest elements, and in sum, two planes are the more accurate).
    Returns (planes, s): planes (2M, k_pad) int8, rows 0..M-1 hi and M..2M-1 lo, columns K.. zero
    (with zero_point: uint8, every value + zero_point); s (M, 1) float32, absmax / 127 (an all-zero
    row gets a tiny s and zeros)."""
    K = x.size(1)
    x = x.float()
    s = torch.linalg.vector_norm(x, float('inf'), dim=1, keepdim=True).clamp_(min=1e-30).div_(127)
    q = x / s  # (M, K), in [-127, 127]
    hi = q.round()
    planes = torch.cat([hi, q.sub_(hi).mul_(LO).round_()])  # (2M, K), whole numbers in [-127, 127]
    if k_pad != K:  # zero columns meet the weight's zero padding
        planes = F.pad(planes, (0, k_pad - K))
    if zero_point:
        return planes.add_(zero_point).to(torch.uint8), s
    return planes.to(torch.int8), s


def matmul_two_planes(x, q, scales):
    """x (M, K) float times the int8 weight q (N, k_pad) with its row scales (N,) float32: (M, N)
    float32, through one oneDNN int8 GEMM (torch._int_mm, s8 x s8 -> s32) over both planes of x
    (two_planes). The integer sums are exact, so a row's result never depends on the other rows
    (batch 1 and batch 8 give the same values); then y = (y_hi + y_lo / LO) * s * scales."""
    M = x.size(0)
    planes, s = two_planes(x, q.size(1))
    y = torch._int_mm(planes, q.t()).float()  # (2M, N), exact below 2**24 (|y| <= 127 * 127 * K)
    return _combine_planes(y, M).mul_(s * scales)


def _combine_planes(y, M):
    """y (2M, N), the products of both planes (hi rows, then lo rows) -> (M, N): y_hi + y_lo / LO."""
    return torch.add(y[:M], y[M:], alpha=1 / LO)


def matmul_packed(x, packed, scales, ones, zeros, k_pad):
    """x (M, K) float times an int8 weight packed by oneDNN (pack_onednn) with its row scales (N,)
    float32: (M, N) float32, through one oneDNN int8 GEMM (torch.ops.onednn.qlinear_pointwise:
    u8 x s8 -> s32, given scales ones (N,) float32 and zero points zeros (N,) int64) over both
    planes of x as uint8 (two_planes with ZERO_POINT). Every scale given to oneDNN is 1, so it
    returns the exact integer sums (as float32), and the scales multiply afterwards exactly as in
    matmul_two_planes: the two kernels give the same bits, and a row's result never depends on
    the other rows; y = (y_hi + y_lo / LO) * (s * scales)."""
    M = x.size(0)
    planes, s = two_planes(x, k_pad, ZERO_POINT)
    y = torch.ops.onednn.qlinear_pointwise(planes, 1.0, ZERO_POINT, packed, ones, zeros, None, 1.0, 0,
                                           torch.float32, 'none', [], '')  # (2M, N): the exact sums, as float32
    return _combine_planes(y, M).mul_(s * scales)  # as matmul_two_planes: the same bits


def pack_onednn(q):
    """The int8 weight q (N, K) in oneDNN's blocked layout for qlinear_pointwise: an opaque tensor
    (shape (K, N); to_dense() gives q.t() back) of the same bytes, give or take a little padding."""
    return torch.ops.onednn.qlinear_prepack(q.contiguous(), None)


def _aligned(t):
    """t itself, or a fresh (64-byte aligned) copy if its data does not start on a 64-byte boundary."""
    return t if t.data_ptr() % ALIGN == 0 else t.clone()


class Int8Linear(nn.Module):
    """Linear layer with int8 weights, one bfloat16 scale per output channel (weight-only
    quantization: the activations keep their precision or better, see two_planes).

    Buffers: weight (out, in_pad) int8, in_pad = in_features rounded up to a multiple of 16,
    the extra columns zero; scales (out,) bfloat16; bias (out,) float32 or None.
    forward: x (..., in_features), float32 or bfloat16 -> (..., out_features) in x's dtype.
    On CPU the product runs in the layer's kernel (KERNEL unless set per layer):
    - 'int_mm': one torch._int_mm over x's two int8 planes (matmul_two_planes), at any number of
      rows: x to within absmax / 64516 per element, exact integer sums, float32 after;
    - 'onednn' (after pack_onednn_(): the weight buffer then holds oneDNN's packed layout): the
      same two planes, as uint8, through oneDNN's packed int8 GEMM (matmul_packed), same values;
    - 'int8pack': _weight_int8pack_mm (KERNEL_ROWS rows per call, however many rows), or for a
      prefill of DEQUANT_ROWS positions or more ((B, T, in) with T >= DEQUANT_ROWS) a bfloat16
      GEMM over the weight converted a chunk at a time, one sequence at a time: either way x is
      rounded to bfloat16, products are summed in float32, and the sum is rounded to bfloat16
      before the bias (relative error 2**-9 of the output on top of the weights' int8 rounding).
    Elsewhere (CUDA) it is a plain F.linear with the weight dequantized on the fly: slower, same
    values. Every row's result is the value it gets alone, whatever the other rows.
    compute_dtype (float32 for 'int_mm' and 'onednn', bfloat16 for 'int8pack') is the input dtype
    that costs no conversion; read it, not weight.dtype (int8), to choose what to feed this layer.
    """
    kernel = KERNEL

    @property
    def compute_dtype(self):
        return torch.bfloat16 if self.kernel == 'int8pack' else torch.float32

    @torch.no_grad()
    def pack_onednn_(self):
        """Store the weight in oneDNN's packed layout, in place (the plain weight is dropped), and
        multiply through it from now on (kernel 'onednn'). CPU with oneDNN only; no torch.compile
        (Inductor cannot trace the opaque weight). Returns self."""
        if self.kernel != 'onednn':
            plain, self.weight = self.weight, pack_onednn(self.weight)
            release_file_pages(plain)  # a memory-mapped weight (quantized_cache): its pages go now
            self.register_buffer('scales_f32', self.scales.float(), persistent=False)
            self.register_buffer('ones', torch.ones(self.out_features), persistent=False)
            self.register_buffer('zeros', torch.zeros(self.out_features, dtype=torch.long), persistent=False)
            self.kernel = 'onednn'
        return self

    @torch.no_grad()
    def set_kernel_(self, kernel):
        """Multiply through kernel ('int_mm', 'onednn' or 'int8pack', see the class docstring) from
        now on, packing or unpacking the weight in place as needed. Returns self."""
        if kernel == 'onednn':
            return self.pack_onednn_()
        if self.kernel == 'onednn':
            self.weight = _aligned(self._plain_weight().contiguous())
            del self.scales_f32, self.ones, self.zeros
        self.kernel = kernel
        return self

    def _plain_weight(self):
        """weight (out, in_pad) int8 as stored before packing."""
        return self.weight.to_dense().t() if self.kernel == 'onednn' else self.weight

    def __init__(self, in_features, out_features, bias=True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        in_pad = round_up(in_features, K_MULTIPLE)
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
        return self._plain_weight()[:, :self.in_features].float() * self.scales.float()[:, None]

    def forward(self, x):
        w, K = self.weight, self.in_features
        x2 = x.reshape(-1, K)  # (M, K)
        if x.device.type != 'cpu' or x2.size(0) == 0:
            y = F.linear(x2, self.dequantize().to(x.dtype))
        elif self.kernel == 'onednn':
            y = matmul_packed(x2, w, self.scales_f32, self.ones, self.zeros, w.size(0))
        elif self.kernel == 'int_mm':
            y = matmul_two_planes(x2, w, self.scales.float())
        elif x.dim() > 2 and x.size(-2) >= DEQUANT_ROWS:  # a prefill: the kernel's cost grows with the positions
            seqs = x.reshape(-1, x.size(-2), K)  # one GEMM per sequence: a row never meets another batch's rows
            y = torch.cat([_matmul_int8_as_bf16(q.to(torch.bfloat16), w[:, :K], self.scales) for q in seqs])
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

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + 'weight'] = self._plain_weight()  # packed: a plain copy, only while saving

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        packed = self.kernel == 'onednn'
        if packed:  # load into a plain weight, then pack it again
            self.set_kernel_(KERNEL)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.weight = _aligned(self.weight)  # a memory-mapped file may place it anywhere
        if packed:
            self.pack_onednn_()

    def extra_repr(self):
        return (f'in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, '
                f'int8, {self.kernel}')


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


@torch.no_grad()
def quantize_int8_(model, dtype=torch.float32, quantized=None):
    """Make a GPT (model.py) int8 weight-only, in place, one Linear at a time: every Block's
    Linears become Int8Linears (with the Linear's bias, in float32), lm_head an Int8Linear, and wte
    an Int8Embedding over lm_head's int8 rows and scales (the tie, kept at no memory cost) that
    returns dtype. LayerNorms and wpe stay as they are.

    quantized: {state-dict name ('transformer.h.0.attn.c_attn.weight', 'transformer.wte.weight'):
    Int8Linear without bias} already made from the weights (load.py quantizes as it reads a file,
    and the model then holds meta placeholders for them); every other matmul weight is quantized
    here from the model's own. Each float weight is released as soon as its replacement is in
    place (unless the caller still holds it), so peak memory is the int8 model plus one float
    weight. Returns model.
    """
    quantized = dict(quantized or {})
    for i in range(len(model.transformer.h)):
        for linear in BLOCK_LINEARS:
            name = f'transformer.h.{i}.{linear}'
            lin = model.get_submodule(name)
            q = quantized.pop(name + '.weight', None)
            q = Int8Linear.from_float(lin.weight) if q is None else q
            if lin.bias is not None:
                q.bias = lin.bias.detach().to('cpu', torch.float32).clone()
            parent, _, attr = name.rpartition('.')
            setattr(model.get_submodule(parent), attr, q)
    head = quantized.pop('transformer.wte.weight', None)
    head = Int8Linear.from_float(model.transformer.wte.weight) if head is None else head
    model.lm_head = head
    model.transformer.wte = Int8Embedding(head.weight, head.scales, model.config.n_embd, dtype)
    return model


def time_kernels(lins, candidates, rows, rounds):
    """{kernel: best seconds of one pass over the Int8Linears lins at rows rows}. 'onednn' runs on
    packed copies (freed on return), the others on lins themselves; passes take turns, so that
    each reads its weights from memory as a decode step does. The only call that times (a test
    replaces it to see that a cached choice is not timed again)."""
    copies = {c: [] for c in candidates}
    for c in candidates:
        for l in lins:
            m = Int8Linear(l.in_features, l.out_features, bias=l.bias is not None, device='meta')
            m.weight, m.scales, m.bias = l._plain_weight().contiguous(), l.scales, l.bias
            m.set_kernel_(c)
            copies[c].append(m)
    g = torch.Generator().manual_seed(0)  # not the global generator: the samples own it
    xs = {l.in_features: torch.randn(rows, l.in_features, generator=g) for l in lins}
    best = {c: float('inf') for c in candidates}
    for _ in range(rounds + 1):  # the first round warms up (oneDNN builds its kernels)
        for c in candidates:
            t0 = time.perf_counter()
            for m in copies[c]:
                m(xs[m.in_features])
            best[c] = min(best[c], time.perf_counter() - t0)
    return best


@torch.no_grad()
def choose_int8_kernel_(model, rows=1, sample_bytes=48 << 20, rounds=3, cache=True):
    """On a CPU with VNNI, give every Block's Int8Linear of model the kernel ('int_mm', or 'onednn',
    packed: the same bits) that runs a decode step of rows rows faster on this machine; the tied
    head keeps KERNEL. Elsewhere there is nothing to choose: 'int8pack', whose rounding differs,
    is never a candidate where the two planes run, so no timing changes the text. Timed on the
    model's own first Linears, at least sample_bytes of int8 weights (more than a CPU's last-level
    cache, so the weights come from memory as in decoding), rounds passes per kernel; the timings
    are cached with the float layouts' (cpu.cache.cache_path, keyed by machine, threads, torch,
    shapes and rows), so later runs choose the same without timing. Which wins depends on the CPU
    and the rows (docs/measurements.md). Returns {kernel: seconds} timed or cached ({} if there
    was nothing to choose)."""
    lins = [b.get_submodule(n) for b in model.transformer.h for n in BLOCK_LINEARS]
    lins = [l for l in lins if isinstance(l, Int8Linear) and l.weight.device.type == 'cpu']
    candidates = ['int_mm', 'onednn'] if VNNI else []
    if not lins or len(candidates) < 2:
        return {}
    path = cache_path()
    key = json.dumps(machine_key() + ['int8 kernel', [(l.in_features, l.out_features) for l in lins[:len(BLOCK_LINEARS)]],
                                   rows, candidates])
    try:
        seconds = {c: float(cached_entry(path, key)[c]) for c in candidates} if cache else None
    except (KeyError, TypeError, ValueError):  # (None[c] is a TypeError)
        seconds = None
    if seconds is None:
        n, total = 0, 0
        while n < len(lins) and total < sample_bytes:
            total += lins[n].out_features * lins[n].in_features
            n += 1
        load = machine_load()
        seconds = time_kernels(lins[:n], candidates, rows, rounds)
        if cache:
            write_entry(path, key, seconds, load)
    choice = min(seconds, key=seconds.get)
    for l in lins:  # one layer at a time: a packed copy replaces each plain weight
        l.set_kernel_(choice)
    trim_heap()
    return seconds
