"""
int4 weight-only quantization for decoding on the CPU: Int4Linear holds each Block Linear's
weight as 4-bit codes in groups of GROUP_SIZE input channels, each group with a bfloat16 scale
and zero point, and multiplies through PyTorch's own CPU kernel, aten._weight_int4pack_mm_for_cpu
(packed by aten._convert_weight_to_int4pack_for_cpu); quantize_int4_ turns a GPT's Block Linears
into them and keeps the tied wte / lm_head in int8 (int8.py), so the embedding still reads
the head's rows (load.py calls it, through quantize.QUANTIZERS, as it reads a file).

The kernel's contract in torch 2.13 (from int4mm_kernel.cpp, and by calling it: a call outside it
raises, except a wrong first dimension of scales_and_zeros, which it does not check: a short one
is read past its end):
- packing: codes (N, K) int32 in 0..15, N a multiple of 16, K even -> (N, K / 2) uint8 in a
  layout of the CPU's vector width (AVX-512: blocks of 64 output rows), so it is not portable
  between machines; inner_k_tiles is ignored on CPU. Blocks of 64 rows pack independently.
- product: x (M, K) bfloat16 contiguous (float16 / float32 are accepted too with scales of the
  same dtype; int4mm_kernel.cpp vectorizes only bfloat16), group size 32, 64, 128 or 256 dividing K,
  scales_and_zeros (K / group, N, 2) bfloat16, [..., 0] the scale s and [..., 1] the zero z:
  w = (q - 8) * s + z, formed in float32; products summed in float32 over k in order, 4 rows
  per block, each row alone (so a row's value never depends on the others); the result rounded
  to bfloat16, (M, N). Any M, 0 included.

References: gpt-fast's quantize.py (pytorch-labs; WeightOnlyInt4Linear, group-wise asymmetric
min / max quantization with the zero point at code 8), PyTorch's int4mm_kernel.cpp.
"""
import torch
import torch.nn as nn

from cpu.int8 import quantize_int8_
from common import round_up
from gpt_config import BLOCK_LINEARS

GROUP_SIZE = 32  # input channels per scale and zero point (the kernel takes 32, 64, 128 or 256)
GROUP_SIZES = (32, 64, 128, 256)
N_MULTIPLE = 16  # the packing op wants the output channels in multiples of 16
PACK_ROWS = 64  # rows packed per chunk: a multiple of the kernel's widest block of output rows


@torch.no_grad()
def quantize_groups(w, group_size=GROUP_SIZE, chunk_elems=1 << 18):
    """Asymmetric int4 quantization of w (N, K) in groups of group_size consecutive input
    channels: w ~= (q - 8) * s + z per group.

    w: a float tensor of any dtype and strides (a memory-mapped Conv1D view), read about
    chunk_elems elements at a time in float64 (2 MB by default), so quantizing costs the int4
    copy and one chunk. Returns (codes, scales_and_zeros): codes (Np, Kp) uint8 in 0..15, Np = N
    rounded up to 16 and Kp = K rounded up to group_size, the padding rows and columns zeros of
    w before quantizing (a padded group's range includes 0); scales_and_zeros (Kp / group_size,
    Np, 2) bfloat16, the kernel's layout. Each group's zero point z is the bfloat16 nearest
    min + 8 (max - min) / 15, and its scale s the smallest bfloat16 with z - 8 s <= min and
    z + 7 s >= max, so nothing is clipped and every weight is within s / 2 of its dequantized
    value (an all-zero group gets s = 1e-30, z = 0). Raises ValueError for another group size.
    """
    if group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {GROUP_SIZES} (the kernel's), got {group_size}")
    N, K = w.shape
    Np, Kp = round_up(N, N_MULTIPLE), round_up(K, group_size)
    G = Kp // group_size
    codes = torch.empty(Np, Kp, dtype=torch.uint8)
    sz = torch.empty(G, Np, 2, dtype=torch.bfloat16)
    chunk_rows = max(1, chunk_elems // Kp)
    for i in range(0, Np, chunk_rows):
        n = min(chunk_rows, Np - i)
        wc = torch.zeros(n, Kp, dtype=torch.float64)
        if i < N:
            wc[:min(n, N - i), :K] = w[i:i + n].to(device='cpu', dtype=torch.float64)
        g = wc.view(n, G, group_size)
        lo, hi = g.amin(-1), g.amax(-1)  # (n, G)
        z = (lo + (hi - lo) * (8 / 15)).to(torch.bfloat16).double()
        need = torch.maximum((hi - z) / 7, (z - lo) / 8).clamp_(min=1e-30)
        s = need.to(torch.bfloat16)
        s = torch.where(s.double() < need, torch.nextafter(s, torch.full_like(s, float('inf'))), s).double()
        q = g.sub_(z[..., None]).div_(s[..., None]).round_().add_(8).clamp_(0, 15)
        codes[i:i + n] = q.view(n, Kp).to(torch.uint8)
        sz[:, i:i + n, 0] = s.t().to(torch.bfloat16)  # exact: s and z are bfloat16 values
        sz[:, i:i + n, 1] = z.t().to(torch.bfloat16)
    return codes, sz


def pack_codes(codes):
    """The kernel's packed weight for codes (Np, Kp) uint8 in 0..15 (Np a multiple of 16, Kp even):
    (Np, Kp / 2) uint8, packed PACK_ROWS rows at a time, so the int32 temporary the packing op
    wants is one chunk, not the whole weight."""
    Np, Kp = codes.shape
    packed = torch.empty(Np, Kp // 2, dtype=torch.uint8)
    for i in range(0, Np, PACK_ROWS):
        packed[i:i + PACK_ROWS] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes[i:i + PACK_ROWS].to(torch.int32), 1)  # inner_k_tiles: unused on CPU
    return packed


class Int4Linear(nn.Module):
    """Linear layer with int4 weights in groups of group_size input channels, each group with a
    bfloat16 scale and zero point (weight-only quantization: activations are not quantized).

    Buffers: weight (out_pad, in_pad / 2) uint8, the kernel's packed layout for this CPU (see the
    module docstring: not portable between machines); scales_and_zeros (in_pad / group_size,
    out_pad, 2) bfloat16; bias (out,) float32 or None. in_pad is in_features rounded up to
    group_size and out_pad out_features rounded up to 16, the padding weights zero.
    forward: x (..., in_features), float32 or bfloat16 on the CPU -> (..., out_features) in x's
    dtype, through aten._weight_int4pack_mm_for_cpu at every number of rows: x is rounded to
    bfloat16 (zero-padded to in_pad), products of the dequantized weights are summed in float32
    and the sum is rounded to bfloat16 before the bias (relative error 2**-8 of sum |x w| on top of
    the weights' int4 rounding). Each row's value is the same alone or in any batch. Another
    device raises RuntimeError: the packed layout is the CPU kernel's.
    compute_dtype (bfloat16) is the input dtype that costs no conversion.
    """
    compute_dtype = torch.bfloat16

    def __init__(self, in_features, out_features, bias=True, group_size=GROUP_SIZE, device=None):
        super().__init__()
        if group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group size must be one of {GROUP_SIZES} (the kernel's), got {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        in_pad, out_pad = round_up(in_features, group_size), round_up(out_features, N_MULTIPLE)
        self.register_buffer('weight', torch.zeros(out_pad, in_pad // 2, dtype=torch.uint8, device=device))
        self.register_buffer('scales_and_zeros', torch.zeros(in_pad // group_size, out_pad, 2, dtype=torch.bfloat16,
                                                             device=device))
        self.register_buffer('bias', torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_float(cls, weight, bias=None, group_size=GROUP_SIZE):
        """Int4Linear for the float weight (out, in) (any dtype / strides, e.g. a memory-mapped
        Conv1D view) and optional bias (out,): peak memory is the int4 weight plus one chunk of
        codes (see quantize_groups, pack_codes)."""
        m = cls(weight.size(1), weight.size(0), bias=bias is not None, group_size=group_size, device='meta')
        codes, m.scales_and_zeros = quantize_groups(weight, group_size)
        m.weight = pack_codes(codes)
        if bias is not None:
            m.bias = bias.detach().to('cpu', torch.float32).clone()
        return m

    @torch.no_grad()
    def codes(self):
        """The 4-bit codes (out, in) uint8 in 0..15, read back through the kernel itself (one-hot
        rows, unit scales, zero zeros: each output is q - 8, exact in bfloat16), so whatever the
        packed layout is, these are the codes the kernel multiplies by."""
        in_pad = self.weight.size(1) * 2
        unit = torch.zeros_like(self.scales_and_zeros)
        unit[..., 0] = 1
        eye = torch.eye(in_pad, dtype=torch.bfloat16)
        q = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, self.group_size, unit)  # (in_pad, out_pad)
        return (q[:self.in_features, :self.out_features].t() + 8).to(torch.uint8)

    def dequantize(self, dtype=torch.float32):
        """The weight (out, in) this layer multiplies by, (codes - 8) * scale + zero, in dtype
        (exact in float64; float32 rounds it as the kernel does, once)."""
        sz = self.scales_and_zeros[:, :self.out_features].to(torch.float64)  # (groups, out, 2)
        s = sz[..., 0].t().repeat_interleave(self.group_size, 1)[:, :self.in_features]
        z = sz[..., 1].t().repeat_interleave(self.group_size, 1)[:, :self.in_features]
        return ((self.codes().double() - 8) * s + z).to(dtype)

    def forward(self, x):
        if x.device.type != 'cpu':
            raise RuntimeError(f"Int4Linear runs on the CPU only (aten._weight_int4pack_mm_for_cpu), got {x.device}")
        K, in_pad = self.in_features, self.weight.size(1) * 2
        x2 = x.reshape(-1, K)  # (M, K)
        if in_pad == K:  # a copy only if x is not bf16 and contiguous already
            a = x2.to(torch.bfloat16, memory_format=torch.contiguous_format)
        else:  # zero columns meet the zero-padded weight
            a = x2.new_zeros(x2.size(0), in_pad, dtype=torch.bfloat16)
            a[:, :K] = x2
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(a, self.weight, self.group_size, self.scales_and_zeros)
        y = y[:, :self.out_features].reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self):
        return (f'in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, '
                f'int4 groups of {self.group_size}')


@torch.no_grad()
def quantize_int4_(model, dtype=torch.float32, quantized=None, group_size=GROUP_SIZE):
    """Make a GPT (model.py) int4 weight-only, in place: every Block's Linears become Int4Linears
    (groups of group_size, with the Linear's bias in float32), and the tied wte / lm_head int8 as
    in int8.quantize_int8_ (an Int8Linear head, an Int8Embedding over its rows returning dtype):
    an int4 head would need the embedding to unpack the kernel's layout. LayerNorms and wpe stay.

    quantized: {state-dict name: module} already made from the weights (load.py quantizes as it
    reads a file, see quantize.quantize_weight); every other Block Linear is quantized here from the
    model's weight, which is dropped at once (unless the caller holds it), so peak memory is the
    int4 model plus one float weight. int8.quantize_int8_ then puts each module in place and
    quantizes the head. Returns model.
    """
    quantized = dict(quantized or {})
    for i in range(len(model.transformer.h)):
        for linear in BLOCK_LINEARS:
            name = f'transformer.h.{i}.{linear}'
            if name + '.weight' not in quantized:
                lin = model.get_submodule(name)
                quantized[name + '.weight'] = Int4Linear.from_float(lin.weight, group_size=group_size)
                lin.weight = None  # the float weight goes now; quantize_int8_ installs the Int4Linear
    return quantize_int8_(model, dtype, quantized)
