"""Property-based tests (hypothesis): the configurator, prompts through both encoders, and the
sampling rule never fail any way but the clear one.

FUZZ_EXAMPLES sets the configurator's example count (default 3000, the CI run), and a fiftieth of it
prompts, a sixth of it sampling settings; a long run by hand:
$ FUZZ_EXAMPLES=100000 python -m pytest -q tests/test_fuzz.py
"""
import contextlib
import io
import os
import runpy
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import ROOT, SCRIPT, configure, tiny_model, write_char_checkpoint, write_nanogpt_checkpoint
from generate import sample as sample_next

KEYS = ['init_from', 'start', 'num_samples', 'temperature', 'top_k', 'top_p', 'stop_at_eot', 'max_len']
FUZZ_EXAMPLES = int(os.environ.get('FUZZ_EXAMPLES', 3000))
values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(['None', 'True', 'False', '0', '-1', '1.5', '1e999', '"x"', "'y'", '[1, 2]', '{}', '(',
                     '1+1=', '==', '=', '0x10', '1_000', '9' * 5000, '(' * 400, '"\\u2603"', 'nan', 'inf']),
    st.integers().map(str),
    st.floats(allow_nan=True).map(repr),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
args = st.one_of(
    st.builds(lambda k, v: f'--{k}={v}', keys, values),               # an override
    st.builds(lambda k, v: f'{k}={v}', keys, values),                 # missing '--'
    st.builds(lambda k: f'--{k}', keys),                              # no value
    st.builds(lambda p, k, v: f'{p}{k}={v}', st.sampled_from(['-', '---', ' --', '--=']), keys, values),
    st.text(max_size=20).filter(lambda a: a not in ('--help', '-h')),  # a "config file" that is not there
)


DEFAULTS = {}
exec(SCRIPT, DEFAULTS)  # the script's settings before any argument


@pytest.fixture(scope='module')
def cfg_dir(tmp_path_factory):
    """An otherwise empty folder for the script whose globals are configured."""
    return tmp_path_factory.mktemp('cfg')


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(args, max_size=5))
def test_configurator_fuzz(argv, cfg_dir):
    before = DEFAULTS
    err, old_cwd = io.StringIO(), os.getcwd()
    os.chdir(cfg_dir)  # an argument read as a config file can only find this folder's script.py
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            g = configure(cfg_dir, *argv)
        code = None
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(old_cwd)
    if code is not None:  # the configurator's own clear error: one line, exit code 2
        assert code == 2, code
        lines = err.getvalue().strip().splitlines()
        assert len(lines) >= 1 and lines[-1].startswith('error: '), err.getvalue()
        return
    named = {a[2:].split('=', 1)[0] for a in argv if a.startswith('--') and '=' in a}
    for k in KEYS:
        if k not in named:
            assert g[k] == before[k] or (g[k] != g[k] and before[k] != before[k]), k  # untouched
        elif g[k] is not None and before[k] is not None:
            assert type(g[k]) is type(before[k]), (k, g[k])  # the default's type, or None


# ---------------------------------------------------------------- prompts through sample.py


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """A folder holding char/, the tiny character-level checkpoint of helpers.write_char_checkpoint (with meta.pkl), and
    bpe/, a GPT-2-vocabulary one (padded to 50304, no meta.pkl, so GPT-2 BPE, block_size 32)."""
    d = tmp_path_factory.mktemp('models')
    write_char_checkpoint(d / 'char')
    m, args = tiny_model(vocab_size=50304, block_size=32, n_embd=16)
    write_nanogpt_checkpoint(d / 'bpe', m, args, dataset='none', optimizer=False)
    return d


def run_in_process(cwd, argv):
    """Run sample.py in this process (fast enough for hypothesis); (exit code, stdout, stderr)."""
    out, err, old_argv, old_cwd = io.StringIO(), io.StringIO(), sys.argv, os.getcwd()
    sys.argv = ['sample.py', *argv]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, 'sample.py'), run_name='__main__')
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


prompts = st.one_of(st.text(), st.text(min_size=100, max_size=3000), st.just(''),
                    st.text(alphabet="abc ABC\n", min_size=0, max_size=80))


@settings(max_examples=FUZZ_EXAMPLES // 50, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompt=prompts, which=st.sampled_from(['char', 'bpe']))
def test_any_prompt_samples_or_fails_clearly(models, prompt, which):
    code, out, err = run_in_process(models, [f'--out_dir={which}', '--start=' + prompt, '--num_samples=2',
                                             '--max_new_tokens=3', '--temperature=1.0'])
    if code == 0:
        assert out.count('---------------\n') == 2
    else:
        assert code == 2 and err.strip().splitlines()[-1].startswith('error: '), (code, err)
        assert which == 'char'  # GPT-2 BPE encodes any text; only a character vocabulary can lack one


@settings(max_examples=FUZZ_EXAMPLES // 6, deadline=None)
@given(data=st.data(), V=st.integers(1, 300), B=st.integers(1, 4))
def test_sampling_settings_in_range_give_valid_ids(data, V, B):
    n_vocab = data.draw(st.integers(1, V))
    rows = data.draw(st.lists(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=V, max_size=V), min_size=B, max_size=B))
    logits = torch.tensor(rows, dtype=torch.float32)
    temperature = data.draw(st.one_of(st.just(0.0), st.floats(1e-38, 100.0)))
    top_k = data.draw(st.one_of(st.none(), st.integers(0, V + 5)))
    top_p = data.draw(st.floats(1e-9, 1.0))
    ids = sample_next(logits, temperature, top_k, top_p, n_vocab, torch.Generator().manual_seed(0))
    assert ids.shape == (B, 1) and ids.dtype == torch.long
    assert bool(((ids >= 0) & (ids < n_vocab)).all()), ids
