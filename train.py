"""
A short single-device trainer for a character-level GPT, so the bundled demo model
(out-shakespeare-char/) can be made again. It writes nanoGPT's checkpoint format: ckpt.pt
with model, model_args, iter_num, best_val_loss and config (with dataset), and meta.pkl
with vocab_size, itos and stoi. The first 90% of the text trains, the last 10% validates.

$ python train.py --data_file=path/to/input.txt --out_dir=out-my-model

ckpt.pt's config records the data it was trained on (data_path, data_bytes, data_sha256). An
out_dir whose ckpt.pt was trained on other data, or records none (like the bundled demo's), is
refused before any work unless --overwrite=True. ckpt.pt and meta.pkl are replaced atomically,
so they never disagree. Every user error is one line on stderr and exit code 2.
"""
import hashlib
import math
import os
import pickle
import time

from common import import_torch_quietly
torch = import_torch_quietly('interrupted')  # Ctrl-C: one line, exit 130; ckpt.pt keeps the best model saved so far
import numpy as np  # noqa: E402

from common import device_problem, fail  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# -----------------------------------------------------------------------------
data_file = 'input.txt' # a UTF-8 text file to train on, one character per token
dataset = 'shakespeare_char' # recorded in ckpt.pt's config, where sample.py looks for data/<dataset>/meta.pkl
out_dir = 'out' # where ckpt.pt and meta.pkl are written (nanoGPT's default; the demo's folder only when named)
overwrite = False # True: replace an out_dir/ckpt.pt trained on other data (or recording none)
n_layer = 6 # transformer blocks
n_head = 6 # attention heads per block
n_embd = 180 # embedding width
block_size = 128 # context length in characters
bias = False # bias in Linears and LayerNorms
dropout = 0.1 # dropout while training
batch_size = 32 # sequences per step
max_iters = 2500 # optimizer steps
learning_rate = 2e-3 # peak learning rate (AdamW)
min_lr = 2e-4 # learning rate at the end of the cosine decay
warmup_iters = 100 # linear warm-up steps
weight_decay = 0.1 # on 2-D weights only
beta2 = 0.99 # AdamW beta2: higher for a small batch
grad_clip = 1.0 # clip gradients at this norm; 0.0 = off
eval_interval = 250 # evaluate and maybe checkpoint every this many steps
eval_iters = 40 # batches per loss estimate
seed = 1337 # torch and numpy seed
device = 'cpu' # 'cpu', 'cuda', 'cuda:1', 'mps'
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
# -----------------------------------------------------------------------------


def check_config():
    """Reject out-of-range settings before any work is done."""
    for key in ('n_layer', 'n_head', 'n_embd', 'block_size', 'batch_size', 'eval_interval', 'eval_iters'):
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
    if device_problem(device):
        fail(device_problem(device))


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


def check_out_dir(out_dir, fingerprint, overwrite):
    """Refuse (fail) an out_dir whose ckpt.pt was trained on other data or records none, unless
    overwrite; a ckpt.pt trained on the same data (same sha256) is this run's to replace."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail(f"--out_dir={out_dir!r} is a file, not a folder: choose another --out_dir")
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


def save_checkpoint(out_dir, ckpt, meta):
    """Write out_dir/ckpt.pt and meta.pkl so that they never disagree: each is written to a
    temporary file, then moved into place with os.replace (atomic); when meta.pkl changes, the old
    ckpt.pt is removed first, so a crash in between leaves no ckpt.pt, never a mismatched pair."""
    ckpt_path, meta_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'meta.pkl')
    torch.save(ckpt, ckpt_path + '.tmp')
    meta_bytes = pickle.dumps(meta)
    old_meta = None
    if os.path.exists(meta_path):
        with open(meta_path, 'rb') as f:
            old_meta = f.read()
    if old_meta != meta_bytes:
        with open(meta_path + '.tmp', 'wb') as f:
            f.write(meta_bytes)
        if os.path.exists(ckpt_path):
            os.remove(ckpt_path)
        os.replace(meta_path + '.tmp', meta_path)
    os.replace(ckpt_path + '.tmp', ckpt_path)


# -----------------------------------------------------------------------------
# checks and data: every mistake is reported here, before the model is built
check_config()
text, fingerprint = read_data(data_file, block_size)
config.update(fingerprint)
check_out_dir(out_dir, fingerprint, overwrite)
try:
    os.makedirs(out_dir, exist_ok=True)
except OSError as e:
    fail(f"--out_dir={out_dir!r} cannot be created ({e.strerror or e}): choose another --out_dir")
torch.manual_seed(seed)
rng = np.random.default_rng(seed)
chars = sorted(set(text))
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
    """The learning rate at step it: a linear warm-up, then a cosine decay to min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    ratio = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (learning_rate - min_lr)

model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                  bias=bias, vocab_size=len(chars), dropout=dropout)
model = GPT(GPTConfig(**model_args)).to(device)
print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                               {'params': no_decay, 'weight_decay': 0.0}],
                              lr=learning_rate, betas=(0.9, beta2))

best_val_loss = float('inf')
t0 = time.time()
for iter_num in range(max_iters + 1):
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, {time.time() - t0:.0f}s")
        if losses['val'] < best_val_loss:
            best_val_loss = losses['val']
            # weights only: sampling needs no optimizer state, and the file stays small
            ckpt = dict(model=model.state_dict(), model_args=model_args, iter_num=iter_num,
                        best_val_loss=best_val_loss, config=config)
            try:
                save_checkpoint(out_dir, ckpt, dict(vocab_size=len(chars), itos=itos, stoi=stoi))
            except OSError as e:
                fail(f"cannot write the checkpoint into --out_dir={out_dir!r} ({e.strerror or e}): "
                     f"free some space or choose another --out_dir")
    if iter_num == max_iters:
        break
    for g in optimizer.param_groups:
        g['lr'] = get_lr(iter_num)
    x, y = get_batch('train')
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if iter_num % 50 == 0:
        print(f"iter {iter_num}: loss {loss.item():.4f}, lr {get_lr(iter_num):.2e}, {time.time() - t0:.0f}s")
print(f"best val loss {best_val_loss:.4f}")
