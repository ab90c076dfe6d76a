"""Decoding (generate.generate_steps and its modes): the KV-cache path against the reference loop, batches,
the compiled static decode step, and rows that stop at <|endoftext|>."""
import pytest
import torch

import generate as generate_module
from helpers import reference_generate, tiny_model


def record_logits(monkeypatch):
    """Make generate.sample, the sampling rule, record the (B, V) logits it is given, in order."""
    seen = []
    real = generate_module.sample

    def recording(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)
    monkeypatch.setattr(generate_module, "sample", recording)
    return seen


@pytest.mark.parametrize('B, T, new, block_size, shared', [
    (1, 5, 30, 16, False),   # crosses block_size: re-prefill of the cropped window
    (3, 4, 25, 16, False),   # batch > 1, different prompts, past block_size
    (4, 6, 8, 16, True),     # one prompt shared by every row: one prefill, broadcast
    (2, 20, 10, 16, False),  # the prompt itself is longer than block_size
])
@torch.no_grad()
def test_cached_logits_match_reference(monkeypatch, B, T, new, block_size, shared):
    model, _ = tiny_model(block_size=block_size)
    model.eval()
    idx = torch.randint(0, 65, (1 if shared else B, T)).expand(B, -1)
    seen = record_logits(monkeypatch)
    ref = model.generate(idx, new, temperature=0.0, kv_cache=False)
    ref_logits = list(seen)
    seen.clear()
    out = model.generate(idx, new, temperature=0.0, kv_cache=True)
    assert len(seen) == len(ref_logits) == new
    for step, (a, b) in enumerate(zip(seen, ref_logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"step {step}")
    assert torch.equal(out, ref)  # greedy tokens identical
    assert all(block.attn.kv_cache is None for block in model.transformer.h)  # caches freed


@torch.no_grad()
def test_cache_buffers_are_not_in_the_state_dict():
    model, _ = tiny_model()
    keys = set(model.state_dict())
    model.setup_caches(2, 8)
    assert set(model.state_dict()) == keys
    assert model.transformer.h[0].attn.kv_cache.k_cache.shape == (2, 2, 8, 16)


@torch.no_grad()
def test_compiled_decode_step_gives_the_same_tokens():
    model, _ = tiny_model(block_size=32)
    model.eval()
    x = torch.randint(0, 65, (2, 5))
    decode_fn = torch.compile(model.decode_step, fullgraph=True, dynamic=False)
    eager = model.generate(x, 20, temperature=0.0)
    compiled = model.generate(x, 20, temperature=0.0, decode_fn=decode_fn)
    assert torch.equal(eager, compiled)
    again = model.generate(x, 20, temperature=0.0, decode_fn=decode_fn)  # the kept caches, reused
    assert torch.equal(again, eager)


@torch.no_grad()
def test_generate_matches_the_reference_loop_past_block_size():
    model, _ = tiny_model(block_size=16)
    model.eval()
    x = torch.randint(0, 65, (1, 5))
    torch.manual_seed(1337)
    ref = reference_generate(model, x, 40, temperature=0.8, top_k=20)
    for kv_cache in (False, True):
        torch.manual_seed(1337)
        out = model.generate(x, 40, temperature=0.8, top_k=20, kv_cache=kv_cache)
        assert out.shape == (1, 45) and out.dtype == torch.long
        assert torch.equal(ref, out), kv_cache  # same draws from the global generator, also past block_size


@torch.no_grad()
def test_generate_stops_at_eot_per_row():
    model, _ = tiny_model(vocab_size=8)
    x = torch.zeros((3, 2), dtype=torch.long)
    torch.manual_seed(0)
    out = model.generate(x, 200, temperature=2.0, eot_token=7)
    assert out.size(1) < 202  # every row met token 7 long before 200 steps
    for row in out[:, 2:].tolist():
        assert 7 in row
        first = row.index(7)
        assert all(t == 7 for t in row[first:])  # padded with eot after stopping
