"""sample.py end to end, as a subprocess: the bundled demo, GPT-2 from the offline hub cache,
nanoGPT-format checkpoints, prompts, and the clear errors."""
import os

import pytest
import tiktoken
import torch

from conftest import ROOT, run_sample, tiny_model, write_meta, write_nanogpt_checkpoint
from draws import advance_like_nanogpt_init
from model import GPT, GPTConfig
from test_model import reference_generate

DEMO = os.path.join(ROOT, 'out-shakespeare-char')
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def reference_output(model, encode, decode, start, num_samples, max_new_tokens, temperature=0.8, top_k=200, seed=1337,
                     replay_init=True):
    """Our reference loop's text, sampled as nanoGPT's sample.py samples: seed, replay the init draws
    of a nanoGPT-built model (checkpoints only), then samples one after another. (That this is
    nanoGPT's text is shown against nanoGPT's own files in test_exact.py.)"""
    torch.manual_seed(seed)
    if replay_init:
        advance_like_nanogpt_init(model.config)
    x = torch.tensor(encode(start), dtype=torch.long)[None, ...]
    out = []
    with torch.no_grad():
        for _ in range(num_samples):
            y = reference_generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k)
            out.append(decode(y[0].tolist()) + '\n---------------\n')
    return ''.join(out)


def check_error(r, *words):
    """A user error: exit code 2, one line on stderr naming what is wrong, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: '), r.stderr
    for w in words:
        assert w in last, (w, last)


def test_gpt2_encoding_offline():
    enc = tiktoken.get_encoding("gpt2")
    assert enc.encode("Hello, my name is") == [15496, 11, 616, 1438, 318]
    assert enc.decode([15496, 11, 616, 1438, 318]) == "Hello, my name is"


def test_demo_model_matches_the_reference_loop():
    # one sample after another, nanoGPT's loop: exactly nanoGPT's text; the KV cache: the same text
    args = ('--out_dir=out-shakespeare-char', '--num_samples=2', '--max_new_tokens=150', '--batch_size=1')
    r = run_sample(*args, '--kv_cache=False')
    assert r.returncode == 0, r.stderr
    cached = run_sample(*args, '--stream=False')
    streamed = run_sample(*args)
    assert cached.stdout == r.stdout and streamed.stdout == r.stdout
    ckpt = torch.load(os.path.join(DEMO, 'ckpt.pt'), weights_only=True)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    model.eval()
    import pickle
    with open(os.path.join(DEMO, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    encode = lambda s: [meta['stoi'][c] for c in s]
    decode = lambda l: ''.join(meta['itos'][i] for i in l)
    assert r.stdout == reference_output(model, encode, decode, "\n", 2, 150)
    # and it reads like Shakespeare: mostly real words
    words = r.stdout.split()
    common = {'the', 'and', 'to', 'of', 'I', 'my', 'you', 'that', 'a', 'in', 'is', 'not', 'me', 'with'}
    assert sum(w.strip(",.;:!?'") in common for w in words) > len(words) // 10


def test_gpt2_from_offline_hub_cache_matches_the_reference_loop(gpt2_hub, tmp_path):
    r = run_sample('--init_from=gpt2', '--start=Hello, my name is', '--num_samples=2', '--batch_size=1',
                   '--kv_cache=False', '--max_new_tokens=12', '--stop_at_eot=False', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    enc = tiktoken.get_encoding("gpt2")
    model = GPT.from_pretrained('gpt2').eval()
    expected = reference_output(model, lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}),
                              enc.decode, "Hello, my name is", 2, 12, replay_init=False)
    assert r.stdout == expected
    assert r.stdout.startswith("Hello, my name is")


def test_unconditional_gpt2_and_stop_at_eot(gpt2_hub, tmp_path):
    r = run_sample('--init_from=gpt2', '--start=', '--num_samples=1', '--max_new_tokens=5', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not r.stdout.startswith('<|endoftext|>')  # the implicit start token is not printed
    assert r.stdout.endswith('---------------\n')


@pytest.fixture
def char_ckpt(tmp_path):
    """A tiny nanoGPT-format character-level checkpoint (block_size 16) with its meta.pkl."""
    model, model_args = tiny_model(vocab_size=len(SHAKESPEARE_CHARS), block_size=16)
    out_dir = tmp_path / 'out'
    write_nanogpt_checkpoint(out_dir, model, model_args, dataset='toy')
    write_meta(str(out_dir / 'meta.pkl'), SHAKESPEARE_CHARS)
    return tmp_path


def test_resume_nanogpt_checkpoint_past_block_size(char_ckpt):
    r = run_sample('--out_dir=out', '--start=ROMEO:', '--num_samples=2', '--max_new_tokens=40', cwd=char_ckpt)
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split('---------------\n')
    assert len(samples) == 3 and samples[2] == ''
    for s in samples[:2]:
        assert s.startswith('ROMEO:') and len(s) == len('ROMEO:') + 40 + 1  # + print's newline
    assert set(r.stdout) <= set(SHAKESPEARE_CHARS)


def test_meta_lookup_order(char_ckpt):
    # data/<dataset>/meta.pkl is used when out_dir has none; out_dir's wins when both exist
    reversed_chars = SHAKESPEARE_CHARS[::-1]
    os.rename(char_ckpt / 'out' / 'meta.pkl', char_ckpt / 'saved.pkl')
    write_meta(str(char_ckpt / 'data' / 'toy' / 'meta.pkl'), reversed_chars)
    args = ('--out_dir=out', '--start=a', '--num_samples=1', '--max_new_tokens=30', '--temperature=0')
    from_data = run_sample(*args, cwd=char_ckpt)
    assert from_data.returncode == 0 and 'data/toy/meta.pkl' in from_data.stderr
    os.rename(char_ckpt / 'saved.pkl', char_ckpt / 'out' / 'meta.pkl')
    from_out = run_sample(*args, cwd=char_ckpt)
    assert from_out.returncode == 0 and 'out/meta.pkl' in from_out.stderr
    assert from_data.stdout != from_out.stdout


def test_file_prompt(char_ckpt):
    (char_ckpt / 'prompt.txt').write_text('KING HENRY:\nWhat say', encoding='utf-8')
    r = run_sample('--out_dir=out', '--start=FILE:prompt.txt', '--num_samples=1', '--max_new_tokens=3', cwd=char_ckpt)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('KING HENRY:\nWhat say')
    check_error(run_sample('--out_dir=out', '--start=FILE:nope.txt', cwd=char_ckpt), 'nope.txt')
    (char_ckpt / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1'))
    check_error(run_sample('--out_dir=out', '--start=FILE:latin1.txt', cwd=char_ckpt), 'latin1.txt', 'UTF-8')


def test_long_prompt_warns_and_zero_new_tokens_prints_prompt(char_ckpt):
    prompt = 'abcdefghij' * 3  # 30 characters, block_size 16
    r = run_sample('--out_dir=out', f'--start={prompt}', '--num_samples=1', '--max_new_tokens=5', cwd=char_ckpt)
    assert r.returncode == 0 and 'warning' in r.stderr and 'last 16' in r.stderr
    assert r.stdout.startswith(prompt)
    r = run_sample('--out_dir=out', '--start=hello', '--num_samples=1', '--max_new_tokens=0', cwd=char_ckpt)
    assert r.returncode == 0 and r.stdout == 'hello\n---------------\n'
