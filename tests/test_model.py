"""model.py: sampling rules, nanoGPT checkpoints, and GPT-2 import parity with Hugging Face."""
import os

import pytest
import torch

import load
from torch.nn import functional as F

from conftest import tiny_model, write_nanogpt_checkpoint
from generate import sample as sample_next
from model import GPT, GPTConfig, LoadError


# ---------------------------------------------------------------- sampling function

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


# ---------------------------------------------------------------- generate

def reference_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """nanoGPT's loop, written out: crop to block_size, full forward, last position,
    / temperature, top-k mask, softmax, one multinomial draw from the global generator."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= model.config.block_size else idx[:, -model.config.block_size:]
        logits, _ = model(idx_cond)
        logits = logits[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float('Inf')
        probs = F.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
    return idx


@torch.no_grad()
def test_generate_matches_nanogpt_loop_past_block_size():
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


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize('compiled, mask_buffers, bias', [(True, False, True), (False, True, False)])
def test_nanogpt_checkpoint_loads(tmp_path, compiled, mask_buffers, bias):
    model, model_args = tiny_model(bias=bias)
    write_nanogpt_checkpoint(tmp_path, model, model_args, compiled=compiled, mask_buffers=mask_buffers)
    loaded = load.from_checkpoint(os.path.join(tmp_path, 'ckpt.pt'))
    assert loaded.train_config['dataset'] == 'shakespeare_char'
    assert loaded.config.gelu == 'exact'  # nanoGPT-trained: exact GELU
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
    x = torch.randint(0, 65, (2, 10))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_gpt_config_defaults_are_nanogpts():
    c = GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == \
        (1024, 50304, 12, 12, 768, 0.0, True)


# ---------------------------------------------------------------- GPT-2 import

@torch.no_grad()
def test_from_pretrained_matches_hugging_face(gpt2_hub):
    hf = gpt2_hub
    model = GPT.from_pretrained('gpt2').eval()
    assert model.config.gelu == 'tanh' and model.config.vocab_size == 50257
    assert model.lm_head.weight is model.transformer.wte.weight
    x = torch.tensor([[15496, 11, 616, 1438, 318], [464, 3797, 3332, 319, 262]])  # "Hello, my name is", ...
    ours, _ = model(x, targets=torch.zeros_like(x))  # with targets: logits at every position
    theirs = hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # greedy decoding gives the same tokens as Hugging Face's generate
    greedy = model.generate(x[:1], 20, temperature=0.0)
    hf_greedy = hf.generate(x[:1], max_new_tokens=20, do_sample=False, pad_token_id=50256)
    assert torch.equal(greedy, hf_greedy)


def test_from_pretrained_rejects_a_mismatched_file(gpt2_hub, tmp_path):
    from safetensors.torch import save_file
    hub_dir = os.path.join(os.environ['HF_HOME'], 'hub', 'models--gpt2', 'snapshots')
    path = os.path.join(hub_dir, os.listdir(hub_dir)[0], 'model.safetensors')
    small = GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, gelu='tanh')
    from safetensors import safe_open
    with safe_open(path, 'pt') as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    bad = dict(sd)
    bad['transformer.h.0.mlp.c_fc.weight'] = bad['transformer.h.0.mlp.c_fc.weight'][:, :100].contiguous()
    save_file(bad, tmp_path / 'bad.safetensors')
    with pytest.raises(LoadError, match=r"c_fc.weight.*shape"):
        load.from_safetensors(str(tmp_path / 'bad.safetensors'), small)
    missing = {k: v for k, v in sd.items() if 'h.11.' not in k}
    save_file(missing, tmp_path / 'missing.safetensors')
    with pytest.raises(LoadError, match=r"missing tensor .*h\.11\."):
        load.from_safetensors(str(tmp_path / 'missing.safetensors'), small)


def test_from_pretrained_offline_without_cache_is_a_clear_error():
    with pytest.raises(LoadError, match=r"gpt2-medium.*HF_HOME.*local directory"):
        GPT.from_pretrained('gpt2-medium')
    with pytest.raises(LoadError, match=r"unknown GPT-2 model 'gpt3'"):
        GPT.from_pretrained('gpt3')
