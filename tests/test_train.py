"""train.py: its default out_dir, the refusal to replace a checkpoint of other data, a full disk,
two runs into one out_dir, Ctrl-C, memory, nanoGPT's config keys and its one-line errors. Each run
trains a tiny model on a tiny text for two steps, in a temporary folder."""
import fcntl
import hashlib
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import DEMO, ROOT, check_error, run_sample, snapshot

TINY = ['--n_layer=1', '--n_head=1', '--n_embd=8', '--block_size=8', '--max_iters=2', '--eval_iters=1',
        '--eval_interval=1', '--batch_size=2']
TINY_CONFIG = "n_layer = 1\nn_head = 1\nn_embd = 8\nblock_size = 8\nmax_iters = 2\neval_iters = 1\n" \
              "eval_interval = 1\nbatch_size = 2\n"


def some_text(n, seed=0):
    """n characters of made-up words and lines."""
    rnd = random.Random(seed)
    return ''.join(rnd.choice('abcdefgh ijk\n') for _ in range(n))


def run_train(*args, cwd, **kwargs):
    """Run train.py as a user would, in cwd; kwargs go to subprocess.run (e.g. preexec_fn)."""
    return run_sample(*args, cwd=cwd, script='train.py', **kwargs)


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
    (['--seed=99999999999999999999'], ['--seed must be in 0 .. 2**64 - 1']),  # was an OverflowError traceback
    (['--seed=-1'], ['--seed must be in 0 .. 2**64 - 1']),
    (['--log_interval=0'], ['--log_interval must be >= 1']),
    (['--gradient_accumulation_steps=0'], ['--gradient_accumulation_steps must be >= 1']),
    (['--beta1=1.0'], ['--beta1 must be in [0, 1)']),
    (['--lr_decay_iters=soon'], ["--lr_decay_iters must be None or a number of steps >= 0, got 'soon'"]),
    # ignoring it would train a new model over the checkpoint to resume
    (['--init_from=resume'], ["--init_from='resume' is not supported", "nanoGPT's train.py"]),
])
def test_bad_settings(tmp_path, args, words):
    (tmp_path / 'data.txt').write_text(some_text(2000))
    err = error_line(run_train('--data_file=data.txt', *args, cwd=tmp_path))
    for w in words:
        assert w in err, (w, err)


def test_a_full_disk_loses_nothing(trained, tmp_path):
    """A checkpoint that cannot be written (here a file size limit, EFBIG, as a full disk's ENOSPC)
    leaves the old ckpt.pt and meta.pkl as they were, no temporary file, and one line."""
    shutil.copytree(trained[0] / 'out', tmp_path / 'out')
    shutil.copy(trained[0] / 'data.txt', tmp_path / 'data.txt')
    before = snapshot(tmp_path / 'out')
    limit = os.path.getsize(tmp_path / 'out' / 'ckpt.pt') // 2

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = run_train('--data_file=data.txt', *TINY, cwd=tmp_path, preexec_fn=limit_file_size)
    check_error(r, 'cannot write the checkpoint', 'file size limit', 'as they were')  # was a 27-line traceback
    assert snapshot(tmp_path / 'out') == before  # no .tmp file, no lock file, nothing replaced
    torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)


def hold_lock(out_dir):
    """Hold out_dir's lock as a running train.py does: flock on .train.lock, holding our pid.
    Returns the open file; closing it releases the lock."""
    f = open(os.path.join(out_dir, '.train.lock'), 'w')
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def test_a_second_run_into_the_same_out_dir_is_refused(trained, tmp_path):
    shutil.copytree(trained[0] / 'out', tmp_path / 'out')
    shutil.copy(trained[0] / 'data.txt', tmp_path / 'data.txt')
    held = hold_lock(tmp_path / 'out')
    before = snapshot(tmp_path / 'out')
    err = error_line(run_train('--data_file=data.txt', *TINY, cwd=tmp_path))
    assert err == (f"error: another train.py (pid {os.getpid()}) is writing into --out_dir='out': wait for it "
                   f"to end, stop it, or choose another --out_dir")
    assert snapshot(tmp_path / 'out') == before
    held.close()  # as when that run is killed: its lock file stays, but the lock is gone with it
    r = run_train('--data_file=data.txt', *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / 'out')) == ['ckpt.pt', 'meta.pkl']  # the lock file removed at the end


def test_ctrl_c_ends_the_run_at_once_and_leaves_the_pair_whole(tmp_path):
    (tmp_path / 'data.txt').write_text(some_text(2000))
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), '--data_file=data.txt', *TINY,
                          '--max_iters=100000000', '--eval_interval=1000000'], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / 'out' / 'ckpt.pt').exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # the first checkpoint is written at step 0, then it trains on
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    t = time.time()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.splitlines()[-1] == 'interrupted' and 'Traceback' not in err, err
    assert time.time() - t < 5  # about 0.1 s; generous for a busy machine
    assert sorted(os.listdir(tmp_path / 'out')) == ['ckpt.pt', 'meta.pkl']
    check_pair(tmp_path / 'out', (tmp_path / 'data.txt').read_text())


@pytest.mark.parametrize('args, chars, words', [
    # the cases: 11 minutes at 15 GB, and a traceback; attention scores grow as block_size squared
    (['--block_size=100000'], 1_100_000, ['block_size=100000', 'GB is free', 'lower --block_size']),
    (['--batch_size=1000000'], 2000, ['batch_size=1000000', 'GB is free', 'lower --batch_size']),
])
def test_a_training_step_too_big_for_the_memory_is_refused(tmp_path, args, chars, words):
    (tmp_path / 'data.txt').write_text(some_text(2000) * (chars // 2000))
    t = time.time()
    err = error_line(run_train('--data_file=data.txt', *args, cwd=tmp_path))
    assert time.time() - t < 60  # a few seconds: the estimate comes before anything is allocated
    assert err.startswith('error: training needs up to ')
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / 'out').exists()


# nanoGPT's config/train_shakespeare_char.py (karpathy/nanoGPT at 3adf61e), as it is
NANOGPT_SHAKESPEARE_CHAR = """\
# train a miniature character-level shakespeare model
# good for debugging and playing on macbooks and such

out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10 # don't print too too often

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256 # context of up to 256 previous characters

# baby GPT model :)
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3 # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000 # make equal to max_iters usually
min_lr = 1e-4 # learning_rate / 10 usually
beta2 = 0.99 # make a bit bigger because number of tokens per iter is small

warmup_iters = 100 # not super necessary potentially

# on macbook also add
# device = 'cpu'  # run on cpu only
# compile = False # do not torch compile the model
"""


def test_nanogpt_config_runs_as_it_is(tmp_path):
    (tmp_path / 'train_shakespeare_char.py').write_text(NANOGPT_SHAKESPEARE_CHAR)
    (tmp_path / 'data.txt').write_text(some_text(2000))
    r = run_train('train_shakespeare_char.py', '--data_file=data.txt', *TINY, '--device=cpu', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith('note: ')]
    assert notes == ["note: ignoring nanoGPT settings that do not apply here (no wandb, DDP, mixed precision or "
                     "torch.compile in this trainer): wandb_project, wandb_run_name"]
    ckpt = check_pair(tmp_path / 'out-shakespeare-char', (tmp_path / 'data.txt').read_text())
    assert ckpt['config']['log_interval'] == 10 and ckpt['config']['lr_decay_iters'] == 5000
    assert ckpt['config']['wandb_run_name'] == 'mini-gpt' and ckpt['model_args']['dropout'] == 0.2


def iter_lines(r):
    """{step: learning rate printed} from a run's 'iter N: loss L, lr X, Ts' lines."""
    assert r.returncode == 0, r.stderr
    return {int(line.split()[1][:-1]): float(line.split()[5][:-1])
            for line in r.stdout.splitlines() if line.startswith('iter ')}


def test_nanogpt_settings_apply(trained, tmp_path):
    (tmp_path / 'data.txt').write_text(some_text(2000))
    lrs = iter_lines(run_train('--data_file=data.txt', *TINY, '--max_iters=3', '--log_interval=1', '--warmup_iters=0',
                               '--lr_decay_iters=1', '--gradient_accumulation_steps=2', cwd=tmp_path))
    assert lrs == {0: 2e-3, 1: 2e-4, 2: 2e-4}  # every step logged; min_lr from step lr_decay_iters on
    lrs = iter_lines(run_train('--data_file=data.txt', *TINY, '--max_iters=3', '--log_interval=2', '--decay_lr=False',
                               cwd=tmp_path))
    assert lrs == {0: 2e-3, 2: 2e-3}  # no warm-up, no decay
    # the trained fixture's val loss is best at step 1 of 2, so only always_save_checkpoint keeps step 2
    assert torch.load(trained[0] / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 1
    r = run_train('--data_file=data.txt', *TINY, '--always_save_checkpoint=True', '--overwrite=True', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 2
    before = snapshot(tmp_path / 'out')
    r = run_train('--data_file=data.txt', *TINY, '--eval_only=True', cwd=tmp_path)
    assert r.returncode == 0 and 'step 0: train loss' in r.stdout and 'iter 0' not in r.stdout, r.stderr
    assert snapshot(tmp_path / 'out') == before
