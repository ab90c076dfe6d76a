"""Exactness against nanoGPT's own artifacts: tests/nanogpt-reference/ holds checkpoints written by
nanoGPT's code and the exact stdout of nanoGPT's sample.py (copied byte for byte from the project's
shared reference folder; its README gives every command). Our stdout must be nanoGPT's stdout less
its diagnostic lines, which we print on stderr."""
import os

import pytest
import torch

from helpers import REFERENCE, REFERENCE_CASES, drop_diagnostics, reference_generate, run_sample

REF, CASES = REFERENCE, REFERENCE_CASES
MODES = {'defaults': [], 'batch_size=1': ['--batch_size=1'], 'batch_size=3': ['--batch_size=3'],
         'nanoGPT loop': ['--batch_size=1', '--kv_cache=False']}


def nanogpt_text(name):
    """nanoGPT's stdout for a reference file, less its diagnostic lines."""
    with open(os.path.join(REF, name), encoding='utf-8') as f:
        return drop_diagnostics(f.read())


def run_case(name, mode, *extra):
    out_dir = os.path.join(REF, os.path.dirname(name))
    r = run_sample(f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32', *CASES[name], *MODES[mode], *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('name', CASES)
def test_stdout_is_nanogpts(name, mode):
    extra = ['--stop_at_eot=False'] if name.startswith('bpe') else []  # nanoGPT never stops
    assert run_case(name, mode, *extra) == nanogpt_text(name)


@pytest.mark.parametrize('name', [n for n in CASES if n.startswith('bpe')])
def test_stop_at_eot_is_nanogpts_text_up_to_each_first_eot(name):
    # none of nanoGPT's samples here produced <|endoftext|> after its prompt: the whole text
    expected = nanogpt_text(name)
    samples = expected.count('\n---------------\n')
    assert expected.count('<|endoftext|>') == (samples if 'eot_prompt' in name else 0)
    assert run_case(name, 'defaults') == expected


# ---------------------------------------------------------------- bf16 as nanoGPT's autocast computes it

def autocast_reference(model, x, num_samples, max_new_tokens, temperature, top_k):
    """nanoGPT's sample.py loop under torch.autocast(bfloat16): one sample after another, the logits
    / temperature and top-k on the bf16 logits, softmax in autocast's dtype, one multinomial each."""
    return torch.cat([reference_generate(model, x, max_new_tokens, temperature, top_k, autocast=torch.bfloat16)
                      for _ in range(num_samples)])


@pytest.mark.parametrize('bias, n_embd, n_head', [(True, 64, 4), (False, 180, 6)])
@torch.no_grad()
def test_bf16_is_nanogpts_autocast(bias, n_embd, n_head):
    # a float32 model whose weights are bf16 values, run under autocast, and ours loaded in bf16
    # (bf16 matmul weights, float32 LayerNorm and residual stream): bit-identical logits, same draws
    from generate import generate_tokens
    from model import GPT, GPTConfig
    config = GPTConfig(n_layer=2, n_head=n_head, n_embd=n_embd, block_size=16, vocab_size=65, bias=bias)
    torch.manual_seed(0)
    reference = GPT(config).eval()
    for p in reference.parameters():
        p.copy_(p.bfloat16().float())
    ours = GPT(config).eval()
    ours.load_state_dict(reference.state_dict())
    ours.cast_(torch.bfloat16)
    assert ours.transformer.h[0].ln_1.weight.dtype == torch.float32
    x = torch.randint(0, 65, (3, 12))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected, _ = reference(x)
    logits, _ = ours(x)
    assert logits.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(logits, expected)
    torch.manual_seed(5)
    expected = autocast_reference(reference, x[:1], 3, 30, temperature=0.9, top_k=20)  # past block_size
    for kv_cache in (False, True):
        torch.manual_seed(5)
        new = list(generate_tokens(ours, x[:1].expand(3, -1), 30, temperature=0.9, top_k=20, kv_cache=kv_cache))
        assert torch.equal(torch.cat([x[:1].expand(3, -1)] + new, dim=1), expected), kv_cache
