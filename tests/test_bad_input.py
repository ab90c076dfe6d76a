"""Mistakes in what a user hands sample.py and bench.py, each one line on stderr and exit code 2
(or, for bench.py's meta.pkl, refused as data that would run code): --prompts given a number or
a container, prompts that the character-level vocabulary cannot encode, named by file and line."""
import ast
import os
import pickle
import shlex
import subprocess
import sys

import pytest

from common import LoadError
from helpers import DEMO, ROOT, SHAKESPEARE_CHARS, check_error, run_sample, write_meta

FAST = ['--num_samples=1', '--max_new_tokens=1']  # should a mistake go unnoticed, the run stays short


# ---------------------------------------------------------------- --prompts takes a path

@pytest.mark.parametrize('value', ['1.5', '[1]', "('a',)", "{'a':1}", '0', '1', '2', '2024', 'True'])
def test_prompts_not_a_path(value):
    # the configurator reads these as Python values: a number was opened as a file descriptor
    # (2 closed stderr, 0 was ignored), a list or dict raised a TypeError
    line = check_error(run_sample(f'--out_dir={DEMO}', f'--prompts={value}', *FAST), "--prompts takes a file's path")
    assert shlex.quote(f'--prompts=./{value}') in line


def test_prompts_hint_for_a_file_named_like_a_number(tmp_path):
    (tmp_path / '2024').write_text('ROMEO:\n')
    line = check_error(run_sample(f'--out_dir={DEMO}', '--prompts=2024', *FAST, cwd=tmp_path), 'int 2024')
    hint = line.split('write ')[-1]
    r = subprocess.run(['bash', '-c', f"{shlex.quote(sys.executable)} {os.path.join(ROOT, 'sample.py')} "
                                      f"--out_dir={shlex.quote(DEMO)} {hint} {' '.join(FAST)}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith('ROMEO:'), r.stderr


# ---------------------------------------------------------------- which prompt a message means

@pytest.mark.parametrize('name, text, words', [
    ('p.txt', 'ROMEO:\nJULIÉT:\n', ['p.txt, line 2', "'É'", 'lacks']),
    ('p.jsonl', '{"prompt": "ROMEO:"}\n{"prompt": "JULIET:"}\n{"prompt": "caf\\u00e9"}\n', ['p.jsonl, line 3', "'é'"]),
    ('p.jsonl', '{"prompt": "ROMEO:"}\n{"prompt": ""}\n', ['p.jsonl, line 2', 'empty']),
])
def test_prompt_the_vocabulary_cannot_encode_names_its_line(tmp_path, name, text, words):
    (tmp_path / name).write_text(text, encoding='utf-8')
    check_error(run_sample(f'--out_dir={DEMO}', f'--prompts={tmp_path / name}', *FAST), *words)


def test_compile_takes_true_false_or_none():
    check_error(run_sample(f'--out_dir={DEMO}', '--compile=maybe', *FAST), '--compile', "'maybe'")


def test_start_the_vocabulary_cannot_encode_is_named_as_before():
    line = check_error(run_sample(f'--out_dir={DEMO}', '--start=café', *FAST), "'é'")
    assert line.startswith("error: the prompt has 1 character(s)")


def test_long_prompt_warning_names_its_line(tmp_path):
    (tmp_path / 'p.txt').write_text('ROMEO:\n' + 'A' * 200 + '\n')  # the demo's block_size is 128
    r = run_sample(f'--out_dir={DEMO}', f'--prompts={tmp_path / "p.txt"}', *FAST)
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if l.startswith('warning: ')]
    assert warnings == [f"warning: {tmp_path / 'p.txt'}, line 2: the prompt is 200 tokens; only its last 128 "
                        f"(block_size) condition the model"]


# ---------------------------------------------------------------- bench.py reads meta.pkl as plain data

class Reached(Exception):
    """validation_loss got past reading meta.pkl and the text, to loading the model."""


def bench_validation_loss(folder):
    """bench.py's validation_loss, with bench.py's imports, run as if bench.py lay in folder (so
    that it reads folder/out-shakespeare-char/meta.pkl) and stopping where it would load the model."""
    tree = ast.parse(open(os.path.join(ROOT, 'bench.py'), encoding='utf-8').read())
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) or
            getattr(n, 'name', None) == 'validation_loss']
    g = {'__file__': str(folder / 'bench.py'), 'device': 'cpu', 'FORMATS': {'float32': None},
         'quantize': lambda fmt: None}
    exec(compile(ast.Module(keep, type_ignores=[]), 'bench.py', 'exec'), g)
    g['from_checkpoint'] = stop_here
    return g['validation_loss']


def stop_here(*args):
    raise Reached()


class _Touch:
    """Unpickled by pickle.load, it creates the file at path: code run by a meta.pkl."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_bench_reads_meta_pkl_as_plain_data(tmp_path):
    text = tmp_path / 'input.txt'
    text.write_text('ROMEO:\nO Romeo!\n' * 20)
    write_meta(str(tmp_path / 'out-shakespeare-char' / 'meta.pkl'), SHAKESPEARE_CHARS)
    with pytest.raises(Reached):  # a plain meta.pkl: its stoi encodes the text
        bench_validation_loss(tmp_path)('float32', str(text))
    marker = tmp_path / 'ran'
    with open(tmp_path / 'out-shakespeare-char' / 'meta.pkl', 'wb') as f:
        pickle.dump({'stoi': _Touch(str(marker)), 'itos': {}}, f)
    with pytest.raises(LoadError):
        bench_validation_loss(tmp_path)('float32', str(text))
    assert not marker.exists()
