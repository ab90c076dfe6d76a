"""cpu/layout.py: the float32 / bfloat16 weight layouts (oneDNN prepacked, row- / column-major)
against F.linear, and the chooser keeping the logits and the wte / lm_head tie. The bounds:
tests/bounds.py; the chooser's timings and their payoff: test_layout_payoff.py."""
import gc
import weakref

import pytest
import torch
from torch.nn import functional as F

from bounds import assert_within, dot_bound, f32_bound
from cpu.layout import DenseLinear, PackedLinear, choose_linear_layout_
from gpt_config import BLOCK_LINEARS
from helpers import tiny_gpt


@pytest.mark.parametrize('K,N', [(180, 540), (720, 180), (768, 2304), (3, 5)])
def test_packed_linear_matches_f_linear(K, N):
    torch.manual_seed(K + N)
    w, b = torch.randn(N, K), torch.randn(N)
    m = PackedLinear(w.t().contiguous().t(), b)  # from a column-major weight (a Conv1D view)
    for M in (1, 3, 8, 500):
        x = torch.randn(M, K)
        assert_within(m(x), F.linear(x, w, b), f32_bound(x, w, b))
    x = torch.randn(2, 7, K)
    assert_within(m(x).view(14, N), F.linear(x, w, b).view(14, N), f32_bound(x.view(14, K), w, b))
    sd = m.state_dict()
    assert torch.equal(sd['weight'], w) and torch.equal(sd['bias'], b)  # nn.Linear's keys and layout
    m2 = PackedLinear(torch.zeros(N, K), torch.zeros(N))
    m2.load_state_dict(sd)
    assert torch.equal(m2(x), m(x))


@pytest.mark.parametrize('col', [False, True])
def test_dense_linear_onednn_matches_f_linear(col):
    torch.manual_seed(int(col))
    K, N = 180, 540
    m = DenseLinear(K, N)
    if col:
        m.weight.data = m.weight.data.t().contiguous().t()
    for rows in (None, 1, 8):
        m.onednn_rows = rows
        for M in (1, 3, 8, 500):
            x = torch.randn(M, K)
            with torch.no_grad():
                assert_within(m(x), F.linear(x, m.weight, m.bias), f32_bound(x, m.weight, m.bias))


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason='oneDNN has no bfloat16 here')
def test_packed_linear_bfloat16():
    torch.manual_seed(0)
    w, x = torch.randn(540, 180).bfloat16(), torch.randn(8, 180).bfloat16()
    y = PackedLinear(w)(x)
    assert y.dtype == torch.bfloat16
    # both round one float32 sum to bfloat16: at most an ulp (2**-8 relative) apart
    assert_within(y, F.linear(x, w), 2 ** -7 * dot_bound(x.float(), w.float()))


@pytest.mark.parametrize('layouts', [('packed',), ('col',), ('row',), ('row', 'col', 'packed')])
def test_choose_linear_layout_keeps_logits_and_tie(layouts):
    g = tiny_gpt(65)
    idx = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        ref, _ = g(idx, targets=idx)
        old = [weakref.ref(m.weight) for n, m in g.named_modules() if type(m) is torch.nn.Linear and n != 'lm_head']
        report = choose_linear_layout_(g, batch_sizes=(1, 8), layouts=layouts, calls=2, margin=-1.0)
        out, _ = g(idx, targets=idx)
    assert g.lm_head.weight is g.transformer.wte.weight  # the tie survives
    assert {c.layout for c in report.values() if c.seconds} <= set(layouts)
    assert all(type(m) is not torch.nn.Linear for m in g.transformer.h.modules())  # Dense- or PackedLinear
    if layouts == ('packed',):
        assert all(isinstance(g.transformer.h[0].get_submodule(n), PackedLinear)
                   for n in BLOCK_LINEARS)
        assert report[(180, 65, torch.float32, True, False)][0] != 'packed'  # the tied head cannot be packed
        gc.collect()
        assert all(r() is None for r in old), "a dense weight is still resident next to its packed copy"
    # the same products in another summation order: float32 rounding, amplified through 2 layers
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
