"""configurator.py: nanoGPT's exec'd overrides, with clear errors."""
import os
import sys

import pytest

from conftest import ROOT, run_sample

CONFIGURATOR = open(os.path.join(ROOT, 'configurator.py')).read()

SCRIPT = '''\
init_from = 'resume' # 'resume' or a GPT-2 variant
start = "\\n" # the prompt
num_samples = 10 # number of samples to draw
temperature = 0.8 # 0 = greedy
top_k = 200 # retain only the top_k most likely tokens; None or 0 = off
top_p = 1.0 # 1.0 = off
stop_at_eot = True # end at <|endoftext|>
max_len = None # optional, anything
'''


def configure(tmp_path, *argv):
    """exec the configurator over SCRIPT's globals with argv; returns the globals."""
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT)
    g = {'__file__': str(script), '__name__': '__main__'}
    exec(SCRIPT, g)
    old = sys.argv
    sys.argv = ['script.py', *argv]
    try:
        exec(CONFIGURATOR, g)
    finally:
        sys.argv = old
    return g


def configure_fails(tmp_path, capsys, *argv):
    with pytest.raises(SystemExit) as e:
        configure(tmp_path, *argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith('error: '), err
    return err


def test_overrides_and_types(tmp_path):
    g = configure(tmp_path, '--init_from=gpt2-xl', '--num_samples=3', '--temperature=0.5',
                  '--stop_at_eot=False', '--top_p=0.9')
    assert g['init_from'] == 'gpt2-xl' and g['num_samples'] == 3 and g['temperature'] == 0.5
    assert g['stop_at_eot'] is False and g['top_p'] == 0.9
    assert g['top_k'] == 200 and g['start'] == '\n'  # untouched


def test_int_for_float(tmp_path):
    g = configure(tmp_path, '--temperature=1')
    assert g['temperature'] == 1.0 and type(g['temperature']) is float


def test_none_for_optional_keys(tmp_path):
    g = configure(tmp_path, '--top_k=None', '--max_len=None')
    assert g['top_k'] is None and g['max_len'] is None
    g = configure(tmp_path, '--max_len=64')  # default None: any type
    assert g['max_len'] == 64


def test_types_follow_the_default_not_an_earlier_override(tmp_path, capsys):
    # found by the long fuzz run: after --top_k=None, --top_k= was taken as the text ''
    with pytest.raises(SystemExit) as e:
        configure(tmp_path, '--top_k=None', '--top_k=')
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and last == "error: --top_k expects int or None, got ''"


def test_none_rejected_where_not_optional(tmp_path, capsys):
    err = configure_fails(tmp_path, capsys, '--num_samples=None')
    assert 'num_samples' in err and 'int' in err and 'None' in err


def test_split_at_first_equals_and_strings(tmp_path):
    g = configure(tmp_path, '--start=1+1=')
    assert g['start'] == '1+1='
    g = configure(tmp_path, '--start=42')  # a str key keeps the text
    assert g['start'] == '42'
    g = configure(tmp_path, "--start='quoted'")
    assert g['start'] == 'quoted'  # literal_eval, as nanoGPT
    g = configure(tmp_path, '--start=')
    assert g['start'] == ''


def test_config_file(tmp_path, capsys):
    cfg = tmp_path / 'my_config.py'
    cfg.write_text("num_samples = 2\ntemperature = 0.1\n")
    g = configure(tmp_path, str(cfg), '--num_samples=4')
    assert g['num_samples'] == 4 and g['temperature'] == 0.1  # later arguments win
    assert 'temperature = 0.1' in capsys.readouterr().err  # the file is printed


@pytest.mark.parametrize('argv, words', [
    (['--nope=1'], ['nope', 'unknown']),
    (['--num_samples=2.5'], ['num_samples', 'int', '2.5']),
    (['--stop_at_eot=1'], ['stop_at_eot', 'bool']),
    (['--temperature=hot'], ['temperature', 'float', 'hot']),
    (['--temperature=True'], ['temperature', 'float']),
    (['temperature'], ['temperature', '--temperature=']),
    (["temperature=0.5"], ["'--temperature=0.5'"]),
    (['--=3'], ['no key']),
    (['--top_k'], ['--top_k', 'no value']),
    (['missing_config.py'], ['missing_config.py', 'not found']),
])
def test_bad_arguments(tmp_path, capsys, argv, words):
    err = configure_fails(tmp_path, capsys, *argv)
    for w in words:
        assert w in err, (w, err)


def test_broken_config_file(tmp_path, capsys):
    cfg = tmp_path / 'broken.py'
    cfg.write_text("num_samples = = 2\n")
    err = configure_fails(tmp_path, capsys, str(cfg))
    assert 'broken.py' in err and 'SyntaxError' in err


def test_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        configure(tmp_path, '--help')
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--top_k" in out and "200" in out and "None or 0 = off" in out


def test_sample_py_help_and_bad_argument_from_another_directory(tmp_path):
    r = run_sample('--help', cwd=tmp_path)  # configurator.py is found next to sample.py
    assert r.returncode == 0
    for key in ('init_from', 'out_dir', 'start', 'num_samples', 'max_new_tokens', 'temperature',
                'top_k', 'top_p', 'stop_at_eot', 'seed', 'device', 'dtype', 'compile'):
        assert f'--{key}' in r.stdout
    r = run_sample('--temprature=0.5', cwd=tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip() == "error: unknown config key 'temprature' (see --help for the keys)"
