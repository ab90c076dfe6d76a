"""
A short single-device trainer for a character-level GPT, so the bundled demo model
(out-shakespeare-char/) can be made again. It writes nanoGPT's checkpoint format: ckpt.pt
with model, model_args, iter_num, best_val_loss and config (with dataset), and meta.pkl
with vocab_size, itos and stoi. The first 90% of the text trains, the last 10% validates.

$ python train.py --data_file=path/to/input.txt --out_dir=out-shakespeare-char
"""
import math
import os
import pickle
import sys
import time

import numpy as np
import torch

from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
data_file = 'input.txt' # a UTF-8 text file to train on, one character per token
dataset = 'shakespeare_char' # recorded in ckpt.pt's config, where sample.py looks for data/<dataset>/meta.pkl
out_dir = 'out-shakespeare-char' # where ckpt.pt and meta.pkl are written
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

torch.manual_seed(seed)
rng = np.random.default_rng(seed)
try:
    with open(data_file, encoding='utf-8') as f:
        text = f.read()
except (OSError, UnicodeDecodeError) as e:
    sys.exit(f"error: cannot read --data_file={data_file!r} as UTF-8 text ({e})")
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
data = np.array([stoi[c] for c in text], dtype=np.int64)
n = int(0.9 * len(data))
splits = {'train': torch.from_numpy(data[:n]), 'val': torch.from_numpy(data[n:])}
print(f"{len(text):,} characters, vocab {len(chars)}; {n:,} train, {len(data) - n:,} val")

def get_batch(split):
    d = splits[split]
    ix = torch.from_numpy(rng.integers(0, len(d) - block_size - 1, size=batch_size))
    x = torch.stack([d[i:i + block_size] for i in ix])  # (B, T)
    y = torch.stack([d[i + 1:i + 1 + block_size] for i in ix])  # (B, T), shifted by one
    return x.to(device), y.to(device)

@torch.no_grad()
def estimate_loss():
    model.eval()
    out = {}
    for split in splits:
        losses = [model(*get_batch(split))[1].item() for _ in range(eval_iters)]
        out[split] = sum(losses) / len(losses)
    model.train()
    return out

def get_lr(it):
    # linear warm-up, then cosine decay to min_lr
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

os.makedirs(out_dir, exist_ok=True)
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
            torch.save(ckpt, os.path.join(out_dir, 'ckpt.pt'))
            with open(os.path.join(out_dir, 'meta.pkl'), 'wb') as f:
                pickle.dump(dict(vocab_size=len(chars), itos=itos, stoi=stoi), f)
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
