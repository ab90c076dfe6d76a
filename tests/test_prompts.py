"""Many prompts in one run (--prompts), JSON Lines output with log-probabilities (--output=jsonl),
stop strings (--stop) and min-p (--min_p). The text of a --prompts run is, byte for byte, the
concatenated text of separate runs with --start=<each prompt>; log-probabilities are checked
against Hugging Face's GPT-2 and our own full forward pass."""
import json
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch

import load
from generate import sample as sample_next
from helpers import DEMO, REFERENCE, ROOT, check_error, run_sample, tiny_model, write_nanogpt_checkpoint
from model import GPT
from output import DASHES
from prompts import plan_batches, read_prompt, read_prompts

CHAR_BIAS = os.path.join(REFERENCE, 'char-bias')  # written by nanoGPT's train.py: block_size 48
BPE = os.path.join(REFERENCE, 'bpe-tiny')  # nanoGPT's, GPT-2 encodings, block_size 32
# different lengths: a single token, one longer than the demo's block_size (128), a name and a line
PROMPTS = ['A', 'ROMEO:', 'JULIET: ' + 'Good night, good night! parting is such sweet sorrow, ' * 3, 'KING HENRY:']


def separate_runs(out_dir, prompts, *args):
    """The stdout of one sample.py run per prompt, one after another."""
    text = ''
    for p in prompts:
        r = run_sample(f'--out_dir={out_dir}', f'--start={p}', *args)
        assert r.returncode == 0, r.stderr
        text += r.stdout
    return text


@pytest.mark.parametrize('out_dir, args', [
    (DEMO, ['--num_samples=3', '--max_new_tokens=40']),
    (CHAR_BIAS, ['--num_samples=2', '--max_new_tokens=60', '--temperature=1.2', '--top_k=5', '--seed=7']),
], ids=['demo', 'nanogpt char-bias'])
def test_prompts_give_the_text_of_separate_runs(tmp_path, out_dir, args):
    # a prompt longer than block_size, one of a single token; rows of different prompts in one
    # batch (0: all 8-12 rows together, 3: batches that mix prompts, 1: one row at a time)
    path = tmp_path / 'prompts.txt'
    path.write_text('\n'.join(PROMPTS) + '\n')
    expected = separate_runs(out_dir, PROMPTS, *args)
    for batch_size in (0, 1, 3):
        r = run_sample(f'--out_dir={out_dir}', f'--prompts={path}', f'--batch_size={batch_size}', *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected, batch_size
        assert 'tokens generated' in r.stderr.splitlines()[-1]  # the summary line


def jsonl(r):
    """Every line of a JSONL run's stdout, parsed (a line that is not JSON fails the test)."""
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_jsonl_rows_and_stop(tmp_path):
    # every line is JSON (control characters, quotes, non-ASCII prompts), in prompt then sample
    # order; then a stop string taken from one completion ends that row there (finish_reason
    # 'stop') and leaves every row that never meets it exactly as it was
    path = tmp_path / 'p.jsonl'
    path.write_text('\n'.join(json.dumps({'prompt': p}) for p in ['To be', 'Hello, \u00e9t\u00e9\n\t"world"', '']) + '\n')
    args = [f'--out_dir={BPE}', f'--prompts={path}', '--output=jsonl', '--num_samples=2', '--max_new_tokens=12']
    rows = jsonl(run_sample(*args))
    assert [(o['prompt_index'], o['sample_index']) for o in rows] == [(p, k) for p in range(3) for k in range(2)]
    assert rows[2]['prompt'] == 'Hello, \u00e9t\u00e9\n\t"world"' and rows[4]['prompt'] == ''
    for o in rows:
        assert o['finish_reason'] == 'length' and len(o['tokens']) == len(o['logprobs']) == 12
        assert all(lp <= 0 for lp in o['logprobs'])
    stop = rows[0]['completion'][3:7]
    stopped = jsonl(run_sample(*args, f'--stop={stop!r}'))
    for o, s in zip(rows, stopped):
        if stop in o['completion']:
            assert s['finish_reason'] == 'stop' and s['completion'] == o['completion'].split(stop)[0]
            n = len(s['tokens'])
            assert s['tokens'] == o['tokens'][:n] and close(s['logprobs'], o['logprobs'][:n])
        else:  # (the per-machine layouts are timed in each run: logits may differ in the last bits)
            assert {**s, 'logprobs': 0} == {**o, 'logprobs': 0} and close(s['logprobs'], o['logprobs'])


def close(a, b):
    return len(a) == len(b) and all(abs(x - y) < 1e-5 for x, y in zip(a, b))


def test_finish_reason_eot(tmp_path):
    # a GPT-2-vocabulary checkpoint whose <|endoftext|> (50256) has about 1 chance in 11 at every
    # step: LayerNorm's output is the constant v, and only wte's row 50256 points along it
    model, model_args = tiny_model(vocab_size=50304, block_size=32, n_embd=32, n_head=2)
    with torch.no_grad():
        v = torch.ones(32) / 32 ** 0.5
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        model.transformer.wte.weight.normal_(0, 0.02)
        model.transformer.wte.weight[50256] = v * math.log(50304 / 10)  # its logit; the others are near 0
    write_nanogpt_checkpoint(tmp_path / 'eot', model, model_args, dataset='openwebtext')
    base = [f'--out_dir={tmp_path / "eot"}', '--start=Hi', '--output=jsonl', '--num_samples=8', '--max_new_tokens=30',
            '--temperature=1.0', '--top_k=None']
    free = jsonl(run_sample(*base, '--stop_at_eot=False'))
    ended = jsonl(run_sample(*base))
    hit = 0
    for f, e in zip(free, ended):
        if 50256 in f['tokens']:
            at = f['tokens'].index(50256)
            assert e['finish_reason'] == 'eot' and e['tokens'] == f['tokens'][:at] and len(e['logprobs']) == at
            hit += 1
        else:
            assert e['finish_reason'] == 'length' and e['tokens'] == f['tokens']
    assert hit >= 4  # about 94% of rows meet it within 30 steps


def test_logprobs_match_hugging_face(gpt2_hub, tmp_path):
    # float32: each token's log-probability is HF GPT2LMHeadModel's log-softmax of prompt + completion
    hf, _ = gpt2_hub
    path = tmp_path / 'p.jsonl'
    path.write_text(json.dumps({'prompt': 'The meaning of life is'}) + '\n' + json.dumps({'prompt': 'A'}) + '\n')
    rows = jsonl(run_sample('--init_from=gpt2', f'--prompts={path}', '--output=jsonl', '--num_samples=2',
                            '--max_new_tokens=6', '--dtype=float32', '--device=cpu', '--temperature=0.7', '--top_k=40',
                            cwd=tmp_path))
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    for o in rows:
        ids = enc.encode(o['prompt']) + o['tokens']
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].float()
        want = torch.log_softmax(logits[:, :50257], -1)[len(ids) - len(o['tokens']) - 1:-1].gather(
            1, torch.tensor(o['tokens'])[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(o['logprobs']), want, atol=1e-4, rtol=0)


def test_logprobs_match_a_full_forward_on_a_character_model(tmp_path):
    path = tmp_path / 'p.txt'
    path.write_text('ROMEO:\nJULIET: ' + 'O Romeo, Romeo! ' * 8 + '\n')  # the second is longer than block_size
    rows = jsonl(run_sample(f'--out_dir={CHAR_BIAS}', f'--prompts={path}', '--output=jsonl', '--num_samples=2',
                            '--max_new_tokens=30'))
    model = load.from_checkpoint(GPT, os.path.join(CHAR_BIAS, 'ckpt.pt'))
    import pickle
    stoi = pickle.load(open(os.path.join(CHAR_BIAS, 'meta.pkl'), 'rb'))['stoi']
    for o in rows:
        ids = [stoi[c] for c in o['prompt']]
        for t, lp in zip(o['tokens'], o['logprobs']):
            window = torch.tensor([ids[-model.config.block_size:]])
            with torch.no_grad():
                logits, _ = model(window)
            assert abs(torch.log_softmax(logits[0, -1], -1)[t].item() - lp) < 1e-4
            ids.append(t)


def test_stop_strings(tmp_path):
    # one string, a list, one that spans two tokens, one that never occurs; in text mode the
    # stop string is not printed (streamed row 0 included) and the other rows are unchanged
    args = [f'--out_dir={DEMO}', '--start=ROMEO:', '--num_samples=3', '--max_new_tokens=80']
    full = run_sample(*args).stdout.split('\n---------------\n')[:-1]
    assert len(full) == 3
    body = full[0][len('ROMEO:'):]
    two = body[10:12]  # two characters: two tokens of the character-level model
    for stop in [two, [two, 'zzzz'], 'zzzz never']:
        for stream in ('True', 'False'):
            r = run_sample(*args, f'--stop={stop!r}', f'--stream={stream}')
            got = r.stdout.split('\n---------------\n')[:-1]
            assert r.returncode == 0 and len(got) == 3, r.stderr
            for g, f in zip(got, full):
                s = [stop] if isinstance(stop, str) else stop
                cut = min([f.find(x, len('ROMEO:')) for x in s if f.find(x, len('ROMEO:')) >= 0], default=len(f))
                assert g == f[:cut], (stop, stream)


def test_min_p():
    torch.manual_seed(0)
    logits = torch.randn(4, 65) * 3
    # 0.0 is off: the same draws as without it
    g = torch.Generator().manual_seed(1)
    a = sample_next(logits.clone(), 0.8, None, 1.0, None, g)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(a, sample_next(logits.clone(), 0.8, None, 1.0, None, g, min_p=0.0))
    # 1.0 keeps only the most likely id: greedy
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_next(logits.clone(), 1.5, None, 1.0, None, g, min_p=1.0), logits.argmax(-1, keepdim=True))
    # after temperature: at T=0.5 the ratio to the best is squared, so min_p=0.5 keeps fewer ids
    # than it would on the T=1 probabilities; every id drawn must pass the rule on the scaled ones
    row = torch.tensor([[2.0, 1.5, 1.0, -5.0]])
    ratio_t = torch.softmax(row / 0.5, -1) / torch.softmax(row / 0.5, -1).max()
    ratio_1 = torch.softmax(row, -1) / torch.softmax(row, -1).max()
    assert ratio_1[0, 1] >= 0.5 > ratio_t[0, 1]  # id 1 survives min_p=0.5 only if applied before temperature
    drawn = {sample_next(row.clone(), 0.5, None, 1.0, None, torch.Generator().manual_seed(s), min_p=0.5).item()
             for s in range(200)}
    assert drawn == {0}


# ---------------------------------------------------------------- stop strings and error examples typed in a shell

def bash_sample(args):
    """sample.py run by bash with args, a command line's text (quotes as a user types them)."""
    return subprocess.run(['bash', '-c', f"{shlex.quote(sys.executable)} sample.py {args}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def texts(r):
    """The samples of a text run's stdout, each without its dashes."""
    assert r.returncode == 0, r.stderr
    return r.stdout.split(DASHES)[:-1]


def test_stop_typed_in_a_shell_is_unescaped_once():
    # bash hands --stop='\n\n' over as backslash, n, backslash, n: plain text, whose escapes are
    # processed, so it ends at a blank line as the Python string --stop="'\n\n'" does. A Python
    # string holding a backslash and an n ('\\n\\n') is taken as Python read it: never met here
    args = f"--out_dir={shlex.quote(DEMO)} --start=ROMEO: --num_samples=2 --max_new_tokens=300 --stream=False"
    full = texts(bash_sample(args))
    assert any('\n\n' in f[len('ROMEO:'):] for f in full)
    cut = [f[:f.find('\n\n', len('ROMEO:'))] if '\n\n' in f[len('ROMEO:'):] else f for f in full]
    assert texts(bash_sample(args + " --stop='\\n\\n'")) == cut
    assert texts(bash_sample(args + ''' --stop="'\\n\\n'"''')) == cut
    assert texts(run_sample(*shlex.split(args), "--stop='\\\\n\\\\n'")) == full


@pytest.mark.parametrize('mistake, examples', [
    ('--stop=', ["--stop='\\n\\n'", '''--stop="['A:', 'B:']"''']),
    ('--start=', ['''--start="'\\n'"''']),  # an empty prompt: a newline, not a backslash and an n
])
def test_error_examples_work_in_a_shell(mistake, examples):
    line = check_error(run_sample(f'--out_dir={DEMO}', mistake, '--max_new_tokens=1'))
    for example in examples:
        assert example in line, (example, line)
        r = bash_sample(f"--out_dir={shlex.quote(DEMO)} --num_samples=1 --max_new_tokens=20 {example}")
        assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- prompt files: line breaks, BOM, blank lines

def test_prompt_files_split_only_at_newlines(tmp_path):
    # \n and \r\n end a line; form feed, \x1c-\x1e, \x85, U+2028 and U+2029 (str.splitlines breaks
    # at all of them) stay in the prompt; a BOM is dropped; blank lines at the end are ignored
    inner = ['a\x0cb', 'c\x1cd\x1de\x1ef', 'g\x85h', 'i\u2028j\u2029k', 'lone\rcarriage return']
    path = tmp_path / 'p.txt'
    path.write_bytes(('\ufeff' + '\r\n'.join(inner) + '\n\n  \n\t\r\n').encode('utf-8'))
    assert read_prompts(str(path)) == inner
    path = tmp_path / 'p.jsonl'  # json.dumps(ensure_ascii=False) writes U+2028 raw inside the string
    path.write_bytes(('\ufeff' + '\r\n'.join(json.dumps({'prompt': p}, ensure_ascii=False) for p in inner) +
                      '\r\n\r\n').encode('utf-8'))
    assert read_prompts(str(path)) == inner
    (tmp_path / 'start.txt').write_bytes('\ufeffROMEO:\r\n'.encode('utf-8'))
    assert read_prompt(f'FILE:{tmp_path / "start.txt"}') == 'ROMEO:\n'  # nanoGPT's universal newlines


def test_blank_line_before_the_last_prompt_is_an_error(tmp_path):
    path = tmp_path / 'p.txt'
    path.write_text('ROMEO:\r\n \r\nJULIET:\n\n')
    check_error(run_sample(f'--out_dir={DEMO}', f'--prompts={path}', '--max_new_tokens=1'), 'p.txt, line 2', 'empty line')


def test_prompts_file_with_bom_and_crlf_samples_each_line(tmp_path):
    path = tmp_path / 'p.txt'
    path.write_bytes('\ufeffROMEO:\r\nJULIET:\r\n\r\n'.encode('utf-8'))
    got = texts(run_sample(f'--out_dir={DEMO}', f'--prompts={path}', '--num_samples=1', '--max_new_tokens=5'))
    assert len(got) == 2 and got[0].startswith('ROMEO:') and got[1].startswith('JULIET:')
    assert '\r' not in ''.join(got) and '\ufeff' not in ''.join(got)


# ---------------------------------------------------------------- batch planning

@pytest.mark.parametrize('n_prompts, num_samples, batch_size, mix', [
    (1, 10, 0, True), (1, 10, 3, True), (3, 2, 0, True), (3, 2, 4, True), (3, 2, 9, True), (2, 5, 1, True),
    (1, 10, 3, False), (3, 2, 0, False), (3, 5, 2, False), (2, 3, 7, False)])
def test_plan_batches_covers_every_sample_once_in_order(n_prompts, num_samples, batch_size, mix):
    batches = plan_batches(n_prompts, num_samples, batch_size, mix_prompts=mix)
    # every prompt's samples, prompt then sample order, each once
    assert [s for b in batches for s in b] == [(p, k) for p in range(n_prompts) for k in range(num_samples)]
    rows = len(batches[0])  # what sample.py decodes together
    assert rows == min(batch_size or (n_prompts * num_samples if mix else num_samples),
                       n_prompts * num_samples if mix else num_samples)
    assert all(len(b) <= rows for b in batches) and all(b for b in batches)
    if not mix:  # nanoGPT's loop: a batch never mixes prompts, and only a prompt's last batch is short
        assert all(len({p for p, _ in b}) == 1 for b in batches)
        assert all(len(b) == rows or b[-1][1] == num_samples - 1 for b in batches)
    else:  # only the last batch is short
        assert all(len(b) == rows for b in batches[:-1])


def test_plan_batches_examples():
    assert plan_batches(2, 3, 2) == [[(0, 0), (0, 1)], [(0, 2), (1, 0)], [(1, 1), (1, 2)]]
    assert plan_batches(2, 3, 2, mix_prompts=False) == [[(0, 0), (0, 1)], [(0, 2)], [(1, 0), (1, 1)], [(1, 2)]]
    assert plan_batches(2, 3) == [[(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]]
    assert plan_batches(2, 3, mix_prompts=False) == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)]]
