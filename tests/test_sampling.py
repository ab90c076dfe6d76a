"""The sampling rule (generate.sample): greedy, temperature, top-k, top-p, padded ids, and its
draws from a seeded generator."""
import torch
from torch.nn import functional as F

from helpers import tiny_model
from generate import sample as sample_next


def test_temperature_zero_is_greedy():
    logits = torch.randn(4, 100)
    out = sample_next(logits.clone(), temperature=0.0, top_k=5, top_p=0.5)
    assert out.shape == (4, 1) and out.dtype == torch.long
    assert torch.equal(out[:, 0], logits.argmax(-1))


def test_top_k_one_is_greedy():
    logits = torch.randn(3, 50)
    for seed in range(5):
        out = sample_next(logits.clone(), temperature=1.7, top_k=1, draws=torch.Generator().manual_seed(seed))
        assert torch.equal(out[:, 0], logits.argmax(-1))


def test_top_k_clamped_and_off():
    g = torch.Generator().manual_seed(0)
    out = sample_next(torch.randn(2, 10), top_k=10_000, draws=g)  # k clamped to V: no error
    assert out.shape == (2, 1)
    logits = torch.randn(1, 10)
    for off in (None, 0):  # both mean off: exactly the plain softmax draw (one row: multinomial)
        a = sample_next(logits.clone(), top_k=off, draws=torch.Generator().manual_seed(1))
        b = torch.multinomial(F.softmax(logits, -1), 1, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)


def test_top_k_matches_nanogpt_rule():
    # nanoGPT: logits below the k-th largest become -inf, then one multinomial draw
    logits = torch.randn(1, 300)
    ref = logits.clone() / 0.8
    v, _ = torch.topk(ref, 200)
    ref[ref < v[:, [-1]]] = -float('inf')
    torch.manual_seed(7)
    a = torch.multinomial(F.softmax(ref, -1), 1)
    torch.manual_seed(7)
    b = sample_next(logits.clone(), temperature=0.8, top_k=200)
    assert torch.equal(a, b)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    for top_p, allowed in [(0.5, {0}), (0.51, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (1e-9, {0}), (1.0, {0, 1, 2, 3})]:
        seen = set()
        g = torch.Generator().manual_seed(0)
        for _ in range(400):
            seen.add(sample_next(logits.clone(), top_p=top_p, draws=g).item())
        assert seen == allowed, (top_p, seen)


def test_top_p_permuted_vocab():
    # the kept set is found in sorted order but masked in vocabulary order
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    g = torch.Generator().manual_seed(0)
    seen = {sample_next(probs.log(), top_p=0.7, draws=g).item() for _ in range(300)}
    assert seen == {1, 3}


def test_batched_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(20000, -1).clone()  # many rows: the inverse-CDF draw
    ids = sample_next(logits, draws=torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(ids, minlength=5).float() / len(ids)
    torch.testing.assert_close(freq, probs, atol=0.012, rtol=0)
    assert freq[4] == 0  # zero probability: never


def test_padded_vocab_never_sampled():
    logits = torch.zeros(2, 64)
    logits[:, 60:] = 100.0  # the padding is the most likely by far
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert sample_next(logits.clone(), n_vocab=60, draws=g).max() < 60
    assert sample_next(logits.clone(), temperature=0, n_vocab=60).max() < 60


def test_same_seed_same_tokens():
    model, _ = tiny_model()
    x = torch.zeros((1, 3), dtype=torch.long)
    torch.manual_seed(3)
    a = model.generate(x, 20, temperature=1.0, top_k=10, top_p=0.9)
    torch.manual_seed(3)
    b = model.generate(x, 20, temperature=1.0, top_k=10, top_p=0.9)
    torch.manual_seed(4)
    c = model.generate(x, 20, temperature=1.0, top_k=10, top_p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)
