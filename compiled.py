"""
The CPU decode step as one compiled graph: the model's forward at one position per row, then
nanoGPT's sampling rule up to its draw, argmax(probs / q). Inductor (torch.compile) with freezing
turns the weights into constants it prepacks and fuses the small ops between the matmuls into C++
loops; cpp_wrapper drops the Python between its kernels. The draws q stay eager and exact: each
row's exponential_ on its own generator (draws.NanoGPTDraws.exponentials), made before the step,
since they do not depend on the logits; Inductor's random ops do not make torch's CPU stream.

The graph is compiled for a number of rows and a KV cache length; positions are inputs, so no
step, position or prompt compiles again. Inductor keeps what it compiled in the project's cache
folder (inductor/ under cpu_cache.cache_dir()), so a later run of the same shapes loads it.

References: gpt-fast (pytorch-labs) generate.py, whose decode_one_token is compiled the same way
on CUDA; PyTorch's Inductor CPU backend (torch/_inductor/fx_passes/mkldnn_fusion.py, freezing.py).
"""
import contextlib
import json
import logging
import os
import shutil
import sys
import time

import torch

from cpu_cache import cache_dir, cache_path, cached_entry, machine_key, machine_load, write_entry
from draws import draw_with
from generate import sample_probs

FORMATS = ('int4',)  # compiled by default on the CPU, where it beat eager on every CPU measured (docs/measurements.md);
                     # float32 (nanoGPT's text), bfloat16 and int8 stay eager unless --compile=True
OPTIONS = {'freezing': True, 'cpp_wrapper': True}  # Inductor's config for the step
CACHE_LIMIT = 2 << 30  # bytes of Inductor's cache kept: above this, the least recently used entries go


def inductor_cache_dir():
    """The folder Inductor keeps its compiled graphs and kernels in: inductor/ in the project's
    cache folder, unless TORCHINDUCTOR_CACHE_DIR names another."""
    return os.environ.get('TORCHINDUCTOR_CACHE_DIR') or os.path.join(cache_dir(), 'inductor')


def use_inductor_cache(limit=CACHE_LIMIT):
    """Point Inductor at inductor_cache_dir() for this process (it reads the variable when it
    compiles), first removing its least recently used entries while the folder holds more than
    limit bytes. Returns the folder."""
    path = inductor_cache_dir()
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = path
    entries = []  # (last use, bytes, path) of each entry: a folder two levels down (fxgraph/ab/<key>), or a file
    for top, dirs, files in os.walk(path):
        if top.count(os.sep) - path.count(os.sep) == 2:
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(top) for f in fs)
            entries.append((os.path.getmtime(top), size, top))
            dirs.clear()
        elif top.count(os.sep) - path.count(os.sep) < 2:
            entries += [(os.path.getmtime(p), os.path.getsize(p), p) for p in (os.path.join(top, f) for f in files)]
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
        total -= size
    return path


@contextlib.contextmanager
def _quiet_cache_misses():
    """Inductor recompiles a graph whose cached entry it cannot read (a truncated file, an older
    format), but logs a traceback for it, and its half-built entry complains when it is freed:
    neither reaches the user while the step compiles."""
    logger, hook = logging.getLogger('torch._inductor.codecache'), sys.unraisablehook
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        logger.setLevel(level)
        sys.unraisablehook = hook


MIN_ROWS = 2  # a row's bits at 1 row differ from those at 2 or more (docs/measurements.md): never 1
MIN_LENGTH = 64  # the shortest KV cache a step is compiled for


class CompiledStep:
    """model's decode step and sampling rule as one compiled CPU graph for `rows` rows.

    Call with idx (B, 1) LongTensor (the tokens just sampled), pos (B,) LongTensor (each row's
    position, < the KV cache's length) and q (B, V) exponential draws in the logits' dtype (None
    at temperature 0), B <= rows; returns (ids (B, 1) LongTensor, logits (B, V) in the model's
    compute dtype). Fewer than `rows` rows are padded with copies of row 0, so that one graph
    serves every batch of a run and a row's bits never depend on the batch (the KV cache must have
    `rows` rows: model.setup_caches(rows, cache_length(n)), its buffers kept between calls). The
    sampling settings (see generate.sample_probs) are fixed for the step; temperature, top_p and
    min_p go in as 0-d tensors, so that a new value needs no new graph.
    """

    def __init__(self, model, rows, temperature=1.0, top_k=None, top_p=1.0, min_p=0.0, n_vocab=None):
        self.model, self.rows, self.top_k, self.n_vocab = model, max(rows, MIN_ROWS), top_k, n_vocab
        self.greedy = temperature == 0
        as_input = lambda value, off: torch.tensor(float(value)) if value != off else off  # noqa: E731
        self.settings = (torch.tensor(float(temperature or 1.0)), as_input(top_p, 1.0), as_input(min_p, 0.0))
        self.no_draws = None  # q's stand-in at temperature 0
        self.ready = False  # compiled, or loaded from Inductor's cache, by the first call
        use_inductor_cache()
        self.fn = torch.compile(self._step, fullgraph=True, dynamic=False, options=OPTIONS)

    def cache_length(self, positions):
        """The KV cache length to compile for, for a run that needs `positions`: a power of two from
        MIN_LENGTH, at most block_size, so that few lengths are ever compiled (a position's bits do
        not depend on the length: the step attends over the whole cache, masked)."""
        block_size = self.model.config.block_size
        return min(block_size, max(MIN_LENGTH, 1 << (positions - 1).bit_length()))

    def _step(self, idx, pos, q, temperature, top_p, min_p):
        logits = self.model.decode_step(idx, pos)[:, -1, :]  # (rows, V)
        if self.greedy:
            return torch.argmax(logits[:, :self.n_vocab], dim=-1, keepdim=True), logits
        probs = sample_probs(logits, temperature, self.top_k, top_p, self.n_vocab, min_p)
        return draw_with(probs, q), logits

    def __call__(self, idx, pos, q=None):
        B = idx.size(0)
        if q is None:
            if self.no_draws is None:
                self.no_draws = torch.ones(self.rows, self.model.config.vocab_size, dtype=self.model.compute_dtype)
            q = self.no_draws[:B]
        if B < self.rows:  # copies of row 0, at the spare rows of the cache
            pad = [0] * (self.rows - B)
            idx, pos, q = torch.cat([idx, idx[pad]]), torch.cat([pos, pos[pad]]), torch.cat([q, q[pad]])
        if not self.ready:
            return self._first_call(B, idx, pos, q)
        ids, logits = self.fn(idx, pos, q, *self.settings)
        return ids[:B], logits[:B]

    def _key(self, length):
        c = self.model.config
        shapes = [c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size, c.bias, c.gelu, self.rows, length]
        weights = sorted({type(m).__name__ + ':' + str(getattr(m, 'kernel', '')) for m in self.model.modules()})
        return json.dumps(machine_key() + ['compiled step', shapes, str(self.model.compute_dtype), weights,
                                        self.greedy, self.top_k, self.n_vocab] + [torch.is_tensor(v) for v in self.settings])

    def _first_call(self, B, *inputs):
        """The first call compiles (or loads what an earlier run compiled: no message then). An
        error from Inductor's cache (a corrupt or stale entry) means its cache is emptied and
        the step compiled again; if that fails too (no C++ compiler, ...), the step runs eagerly,
        with one warning."""
        key = self._key(self.model.transformer.h[0].attn.kv_cache.k_cache.size(2))
        known = cached_entry(cache_path(), key)
        if not known:
            n = self.model.config.n_layer
            print(f"compiling the decode step for these shapes, format and batch (about {5 + 2 * n} s; later "
                  f"runs load it from {inductor_cache_dir()})...", file=sys.stderr)
        load, t0 = machine_load(), time.perf_counter()
        try:
            with _quiet_cache_misses():
                ids, logits = self.fn(*inputs, *self.settings)
        except Exception as first:  # noqa: BLE001 (any failure of the compiler: the step must still run)
            shutil.rmtree(inductor_cache_dir(), ignore_errors=True)
            torch._dynamo.reset()
            self.fn = torch.compile(self._step, fullgraph=True, dynamic=False, options=OPTIONS)
            try:
                ids, logits = self.fn(*inputs, *self.settings)
            except Exception:  # noqa: BLE001
                print(f"warning: the decode step could not be compiled ({str(first).strip().splitlines()[0][:200]}); "
                      f"it runs eagerly (--compile=False does so without trying)", file=sys.stderr)
                self.fn = self._step
                ids, logits = self.fn(*inputs, *self.settings)
        if not known and self.fn is not self._step:
            write_entry(cache_path(), key, {'seconds': round(time.perf_counter() - t0, 1)}, load)
        self.ready = True
        return ids[:B], logits[:B]
