"""Fast decoding: the KV-cache path agrees with nanoGPT's reference loop; batches, streaming,
the compiled static decode step, and pipes."""
import os
import subprocess
import sys

import pytest
import torch

import generate as generate_module
from conftest import ROOT, run_sample, tiny_model


def record_logits(monkeypatch):
    """Make sample_next record the (B, V) logits it is given, in order."""
    seen = []
    real = generate_module.sample

    def recording(logits, *args):
        seen.append(logits.clone())
        return real(logits, *args)
    monkeypatch.setattr(generate_module, "sample", recording)
    return seen


@pytest.mark.parametrize('B, T, new, block_size, shared', [
    (1, 5, 30, 16, False),   # crosses block_size: re-prefill of the cropped window
    (3, 4, 25, 16, False),   # batch > 1, different prompts, past block_size
    (4, 6, 8, 16, True),     # one prompt shared by every row: one prefill, broadcast
    (2, 20, 10, 16, False),  # the prompt itself is longer than block_size
])
@torch.no_grad()
def test_cached_logits_match_reference(monkeypatch, B, T, new, block_size, shared):
    model, _ = tiny_model(block_size=block_size)
    model.eval()
    idx = torch.randint(0, 65, (1 if shared else B, T)).expand(B, -1)
    seen = record_logits(monkeypatch)
    ref = model.generate(idx, new, temperature=0.0, kv_cache=False)
    ref_logits = list(seen)
    seen.clear()
    out = model.generate(idx, new, temperature=0.0, kv_cache=True)
    assert len(seen) == len(ref_logits) == new
    for step, (a, b) in enumerate(zip(seen, ref_logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"step {step}")
    assert torch.equal(out, ref)  # greedy tokens identical
    assert all(block.attn.kv_cache is None for block in model.transformer.h)  # caches freed


@torch.no_grad()
def test_cache_buffers_are_not_in_the_state_dict():
    model, _ = tiny_model()
    keys = set(model.state_dict())
    model.setup_caches(2, 8)
    assert set(model.state_dict()) == keys
    assert model.transformer.h[0].attn.kv_cache.k_cache.shape == (2, 2, 8, 16)


@torch.no_grad()
def test_compiled_decode_step_gives_the_same_tokens():
    model, _ = tiny_model(block_size=32)
    model.eval()
    x = torch.randint(0, 65, (2, 5))
    decode_fn = torch.compile(model.decode_step, fullgraph=True, dynamic=False)
    eager = model.generate(x, 20, temperature=0.0)
    compiled = model.generate(x, 20, temperature=0.0, decode_fn=decode_fn)
    assert torch.equal(eager, compiled)
    again = model.generate(x, 20, temperature=0.0, decode_fn=decode_fn)  # the kept caches, reused
    assert torch.equal(again, eager)


def test_batched_rows_stop_at_eot_and_streaming_is_byte_identical(gpt2_hub, tmp_path):
    # random GPT-2 weights emit many byte-fragment tokens: a good test of incremental UTF-8
    args = ('--init_from=gpt2', '--start=Ünïcödé ☃', '--max_new_tokens=40', '--temperature=1.5', '--top_k=None')
    streamed = run_sample(*args, '--num_samples=2', '--batch_size=1', cwd=tmp_path)
    plain = run_sample(*args, '--num_samples=2', '--batch_size=1', '--stream=False', cwd=tmp_path)
    assert streamed.returncode == 0 and plain.returncode == 0, streamed.stderr + plain.stderr
    assert streamed.stdout.encode() == plain.stdout.encode()
    batched = run_sample(*args, '--num_samples=3', cwd=tmp_path)  # all rows at once
    assert batched.returncode == 0 and batched.stdout.count('---------------\n') == 3


def test_closed_pipe_ends_quietly(tmp_path):
    p = subprocess.Popen(f"{sys.executable} {os.path.join(ROOT, 'sample.py')} --out_dir=out-shakespeare-char "
                         f"--batch_size=1 --max_new_tokens=2000 | head -3", shell=True, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    assert len(out.splitlines()) == 3
    assert 'Traceback' not in err and 'BrokenPipe' not in err, err


def test_ctrl_c_stops_cleanly_after_flushing():
    import signal
    import time
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=out-shakespeare-char',
                          '--num_samples=1', '--max_new_tokens=100000'], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(20)  # streaming: text arrives while it is produced
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert len(first) == 20 and b'Traceback' not in err and b'KeyboardInterrupt' not in err, err
