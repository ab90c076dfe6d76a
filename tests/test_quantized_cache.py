"""cpu/quantized_cache.py: quantized weights cached on disk, read back the same, quantized again
when corrupt or stale, and skipped (never an error) when the disk is full."""
import os

import pytest
import torch

import load
from helpers import DEMO as DEMO_DIR, run_sample
from model import GPT

DEMO = os.path.join(DEMO_DIR, 'ckpt.pt')


@pytest.mark.parametrize('fmt', ['int8', 'int4'])
@torch.no_grad()
def test_quantized_weights_are_cached_on_disk(fmt, tmp_path, monkeypatch):
    # the first quantized load writes the cache; the next reads it (no quantizing: the file's
    # tensors are not even read) and computes the same logits; a corrupt cache file, or a source
    # file changed since, means quantizing again, never an error
    import shutil
    from cpu import quantized_cache
    ckpt = tmp_path / 'ckpt.pt'
    shutil.copy(DEMO, ckpt)
    x = torch.randint(0, 65, (2, 40), generator=torch.Generator().manual_seed(0))
    first = load.from_checkpoint(GPT, str(ckpt), quantize=fmt)
    path, key = quantized_cache.cache_file(str(ckpt), fmt, torch.float32)
    assert os.path.exists(path) and key
    with monkeypatch.context() as mp:
        mp.setattr(load, 'quantize_weight', lambda *a: pytest.fail('quantized again despite the cache'))
        cached = load.from_checkpoint(GPT, str(ckpt), quantize=fmt)
    assert not cached.transformer.h[0].mlp.c_fc.weight.untyped_storage().resizable()  # a view of the mapped file
    assert torch.equal(first(x, targets=x)[0], cached(x, targets=x)[0])
    with open(path, 'r+b') as f:  # corrupt: quantized again, and the file written anew
        f.truncate(100)
    again = load.from_checkpoint(GPT, str(ckpt), quantize=fmt)
    assert torch.equal(first(x, targets=x)[0], again(x, targets=x)[0]) and os.path.getsize(path) > 1000
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:  # one byte flipped in the middle of the tensors: caught by the zip CRCs
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x10]))
    assert not quantized_cache.intact(path)
    with monkeypatch.context() as mp:
        calls = []
        real = load.quantize_weight
        mp.setattr(load, 'quantize_weight', lambda *a: calls.append(1) or real(*a))
        flipped = load.from_checkpoint(GPT, str(ckpt), quantize=fmt)
    assert calls and quantized_cache.intact(path)  # quantized again, and the file rewritten
    assert torch.equal(first(x, targets=x)[0], flipped(x, targets=x)[0])
    os.utime(ckpt, ns=(1, 1))  # the source changed: another key, another file
    assert quantized_cache.cache_file(str(ckpt), fmt, torch.float32)[0] != path
    os.utime(ckpt, ns=(2, 2))
    path, key = quantized_cache.cache_file(str(ckpt), fmt, torch.float32)
    monkeypatch.setattr(quantized_cache, 'quantizer_digest', lambda: 'another quantizer')
    assert quantized_cache.cache_file(str(ckpt), fmt, torch.float32) != (path, key)  # the quantizer's code changed


def test_the_quantizer_digest_follows_the_quantizers_source(tmp_path, monkeypatch):
    from cpu import quantized_cache
    for name in quantized_cache.QUANTIZER_SOURCES:
        (tmp_path / name).write_bytes(open(os.path.join(os.path.dirname(quantized_cache.__file__), name), 'rb').read())
    monkeypatch.setattr(quantized_cache, '__file__', str(tmp_path / 'quantized_cache.py'))
    assert 'int4.py' in quantized_cache.QUANTIZER_SOURCES and 'quantize.py' in quantized_cache.QUANTIZER_SOURCES
    for name in quantized_cache.QUANTIZER_SOURCES:  # a change to any of them is a new digest
        before = quantized_cache.quantizer_digest()
        with open(tmp_path / name, 'a') as f:
            f.write('\n# a change to the quantizer\n')
        assert quantized_cache.quantizer_digest() != before, name


def test_a_full_disk_only_skips_the_quantized_cache(tmp_path):
    # the cache is a convenience: a disk that fills while it is written (here a file-size limit)
    # leaves no file behind, and sample.py prints its samples as it would without the cache
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the demo's int8 file is ~2.5 MB

    args = ('--out_dir=' + DEMO_DIR, '--num_samples=1', '--max_new_tokens=20', '--quantize=int8')
    env = {'NANOSAMPLE_CACHE_DIR': str(tmp_path)}
    limited = run_sample(*args, env=env, preexec_fn=limit_file_size)
    assert limited.returncode == 0 and 'Traceback' not in limited.stderr, limited.stderr
    assert os.listdir(tmp_path / 'quantized') == []  # no cache file, no temporary file
    assert limited.stdout == run_sample(*args, env=env).stdout  # and the next run writes it
    assert len(os.listdir(tmp_path / 'quantized')) == 1
