"""Weight formats end to end: int8 weight-only and bfloat16 through sample.py and the loaders,
and the one-line errors for formats a device cannot run (an int8 load's memory: test_load.py)."""
import os
import torch

import load
from conftest import ROOT, run_sample

DEMO = os.path.join(ROOT, 'out-shakespeare-char')


def test_int8_and_bf16_sample_the_demo():
    for args in (['--quantize=int8'], ['--dtype=bfloat16'], ['--quantize=int8', '--dtype=bfloat16']):
        r = run_sample('--out_dir=' + DEMO, '--device=cpu', '--num_samples=3', '--max_new_tokens=80', *args)
        assert r.returncode == 0, (args, r.stderr)
        samples = r.stdout.split('\n---------------\n')
        assert len(samples) == 4 and samples[-1] == ''
        assert all(len(s) > 40 for s in samples[:3])  # the prompt "\n" and 80 characters each


@torch.no_grad()
def test_int8_logits_close_to_float32_on_the_demo():
    # weight-only int8 with one scale per output channel moves each weight by at most half a step
    # (absmax / 254) and the activations are rounded to bf16 (8 bits of mantissa): on the demo's
    # logits (|logit| up to ~15) that is well inside 0.5, and the greedy tokens mostly agree
    ckpt = os.path.join(DEMO, 'ckpt.pt')
    full, int8 = load.from_checkpoint(ckpt), load.from_checkpoint(ckpt, quantize='int8')
    x = torch.randint(0, 65, (4, 128), generator=torch.Generator().manual_seed(0))
    a, _ = full(x, targets=x)
    b, _ = int8(x, targets=x)
    assert b.dtype == torch.bfloat16 and torch.isfinite(b).all()
    assert (a - b.float()).abs().max() < 0.5
    assert (a.argmax(-1) == b.float().argmax(-1)).float().mean() > 0.95


def test_bad_formats_are_one_line():
    for args, words in [(['--quantize=int4'], ['int4', 'int8']),
                        (['--quantize=int8', '--device=cuda'], ['cuda', 'CPU only'])]:
        r = run_sample('--out_dir=' + DEMO, '--num_samples=1', '--max_new_tokens=3', *args)
        assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith('error: ') and all(w in line for w in words), line
