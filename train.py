"""
A short single-device trainer for a character-level GPT, so the bundled demo model
(out-shakespeare-char/) can be made again. It writes nanoGPT's checkpoint format: ckpt.pt
with model, model_args, iter_num, best_val_loss and config (with dataset), and meta.pkl
with vocab_size, itos and stoi. The first 90% of the text trains, the last 10% validates.

$ python train.py --data_file=path/to/input.txt --out_dir=out-my-model
$ python train.py path/to/nanoGPT/config/train_shakespeare_char.py --data_file=path/to/input.txt

It takes every key of nanoGPT's train.py, so nanoGPT's config files run as they are; the ones
with no effect here (wandb, DDP, mixed precision, torch.compile) are reported once on stderr.
ckpt.pt's config records the data it was trained on (data_path, data_bytes, data_sha256). An
out_dir whose ckpt.pt was trained on other data, or records none (like the bundled demo's), is
refused before any work unless --overwrite=True; so is an out_dir another train.py is writing
into (a lock file). Before anything is allocated, the memory a training step takes is estimated
and compared with the memory free. A checkpoint that cannot be written (a full disk) leaves the
old ckpt.pt and meta.pkl as they were. Every user error is one line on stderr and exit code 2;
Ctrl-C ends the run within a second, exit code 130.
"""
import atexit
import errno
import fcntl
import hashlib
import io
import math
import os
import pickle
import signal
import sys
import threading
import time
from contextlib import contextmanager

from common import import_torch_quietly
torch = import_torch_quietly('interrupted')  # Ctrl-C: one line, exit 130; ckpt.pt keeps the best model saved so far
import numpy as np  # noqa: E402

from common import brief, device_problem, fail, free_memory, out_of_memory, remove_quietly, write_temporary  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# -----------------------------------------------------------------------------
# I/O
data_file = 'input.txt' # a UTF-8 text file to train on, one character per token
dataset = 'shakespeare_char' # recorded in ckpt.pt's config, where sample.py looks for data/<dataset>/meta.pkl
out_dir = 'out' # where ckpt.pt and meta.pkl are written (nanoGPT's default; the demo's folder only when named)
overwrite = False # True: replace an out_dir/ckpt.pt trained on other data (or recording none)
eval_interval = 250 # evaluate and maybe checkpoint every this many steps
log_interval = 50 # print the training loss every this many steps
eval_iters = 40 # batches per loss estimate
eval_only = False # True: evaluate once, then stop without writing a checkpoint
always_save_checkpoint = False # True: write a checkpoint at every evaluation; False: only when val loss improves
init_from = 'scratch' # the only choice here: this trainer neither resumes nor fine-tunes
# data
gradient_accumulation_steps = 1 # micro-batches of batch_size per optimizer step
batch_size = 32 # sequences per micro-batch
block_size = 128 # context length in characters
# model
n_layer = 6 # transformer blocks
n_head = 6 # attention heads per block
n_embd = 180 # embedding width
dropout = 0.1 # dropout while training
bias = False # bias in Linears and LayerNorms
# adamw optimizer
learning_rate = 2e-3 # peak learning rate
max_iters = 2500 # optimizer steps
weight_decay = 0.1 # on 2-D weights only
beta1 = 0.9 # AdamW beta1
beta2 = 0.99 # AdamW beta2: higher for a small batch
grad_clip = 1.0 # clip gradients at this norm; 0.0 = off
# learning rate decay
decay_lr = True # a linear warm-up then a cosine decay; False: learning_rate throughout
warmup_iters = 100 # linear warm-up steps
lr_decay_iters = None # steps until the cosine decay reaches min_lr; None = max_iters
min_lr = 2e-4 # learning rate at the end of the cosine decay
# system
seed = 1337 # torch and numpy seed, 0 to 2**64 - 1
device = 'cpu' # 'cpu', 'cuda', 'cuda:1', 'mps'
# nanoGPT's settings with no effect here: accepted so that its config files run, and reported
wandb_log = False # no effect: nothing is logged to wandb
wandb_project = 'nanogpt' # no effect
wandb_run_name = 'gpt2' # no effect
backend = 'nccl' # no effect: one process, no DDP
dtype = 'float32' # no effect: training runs in float32
compile = False # no effect: the model is not compiled
no_effect = {k: globals()[k] for k in ('wandb_log', 'wandb_project', 'wandb_run_name', 'backend', 'dtype', 'compile')}
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: v for k, v in globals().items()  # the settings, recorded in ckpt.pt
          if not k.startswith('_') and (v is None or isinstance(v, (int, float, bool, str)))}
# -----------------------------------------------------------------------------


def check_config():
    """Reject out-of-range settings before any work is done."""
    for key in ('n_layer', 'n_head', 'n_embd', 'block_size', 'batch_size', 'eval_interval', 'eval_iters',
                'log_interval', 'gradient_accumulation_steps'):
        if globals()[key] < 1:
            fail(f"--{key} must be >= 1, got {globals()[key]}")
    for key in ('max_iters', 'warmup_iters', 'min_lr', 'weight_decay', 'grad_clip'):
        if globals()[key] < 0:
            fail(f"--{key} must be >= 0, got {globals()[key]}")
    if n_embd % n_head:
        fail(f"--n_embd={n_embd} must be a multiple of --n_head={n_head}: change one of them")
    if not 0 <= dropout < 1:
        fail(f"--dropout must be in [0, 1), got {dropout}")
    if not 0 < learning_rate < float('inf'):
        fail(f"--learning_rate must be > 0, got {learning_rate}")
    for key in ('beta1', 'beta2'):
        if not 0 <= globals()[key] < 1:
            fail(f"--{key} must be in [0, 1), got {globals()[key]}")
    if lr_decay_iters is not None and (type(lr_decay_iters) is not int or lr_decay_iters < 0):
        fail(f"--lr_decay_iters must be None or a number of steps >= 0, got {lr_decay_iters!r}")
    if not 0 <= seed < 2 ** 64:  # what torch.manual_seed takes (numpy takes no negative seed)
        fail(f"--seed must be in 0 .. 2**64 - 1, got {seed}")
    if init_from != 'scratch':  # ignoring it would train a new model over the one to resume
        fail(f"--init_from={init_from!r} is not supported: this trainer trains from scratch only "
             f"(init_from='scratch'); resume or fine-tune with nanoGPT's train.py")
    if device_problem(device):
        fail(device_problem(device))


def note_no_effect():
    """Print one line on stderr naming the nanoGPT settings given that have no effect here."""
    given = [k for k, default in no_effect.items() if globals()[k] != default]
    if given:
        print(f"note: ignoring nanoGPT settings that do not apply here (no wandb, DDP, mixed precision or "
              f"torch.compile in this trainer): {', '.join(given)}", file=sys.stderr)


def split_at(n):
    """Where n characters split into train (the first 90%) and val (the rest)."""
    return int(0.9 * n)


def min_chars(block_size):
    """The fewest characters of text that train with this block_size: a batch reads block_size + 1
    characters from a random offset, so both splits need at least block_size + 2."""
    need = block_size + 2
    n = max(need, 10 * need - 20)  # the val split (10%) is the short one: about 10 * need
    while split_at(n) < need or n - split_at(n) < need:
        n += 1
    return n


def read_data(path, block_size):
    """(text, fingerprint) of the UTF-8 file at path; fingerprint is dict(data_path, data_bytes,
    data_sha256), what ckpt.pt's config records about its data. Errors end in fail()."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        fail(f"data file {path!r} not found: pass --data_file=path/to/text.txt, any UTF-8 text "
             f"(Tiny Shakespeare: see the README)")
    except OSError as e:
        fail(f"data file {path!r} cannot be read ({e.strerror or e}): pass --data_file=path/to/text.txt")
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        fail(f"data file {path!r} is not UTF-8 text (byte {e.start}): convert it to UTF-8 or pass another --data_file")
    if not text:
        fail(f"data file {path!r} is empty: pass a --data_file with at least {min_chars(block_size):,} characters")
    if len(text) < min_chars(block_size):
        fail(f"data file {path!r} has {len(text):,} characters; block_size={block_size} needs at least "
             f"{min_chars(block_size):,} (the last 10% validates, and each split needs more than block_size + 1): "
             f"use more text or a smaller --block_size")
    fingerprint = dict(data_path=os.path.abspath(path), data_bytes=len(raw), data_sha256=hashlib.sha256(raw).hexdigest())
    return text, fingerprint


def training_memory(model_args, batch_size):
    """Bytes one training step takes at most, in float32: a safe upper bound on the peak (checked
    against measured peaks: docs/measurements.md). 20 bytes per parameter: the weights, their
    gradients, AdamW's two moments and one parameter-sized temporary. Then the activations
    backward() keeps, per layer: 34 floats per token and channel (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", count 34 bytes at 16 bits)
    and, with dropout, 6 floats per attention score (scores, probabilities, dropout mask and
    output, and a gradient: PyTorch's fused attention on CPU has no dropout, so the plain path
    keeps the T x T matrices); one layer more for backward's temporaries; 4 floats per token and
    vocabulary entry (logits, log-softmax and their gradients)."""
    with torch.device('meta'):  # counts the parameters without allocating them
        n_params = sum(p.numel() for p in GPT(GPTConfig(**model_args)).parameters())
    B, T, C = batch_size, model_args['block_size'], model_args['n_embd']
    scores = B * model_args['n_head'] * T * T if model_args['dropout'] > 0 else 0
    floats = (model_args['n_layer'] + 1) * (34 * B * T * C + 6 * scores) + 4 * B * T * model_args['vocab_size']
    return 20 * n_params + 4 * floats


def check_memory(model_args):
    """Refuse (fail) a model and batch whose training step cannot fit in the memory free on device,
    saying what to lower; where the free memory is unknown (mps), nothing is checked."""
    need, free = training_memory(model_args, batch_size), free_memory(torch.device(device))
    if free is None or need <= free:
        return
    if training_memory(model_args, 1) > free:  # even one sequence does not fit
        todo = "lower --block_size, --n_layer or --n_embd"
    else:
        todo = ("lower --batch_size (raising --gradient_accumulation_steps keeps the tokens per step) "
                "or --block_size")
    fail(f"training needs up to {need / 1e9:,.1f} GB of memory (batch_size={batch_size}, block_size={block_size}, "
         f"n_layer={n_layer}, n_embd={n_embd}) and {free / 1e9:.1f} GB is free: {todo}")


@contextmanager
def memory_errors_end_the_run():
    """Within the block, an allocation that fails ends the run with one line (exit code 2): the
    estimate in check_memory is rough, and other processes take memory too."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        fail(f"out of memory while training ({brief(e, 120)}): lower --batch_size or --block_size")


def lock_out_dir(out_dir):
    """Create out_dir if needed and hold its lock file, out_dir/.train.lock (holding our pid),
    until the process ends: a second train.py into the same out_dir stops at once, naming this one.
    The lock is flock()'s, which the kernel releases however the process ends, so a killed run
    leaves no stale lock. Returns (fd, path); release_lock() removes the file."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail(f"--out_dir={out_dir!r} is a file, not a folder: choose another --out_dir")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        fail(f"--out_dir={out_dir!r} cannot be created ({e.strerror or e}): choose another --out_dir")
    path = os.path.join(out_dir, '.train.lock')
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            fail(f"cannot write into --out_dir={out_dir!r} ({e.strerror or e}): choose another --out_dir")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 20, 0).decode('ascii', 'replace').strip() or 'unknown'
            fail(f"another train.py (pid {pid}) is writing into --out_dir={out_dir!r}: wait for it to end, "
                 f"stop it, or choose another --out_dir")
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # a run that just ended removed the file we locked: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd, path


def release_lock(lock):
    """Remove the lock file and release it (lock: lock_out_dir's (fd, path), or None). The file is
    removed while still locked, so a run that opened it meanwhile sees it gone and makes a new one."""
    if lock:
        remove_quietly(lock[1])
        try:
            os.close(lock[0])
        except OSError:  # closed already (Ctrl-C while exiting)
            pass


def check_out_dir(out_dir, fingerprint, overwrite):
    """Refuse (fail) an out_dir whose ckpt.pt was trained on other data or records none, unless
    overwrite; a ckpt.pt trained on the same data (same sha256) is this run's to replace."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if overwrite or not os.path.exists(path):
        return
    todo = "pass --overwrite=True to replace it and its meta.pkl, or choose another --out_dir"
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:  # a file we cannot read is a file we must not replace unasked
        fail(f"{path} cannot be read as a checkpoint ({type(e).__name__}): {todo}")
    old = ckpt.get('config') if isinstance(ckpt, dict) else None
    old = old if isinstance(old, dict) else {}
    if not old.get('data_sha256'):
        fail(f"{path} does not record the data it was trained on: {todo}")
    if old['data_sha256'] != fingerprint['data_sha256']:
        fail(f"{path} was trained on other data ({old.get('data_path', '?')}, {old.get('data_bytes', '?')} bytes): {todo}")


def write_file(path, data):
    """Write the bytes data to path and flush them to the disk (fsync); raises OSError."""
    with open(path, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(out_dir, ckpt, meta):
    """Write out_dir/ckpt.pt and meta.pkl so that a failure loses nothing and they never disagree.
    Both are written in full to temporary files (.tmp) and flushed to the disk first; a failure
    there (a full disk) removes them and ends the run with one line, the old pair untouched. Then
    they replace the old files (os.replace, atomic). When meta.pkl changes (a new vocabulary: the
    first run, or --overwrite=True), the old ckpt.pt is removed before meta.pkl is replaced, so a
    crash between the two moves leaves meta.pkl without a ckpt.pt, never a mismatched pair."""
    ckpt_path, meta_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'meta.pkl')
    buf = io.BytesIO()  # serialized in memory, so that a write error keeps its errno (torch.save's would not)
    torch.save(ckpt, buf)
    meta_bytes = pickle.dumps(meta)
    with saving:
        temps = []
        try:
            old_meta = None
            if os.path.exists(meta_path):
                with open(meta_path, 'rb') as f:
                    old_meta = f.read()
            temps.append(write_temporary(ckpt_path, lambda tmp: write_file(tmp, buf.getbuffer()), ckpt_path + '.tmp'))
            if old_meta != meta_bytes:
                temps.append(write_temporary(meta_path, lambda tmp: write_file(tmp, meta_bytes), meta_path + '.tmp'))
        except BaseException as e:
            for path in temps:
                remove_quietly(path)
            if not isinstance(e, OSError):
                raise
            why = {errno.ENOSPC: 'the disk is full', errno.EFBIG: 'a file size limit, ulimit -f, stops it'}
            todo = 'raise the limit' if e.errno == errno.EFBIG else 'free some space'
            fail(f"cannot write the checkpoint into --out_dir={out_dir!r} ({why.get(e.errno, e.strerror or e)}): "
                 f"{todo} or choose another --out_dir; its ckpt.pt and meta.pkl are as they were")
        try:
            if len(temps) == 2:
                remove_quietly(ckpt_path)
                os.replace(temps[1], meta_path)
            os.replace(temps[0], ckpt_path)
        except OSError as e:  # a move within one folder: hardly ever
            fail(f"cannot move the new checkpoint into place in --out_dir={out_dir!r} ({e.strerror or e}): "
                 f"it is in {', '.join(temps)}")


def stop_on_ctrl_c():
    """Make Ctrl-C end the run within a second (exit code 130), even inside one long torch
    operation: Python runs a signal handler only between bytecodes, which a single matmul or
    backward() holds off for as long as it runs. Python's C-level handler writes the signal to a
    wakeup pipe at once instead, and a thread waiting on it (torch releases the GIL while it
    computes) ends the process, after a checkpoint being written is complete (`saving`)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # the main thread carries on; the thread ends it
    threading.Thread(target=end_on_ctrl_c, args=(r,), daemon=True).start()


def end_on_ctrl_c(r):
    """The thread of stop_on_ctrl_c: wait for SIGINT's byte on the pipe r, then end the process."""
    while os.read(r, 1) != bytes([signal.SIGINT]):
        pass
    with saving:  # never between ckpt.pt and meta.pkl, nor with a temporary file left
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        print('interrupted', file=sys.stderr, flush=True)
        release_lock(lock)
        os._exit(130)


saving = threading.Lock()  # held while a checkpoint is written
lock = None  # lock_out_dir's (fd, path) once out_dir is ours


# -----------------------------------------------------------------------------
# checks and data: every mistake is reported here, before the model is built
stop_on_ctrl_c()
check_config()
note_no_effect()
text, fingerprint = read_data(data_file, block_size)
config.update(fingerprint)
chars = sorted(set(text))
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                  bias=bias, vocab_size=len(chars), dropout=dropout)
check_memory(model_args)
lock = lock_out_dir(out_dir)
atexit.register(lambda: release_lock(lock))
check_out_dir(out_dir, fingerprint, overwrite)
torch.manual_seed(seed)
rng = np.random.default_rng(seed)
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
data = np.array([stoi[c] for c in text], dtype=np.int64)
n = split_at(len(data))
splits = {'train': torch.from_numpy(data[:n]), 'val': torch.from_numpy(data[n:])}
print(f"{len(text):,} characters, vocab {len(chars)}; {n:,} train, {len(data) - n:,} val")

def get_batch(split):
    """A random batch of split: inputs x and targets y (x shifted by one), (batch_size, block_size) each."""
    d = splits[split]
    ix = torch.from_numpy(rng.integers(0, len(d) - block_size - 1, size=batch_size))
    x = torch.stack([d[i:i + block_size] for i in ix])  # (B, T)
    y = torch.stack([d[i + 1:i + 1 + block_size] for i in ix])  # (B, T), shifted by one
    return x.to(device), y.to(device)

@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters random batches of each split, in eval mode (no dropout)."""
    model.eval()
    out = {}
    for split in splits:
        losses = [model(*get_batch(split))[1].item() for _ in range(eval_iters)]
        out[split] = sum(losses) / len(losses)
    model.train()
    return out

def get_lr(it):
    """The learning rate at step it: a linear warm-up, then a cosine decay to min_lr over
    lr_decay_iters steps (max_iters when None), then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    decay_iters = max_iters if lr_decay_iters is None else lr_decay_iters
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (learning_rate - min_lr)

model = GPT(GPTConfig(**model_args)).to(device)
print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                               {'params': no_decay, 'weight_decay': 0.0}],
                              lr=learning_rate, betas=(beta1, beta2))

best_val_loss = float('inf')
t0 = time.time()
with memory_errors_end_the_run():
    for iter_num in range(max_iters + 1):
        if iter_num % eval_interval == 0 or iter_num == max_iters:
            losses = estimate_loss()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, {time.time() - t0:.0f}s")
            if eval_only:
                break
            if losses['val'] < best_val_loss or always_save_checkpoint:
                best_val_loss = losses['val']
                # weights only: sampling needs no optimizer state, and the file stays small
                ckpt = dict(model=model.state_dict(), model_args=model_args, iter_num=iter_num,
                            best_val_loss=best_val_loss, config=config)
                save_checkpoint(out_dir, ckpt, dict(vocab_size=len(chars), itos=itos, stoi=stoi))
        if iter_num == max_iters:
            break
        lr = get_lr(iter_num) if decay_lr else learning_rate
        for g in optimizer.param_groups:
            g['lr'] = lr
        optimizer.zero_grad(set_to_none=True)
        for micro_step in range(gradient_accumulation_steps):
            x, y = get_batch('train')
            _, loss = model(x, y)
            (loss / gradient_accumulation_steps).backward()  # the gradient of the mean over micro-batches
        if grad_clip > 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if iter_num % log_interval == 0:
            print(f"iter {iter_num}: loss {loss.item():.4f}, lr {lr:.2e}, {time.time() - t0:.0f}s")
if not eval_only:
    print(f"best val loss {best_val_loss:.4f}")
