"""sample.py as a new user meets it: text as it comes, memory errors, warnings, Ctrl-C."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_sample

DEMO = os.path.join(ROOT, 'out-shakespeare-char')
SCRIPT = os.path.join(ROOT, 'sample.py')


def start_sample(*args, cwd=ROOT):
    """sample.py as a running process, its stdout unbuffered for reading as it comes."""
    return subprocess.Popen([sys.executable, SCRIPT, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED='1'))


def test_first_row_streams_before_the_batch_is_done():
    # four rows decode together; the first row's text reaches stdout while the others still decode
    args = ('--out_dir=' + DEMO, '--num_samples=4', '--max_new_tokens=300')
    p = start_sample(*args)
    first = p.stdout.read(40)  # blocks until the first 40 bytes are written
    still_running = p.poll() is None
    rest = p.stdout.read()
    p.wait(timeout=600)
    assert p.returncode == 0, p.stderr.read()
    assert still_running and len(first) == 40
    assert first + rest == run_sample(*args, '--stream=False').stdout.encode()  # the same bytes


def test_kv_cache_that_cannot_fit_is_one_line():
    r = run_sample('--out_dir=' + DEMO, '--num_samples=2000000', '--max_new_tokens=100')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith('error: the KV cache needs'), line
    for knob in ('--batch_size', '--num_samples', '--max_new_tokens'):
        assert knob in line


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='RLIMIT_AS is Linux-only here')
def test_allocation_failure_is_memory_not_a_corrupt_file(gpt2_hub, tmp_path):
    # an address-space limit that torch's import fits in but mapping the 500 MB of weights does not
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    r = subprocess.run([sys.executable, SCRIPT, '--init_from=gpt2', '--num_samples=1', '--max_new_tokens=3'],
                       cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit, env=dict(os.environ), timeout=300)
    if r.returncode == 0:
        pytest.skip('3 GB of address space was enough on this machine')
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert 'memory' in line and 'corrupt' not in line, line


def test_float16_on_cpu_warns():
    r = run_sample('--out_dir=' + DEMO, '--device=cpu', '--dtype=float16', '--num_samples=1', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr
    assert 'float16 on CPU is several times slower' in r.stderr and 'bfloat16' in r.stderr


def test_ctrl_c_while_streaming_ends_the_line_quietly():
    p = start_sample('--out_dir=' + DEMO, '--num_samples=1', '--max_new_tokens=5000', '--batch_size=1')
    p.stdout.read(20)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and b'Traceback' not in err, err
    assert out.endswith(b'\n')


def test_ctrl_c_while_torch_imports_is_quiet():
    p = start_sample('--out_dir=' + DEMO)
    time.sleep(0.3)  # inside `import torch`
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and b'Traceback' not in err, err
