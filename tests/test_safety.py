"""Whatever goes wrong, sample.py ends with one clear line on stderr and exit code 2: bad settings
(which also write nothing), missing or corrupt files, models it cannot represent, too little
memory. Untrusted files cannot run code."""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import DEMO, ROOT, SHAKESPEARE_CHARS, check_error, run_sample, snapshot, write_meta


def edit_ckpt(folder, change):
    """Apply change to the dict in folder/out/ckpt.pt and save it again."""
    path = folder / 'out' / 'ckpt.pt'
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


# (name, set-up on char_ckpt's folder, arguments, words the error line must hold)
CASES = [
    # run outside the repository: the path looked at, and the demo's path from here
    ('missing out_dir', None, ['--out_dir=missing'], [os.path.join('missing', 'ckpt.pt'), '--init_from=gpt2',
                                                      '--out_dir=' + DEMO]),
    ('truncated ckpt', lambda w: (w / 'out' / 'ckpt.pt').write_bytes((w / 'out' / 'ckpt.pt').read_bytes()[:3000]),
     ['--out_dir=out'], ['ckpt.pt', 'corrupt']),
    ('garbage ckpt', lambda w: (w / 'out' / 'ckpt.pt').write_bytes(random.Random(0).randbytes(5000)),
     ['--out_dir=out'], ['ckpt.pt', 'corrupt']),
    # one garbage file in 256 begins with pickle's PROTO opcode: refused before the unpickler sees it
    ('garbage ckpt, a pickle header', lambda w: (w / 'out' / 'ckpt.pt').write_bytes(b'\x80\x25' + bytes(5000)),
     ['--out_dir=out'], ['ckpt.pt', 'corrupt', 'not a torch.save file']),
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
    # a 65-id model and no meta.pkl: an error whatever the prompt ('A' is GPT-2 id 32, inside 65)
    ('small vocabulary, meta.pkl missing, any prompt', lambda w: os.remove(w / 'out' / 'meta.pkl'),
     ['--out_dir=out', '--start=A'], ['65', 'vocabulary', 'meta.pkl', 'missing']),
    ('meta.pkl not a pickle', lambda w: (w / 'out' / 'meta.pkl').write_text('hello'), ['--out_dir=out'], ['meta.pkl']),
    # another model's vocabulary beside the 65-id checkpoint: garbage text before, an error now
    ('meta.pkl of 12 characters', lambda w: write_meta(str(w / 'out' / 'meta.pkl'), SHAKESPEARE_CHARS[:12]),
     ['--out_dir=out'], ['meta.pkl', '12 characters', '65 ids']),
    ('meta.pkl of 100 characters', lambda w: write_meta(str(w / 'out' / 'meta.pkl'), [chr(32 + i) for i in range(100)]),
     ['--out_dir=out'], ['meta.pkl', '100 characters', '65 ids']),
    ('unknown prompt characters', None, ['--out_dir=out', '--start=héllo€ 你'], ["'é'", "'€'", "'你'"]),
    ('missing prompt file', None, ['--out_dir=out', '--start=FILE:nope.txt'], ['nope.txt']),
    ('prompt file not UTF-8', lambda w: (w / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1')),
     ['--out_dir=out', '--start=FILE:latin1.txt'], ['latin1.txt', 'UTF-8']),
    ('missing prompts file', None, ['--out_dir=out', '--prompts=nope.jsonl'], ['nope.jsonl', 'does not exist']),
    ('empty prompts file', lambda w: (w / 'p.txt').write_text(''), ['--out_dir=out', '--prompts=p.txt'], ['p.txt', 'no prompt']),
    ('empty line in a prompts file', lambda w: (w / 'p.txt').write_text('ROMEO:\n\nJULIET:\n'),
     ['--out_dir=out', '--prompts=p.txt'], ['p.txt', 'line 2', 'empty']),
    ('bad JSON line', lambda w: (w / 'p.jsonl').write_text('{"prompt": "A"}\n{"prompt": "B"\n'),
     ['--out_dir=out', '--prompts=p.jsonl'], ['p.jsonl', 'line 2', 'JSON']),
    ('JSON line without a string prompt', lambda w: (w / 'p.jsonl').write_text('{"prompt": "A"}\n{"text": "B"}\n'),
     ['--out_dir=out', '--prompts=p.jsonl'], ['p.jsonl', 'line 2', '"prompt"']),
    ('output xml', None, ['--out_dir=out', '--output=xml'], ['xml', 'text', 'jsonl']),
    ('min_p above one', None, ['--out_dir=out', '--min_p=1.5'], ['min_p', '[0, 1]']),
    ('stop a number', None, ['--out_dir=out', '--stop=3'], ['stop', 'string']),
    ('stop an empty string', None, ['--out_dir=out', "--stop=''"], ['stop', 'string']),
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
    ('seed beyond 64 bits', None, ['--out_dir=out', '--seed=99999999999999999999'], ['seed', '2**64']),
    ('no cuda', None, ['--out_dir=out', '--device=cuda'], ['cuda', 'not available', 'cpu']),
    ('no mps', None, ['--out_dir=out', '--device=mps'], ['mps', 'not available', 'cpu']),
    ('garbage device', None, ['--out_dir=out', '--device=toaster'], ['toaster', 'cpu']),
    ('float8', None, ['--out_dir=out', '--dtype=float8'], ['float8', 'float32', 'bfloat16', 'float16']),
    ('gpt2-large not cached, offline', None, ['--init_from=gpt2-large'], ['gpt2-large', 'HF_HOME', 'local directory']),
    ('hub id not cached, offline', None, ['--init_from=someone/unknown-model'],
     ['someone/unknown-model', 'HF_HOME', 'local directory']),
]


@pytest.mark.parametrize('name, setup, args, words', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(char_ckpt, name, setup, args, words):
    if setup:
        setup(char_ckpt)
    before = snapshot(char_ckpt)
    r = run_sample('--num_samples=1', '--max_new_tokens=3', *args, cwd=char_ckpt)  # later arguments win
    check_error(r, *words, others=('Overriding', 'Loading meta', 'No meta.pkl'))
    assert snapshot(char_ckpt) == before  # nothing written or overwritten


def test_unrepresentable_local_model(distilgpt2, tmp_path):
    _, hub_snapshot = distilgpt2
    d = tmp_path / 'model'
    d.mkdir()
    c = json.load(open(os.path.join(hub_snapshot, 'config.json')))
    c['add_cross_attention'] = True
    (d / 'config.json').write_text(json.dumps(c))
    os.symlink(os.path.join(hub_snapshot, 'model.safetensors'), d / 'model.safetensors')
    check_error(run_sample(f'--init_from={d}', '--num_samples=1', '--max_new_tokens=1', cwd=tmp_path),
                'add_cross_attention')


def test_corrupt_safetensors(distilgpt2, tmp_path):
    _, hub_snapshot = distilgpt2
    d = tmp_path / 'model'
    d.mkdir()
    (d / 'config.json').write_bytes(open(os.path.join(hub_snapshot, 'config.json'), 'rb').read())
    (d / 'model.safetensors').write_bytes(open(os.path.join(hub_snapshot, 'model.safetensors'), 'rb').read()[:5000])
    check_error(run_sample(f'--init_from={d}', cwd=tmp_path), 'model.safetensors', 'corrupt', 'cut off')
    whole = open(os.path.join(hub_snapshot, 'model.safetensors'), 'rb').read()
    (d / 'model.safetensors').write_bytes(whole[:-1000])  # the header whole, the last tensor cut short
    check_error(run_sample(f'--init_from={d}', cwd=tmp_path), 'model.safetensors', 'corrupt', f'{len(whole):,}')
    (d / 'model.safetensors').write_bytes(os.urandom(3000))
    check_error(run_sample(f'--init_from={d}', cwd=tmp_path), 'model.safetensors', 'corrupt')


def test_offline_tiktoken_is_one_line(tmp_path):
    # a GPT-2-encoded checkpoint, tiktoken's cache empty and no way out (a proxy that refuses)
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path / 'empty'), HTTPS_PROXY='http://127.0.0.1:9',
               HTTP_PROXY='http://127.0.0.1:9')
    bpe = os.path.join(ROOT, 'tests', 'nanogpt-reference', 'bpe-tiny')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'sample.py'), f'--out_dir={bpe}', '--num_samples=1',
                        '--max_new_tokens=2'], capture_output=True, text=True, env=env, timeout=300)
    check_error(r, 'tiktoken', 'TIKTOKEN_CACHE_DIR', str(tmp_path / 'empty'))


@pytest.mark.parametrize('fmt', [[], ['--dtype=bfloat16'], ['--quantize=int8']], ids=['float32', 'bfloat16', 'int8'])
def test_ctrl_c_while_loading_is_an_interrupt(gpt2_hub, tmp_path, fmt):
    # SIGINT at several points after the configurator has run (so while the model is mapped,
    # converted, quantized or laid out, or the first tokens decode): always exit code 130 and
    # nothing about the file. Before, an interrupt inside safetensors' or torch's native code
    # surfaced as "not a readable safetensors file, truncated or corrupt?", exit 2.
    for delay in (0.0, 0.15, 0.4, 0.8, 1.5):
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'sample.py'), '--init_from=gpt2', '--num_samples=2',
                              '--max_new_tokens=500', *fmt], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=dict(os.environ))
        while not p.stderr.readline().startswith(b'Overriding: max_new_tokens'):  # the configurator is done
            pass
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130, (fmt, delay, p.returncode, err[-500:])
        assert b'Traceback' not in err and b'corrupt' not in err and b'error' not in err, (fmt, delay, err[-500:])


def test_kv_cache_that_cannot_fit():
    line = check_error(run_sample('--out_dir=' + DEMO, '--num_samples=2000000', '--max_new_tokens=100'),
                       '--batch_size', '--num_samples', '--max_new_tokens')
    assert line.startswith('error: the KV cache needs'), line


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='RLIMIT_AS is Linux-only here')
def test_allocation_failure_is_memory_not_a_corrupt_file(gpt2_hub, tmp_path):
    # an address-space limit that torch's import fits in but mapping the 500 MB of weights does not
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    r = run_sample('--init_from=gpt2', '--num_samples=1', '--max_new_tokens=3', cwd=tmp_path, preexec_fn=limit,
                   timeout=300)
    if r.returncode == 0:
        pytest.skip('3 GB of address space was enough on this machine')
    line = check_error(r, 'memory')
    assert 'corrupt' not in line, line


class Payload:
    """Unpickling this calls os.system, which creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_ckpt_is_refused_without_running(char_ckpt):
    marker = char_ckpt / 'pwned'
    edit_ckpt(char_ckpt, lambda c: c['config'].update(dataset=Payload(marker)))
    r = run_sample('--out_dir=out', '--num_samples=1', '--max_new_tokens=2', cwd=char_ckpt)
    check_error(r, 'ckpt.pt', 'refused')
    assert not marker.exists()


def test_malicious_meta_is_refused_without_running(char_ckpt):
    marker = char_ckpt / 'pwned'
    with open(char_ckpt / 'out' / 'meta.pkl', 'wb') as f:
        pickle.dump({'stoi': {'a': 0}, 'itos': {0: 'a'}, 'x': Payload(marker)}, f)
    r = run_sample('--out_dir=out', '--num_samples=1', '--max_new_tokens=2', cwd=char_ckpt)
    check_error(r, 'meta.pkl', 'refused')
    assert not marker.exists()
