"""cpu/int4.py: the int4 weight-only format (groups of 32) at any shape against its dequantized
weight, never garbage, never a crash. The bounds: tests/bounds.py."""

import pytest
import torch

from bounds import assert_within, int8_bound
from cpu.int4 import GROUP_SIZES, Int4Linear, quantize_groups


def int4_steps(sz, N, K, group_size=32):
    """Each weight's step s (N, K) float64, from scales_and_zeros (groups, Np, 2)."""
    return sz[..., 0].double().t().repeat_interleave(group_size, 1)[:N, :K]


def test_quantize_groups_within_half_a_step_without_clipping():
    torch.manual_seed(0)
    w = torch.randn(65, 180) * 0.02
    w[3] = 0  # all-zero groups
    w[5, 7] = 5.0  # an outlier sets its group's range only
    w[6, 32:64] = 1.0 + torch.rand(32) * 1e-3  # far from 0, a tiny range: the bf16 zero point is off-centre
    w[7, 64:96] = 0.375  # a constant group (a bfloat16 value: then exact)
    codes, sz = quantize_groups(w, chunk_elems=16 * 192)
    assert codes.dtype == torch.uint8 and codes.shape == (80, 192) and codes.max() <= 15
    assert sz.dtype == torch.bfloat16 and sz.shape == (6, 80, 2)
    s, z = sz[..., 0].double().t(), sz[..., 1].double().t()  # (80, 6)
    assert torch.isfinite(s).all() and (s > 0).all()
    wd = ((codes.double().view(80, 6, 32) - 8) * s[..., None] + z[..., None]).view(80, 192)
    assert not wd[65:].any(), "padding rows must dequantize to zero"
    wp = torch.zeros(80, 192, dtype=torch.float64)
    wp[:65, :180] = w  # padding columns are zeros of their group (they meet zero activations)
    err = (wd - wp).abs()
    assert (err <= int4_steps(sz, 80, 192) / 2 * (1 + 2 ** -20)).all()  # round to nearest, nothing clipped
    assert not wd[3].any() and torch.equal(wd[7, 64:96], w[7, 64:96].double())  # zeros and a bf16 constant exact
    steps = int4_steps(sz, 65, 180)
    assert steps[5, 0] > 0.3 and steps[5, 32:].max() < 0.01  # the outlier's group alone is coarse
    # a transposed (Conv1D, memory-mapped) view and another chunk size give the same result
    codes2, sz2 = quantize_groups(w.t().contiguous().t(), chunk_elems=1 << 20)
    assert torch.equal(codes, codes2) and torch.equal(sz, sz2)
    with pytest.raises(ValueError, match='group size'):
        quantize_groups(w, group_size=16)


SHAPES4 = [(K, N) for K in (180, 720, 768, 3072) for N in (65, 180, 540, 2304)] + [(768, 768), (768, 3072), (3072, 768)]


@pytest.mark.parametrize('K,N', SHAPES4)
def test_int4_linear_any_shape_matches_dequantized(K, N):
    # the demo's (180, 540 = c_attn, 720 = c_fc), GPT-2's (768, 2304, 3072) and odd widths (65 rows
    # pad to 80, K 180 / 720 to groups of 32), prefill sizes (16, 64 rows) as well as decode steps
    torch.manual_seed(K * N)
    w, b = torch.randn(N, K) * 0.02, torch.randn(N) * 0.02
    m = Int4Linear.from_float(w, b)
    codes, sz = quantize_groups(w)
    assert torch.equal(m.codes(), codes[:N, :K])  # what the kernel reads back is what was packed
    wd = m.dequantize(torch.float64)
    assert ((wd - w.double()).abs() <= int4_steps(sz, N, K) / 2 * (1 + 2 ** -20)).all()
    wa = wd.abs().float()
    for M in (1, 2, 5, 8, 16, 64):
        x = torch.randn(M, K)
        y = m(x)
        assert y.shape == (M, N) and y.dtype == torch.float32
        assert_within(y, x.double() @ wd.t() + b.double(), int8_bound(x, wa, b))


@pytest.mark.parametrize('K', [180, 768])
def test_int4_linear_gpt2_vocab(K):
    torch.manual_seed(K)
    m = Int4Linear.from_float(torch.empty(50257, K).uniform_(-0.05, 0.05))
    wd = m.dequantize(torch.float64)
    wa = wd.abs().float()
    for M in (1, 3, 8, 17):
        x = torch.randn(M, K)
        y = m(x)
        assert y.shape == (M, 50257)
        assert_within(y, x.double() @ wd.t(), int8_bound(x, wa))


def test_int4_linear_dtypes_shapes_and_group_sizes():
    torch.manual_seed(0)
    w = torch.randn(64, 768) * 0.02
    m = Int4Linear.from_float(w)
    wd = m.dequantize(torch.float64)
    x = torch.randn(2, 5, 768)
    y = m(x)
    assert y.shape == (2, 5, 64)
    assert_within(y.view(10, 64), x.view(10, 768).double() @ wd.t(), int8_bound(x.view(10, 768), wd.abs().float()))
    xb = torch.randn(3, 768).bfloat16()
    assert m(xb).dtype == torch.bfloat16 and m.compute_dtype == torch.bfloat16
    assert m(torch.randn(0, 768)).shape == (0, 64)
    xs = torch.randn(8, 2 * 768)[:, :768]  # rows strided: the kernel wants a contiguous input
    assert_within(m(xs), xs.double() @ wd.t(), int8_bound(xs, wd.abs().float()))
    steps = {}
    for g in GROUP_SIZES:  # every group size the kernel takes; larger groups round more coarsely
        mg = Int4Linear.from_float(w, group_size=g)
        wg = mg.dequantize(torch.float64)
        steps[g] = (wg - w.double()).abs().mean().item()
        assert_within(mg(xs), xs.double() @ wg.t(), int8_bound(xs, wg.abs().float()))
    assert steps[32] < steps[256]
    with pytest.raises(ValueError, match='group size'):
        Int4Linear(768, 64, group_size=48)
    with pytest.raises(RuntimeError, match='CPU only'):
        m(torch.randn(1, 768, device='meta'))
