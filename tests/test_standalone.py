"""
The repository stands alone: a user's clone has nothing beside it and none of its developers' folders, so no
tracked file may name a folder outside the repository (the shared folder next to a developer's checkout) or an
absolute path of a developer's machine (a workspace, root's or a user's home folder). Examples use relative
or placeholder paths (--llamacpp=path/to/llama.cpp, NANOGPT_DIR=nanoGPT).

The patterns are assembled from pieces so that this file does not match them itself.
"""
import os
import re
import subprocess

import pytest

from helpers import ROOT

UP = re.escape('..' + '/' + 'shared')  # the folder beside a developer's checkout
START = r'(?<![\w.~/-])'  # where an absolute path starts: not inside a URL, a word or another path
MACHINE = START + '/(?:' + '|'.join(('work', 'root')) + ')/|' + START + '/' + 'home' + r'/[\w.-]+/'
FORBIDDEN = re.compile(UP + '|' + MACHINE)


def tracked_files():
    """Every path git tracks here, relative to the repository root (skips outside a git checkout)."""
    try:
        r = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, timeout=60)
    except OSError as e:
        pytest.skip(f"no git here ({e})")
    if r.returncode:
        pytest.skip(f"not a git checkout: {r.stderr.decode(errors='replace').strip()}")
    return [p for p in r.stdout.decode('utf-8', 'surrogateescape').split('\0') if p]


def text_of(path):
    """A tracked file's text, a symbolic link's target, or None for a binary file (a NUL byte, or not
    UTF-8) or one missing from the working tree."""
    full = os.path.join(ROOT, path)
    if os.path.islink(full):
        return os.readlink(full)
    if not os.path.isfile(full):
        return None
    with open(full, 'rb') as f:
        data = f.read()
    if b'\0' in data[:8192]:
        return None
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        return None


def offending_lines(text):
    """(line number, line) for each line of text that names an outside folder or a machine's path."""
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if FORBIDDEN.search(line)]


def test_no_tracked_file_names_an_outside_folder_or_a_machine_path():
    files = tracked_files()
    assert files, 'git ls-files listed nothing'
    hits, texts = [], 0
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        texts += 1
        hits += [f"{path}:{n}: {line[:160]}" for n, line in offending_lines(text)]
    assert texts > 20, f"only {texts} text files among {len(files)} tracked ones"
    assert not hits, 'use relative or placeholder paths instead of:\n' + '\n'.join(hits)


def test_no_binary_file_records_an_outside_folder():
    # a checkpoint records its training config: the bundled demo's must not name the shared folder
    outside = ('..' + '/' + 'shared').encode()
    hits = []
    for path in tracked_files():
        full = os.path.join(ROOT, path)
        if os.path.isfile(full) and not os.path.islink(full) and text_of(path) is None:
            with open(full, 'rb') as f:
                if outside in f.read():
                    hits.append(path)
    assert not hits, hits


@pytest.mark.parametrize('line', [
    'cp -r ' + '..' + '/shared/nanogpt-reference .',
    'python bench.py --llamacpp=' + '/work' + '/llama/lc',
    'HF_HOME=' + '/root' + '/.cache/huggingface python sample.py',
    'see "' + '/home' + '/alice/nanoGPT/sample.py"',
    '`' + '/work' + '/main/tests`',
])
def test_the_check_catches_outside_and_machine_paths(line):
    assert offending_lines(line)


@pytest.mark.parametrize('line', [
    'python bench.py --llamacpp=path/to/llama.cpp',
    'https://example.org' + '/work' + '/notes and https://example.org' + '/home' + '/x/',
    'git -C nanoGPT checkout 3adf61e',
    'a folder named ' + 'shared' + '/ inside the repository, or .' + '/work' + '/ and ~' + '/work' + '/',
    'homework' + '/root' + '/ is inside a word',
])
def test_the_check_lets_relative_paths_and_urls_through(line):
    assert not offending_lines(line)
