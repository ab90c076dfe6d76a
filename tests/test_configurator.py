"""configurator.py: nanoGPT's exec'd overrides, with clear errors."""
import pytest

from helpers import CONFIGURATOR, DEMO, SCRIPT, check_error, configure, run_sample


def configure_fails(tmp_path, capsys, *argv, names=None):
    """configure(tmp_path, *argv, names=names) must exit with code 2 and one line on stderr; returns it."""
    with pytest.raises(SystemExit) as e:
        configure(tmp_path, *argv, names=names)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith('error: '), err
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


# ---------------------------------------------------------------- config files


def test_config_file_keys_must_fit_their_types(tmp_path, capsys):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("temperature = 1\ntop_k = None\nmax_len = 'anything'\nstop_at_eot = False\n")
    g = configure(tmp_path, str(cfg))
    assert g['temperature'] == 1.0 and type(g['temperature']) is float  # an int where a float is expected
    assert g['top_k'] is None and g['max_len'] == 'anything' and g['stop_at_eot'] is False
    capsys.readouterr()
    for text, words in [("num_samples = 'two'\n", ["num_samples = 'two'", 'expects int']),
                        ("num_samples = 2.5\n", ['num_samples = 2.5', 'expects int']),
                        ("num_samples = None\n", ['num_samples = None', 'expects int']),
                        ("num_samples = True\n", ['expects int']),
                        ("stop_at_eot = 1\n", ['stop_at_eot = 1', 'bool']),
                        ("start = 42\n", ['start = 42', 'expects str']),
                        ("top_k = 2.0\n", ['expects int or None']),
                        ("temperature = 10 ** 400\n", ['expects float']),
                        ("num_samples = 'x' * 1000\n", ["num_samples = 'xxx", "...", 'expects int']),
                        ("del temperature\n", ['deletes', 'temperature'])]:
        cfg.write_text(text)
        err = configure_fails(tmp_path, capsys, str(cfg))
        assert 'cfg.py' in err and len(err) < 300, err
        for w in words:
            assert w in err, (text, w, err)


def test_config_file_misspelled_key(tmp_path, capsys):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("temprature = 0.5\n")
    err = configure_fails(tmp_path, capsys, str(cfg))
    assert "'temprature'" in err and 'not a config key' in err and "did you mean 'temperature'?" in err
    for text in ("nope = None\n", "x = 'text'\n", "os = 1\n", "for i in range(2): pass\n"):
        cfg.write_text(text)
        configure_fails(tmp_path, capsys, str(cfg))


def test_config_file_helpers_are_allowed(tmp_path, capsys):
    # as nanoGPT configs do: imports, computed values, functions, helper names
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("import math\nimport os as _os\nfrom math import sqrt\n_base = 0.25\nBASE_K = 10\n"
                   "def helper(x):\n    return 2 * x\nscale = [1, 2]\n"
                   "temperature = helper(_base)\ntop_k = BASE_K * 2\nnum_samples = int(sqrt(16))\n")
    g = configure(tmp_path, str(cfg))
    assert g['temperature'] == 0.5 and g['top_k'] == 20 and g['num_samples'] == 4
    err = capsys.readouterr().err
    assert err.startswith(f"Overriding config with {cfg}:") and 'BASE_K = 10' in err


def test_config_file_errors_print_one_line_and_nothing_else(tmp_path, capsys):
    # the file is printed only once it ran and passed the checks
    cfg = tmp_path / 'cfg.py'
    for text in ("num_samples = = 2\n", "raise ValueError('boom\\nsecond line')\n", "temprature = 1\n",
                 "num_samples = 'x'\n"):
        cfg.write_text(text)
        configure_fails(tmp_path, capsys, str(cfg))


def test_every_builtin_hidden_by_a_setting(tmp_path, capsys):
    # sample.py's `compile = False` hid compile() and every config file crashed: a script may define
    # any name, and so may a config file, so the configurator reads nothing from the built-ins by name
    import builtins
    hidden = {name: False for name in dir(builtins) if not name.startswith('_')}
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("num_samples = 2\ntemperature = 1\n")
    g = configure(tmp_path, str(cfg), '--top_k=None', '--temperature=3', names=hidden)
    assert g['num_samples'] == 2 and g['temperature'] == 3.0 and g['top_k'] is None
    assert g['compile'] is False and g['print'] is False  # still the script's settings
    capsys.readouterr()
    for argv in ([str(cfg) + '.missing'], ['--top_k=x'], ['--nope=1'], ['x=1'], ['--top_k'], ['--=1']):
        configure_fails(tmp_path, capsys, *argv, names=hidden)
    for text in ("temprature = 1\n", "num_samples = 'x'\n", "raise ValueError\n", "x = = 1\n",
                 "open = 1\n", "del num_samples\n"):
        cfg.write_text(text)
        configure_fails(tmp_path, capsys, str(cfg), names=hidden)
    with pytest.raises(SystemExit) as e:
        configure(tmp_path, '--help', names=hidden)
    assert e.value.code == 0 and '--compile' in capsys.readouterr().out


# ---------------------------------------------------------------- config files through the scripts


VALID_SAMPLE_CONFIG = "num_samples = 2\nmax_new_tokens = 20\ntemperature = 0.5\ntop_k = None\nseed = 7\n"


@pytest.mark.parametrize('absolute', [False, True])
def test_sample_py_config_file(tmp_path, absolute):
    (tmp_path / 'my.py').write_text(VALID_SAMPLE_CONFIG)
    cfg = str(tmp_path / 'my.py') if absolute else 'my.py'
    r = run_sample(cfg, f"--out_dir={DEMO}", cwd=tmp_path)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    assert r.stdout.split('\n').count('-' * 15) == 2 and r.stdout.endswith('-' * 15 + '\n'), r.stdout
    assert f"Overriding config with {cfg}:" in r.stderr and 'max_new_tokens = 20' in r.stderr


BAD_CONFIGS = [
    ('syntax.py', "num_samples = = 2\n", ['SyntaxError']),
    ('wrong_type.py', "num_samples = 'two'\n", ["num_samples = 'two'", 'expects int']),
    ('float_for_int.py', "num_samples = 2.5\n", ['expects int']),
    ('misspelled.py', "temprature = 0.5\n", ["'temprature'", 'not a config key']),
    ('raises.py', "import os\nos.environ['NOPE']\n", ['KeyError', 'NOPE']),
    ('missing.py', None, ['not found']),
]


@pytest.mark.parametrize('name, text, words', BAD_CONFIGS)
def test_sample_py_bad_config_file(tmp_path, name, text, words):
    if text is not None:
        (tmp_path / name).write_text(text)
    check_error(run_sample(name, '--out_dir=out-shakespeare-char', cwd=tmp_path), name, *words, others=())


@pytest.mark.parametrize('name, text, words', [
    BAD_CONFIGS[0], BAD_CONFIGS[5],
    ('wrong_type.py', "repeats = 'two'\n", ["repeats = 'two'", 'expects int']),
    ('misspelled.py', "repeat = 3\n", ["'repeat'", 'not a config key', "did you mean 'repeats'?"]),
])
def test_bench_py_bad_config_file(tmp_path, name, text, words):
    if text is not None:
        (tmp_path / name).write_text(text)
    check_error(run_sample(name, cwd=tmp_path, script='bench.py'), name, *words, others=())


def test_bench_py_config_file_applies(tmp_path):
    # a second config file prints what the first set and exits, before the multi-minute benchmark
    (tmp_path / 'cfg.py').write_text("model = 'gpt2-medium'\nrepeats = 3\nhf = False\n")
    (tmp_path / 'probe.py').write_text("print(repr((model, repeats, hf, ref)))\nraise SystemExit(0)\n")
    r = run_sample('cfg.py', '--ref=False', 'probe.py', cwd=tmp_path, script='bench.py')
    assert r.returncode == 0 and r.stdout == "('gpt2-medium', 3, False, False)\n", (r.stdout, r.stderr)
    r = run_sample('cfg.py', '--help', cwd=tmp_path, script='bench.py')
    assert r.returncode == 0 and '--repeats' in r.stdout, r.stderr


def test_configurator_reads_only_its_own_names():
    # the static twin of the test above: the configurator runs in the script's globals, where a
    # setting may hide the built-in of that name; at the top level and in every function it
    # defines, the only global names it reads are its own ('_'-prefixed), never a built-in's
    import dis
    todo, found = [compile(CONFIGURATOR, 'configurator.py', 'exec')], []
    while todo:
        code = todo.pop()
        todo += [c for c in code.co_consts if hasattr(c, 'co_code')]
        found += [(code.co_name, i.argval) for i in dis.get_instructions(code)
                  if i.opname in ('LOAD_GLOBAL', 'LOAD_NAME') and not i.argval.startswith('_')]
    assert found == []


def test_bench_py_cases_match_names_or_prefixes():
    # --cases=b1_prompt5 once ran b1_prompt512 too (a substring match): now a word selects the
    # cases named so or starting with it and '_' (on the tiny demo model, float32 only, no peers)
    import json
    ckpt = DEMO + '/ckpt.pt'
    for words, want in [('b1_prompt5', ['b1_prompt5_new256']), ('b1', ['b1_prompt5_new256', 'b1_prompt512_new128']),
                        ('b8_prompt5_new128', ['b8_prompt5_new128']), ('none', [])]:
        r = run_sample(f'--model={ckpt}', f'--cases={words}', '--dtype=float32', '--hf=False', '--ref=False',
                       script='bench.py')
        assert r.returncode == 0, r.stderr
        got = [c['name'].split('float32_')[1] for c in json.loads(r.stdout.splitlines()[-1])['cases']]
        assert got == want, words


def test_the_configurator_leaves_no_name_of_its_own(tmp_path):
    # it removes every global it added (no hand-kept list to forget one in); a config file's own
    # names stay, as they would after exec'ing it in the script
    before = {}
    exec(SCRIPT, before)
    g = configure(tmp_path, '--top_k=5')
    assert set(g) - set(before) <= {'__doc__', '__file__', '__name__'} and g['top_k'] == 5
    (tmp_path / 'cfg.py').write_text("import math\n_half = 0.5\ntemperature = _half\n")
    g = configure(tmp_path, str(tmp_path / 'cfg.py'))
    assert set(g) - set(before) <= {'__doc__', '__file__', '__name__', 'math', '_half'} and g['temperature'] == 0.5
