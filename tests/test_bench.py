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
    assert [c['format'] for c in out['cases']] == ['float32', 'int4']
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
