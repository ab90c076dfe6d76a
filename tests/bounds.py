"""
Error bounds the weight-format tests share (test_int8.py, test_int4.py, test_layout.py).

Tolerances are bounds, not tuned numbers:
- a float32 product in another summation order differs by at most K * 2**-24 * sum_k |x_k w_k|
  (the classic dot-product error bound); we allow twice that;
- _weight_int8pack_mm rounds x to bfloat16 (2**-9 relative per term) and its result to bfloat16
  (2**-9 of the output), so against the dequantized float32 weight it differs by at most
  2**-8 * sum_k |x_k w_k|, plus the float32 summation above;
- _weight_int4pack_mm_for_cpu rounds x and its result the same way, and forms each weight
  (q - 8) * s + z in float32 (2**-24 relative, inside the summation term), so the int8 bound holds
  for int4 against its dequantized weight; quantizing moves each weight by at most half its
  group's step s (nothing clipped).
"""
import torch

from cpu.int8 import LO

KERNELS = ['onednn', 'int_mm', 'int8pack']  # int8.Int8Linear's kernels: all run on any x86 CPU (fast: see int8.py)


def dot_bound(x, w, b=None):
    """sum_k |x_k| |w_k| (+ |b|, the bias being one more term) for every output: (M, N) from
    x (M, K), w (N, K), b (N,). w may be given as its absolute value already (any w >= 0 is)."""
    s = x.abs() @ (w if bool((w >= 0).all()) else w.abs()).t()  # float32: the bounds have a factor 2 to spare
    return s if b is None else s + b.abs()


def assert_within(y, ref, bound):
    assert torch.isfinite(y).all(), "NaN or inf in the output"
    excess = ((y.double() - ref.double()).abs() - bound).max().item()
    assert excess <= 0, f"off by {excess:g} beyond the bound"


def int8_bound(x, w, b=None, kernel='int8pack', out_dtype=torch.float32):
    """Bound on |y - x w^T - b| for an int8 (or int4) layer against its dequantized weight w (N, K),
    x (M, K): 'int8pack' rounds x and the sum to bfloat16 (module docstring); 'int_mm' moves each
    x_k by at most the row's absmax / (127 * 2 * LO) (int8.two_planes), sums exactly, and rounds a few
    times in float32 after, plus a rounding of the output to bfloat16 if out_dtype is."""
    K = x.size(-1)
    if kernel == 'int8pack':
        return (2 ** -8 + 2 * (K + 1) * 2 ** -24) * dot_bound(x, w, b) + 1e-30
    step = x.abs().amax(-1, keepdim=True) / (127 * 2 * LO)  # (M, 1)
    rel = 2 * (K + 8) * 2 ** -24 + (2 ** -8 if out_dtype != torch.float32 else 0)
    return step * w.abs().sum(1) + rel * dot_bound(x, w, b) + 1e-30


def f32_bound(x, w, b=None):
    """Bound on |y - x w^T - b| for a float32 product of x (M, K) and w (N, K) summed in another
    order (module docstring): twice the classic dot-product bound."""
    return 2 * (x.size(-1) + 1) * 2 ** -24 * dot_bound(x, w, b) + 1e-30
