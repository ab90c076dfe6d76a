"""
The CPU decode step as one compiled graph: the model's forward at one position per row, then
nanoGPT's sampling rule up to its draw, argmax(probs / q). The draws q stay eager and exact: each
row's exponential_ on its own generator (draws.NanoGPTDraws.exponentials), made before the step,
since they do not depend on the logits; Inductor's random ops do not make torch's CPU stream.

The step is exported (torch.export) with the model's weights and KV caches as inputs, and compiled
ahead of time by AOTInductor into a package of C++ kernels and their wrapper, with no Python between
the kernels and no weights inside: the package is a few MB at any model size and loads in well under
a second, so it is made once per machine and kept in the project's cache folder (steps/ under
inductor_cache_dir()). It is compiled for a number of rows and a KV cache length; positions are
inputs, so no step, position or prompt compiles again.

References: gpt-fast (pytorch-labs) generate.py, whose decode_one_token is compiled the same way
on CUDA; PyTorch's AOTInductor (torch._inductor.aoti_compile_and_package), as torchchat exports
its decode step on the CPU.
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings

import torch

from common import brief, remove_quietly, write_temporary
from cpu.cache import cache_dir, machine_key
from draws import draw_with
from generate import sample_probs

FORMATS = ('int4',)  # compiled by default on the CPU, where it beat eager on every CPU measured (docs/measurements.md);
                     # float32 (nanoGPT's text), bfloat16 and int8 stay eager unless --compile=True
OPTIONS = {}  # Inductor's config for the step's package (no freezing: the weights are inputs, not constants)
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


def package_path(key):
    """Where the compiled step for key (CompiledStep._key) is kept: an AOTInductor package (.pt2:
    the step's C++ kernels and wrapper, a few MB, no weights) in steps/ under inductor_cache_dir()."""
    return os.path.join(inductor_cache_dir(), 'steps', hashlib.sha256(key.encode()).hexdigest()[:32] + '.pt2')


def _kernel_profile():
    """Whether Inductor is set to profile its kernels (bench.py sets it): a package made so is
    another package. Read without importing Inductor, which takes about a second."""
    config = sys.modules.get('torch._inductor.config')
    return bool(config and config.cpp.enable_kernel_profile)


class _Step(torch.nn.Module):
    """fn as a module's forward; with model its submodule (model given), torch.func.functional_call
    can swap the model's weights and buffers for the graph's inputs, so the package holds code, not
    weights; without, a module with no tensors of its own, for torch.export."""

    def __init__(self, fn, model=None):
        super().__init__()
        self.fn = fn
        if model is not None:
            self.model = model

    def forward(self, *inputs):
        return self.fn(*inputs)


class CompiledStep:
    """model's decode step and sampling rule as one compiled CPU graph for `rows` rows.

    Call with idx (B, 1) LongTensor (the tokens just sampled), pos (B,) LongTensor (each row's
    position, < the KV cache's length) and q (B, V) exponential draws in the logits' dtype (None
    at temperature 0), B <= rows; returns (ids (B, 1) LongTensor, logits (B, V) in the model's
    compute dtype). Fewer than `rows` rows are padded with copies of row 0, so that one graph
    serves every batch of a run and a row's bits never depend on the batch (the KV cache must have
    `rows` rows: model.setup_caches(rows, cache_length(n))). The sampling settings (see
    generate.sample_probs) are fixed for the step; temperature, top_p and min_p go in as 0-d
    tensors, so that a new value needs no new graph.

    The graph is exported (torch.export) with the model's weights and KV caches as inputs and
    compiled ahead of time by AOTInductor into a package kept on disk (package_path), one per
    model shape, format, rows, cache length, sampling rule, torch and CPU: a later run loads it in
    well under a second, and the package never holds the weights. The caches are written in place.
    """

    def __init__(self, model, rows, temperature=1.0, top_k=None, top_p=1.0, min_p=0.0, n_vocab=None):
        self.model, self.rows, self.top_k, self.n_vocab = model, max(rows, MIN_ROWS), top_k, n_vocab
        self.greedy = temperature == 0
        self.fixed = (1.0 if top_p == 1.0 else None, 0.0 if min_p == 0.0 else None)  # top_p, min_p: off, or None (an input)
        self.settings = [torch.tensor(float(temperature or 1.0))] + [  # the graph's 0-d inputs after q
            torch.tensor(float(v)) for v, off in zip((top_p, min_p), self.fixed) if off is None]
        self.no_draws = None  # q's stand-in at temperature 0
        self.runners = {}  # (KV cache length, q's dtype) -> the loaded package (or self._eager if it could not be made)
        self.k_cache, self.q_dtype, self.names, self.tensors, self.run = None, None, None, None, None  # the last call's
        use_inductor_cache()

    def cache_length(self, positions):
        """The KV cache length to compile for, for a run that needs `positions`: a power of two from
        MIN_LENGTH, at most block_size, so that few lengths are ever compiled (a position's bits do
        not depend on the length: the step attends over the whole cache, masked)."""
        block_size = self.model.config.block_size
        return min(block_size, max(MIN_LENGTH, 1 << (positions - 1).bit_length()))

    def _step(self, idx, pos, q, *settings):
        settings = iter(settings)
        temperature = next(settings)
        top_p, min_p = (v if v is not None else next(settings) for v in self.fixed)
        logits = self.model.decode_step(idx, pos)[:, -1, :]  # (rows, V)
        if self.greedy:
            return torch.argmax(logits[:, :self.n_vocab], dim=-1, keepdim=True), logits
        probs = sample_probs(logits, temperature, self.top_k, top_p, self.n_vocab, min_p)
        return draw_with(probs, q), logits

    def _eager(self, idx, pos, q, *settings_and_tensors):
        return self._step(idx, pos, q, *settings_and_tensors[:len(self.settings)])

    def __call__(self, idx, pos, q=None):
        B = idx.size(0)
        if q is None:
            if self.no_draws is None:
                self.no_draws = torch.ones(self.rows, self.model.config.vocab_size, dtype=self.model.compute_dtype)
            q = self.no_draws[:B]
        if B < self.rows:  # copies of row 0, at the spare rows of the cache
            pad = [0] * (self.rows - B)
            idx, pos, q = torch.cat([idx, idx[pad]]), torch.cat([pos, pos[pad]]), torch.cat([q, q[pad]])
        k_cache = self.model.transformer.h[0].attn.kv_cache.k_cache
        if k_cache is not self.k_cache or q.dtype != self.q_dtype:  # a new cache (setup_caches), or draws in
            self._prepare(k_cache, q.dtype)  # another dtype: its runner, and the inputs again
        ids, logits = self.run(idx, pos, q, *self.settings, *self.tensors)
        return ids[:B], logits[:B]

    def _prepare(self, k_cache, q_dtype):
        """The runner for this cache's length (loaded, or compiled first) and the model's tensors,
        weights and KV caches, in the order of the graph's inputs."""
        named = dict(self.model.named_parameters())
        named.update(self.model.named_buffers())
        self.names = sorted(named)
        self.tensors = [named[n] for n in self.names]
        self.k_cache, self.q_dtype = k_cache, q_dtype
        length = k_cache.size(2)  # (a package checks no dtype at run time: q's is in its key)
        if (length, q_dtype) not in self.runners:
            self.runners[length, q_dtype] = self._runner(length)
        self.run = self.runners[length, q_dtype]

    def _key(self, length):
        c = self.model.config
        shapes = [c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size, c.bias, c.gelu, self.rows, length,
                  str(self.q_dtype)]
        tensors = [(n, list(t.shape), str(t.dtype)) for n, t in zip(self.names, self.tensors)]
        kernels = sorted({type(m).__name__ + ':' + str(getattr(m, 'kernel', '')) for m in self.model.modules()})
        return json.dumps(machine_key() + ['compiled step', shapes, tensors, kernels, self.greedy, self.top_k,
                                        self.n_vocab, self.fixed, OPTIONS, _kernel_profile()])

    def _runner(self, length):
        """The package for this length: loaded from disk, or (missing or unreadable) compiled and
        written there first. If it cannot be compiled (no C++ compiler, ...), the step runs eagerly,
        with one warning."""
        path = package_path(self._key(length))
        if os.path.exists(path):
            try:
                return self._load(path)
            except Exception:  # noqa: BLE001 (a corrupt or stale package: compile it again)
                remove_quietly(path)
        n = self.model.config.n_layer
        print(f"compiling the decode step for these shapes, format and batch (about {5 + 2 * n} s; later "
              f"runs load it from {os.path.dirname(path)})...", file=sys.stderr)
        try:
            self._compile(path)
            return self._load(path)
        except Exception as e:  # noqa: BLE001 (any failure of the compiler: the step must still run)
            print(f"warning: the decode step could not be compiled ({brief(e)}); it runs eagerly "
                  f"(--compile=False does so without trying)", file=sys.stderr)
            return self._eager

    def _load(self, path):
        """A callable running the package at path on (idx, pos, q, *settings, *tensors), returning
        (ids, logits). Its loader is the one torch._inductor.aoti_load_package makes, without that
        function's check of the CPU's vector ISA (a C++ compile of probes, about a second a process)
        or its per-call parsing of the input spec (the step's inputs are flat tensors already)."""
        loader = torch._C._aoti.AOTIModelPackageLoader(path, 'model', False, 1, -1)  # no single thread, 1 runner, CPU
        os.utime(path)  # the least recently used packages go first (use_inductor_cache)
        return lambda *inputs: loader.boxed_run(list(inputs))

    def _compile(self, path):
        """Export the step with the weights and caches as inputs, compile it with AOTInductor and
        write the package to path whole (a reader never sees half of one)."""
        V, dtype = self.model.config.vocab_size, self.q_dtype
        example = (torch.zeros(self.rows, 1, dtype=torch.long), torch.zeros(self.rows, dtype=torch.long),
                   torch.ones(self.rows, V, dtype=dtype), *self.settings)
        module = _Step(self._step, self.model)

        def step(*inputs):  # the model's tensors swapped for the inputs after the step's own
            tensors = dict(zip(['model.' + n for n in self.names], inputs[len(example):]))
            return torch.func.functional_call(module, tensors, inputs[:len(example)], strict=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with torch.no_grad(), _quiet_cache_misses(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch's own deprecations, met while exporting
            program = torch.export.export(_Step(step), (*example, *self.tensors), strict=False)
            write = lambda tmp: torch._inductor.aoti_compile_and_package(  # noqa: E731
                program, package_path=tmp, inductor_configs=OPTIONS)
            os.replace(write_temporary(path, write, temp=f"{path}.{os.getpid()}.pt2"), path)  # AOTInductor writes .pt2 names only
