"""Bad input gets one clear line and exit code 2; untrusted files cannot run code."""
import os
import pickle

import pytest
import torch

from conftest import ROOT, run_sample, tiny_model, write_meta, write_nanogpt_checkpoint

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def world(tmp_path):
    """tmp_path/out: a tiny character-level nanoGPT checkpoint (block_size 16) and meta.pkl."""
    model, model_args = tiny_model(vocab_size=len(CHARS), block_size=16)
    write_nanogpt_checkpoint(tmp_path / 'out', model, model_args, dataset='toy')
    write_meta(str(tmp_path / 'out' / 'meta.pkl'), CHARS)
    return tmp_path


def snapshot(d):
    """{path: (size, mtime)} of every file under d, to prove nothing was written."""
    return {os.path.join(r, f): (os.stat(os.path.join(r, f)).st_size, os.stat(os.path.join(r, f)).st_mtime_ns)
            for r, _, fs in os.walk(d) for f in fs}


def edit_ckpt(world, change):
    path = world / 'out' / 'ckpt.pt'
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


# (name, set-up on the world, arguments, words the error line must hold)
CASES = [
    # run outside the repository: the path looked at, and the demo's path from here
    ('missing out_dir', None, ['--out_dir=missing'], [os.path.join('missing', 'ckpt.pt'), '--init_from=gpt2',
                                                      '--out_dir=' + os.path.join(ROOT, 'out-shakespeare-char')]),
    ('truncated ckpt', lambda w: (w / 'out' / 'ckpt.pt').write_bytes((w / 'out' / 'ckpt.pt').read_bytes()[:3000]),
     ['--out_dir=out'], ['ckpt.pt', 'corrupt']),
    ('garbage ckpt', lambda w: (w / 'out' / 'ckpt.pt').write_bytes(os.urandom(5000)), ['--out_dir=out'], ['ckpt.pt']),
    ('ckpt without model', lambda w: edit_ckpt(w, lambda c: c.pop('model')), ['--out_dir=out'], ['ckpt.pt', "'model'"]),
    ('ckpt without model_args', lambda w: edit_ckpt(w, lambda c: c.pop('model_args')), ['--out_dir=out'], ['ckpt.pt', 'model_args']),
    ('unknown model_args field', lambda w: edit_ckpt(w, lambda c: c['model_args'].update(n_expert=8)),
     ['--out_dir=out'], ['ckpt.pt', 'model_args', 'n_expert']),
    ('state dict does not match', lambda w: edit_ckpt(w, lambda c: c['model_args'].update(n_embd=64)),
     ['--out_dir=out'], ['ckpt.pt', 'do not match']),
    ('meta.pkl without stoi', lambda w: pickle.dump({'itos': {0: 'a'}}, open(w / 'out' / 'meta.pkl', 'wb')),
     ['--out_dir=out'], ['meta.pkl', 'stoi']),
    ('meta.pkl with ids that are not ints', lambda w: pickle.dump({'stoi': {'a': 'x'}, 'itos': {'x': 'a'}}, open(w / 'out' / 'meta.pkl', 'wb')),
     ['--out_dir=out'], ['meta.pkl', 'stoi']),
    ('ids beyond the vocabulary (meta.pkl missing)', lambda w: os.remove(w / 'out' / 'meta.pkl'),
     ['--out_dir=out', '--start=hello world'], ['vocabulary', 'meta.pkl']),
    ('meta.pkl not a pickle', lambda w: (w / 'out' / 'meta.pkl').write_text('hello'), ['--out_dir=out'], ['meta.pkl']),
    ('unknown prompt characters', None, ['--out_dir=out', '--start=héllo€ 你'], ["'é'", "'€'", "'你'"]),
    ('missing prompt file', None, ['--out_dir=out', '--start=FILE:nope.txt'], ['nope.txt']),
    ('prompt file not UTF-8', lambda w: (w / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1')),
     ['--out_dir=out', '--start=FILE:latin1.txt'], ['latin1.txt', 'UTF-8']),
    ('unknown init_from', None, ['--init_from=gpt3'], ['gpt3', 'resume', 'gpt2-xl', 'local directory', 'HF_HUB_OFFLINE']),
    ('init_from neither path nor id', None, ['--init_from=no such/thing/here'], ['no such/thing/here', 'resume']),
    ('negative temperature', None, ['--out_dir=out', '--temperature=-0.5'], ['temperature', '>= 0']),
    ('negative top_k', None, ['--out_dir=out', '--top_k=-1'], ['top_k', '>= 0']),
    ('top_p zero', None, ['--out_dir=out', '--top_p=0.0'], ['top_p', '(0, 1]']),
    ('top_p above one', None, ['--out_dir=out', '--top_p=1.5'], ['top_p', '(0, 1]']),
    ('negative max_new_tokens', None, ['--out_dir=out', '--max_new_tokens=-1'], ['max_new_tokens', '>= 0']),
    ('zero num_samples', None, ['--out_dir=out', '--num_samples=0'], ['num_samples', '>= 1']),
    ('negative batch_size', None, ['--out_dir=out', '--batch_size=-2'], ['batch_size', '>= 0']),
    ('seed not an int', None, ['--out_dir=out', '--seed=abc'], ['seed', 'int']),
    ('seed a float', None, ['--out_dir=out', '--seed=1.5'], ['seed', 'int']),
    ('no cuda', None, ['--out_dir=out', '--device=cuda'], ['cuda', 'not available', 'cpu']),
    ('no mps', None, ['--out_dir=out', '--device=mps'], ['mps', 'not available', 'cpu']),
    ('garbage device', None, ['--out_dir=out', '--device=toaster'], ['toaster', 'cpu']),
    ('float8', None, ['--out_dir=out', '--dtype=float8'], ['float8', 'float32', 'bfloat16', 'float16']),
]


@pytest.mark.parametrize('name, setup, args, words', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(world, name, setup, args, words):
    if setup:
        setup(world)
    before = snapshot(world)
    r = run_sample('--num_samples=1', '--max_new_tokens=3', *args, cwd=world)  # later arguments win
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert 'Traceback' not in r.stdout + r.stderr
    lines = [l for l in r.stderr.splitlines() if not l.startswith(('Overriding', 'Loading meta', 'No meta.pkl'))]
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert snapshot(world) == before  # nothing written or overwritten


def test_long_prompt_is_a_warning_and_zero_tokens_prints_the_prompt(world):
    r = run_sample('--out_dir=out', '--start=' + 'abc' * 10, '--num_samples=1', '--max_new_tokens=4', cwd=world)
    assert r.returncode == 0 and 'warning' in r.stderr and 'last 16' in r.stderr
    assert r.stdout.startswith('abc' * 10)
    r = run_sample('--out_dir=out', '--start=hello', '--num_samples=1', '--max_new_tokens=0', cwd=world)
    assert r.returncode == 0 and r.stdout == 'hello\n---------------\n'


class Payload:
    """Unpickling this calls os.system, which creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_ckpt_is_refused_without_running(world):
    marker = world / 'pwned'
    path = world / 'out' / 'ckpt.pt'
    ckpt = torch.load(path, weights_only=True)
    ckpt['config']['dataset'] = Payload(marker)
    torch.save(ckpt, path)
    r = run_sample('--out_dir=out', '--num_samples=1', '--max_new_tokens=2', cwd=world)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert 'ckpt.pt' in r.stderr and 'refused' in r.stderr
    assert not marker.exists()


def test_malicious_meta_is_refused_without_running(world):
    marker = world / 'pwned'
    with open(world / 'out' / 'meta.pkl', 'wb') as f:
        pickle.dump({'stoi': {'a': 0}, 'itos': {0: 'a'}, 'x': Payload(marker)}, f)
    r = run_sample('--out_dir=out', '--num_samples=1', '--max_new_tokens=2', cwd=world)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert 'meta.pkl' in r.stderr and 'refused' in r.stderr
    assert not marker.exists()


def test_nanogpt_checkpoint_with_optimizer_state_still_loads(world):
    r = run_sample('--out_dir=out', '--start=To', '--num_samples=1', '--max_new_tokens=5', cwd=world)
    assert r.returncode == 0, r.stderr
    assert torch.load(world / 'out' / 'ckpt.pt', weights_only=True)['optimizer']['state']
