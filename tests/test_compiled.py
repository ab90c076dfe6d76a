"""The compiled CPU decode step (cpu/compiled.py) against the eager path, on the bundled demo's shapes
(n_embd 180, 65 characters, block_size 128): its logits are the eager step's to within the
format's rounding, a row's tokens do not depend on the rows beside it, their positions or the
KV cache's length, and sample.py compiles once, then loads what it compiled, and survives a
corrupt cache or a machine with no C++ compiler."""
import os

import pytest
import torch

from cpu import compiled
import load
from cpu.compiled import CompiledStep
from draws import NanoGPTDraws, draw_with
from generate import generate_tokens, sample_probs
from helpers import DEMO, run_sample
from model import GPT

FORMATS = {'float32': (torch.float32, None, 1e-4), 'bfloat16': (torch.bfloat16, None, 0.15),
           'int8': (torch.float32, 'int8', 0.05), 'int4': (torch.float32, 'int4', 0.05)}


def demo(fmt):
    dtype, quantize, _ = FORMATS[fmt]
    return load.load_model(GPT, 'resume', DEMO, dtype, 'cpu', quantize)


@pytest.mark.parametrize('fmt', list(FORMATS))
@torch.no_grad()
def test_compiled_logits_are_the_eager_steps(fmt):
    # 3 rows at their own positions (5, 9, 12), 10 steps each fed the same tokens: the compiled
    # step's logits against the eager forward's, within the format's rounding (bf16 logits: 2**-8
    # of ~4; int8 / int4 run float32 around exact integer or dequantized products)
    model, tol = demo(fmt), FORMATS[fmt][2]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 65, (n,), generator=g) for n in (5, 9, 12)]
    step = CompiledStep(model, 3, temperature=0.8, top_k=20, n_vocab=65)
    model.setup_caches(3, step.cache_length(40))
    for i, p in enumerate(prompts):  # each row's prompt into its own cache row
        model(p[None], pos=0)
        model.broadcast_caches(len(p), [i])
    pos = torch.tensor([len(p) for p in prompts])
    for _ in range(10):
        idx = torch.randint(0, 65, (3, 1), generator=g)
        q = torch.empty(3, 65).exponential_(generator=g).to(torch.bfloat16 if fmt == 'bfloat16' else torch.float32)  # the logits' dtype, as generate makes them
        # the eager step first, on a copy of the cache: both write the same keys at the same positions
        caches = [(b.attn.kv_cache.k_cache.clone(), b.attn.kv_cache.v_cache.clone()) for b in model.transformer.h]
        eager = model(idx, pos=pos.tolist())[0][:, -1]
        for b, (k, v) in zip(model.transformer.h, caches):
            b.attn.kv_cache.k_cache.copy_(k)
            b.attn.kv_cache.v_cache.copy_(v)
        ids, logits = step(idx, pos, q)
        assert logits.dtype == eager.dtype and (logits.float() - eager.float()).abs().max() <= tol * eager.abs().max()
        assert torch.equal(ids, draw_with(sample_probs(logits, 0.8, 20, 1.0, 65, 0.0), q))  # the rule, in the graph
        pos += 1


@pytest.mark.parametrize('fmt', ['bfloat16', 'int8'])
@torch.no_grad()
def test_a_rows_tokens_do_not_depend_on_the_batch(fmt):
    # rows at different positions, some past block_size (128), compiled for 3 rows and for 5
    # (different graphs): each row's tokens are those of the row run alone (padded to 2 rows)
    model = demo(fmt)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 65, (n,), generator=g) for n in (3, 40, 110)]
    starts = [g.get_state() for _ in prompts]  # any states: each row its own generator
    for i in range(len(starts)):
        torch.empty(1000).exponential_(generator=g)
        starts[i] = g.get_state()

    def run(rows, idx, row_starts):
        step = CompiledStep(model, rows, temperature=0.9, top_k=30, n_vocab=65)
        draws = NanoGPTDraws(len(row_starts), 40, starts=row_starts)
        return torch.cat(list(generate_tokens(model, idx, 40, temperature=0.9, top_k=30, n_vocab=65,
                                              draws=draws, step=step)), 1)
    together = run(3, prompts, starts)
    more_rows = run(5, prompts, starts)
    alone = torch.cat([run(1, [p], [s]) for p, s in zip(prompts, starts)])
    assert torch.equal(together, alone) and torch.equal(more_rows, alone)


@torch.no_grad()
def test_the_cache_length_does_not_change_a_bit():
    # the step attends over the whole cache, masked: 64 or 128 positions give the same logits
    model = demo('bfloat16')
    x = torch.randint(0, 65, (2, 6), generator=torch.Generator().manual_seed(2))
    out = []
    for length in (64, 128):
        step = CompiledStep(model, 2, temperature=0.0, n_vocab=65)
        model.setup_caches(2, length)
        model(x, pos=0)
        out.append(step(x[:, -1:], torch.tensor([6, 6]))[1])
    assert torch.equal(out[0], out[1])


def test_sample_py_compiles_once_then_loads_it(tmp_path):
    # the default on the CPU in int4: one stderr line while compiling, none the second time;
    # the same text; a corrupt cache compiles again; a machine with no C++ compiler runs eagerly
    args = ('--out_dir=' + DEMO, '--quantize=int4', '--num_samples=2', '--max_new_tokens=30')
    env = {'NANOSAMPLE_CACHE_DIR': str(tmp_path / 'cache'), 'TORCHINDUCTOR_CACHE_DIR': ''}
    first, second = run_sample(*args, env=env), run_sample(*args, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert 'compiling the decode step' in first.stderr and 'compiling' not in second.stderr
    assert first.stdout == second.stdout
    assert os.path.isdir(tmp_path / 'cache' / 'inductor')
    for top, _, files in os.walk(tmp_path / 'cache' / 'inductor'):  # every cached file cut short
        for f in files:
            with open(os.path.join(top, f), 'r+b') as fh:
                fh.truncate(max(0, os.path.getsize(os.path.join(top, f)) // 2))
    third = run_sample(*args, env=env)
    assert third.returncode == 0 and 'Traceback' not in third.stderr, third.stderr
    assert third.stdout == first.stdout
    eager = run_sample(*args, '--compile=False', env=env)
    assert eager.returncode == 0 and 'compiling' not in eager.stderr
    no_compiler = run_sample(*args, env=dict(env, CXX=str(tmp_path / 'no-such-compiler'),
                                             NANOSAMPLE_CACHE_DIR=str(tmp_path / 'empty')))
    assert no_compiler.returncode == 0 and 'Traceback' not in no_compiler.stderr, no_compiler.stderr
    assert 'runs eagerly' in no_compiler.stderr
    assert no_compiler.stdout.count('---------------') == 2


def test_the_cache_keeps_to_its_limit(tmp_path, monkeypatch):
    # entries two levels down (fxgraph/ab/<key>/...) or files above them; the least recently used go first
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))
    for i, name in enumerate(['fxgraph/aa/old', 'fxgraph/bb/mid', 'fxgraph/cc/new']):
        os.makedirs(tmp_path / name)
        (tmp_path / name / 'entry').write_bytes(b'x' * 1000)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    compiled.use_inductor_cache(limit=2500)
    assert not os.path.exists(tmp_path / 'fxgraph/aa/old')
    assert os.path.exists(tmp_path / 'fxgraph/bb/mid') and os.path.exists(tmp_path / 'fxgraph/cc/new')


@torch.no_grad()
def test_top_p_and_min_p_are_inputs_of_one_package(tmp_path, monkeypatch):
    # top_p and min_p in use go into the graph as inputs: the step draws what the eager rule draws
    # from the step's own logits, and a new value loads the same package (none is compiled again)
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))
    model = demo('float32')
    g = torch.Generator().manual_seed(3)
    for top_p, min_p in ((0.9, 0.02), (0.6, 0.1)):
        step = CompiledStep(model, 2, temperature=0.7, top_k=40, top_p=top_p, min_p=min_p, n_vocab=65)
        model.setup_caches(2, 64)
        model(torch.randint(0, 65, (2, 4), generator=g), pos=0)
        for i in range(4):
            q = torch.empty(2, 65).exponential_(generator=g)
            ids, logits = step(torch.randint(0, 65, (2, 1), generator=g), torch.tensor([4 + i, 4 + i]), q)
            rule = draw_with(sample_probs(logits, 0.7, 40, top_p, 65, min_p), q)
            assert torch.equal(ids, rule)
    assert len(os.listdir(tmp_path / 'steps')) == 1
