"""
Poor man's configurator, after nanoGPT's. A script declares its config as module-level
globals, one per line with an inline comment, then runs

$ exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())

The config keys are the script's globals of a simple type (int, float, bool, str or None) whose
names do not start with '_'. It reads sys.argv[1:], in order:
- an argument without '=' is a config file: Python, exec'd in the script's globals (it is run
  on purpose: only pass config files you trust), then printed to stderr. Afterwards each key it
  set must fit the key's type, as below, and it may not set a new lower-case name to an int,
  float, bool, str or None: that is a misspelled key (temprature = 0.5). Anything else is
  allowed: imports, functions, names starting with '_' or holding an upper-case letter
  (helpers, like _base_lr = 6e-4 or BASE_LR = 6e-4), values computed from other settings;
- --key=value overrides the global 'key' (split at the first '=' only). The value goes
  through ast.literal_eval, falling back to the raw string (always the raw text for a str key);
- --help prints every key with its default and its comment, and exits 0.
Types: a value must have the type of the key's default; an int is accepted where a float is
expected (as a float), None where the default is None or the key's comment mentions None (an
optional key, like top_k), anything where the default is None.
A bad argument, an unknown key, a mismatched type or a config file that cannot be read, does
not run or sets a wrong key is one line on stderr and exit code 2. Messages go to stderr so that
stdout carries only what the script itself prints.

This file runs in the script's globals, where a setting or a config file may hide any built-in
(sample.py's `compile = False` hides compile()): so every name it defines starts with '_' and is
removed at the end (every global it added before the arguments run, _own), and every built-in it
uses is read from the builtins module (_b).
"""
import builtins as _b
_script_names = _b.set(_b.globals()) - {'_b'}  # the script's own names: every other global is ours

import ast as _ast  # noqa: E402
import difflib as _difflib  # noqa: E402
import os as _os  # noqa: E402
import re as _re  # noqa: E402
import sys as _sys  # noqa: E402

from common import fail as _fail  # noqa: E402

_SIMPLE = (_b.int, _b.float, _b.bool, _b.str)


def _is_setting(value):
    return value is None or _b.isinstance(value, _SIMPLE)


def _read_comments(script):
    """{key: its inline comment} from the script's lines `key = value # comment`."""
    comments = {}
    if script and _os.path.isfile(script):
        with _b.open(script, encoding='utf-8') as f:
            for line in f:
                m = _re.match(r"^([A-Za-z]\w*)\s*=.*?#\s?(.*)$", line)
                if m and m.group(1) not in comments:
                    comments[m.group(1)] = m.group(2).strip()
    return comments


def _short(value):
    """repr of value for a message, at most 60 characters."""
    r = _b.repr(value)
    return r if _b.len(r) <= 60 else r[:57] + '...'


def _optional(key):
    return _defaults[key] is None or 'None' in _comments.get(key, '')


def _expects(key):
    """What key takes, for a message: 'int', 'int or None', 'bool (True or False)'."""
    d = _defaults[key]
    name = _b.type(d).__name__ + (' (True or False)' if _b.isinstance(d, _b.bool) else '')
    return name + (' or None' if _optional(key) else '')


def _convert(key, value):
    """(True, value in key's type) if value fits key (see the module docstring), else (False, None)."""
    d = _defaults[key]
    if d is None or (value is None and _optional(key)) or _b.type(value) is _b.type(d):
        return True, value
    if _b.type(d) is _b.float and _b.type(value) is _b.int:
        try:
            return True, _b.float(value)  # --temperature=1 means 1.0
        except _b.OverflowError:  # an int beyond float's range
            return False, None
    return False, None


def _print_help():
    """Every key with its default and comment on stdout, then exit 0."""
    width = _b.max(_b.len(k) for k in _keys) if _keys else 0
    script = _os.path.basename(_g.get('__file__') or 'script.py')
    _b.print(f"usage: python {script} [config_file.py ...] [--key=value ...]\n")
    try:
        for k in _keys:
            _b.print(f"  --{k.ljust(width)} = {_defaults[k]!r:<24} # {_comments.get(k, '')}")
        _sys.stdout.flush()
    except _b.BrokenPipeError:  # --help | head: the reader went away
        _os.dup2(_os.open(_os.devnull, _os.O_WRONLY), _sys.stdout.fileno())
    _sys.exit(0)


def _run_config_file(path):
    """exec the config file at path in the script's globals, check what it set, then print it."""
    if not _os.path.isfile(path):
        hint = f" (did you mean --{path}=...?)" if path in _keys else ""
        _fail(f"config file {path!r} not found{hint}; overrides are written --key=value (see --help)")
    try:
        with _b.open(path, encoding='utf-8') as f:
            text = f.read()
        code = _b.compile(text, path, 'exec')  # a syntax error stops here, before anything runs
    except (_b.OSError, _b.UnicodeDecodeError, _b.SyntaxError, _b.ValueError) as e:
        _fail(f"config file {path!r} cannot be read: {_b.type(e).__name__}: {e}")
    before = _b.dict(_g)
    try:
        _b.exec(code, _g)
    except _b.Exception as e:
        _fail(f"config file {path!r} failed: {_b.type(e).__name__}: {e}")
    _check_config_file(path, before)
    _b.print(f"Overriding config with {path}:", file=_sys.stderr)
    _b.print(text, file=_sys.stderr)


def _check_config_file(path, before):
    """After a config file ran: every key it set fits the key's type (converted in place), it set
    no new lower-case simple-typed name (a misspelled key) and deleted no key."""
    for name in _b.list(_g):
        value = _g[name]
        if name in before and value is before[name]:
            continue  # untouched (or set to the very same object)
        if name in _defaults:
            ok, value = _convert(name, value)
            if not ok:
                _fail(f"config file {path!r} sets {name} = {_short(_g[name])}, but {name} expects {_expects(name)}")
            _g[name] = value
        elif name.islower() and not name.startswith('_') and _is_setting(value):
            close = _difflib.get_close_matches(name, _keys, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            _fail(f"config file {path!r} sets {name!r}, which is not a config key ({hint}see --help for the keys; "
                  f"start a helper's name with '_')")
    for name in _keys:
        if name not in _g:
            _fail(f"config file {path!r} deletes the config key {name!r}")


def _override(arg):
    """Apply one --key=value argument to the script's globals."""
    if not arg.startswith('--'):
        _fail(f"argument {arg!r} must start with '--': write {'--' + arg.lstrip('-')!r}")
    key, val = arg[2:].split('=', 1)  # the first '=' only: --start="1+1=" keeps its '='
    if not key:
        _fail(f"argument {arg!r} has no key: write --key=value (see --help)")
    if key not in _keys:
        _fail(f"unknown config key {key!r} (see --help for the keys)")
    try:
        attempt = _ast.literal_eval(val)  # numbers, bools, None, strings, tuples...
    except (_b.SyntaxError, _b.ValueError, _b.TypeError, _b.MemoryError, _b.RecursionError):
        attempt = val  # otherwise a plain string
    if _b.isinstance(_defaults[key], _b.str) and not _b.isinstance(attempt, _b.str) and \
            not (attempt is None and _optional(key)):
        attempt = val  # --start=42 means the text "42"
    ok, attempt = _convert(key, attempt)
    if not ok:
        _fail(f"--{key} expects {_expects(key)}, got {val!r}")
    _b.print(f"Overriding: {key} = {attempt!r}", file=_sys.stderr)
    _g[key] = attempt


def _run(argv):
    """Apply the arguments argv in order: --help, --key=value or a config file."""
    for arg in argv:
        if arg in ('--help', '-h'):
            _print_help()
        elif '=' in arg:
            _override(arg)
        elif arg.startswith('-'):
            _fail(f"argument {arg!r} has no value: write --key=value (see --help)")
        else:
            _run_config_file(arg)


def _forget(names):
    """Remove the globals names (this file's own) from the script's globals."""
    g = _b.globals()
    for name in names:
        g.pop(name, None)


_g = _b.globals()  # the script's globals
_keys = [k for k, v in _g.items() if not k.startswith('_') and _is_setting(v)]  # nanoGPT's config_keys
_defaults = {k: _g[k] for k in _keys}  # types are checked against these, not against earlier overrides
_comments = _read_comments(_g.get('__file__'))
_own = [name for name in _g if name not in _script_names] + ['_own']  # what this file added: removed at the end
_run(_sys.argv[1:])
_forget(_own)
