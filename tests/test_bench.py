"""
bench.py's report, run as a user runs it on the bundled demo checkpoint (CPU, no peers): the
bandwidth it divides by is the best of every measurement it lists, and each case's decode step
splits into the weight matmuls and the rest.
"""
import json

import pytest

from helpers import DEMO, run_sample


def test_bench_py_bandwidth_samples_and_time_outside_matmuls():
    r = run_sample(f'--model={DEMO}/ckpt.pt', '--cases=b1_prompt5', '--dtype=float32,int4', '--hf=False',
                   '--ref=False', '--llamacpp=none', script='bench.py')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    samples = out['bandwidth_samples_gb_s']
    # measured before each format and at the end, every method each time, the best one kept
    assert list(dict.fromkeys(s['when'] for s in samples)) == ['before float32', 'before int4', 'at the end']
    assert len({s['method'] for s in samples}) >= 3 and all(s['gb_s'] > 0 for s in samples)
    assert out['bandwidth_gb_s'] == max(s['gb_s'] for s in samples)
    # float32 eager; int4 eager, then as the compiled step (the first run compiling, a later one from the cache)
    assert [(c['format'], c['mode']) for c in out['cases']] == [('float32', 'eager'), ('int4', 'eager'), ('int4', 'compiled')]
    assert out['cases'][2]['first_run_s'] > 0 and out['cases'][2]['later_run_s'] > 0
    assert out['cases'][2]['op_classes_ms']['matmul'] > 0  # the compiled step's kernels, profiled
    for c in out['cases']:
        assert c['matmul_ms'] > 0 and c['matmul_ops'], c
        assert 0 <= c['outside_matmul_ms'] <= c['step_ms'], c
        # the timed step, unprofiled, less the profiled matmuls (0 if noise made those the longer)
        assert c['step_ms'] == pytest.approx(1000 / c['tokens_per_s'])  # batch 1: a step per token
        assert c['outside_matmul_ms'] == pytest.approx(max(0.0, c['step_ms'] - c['matmul_ms']))
        assert c['profiled_step_ms'] > c['matmul_ms']
        assert 0 <= c['outside_matmul_pct'] <= 100 and c['profiled_steps'] >= 1
        assert c['roofline_tokens_per_s'] == pytest.approx(c['batch'] * out['bandwidth_gb_s'] * 1e9 / c['bytes_per_step'])
        assert c['llama_tokens_per_s'] is None and c['vs_llama'] is None  # --llamacpp=none
    assert out['llamacpp'] is None
    table = r.stdout.splitlines()
    head = next(l for l in table if l.startswith('case | '))
    assert 'outside mm %' in head and 'llama tok/s' in head


FAKE_LLAMA_BENCH = '''#!/bin/sh
# a stand-in llama-bench: dies with SIGSEGV unless repacking is off, as the real one did on one CPU
case "$*" in
  *--version*) echo "version: 0 (stand-in)"; exit 0 ;;
  *"--repack 0"*) echo '[{"avg_ts": 123.0, "samples_ts": [120.0, 123.0]}]'; exit 0 ;;
  *) kill -SEGV $$ ;;
esac
'''


def test_bench_py_runs_llamacpp_again_without_repacking_after_a_crash(gpt2_hub, tmp_path):
    # llama.cpp's repacked Q8_0 / Q4_0 weights crashed (SIGSEGV) once a prompt was processed: bench.py
    # measures again with repacking off, and says which configuration it measured
    root = tmp_path / 'llamacpp'
    (root / 'build' / 'bin').mkdir(parents=True)
    (root / 'models').mkdir()
    (root / 'models' / 'gpt2-f32.gguf').write_bytes(b'GGUF')
    for name in ('llama-bench', 'llama-batched-bench'):
        (root / 'build' / 'bin' / name).write_text(FAKE_LLAMA_BENCH)
        (root / 'build' / 'bin' / name).chmod(0o755)
    r = run_sample('--model=gpt2', '--cases=b1_prompt5', '--dtype=float32', '--hf=False', '--ref=False',
                   f'--llamacpp={root}', script='bench.py')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    case = json.loads(r.stdout.splitlines()[-1])['cases'][0]
    assert case['llama_tokens_per_s'] == 123.0
    assert case['llama_config'].startswith('repacking off (--repack 0)') and 'signal 11' in case['llama_config']
    assert 'measured with repacking off' in r.stderr
