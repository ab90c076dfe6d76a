"""train.py: its default out_dir, the refusal to replace a checkpoint of other data, and its
one-line errors. Each run trains a tiny model on a tiny text for two steps, in a temporary folder."""
import hashlib
import os
import pickle
import random
import shutil

import pytest
import torch

from helpers import DEMO, check_error, run_sample, snapshot

TINY = ['--n_layer=1', '--n_head=1', '--n_embd=8', '--block_size=8', '--max_iters=2', '--eval_iters=1',
        '--eval_interval=1', '--batch_size=2']
TINY_CONFIG = "n_layer = 1\nn_head = 1\nn_embd = 8\nblock_size = 8\nmax_iters = 2\neval_iters = 1\n" \
              "eval_interval = 1\nbatch_size = 2\n"


def some_text(n, seed=0):
    """n characters of made-up words and lines."""
    rnd = random.Random(seed)
    return ''.join(rnd.choice('abcdefgh ijk\n') for _ in range(n))


def run_train(*args, cwd):
    """Run train.py as a user would, in cwd."""
    return run_sample(*args, cwd=cwd, script='train.py')


def error_line(r):
    """The one error line a refused run printed (besides the configurator's 'Overriding:' lines)."""
    return check_error(r, others=('Overriding: ',))


def check_pair(out_dir, text):
    """ckpt.pt records text as its data, and meta.pkl holds text's vocabulary, the model's size."""
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)
    with open(os.path.join(out_dir, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    assert ckpt['config']['data_sha256'] == hashlib.sha256(text.encode()).hexdigest()
    assert ckpt['config']['data_bytes'] == len(text.encode())
    assert meta['stoi'] == {c: i for i, c in enumerate(sorted(set(text)))}
    assert meta['vocab_size'] == ckpt['model_args']['vocab_size'] == len(set(text))
    assert not [name for name in os.listdir(out_dir) if name.endswith('.tmp')]
    return ckpt


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A folder where `python train.py --data_file=data.txt` (tiny) ran with the default out_dir;
    returns (folder, the demo's files before, the demo's files after)."""
    d = tmp_path_factory.mktemp('trained')
    (d / 'data.txt').write_text(some_text(2000))
    demo_before = snapshot(DEMO)
    r = run_train('--data_file=data.txt', *TINY, cwd=d)
    assert r.returncode == 0, r.stderr
    return d, demo_before, snapshot(DEMO)


def test_default_out_dir_is_out_and_the_demo_is_untouched(trained):
    d, demo_before, demo_after = trained
    assert demo_after == demo_before
    assert sorted(os.listdir(d / 'out')) == ['ckpt.pt', 'meta.pkl']
    ckpt = check_pair(d / 'out', (d / 'data.txt').read_text())
    assert ckpt['config']['data_path'] == str(d / 'data.txt') and ckpt['config']['out_dir'] == 'out'


def test_sample_py_reads_what_train_py_wrote(trained):
    d = trained[0]
    r = run_sample('--out_dir=out', '--num_samples=1', '--max_new_tokens=5', cwd=d)
    assert r.returncode == 0 and r.stdout.endswith('-' * 15 + '\n'), r.stderr


def test_training_again_on_the_same_data_is_allowed(trained, tmp_path):
    shutil.copytree(trained[0] / 'out', tmp_path / 'out')
    shutil.copy(trained[0] / 'data.txt', tmp_path / 'elsewhere.txt')  # the same bytes under another name
    (tmp_path / 'tiny.py').write_text(TINY_CONFIG + "max_iters = 3\n")
    r = run_train('tiny.py', '--data_file=elsewhere.txt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = check_pair(tmp_path / 'out', (tmp_path / 'elsewhere.txt').read_text())
    assert ckpt['config']['max_iters'] == 3


def test_other_data_is_refused_then_overwritten_when_asked(trained, tmp_path):
    shutil.copytree(trained[0] / 'out', tmp_path / 'out')
    (tmp_path / 'other.txt').write_text(some_text(2000, seed=1) + 'xyz')
    before = snapshot(tmp_path / 'out')
    err = error_line(run_train('--data_file=other.txt', *TINY, cwd=tmp_path))
    assert 'ckpt.pt was trained on other data' in err and str(trained[0] / 'data.txt') in err
    assert '--overwrite=True' in err and '--out_dir' in err
    assert snapshot(tmp_path / 'out') == before
    r = run_train('--data_file=other.txt', *TINY, '--overwrite=True', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check_pair(tmp_path / 'out', (tmp_path / 'other.txt').read_text())  # a new vocabulary, both files agree


def test_a_copy_of_the_demo_is_refused_then_overwritten_when_asked(tmp_path):
    shutil.copytree(DEMO, tmp_path / 'demo')
    (tmp_path / 'data.txt').write_text(some_text(2000))
    before = snapshot(tmp_path / 'demo')
    err = error_line(run_train('--data_file=data.txt', '--out_dir=demo', *TINY, cwd=tmp_path))
    assert err == ("error: demo/ckpt.pt does not record the data it was trained on: pass --overwrite=True "
                   "to replace it and its meta.pkl, or choose another --out_dir")
    assert snapshot(tmp_path / 'demo') == before
    r = run_train('--data_file=data.txt', '--out_dir=demo', '--overwrite=True', *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check_pair(tmp_path / 'demo', (tmp_path / 'data.txt').read_text())


def test_an_unreadable_checkpoint_is_refused(tmp_path):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'ckpt.pt').write_bytes(b'not a checkpoint')
    (tmp_path / 'data.txt').write_text(some_text(2000))
    err = error_line(run_train('--data_file=data.txt', *TINY, cwd=tmp_path))
    assert 'out/ckpt.pt cannot be read as a checkpoint' in err and '--overwrite=True' in err
    assert (tmp_path / 'out' / 'ckpt.pt').read_bytes() == b'not a checkpoint'


@pytest.mark.parametrize('name, content, args, words', [
    ('missing.txt', None, [], ["data file 'missing.txt' not found", '--data_file=', 'README']),
    ('latin1.txt', 'caf\xe9 '.encode('latin-1') * 500, [], ["'latin1.txt' is not UTF-8 text (byte 3)"]),
    ('empty.txt', b'', [], ["'empty.txt' is empty", 'at least 1,291 characters']),
    ('folder', 'dir', [], ["'folder' cannot be read"]),
    # the case: about 150 characters against block_size 128 crashed with ValueError: high <= 0
    ('short.txt', some_text(150).encode(), [], ['has 150 characters', 'block_size=128', 'at least 1,291',
                                                '--block_size']),
    # 90 characters split 81 + 9, and the val split needs block_size + 2 = 10
    ('ninety.txt', some_text(90).encode(), ['--block_size=8'], ['has 90 characters', 'at least 91']),
])
def test_data_file_errors(tmp_path, name, content, args, words):
    if content == 'dir':
        (tmp_path / name).mkdir()
    elif content is not None:
        (tmp_path / name).write_bytes(content)
    err = error_line(run_train(f'--data_file={name}', *args, cwd=tmp_path))
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / 'out').exists()


def test_the_minimum_text_trains(tmp_path):
    (tmp_path / 'data.txt').write_text(some_text(91))
    r = run_train('--data_file=data.txt', *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '91 characters, vocab' in r.stdout and '81 train, 10 val' in r.stdout


@pytest.mark.parametrize('args, words', [
    (['--n_head=7'], ['--n_embd=180 must be a multiple of --n_head=7']),
    (['--eval_interval=0'], ['--eval_interval must be >= 1']),
    (['--dropout=1.0'], ['--dropout must be in [0, 1)']),
    (['--device=nope'], ["--device='nope' is not a device"]),
    (['--out_dir=data.txt'], ["--out_dir='data.txt' is a file"]),
    (['--data_file'], ['no value']),
])
def test_bad_settings(tmp_path, args, words):
    (tmp_path / 'data.txt').write_text(some_text(2000))
    err = error_line(run_train('--data_file=data.txt', *args, cwd=tmp_path))
    for w in words:
        assert w in err, (w, err)
