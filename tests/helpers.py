"""
Helpers the test modules share (import them with `from helpers import ...`; fixtures live in
conftest.py): paths, nanoGPT's reference checkpoints and stdout, tiny models, checkpoints in
nanoGPT's exact format, the reference loop, the scripts run as a user runs them, and the
configurator run in this process.

Helpers: ROOT, DEMO, SHAKESPEARE_CHARS, REFERENCE, REFERENCE_CASES, drop_diagnostics, hub_snapshot,
save_to_hub_cache, tiny_model, write_nanogpt_checkpoint, write_meta, write_char_checkpoint,
reference_generate, run_sample, check_error, snapshot, CONFIGURATOR, SCRIPT, configure.
"""
import os
import pickle
import subprocess
import sys

import torch
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'out-shakespeare-char')  # the bundled demo checkpoint

# Tiny Shakespeare's 65 characters, in the order of its meta.pkl (the demo's vocabulary)
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------- nanoGPT's own checkpoints and stdout

REFERENCE = os.path.join(ROOT, 'tests', 'nanogpt-reference')  # its README gives every command

# reference file -> nanoGPT's command-line settings for it (add --out_dir=REFERENCE/<folder>)
REFERENCE_CASES = {
    'char-bias/sample_defaults.txt': [],
    'char-bias/sample_romeo_t1.2_k5_seed7.txt': ['--start=ROMEO:', '--num_samples=3', '--max_new_tokens=100',
                                                 '--temperature=1.2', '--top_k=5', '--seed=7'],
    'char-bias/sample_file_t1.0_k1000_seed42.txt': ['--start=FILE:' + os.path.join(REFERENCE, 'char-bias', 'prompt.txt'),
                                                    '--num_samples=2', '--max_new_tokens=60', '--temperature=1.0',
                                                    '--top_k=1000', '--seed=42'],
    'bpe-tiny/sample_eot_prompt.txt': ['--start=<|endoftext|>', '--num_samples=3', '--max_new_tokens=60'],
    'bpe-tiny/sample_tobe_k50_seed42.txt': ['--start=To be, or not to be', '--num_samples=2', '--max_new_tokens=40',
                                            '--top_k=50', '--seed=42'],
    'bpe-tiny/sample_newline_t1.1.txt': ['--num_samples=4', '--max_new_tokens=100', '--temperature=1.1'],
}

# what nanoGPT prints on stdout besides the samples (we print these on stderr)
NANOGPT_DIAGNOSTICS = ('Overriding: ', 'number of parameters: ', 'Loading meta ', 'No meta.pkl ')


def drop_diagnostics(text):
    """nanoGPT's stdout less its diagnostic lines: the samples, as our sample.py prints them."""
    return ''.join(l for l in text.splitlines(keepends=True) if not l.startswith(NANOGPT_DIAGNOSTICS))


# ---------------------------------------------------------------- the Hugging Face hub cache

def hub_snapshot(repo_id, revision='0123456789abcdef0123456789abcdef01234567'):
    """The snapshot folder of repo_id in HF_HOME's hub cache, made with refs/main naming it, as a
    download leaves them; write the model's files into it."""
    repo = os.path.join(os.environ['HF_HOME'], 'hub', 'models--' + repo_id.replace('/', '--'))
    snapshot = os.path.join(repo, 'snapshots', revision)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(revision)
    return snapshot


def save_to_hub_cache(hf_model, repo_id):
    """Write a transformers model into HF_HOME's hub cache as if downloaded from repo_id;
    returns its snapshot directory."""
    snapshot = hub_snapshot(repo_id)
    hf_model.save_pretrained(snapshot)
    return snapshot


# ---------------------------------------------------------------- tiny models and nanoGPT checkpoints

def tiny_model(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True, seed=0):
    """A small randomly initialised GPT and its model_args."""
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                      bias=bias, vocab_size=vocab_size, dropout=0.0)
    return GPT(GPTConfig(**model_args)), model_args


def tiny_gpt(vocab_size, seed=0):
    """A random GPT of the demo's width (n_embd 180: padded to 192 for the int8 kernel), 2 layers, eval mode."""
    return tiny_model(vocab_size, block_size=64, n_layer=2, n_head=6, n_embd=180, seed=seed)[0].eval()


def seed_cache(path, model, fast, slow=2e-3, copy=1e-9, batch_sizes=(1,), load=0.0, layouts=('row', 'col')):
    """Write timings for every Linear group of model into cpu.layout's cache at path: fast(group)
    names the layout that takes 1 ms per call (both kernels), the others take slow; copying costs
    copy s/byte; load: the machine's load per core they were 'timed' at."""
    from cpu.layout import cache_key, linear_groups, write_cache
    for group in linear_groups(model):
        seconds = {(l, k): [1e-3 if l == fast(group) else slow] * len(batch_sizes)
                   for l in layouts for k in ('blas', 'onednn')}
        write_cache(path, cache_key(group, batch_sizes, layouts), seconds, {l: copy for l in layouts}, load)


def write_nanogpt_checkpoint(out_dir, model, model_args, dataset='shakespeare_char', compiled=True,
                             optimizer=True, mask_buffers=False, legacy=False):
    """ckpt.pt exactly as nanoGPT's train.py writes it: model (with torch.compile's '_orig_mod.'
    prefix), optimizer state (after a real AdamW step), model_args, iter_num, best_val_loss, config.
    legacy: in torch.save's format before PyTorch 1.6 (one pickle stream, not a zip archive)."""
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
    torch.save(ckpt, os.path.join(out_dir, 'ckpt.pt'), _use_new_zipfile_serialization=not legacy)
    return ckpt


def write_meta(path, chars):
    """A character-level meta.pkl for chars, as nanoGPT's prepare.py writes it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump(dict(vocab_size=len(chars), itos=dict(enumerate(chars)),
                         stoi={c: i for i, c in enumerate(chars)}), f)


def write_char_checkpoint(out_dir):
    """out_dir/ckpt.pt and out_dir/meta.pkl: a tiny nanoGPT-format character-level model of
    SHAKESPEARE_CHARS (block_size 16, optimizer state included), trained on dataset 'toy'."""
    model, model_args = tiny_model(vocab_size=len(SHAKESPEARE_CHARS), block_size=16)
    write_nanogpt_checkpoint(out_dir, model, model_args, dataset='toy')
    write_meta(os.path.join(out_dir, 'meta.pkl'), SHAKESPEARE_CHARS)


# ---------------------------------------------------------------- the reference loop

def reference_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, autocast=None):
    """The tests' one reference loop, nanoGPT's GPT.generate written out: crop to block_size, full
    forward, last position, / temperature, top-k mask, softmax, one multinomial draw from the global
    generator. autocast: None, or a dtype (torch.bfloat16) each step runs under as nanoGPT's
    sample.py runs it with --dtype=bfloat16 (torch.autocast on the CPU). idx (B, T) -> (B, T +
    max_new_tokens). (test_exact.py shows that sample.py gives nanoGPT's own text.)"""
    for _ in range(max_new_tokens):
        with torch.autocast('cpu', dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            idx_cond = idx if idx.size(1) <= model.config.block_size else idx[:, -model.config.block_size:]
            logits, _ = model(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
    return idx


# ---------------------------------------------------------------- the scripts as a user runs them

def run_sample(*args, cwd=None, script='sample.py', env=None, **kwargs):
    """Run sample.py (or another top-level script) as a user would; returns CompletedProcess.
    env: variables set on top of this process's environment; kwargs go to subprocess.run (e.g. preexec_fn)."""
    kwargs.setdefault('timeout', 600)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})), **kwargs)


def check_error(r, *words, others=None):
    """r (a CompletedProcess) ended as a user error: exit code 2, no traceback, and the last line
    of stderr starts with 'error: ' and holds each of words. others: None lets any lines come
    before it; a tuple of prefixes, every other line of stderr must start with one of them (an
    empty tuple: the error is stderr's only line). Returns the error line."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert 'Traceback' not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.splitlines() if others is not None else r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith('error: '), r.stderr
    if others is not None:  # (startswith(()) is False: with no prefixes, no other line may exist)
        assert all(line.startswith(others) for line in lines[:-1]), r.stderr
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    return lines[-1]


def snapshot(folder):
    """{relative path: (bytes, mtime)} of every file under folder, and (None, None) for every
    folder under it: equal snapshots mean nothing was written, replaced or created."""
    found = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(parent, name), folder)] = (None, None)
        for name in files:
            path = os.path.join(parent, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return found


# ---------------------------------------------------------------- the configurator, in this process

CONFIGURATOR = open(os.path.join(ROOT, 'configurator.py')).read()

# a script's config block, as sample.py writes it: a global and its comment per line
SCRIPT = '''\
init_from = 'resume' # 'resume' or a GPT-2 variant
start = "\\n" # the prompt
num_samples = 10 # number of samples to draw
temperature = 0.8 # 0 = greedy
top_k = 200 # retain only the top_k most likely tokens; None or 0 = off
top_p = 1.0 # 1.0 = off
stop_at_eot = True # end at <|endoftext|>
max_len = None # optional, anything
'''


def configure(folder, *argv, names=None):
    """Write SCRIPT to folder/script.py, run it in fresh globals (holding names first, which
    SCRIPT's settings may hide) and exec the configurator over them with argv; returns the
    globals. The configurator's errors raise SystemExit, as in a script."""
    script = os.path.join(folder, 'script.py')
    with open(script, 'w') as f:
        f.write(SCRIPT)
    g = {**(names or {}), '__file__': script, '__name__': '__main__'}
    exec(SCRIPT, g)
    old = sys.argv
    sys.argv = ['script.py', *argv]
    try:
        exec(CONFIGURATOR, g)
    finally:
        sys.argv = old
    return g
