"""sample.py end to end, as a user meets it (a subprocess): the bundled demo and GPT-2 from the
offline hub cache give the reference loop's text; nanoGPT-format checkpoints, prompts and where
meta.pkl is found; text as it comes, pipes, Ctrl-C; warnings."""
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import tiktoken
import torch

from helpers import DEMO, ROOT, SHAKESPEARE_CHARS, reference_generate, run_sample, write_meta
from draws import advance_like_nanogpt_init
from model import GPT, GPTConfig

SAMPLE_PY = os.path.join(ROOT, 'sample.py')


def start_sample(*args, cwd=ROOT):
    """sample.py as a running process, to read its stdout as it comes (sample.py flushes each
    piece of text itself: no PYTHONUNBUFFERED) or to interrupt it."""
    return subprocess.Popen([sys.executable, SAMPLE_PY, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def reference_output(model, encode, decode, start, num_samples, max_new_tokens, temperature=0.8, top_k=200, seed=1337,
                     replay_init=True):
    """The reference loop's text, sampled as nanoGPT's sample.py samples: seed, replay the init draws
    of a nanoGPT-built model (checkpoints only), then samples one after another. (That this is
    nanoGPT's text is shown against nanoGPT's own files in test_exact.py.)"""
    torch.manual_seed(seed)
    if replay_init:
        advance_like_nanogpt_init(model.config)
    x = torch.tensor(encode(start), dtype=torch.long)[None, ...]
    out = []
    with torch.no_grad():
        for _ in range(num_samples):
            y = reference_generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k)
            out.append(decode(y[0].tolist()) + '\n---------------\n')
    return ''.join(out)


# ---------------------------------------------------------------- the demo and GPT-2: the reference loop's text

def test_gpt2_encoding_offline():
    enc = tiktoken.get_encoding("gpt2")
    assert enc.encode("Hello, my name is") == [15496, 11, 616, 1438, 318]
    assert enc.decode([15496, 11, 616, 1438, 318]) == "Hello, my name is"


def test_demo_model_matches_the_reference_loop():
    # one sample after another: the reference loop's text from nanoGPT's loop (--kv_cache=False), the KV cache
    # and streaming alike
    args = ('--out_dir=out-shakespeare-char', '--num_samples=2', '--max_new_tokens=150', '--batch_size=1')
    r = run_sample(*args, '--kv_cache=False')
    assert r.returncode == 0, r.stderr
    cached = run_sample(*args, '--stream=False')
    streamed = run_sample(*args)
    assert cached.stdout == r.stdout and streamed.stdout == r.stdout
    ckpt = torch.load(os.path.join(DEMO, 'ckpt.pt'), weights_only=True)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    model.eval()
    with open(os.path.join(DEMO, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    encode = lambda s: [meta['stoi'][c] for c in s]
    decode = lambda l: ''.join(meta['itos'][i] for i in l)
    assert r.stdout == reference_output(model, encode, decode, "\n", 2, 150)
    # and it reads like Shakespeare: mostly real words
    words = r.stdout.split()
    common = {'the', 'and', 'to', 'of', 'I', 'my', 'you', 'that', 'a', 'in', 'is', 'not', 'me', 'with'}
    assert sum(w.strip(",.;:!?'") in common for w in words) > len(words) // 10


def test_gpt2_from_offline_hub_cache_matches_the_reference_loop(gpt2_hub, tmp_path):
    r = run_sample('--init_from=gpt2', '--start=Hello, my name is', '--num_samples=2', '--batch_size=1',
                   '--kv_cache=False', '--max_new_tokens=12', '--stop_at_eot=False', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    enc = tiktoken.get_encoding("gpt2")
    model = GPT.from_pretrained('gpt2').eval()
    expected = reference_output(model, lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}),
                                enc.decode, "Hello, my name is", 2, 12, replay_init=False)
    assert r.stdout == expected
    assert r.stdout.startswith("Hello, my name is")


def test_unconditional_gpt2_and_stop_at_eot(gpt2_hub, tmp_path):
    r = run_sample('--init_from=gpt2', '--start=', '--num_samples=1', '--max_new_tokens=5', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not r.stdout.startswith('<|endoftext|>')  # the implicit start token is not printed
    assert r.stdout.endswith('---------------\n')


# ---------------------------------------------------------------- nanoGPT checkpoints and prompts

def test_resume_nanogpt_checkpoint_past_block_size(char_ckpt):
    r = run_sample('--out_dir=out', '--start=ROMEO:', '--num_samples=2', '--max_new_tokens=40', cwd=char_ckpt)
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split('---------------\n')
    assert len(samples) == 3 and samples[2] == ''
    for s in samples[:2]:
        assert s.startswith('ROMEO:') and len(s) == len('ROMEO:') + 40 + 1  # + print's newline
    assert set(r.stdout) <= set(SHAKESPEARE_CHARS)
    # nanoGPT's train.py saves its optimizer state too: loading skips it
    assert torch.load(char_ckpt / 'out' / 'ckpt.pt', weights_only=True)['optimizer']['state']


def test_meta_lookup_order(char_ckpt):
    # data/<dataset>/meta.pkl is used when out_dir has none; out_dir's wins when both exist
    reversed_chars = SHAKESPEARE_CHARS[::-1]
    os.rename(char_ckpt / 'out' / 'meta.pkl', char_ckpt / 'saved.pkl')
    write_meta(str(char_ckpt / 'data' / 'toy' / 'meta.pkl'), reversed_chars)
    args = ('--out_dir=out', '--start=a', '--num_samples=1', '--max_new_tokens=30', '--temperature=0')
    from_data = run_sample(*args, cwd=char_ckpt)
    assert from_data.returncode == 0 and 'data/toy/meta.pkl' in from_data.stderr
    os.rename(char_ckpt / 'saved.pkl', char_ckpt / 'out' / 'meta.pkl')
    from_out = run_sample(*args, cwd=char_ckpt)
    assert from_out.returncode == 0 and 'out/meta.pkl' in from_out.stderr
    assert from_data.stdout != from_out.stdout


def test_file_prompt(char_ckpt):
    # (a missing prompt file and one not in UTF-8: test_safety.py)
    (char_ckpt / 'prompt.txt').write_text('KING HENRY:\nWhat say', encoding='utf-8')
    r = run_sample('--out_dir=out', '--start=FILE:prompt.txt', '--num_samples=1', '--max_new_tokens=3', cwd=char_ckpt)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('KING HENRY:\nWhat say')


def test_long_prompt_warns_and_zero_new_tokens_prints_prompt(char_ckpt):
    prompt = 'abcdefghij' * 3  # 30 characters, block_size 16
    r = run_sample('--out_dir=out', f'--start={prompt}', '--num_samples=1', '--max_new_tokens=5', cwd=char_ckpt)
    assert r.returncode == 0 and 'warning' in r.stderr and 'last 16' in r.stderr
    assert r.stdout.startswith(prompt)
    r = run_sample('--out_dir=out', '--start=hello', '--num_samples=1', '--max_new_tokens=0', cwd=char_ckpt)
    assert r.returncode == 0 and r.stdout == 'hello\n---------------\n'


# ---------------------------------------------------------------- text as it comes, pipes, Ctrl-C

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


def test_streaming_is_byte_identical_and_batched_rows_all_print(gpt2_hub, tmp_path):
    # random GPT-2 weights emit many byte-fragment tokens: a good test of incremental UTF-8
    args = ('--init_from=gpt2', '--start=Ünïcödé ☃', '--max_new_tokens=40', '--temperature=1.5', '--top_k=None')
    streamed = run_sample(*args, '--num_samples=2', '--batch_size=1', cwd=tmp_path)
    plain = run_sample(*args, '--num_samples=2', '--batch_size=1', '--stream=False', cwd=tmp_path)
    assert streamed.returncode == 0 and plain.returncode == 0, streamed.stderr + plain.stderr
    assert streamed.stdout.encode() == plain.stdout.encode()
    batched = run_sample(*args, '--num_samples=3', cwd=tmp_path)  # all rows at once
    assert batched.returncode == 0 and batched.stdout.count('---------------\n') == 3


def test_closed_pipe_ends_quietly():
    p = subprocess.Popen(f"{sys.executable} {SAMPLE_PY} --out_dir=out-shakespeare-char "
                         f"--batch_size=1 --max_new_tokens=2000 | head -3", shell=True, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    assert len(out.splitlines()) == 3
    assert 'Traceback' not in err and 'BrokenPipe' not in err, err


def test_summary_after_a_closed_pipe_counts_what_was_written():
    # head takes three lines of the first sample, streamed, and goes: the ids written before the
    # pipe closed are counted (a character each; the prompt '\n' is the first line), not 0
    p = subprocess.Popen(f"{sys.executable} {SAMPLE_PY} --out_dir=out-shakespeare-char --num_samples=2 "
                         f"--max_new_tokens=2000 | head -3", shell=True, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    summary = re.search(r'^(\d+) samples, (\d+) tokens generated', err, re.M)
    assert p.returncode == 0 and summary, err
    assert int(summary[1]) == 0 and len(out) - 1 <= int(summary[2]) < 2000, (out, summary[0])


def test_ctrl_c_while_streaming_keeps_the_text_and_ends_the_line():
    p = start_sample('--out_dir=' + DEMO, '--num_samples=1', '--max_new_tokens=100000', '--batch_size=1')
    first = p.stdout.read(20)  # streaming: text arrives while it is produced
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert len(first) == 20 and b'Traceback' not in err and b'KeyboardInterrupt' not in err, err
    assert rest.endswith(b'\n')


def test_ctrl_c_while_torch_imports_is_quiet():
    p = start_sample('--out_dir=' + DEMO)
    time.sleep(0.3)  # inside `import torch`
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and b'Traceback' not in err, err


def test_temperature_too_small_to_divide_by_is_greedy():
    # logits / 1e-300 overflows and 1e-300 is 0 in float32: every id was 0 ('\n'); now argmax
    from generate import sample
    logits = torch.randn(3, 65, generator=torch.Generator().manual_seed(0))  # no ties, in bfloat16 too
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(sample(logits.to(dtype), 1e-300), logits.to(dtype).argmax(-1, keepdim=True))
    args = ('--out_dir=' + DEMO, '--num_samples=2', '--max_new_tokens=30')
    tiny = run_sample(*args, '--temperature=1e-300')
    assert tiny.returncode == 0 and tiny.stdout == run_sample(*args, '--temperature=0').stdout, tiny.stderr


# ---------------------------------------------------------------- warnings

def test_float16_on_cpu_warns():
    r = run_sample('--out_dir=' + DEMO, '--device=cpu', '--dtype=float16', '--num_samples=1', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr
    assert 'float16 on CPU is several times slower' in r.stderr and 'bfloat16' in r.stderr


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_compiled_decode_through_sample_py(dtype):
    # --compile=True on CPU keeps the plain weight layout (torch.compile cannot trace oneDNN's
    # packed weights: it crashed with an InductorError). Greedy: in float32 the eager run's text;
    # in bfloat16 Inductor's kernels round otherwise, so the text may part from eager's after a
    # while, but starts the same
    args = ('--out_dir=' + DEMO, '--device=cpu', f'--dtype={dtype}', '--num_samples=2', '--max_new_tokens=40',
            '--temperature=0')
    compiled = run_sample(*args, '--compile=True')
    assert compiled.returncode == 0, compiled.stderr
    assert 'compiling the decode step' in compiled.stderr and 'Traceback' not in compiled.stderr
    eager = run_sample(*args)
    assert eager.returncode == 0
    if dtype == 'float32':
        assert compiled.stdout == eager.stdout
    else:
        assert compiled.stdout[:12] == eager.stdout[:12] and compiled.stdout.count('---------------') == 2
