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
"""

def _configure(g, argv):
    import ast, builtins, difflib, os, re, sys

    # Names here are looked up in the script's globals before the built-ins, and a setting or a
    # config file can hide any built-in (sample.py's `compile = False` hid compile()): so every
    # built-in this function uses is bound locally, from the builtins module.
    b = builtins
    compile, exec, open, print, len, max, isinstance, type = (
        b.compile, b.exec, b.open, b.print, b.len, b.max, b.isinstance, b.type)
    int, float, bool, str, dict, list, repr = b.int, b.float, b.bool, b.str, b.dict, b.list, b.repr
    Exception, OSError, UnicodeDecodeError, SyntaxError, ValueError, TypeError = (
        b.Exception, b.OSError, b.UnicodeDecodeError, b.SyntaxError, b.ValueError, b.TypeError)
    MemoryError, RecursionError, OverflowError = b.MemoryError, b.RecursionError, b.OverflowError
    simple = (int, float, bool, str)

    def fail(msg):
        msg = ' '.join(msg.splitlines())  # one line, whatever the user's text held
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)

    def short(value):
        """repr of value for a message, at most 60 characters."""
        r = repr(value)
        return r if len(r) <= 60 else r[:57] + '...'

    # the config keys: simple-typed globals, as nanoGPT's config_keys; comments from the source
    keys = [k for k, v in g.items() if not k.startswith('_') and (v is None or isinstance(v, simple))]
    defaults = {k: g[k] for k in keys}  # types are checked against these, not against earlier overrides
    comments = {}
    script = g.get('__file__')
    if script and os.path.isfile(script):
        with open(script, encoding='utf-8') as f:
            for line in f:
                m = re.match(r"^([A-Za-z]\w*)\s*=.*?#\s?(.*)$", line)
                if m and m.group(1) not in comments:
                    comments[m.group(1)] = m.group(2).strip()

    def optional(key):
        return defaults[key] is None or 'None' in comments.get(key, '')

    def expects(key):
        """What key takes, for a message: 'int', 'int or None', 'bool (True or False)'."""
        d = defaults[key]
        name = type(d).__name__ + (' (True or False)' if isinstance(d, bool) else '')
        return name + (' or None' if optional(key) else '')

    def convert(key, value):
        """(True, value in key's type) if value fits key (see the module docstring), else (False, None)."""
        d = defaults[key]
        if d is None or (value is None and optional(key)) or type(value) is type(d):
            return True, value
        if type(d) is float and type(value) is int:
            try:
                return True, float(value)  # --temperature=1 means 1.0
            except OverflowError:  # an int beyond float's range
                return False, None
        return False, None

    def run_config_file(path):
        """exec the config file at path in g, check what it set, then print it."""
        if not os.path.isfile(path):
            hint = f" (did you mean --{path}=...?)" if path in keys else ""
            fail(f"config file {path!r} not found{hint}; overrides are written --key=value (see --help)")
        try:
            with open(path, encoding='utf-8') as f:
                text = f.read()
            code = compile(text, path, 'exec')  # a syntax error stops here, before anything runs
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
            fail(f"config file {path!r} cannot be read: {type(e).__name__}: {e}")
        before = dict(g)
        try:
            exec(code, g)
        except Exception as e:
            fail(f"config file {path!r} failed: {type(e).__name__}: {e}")
        for name in list(g):
            value = g[name]
            if name in before and value is before[name]:
                continue  # untouched (or set to the very same object)
            if name in defaults:
                ok, value = convert(name, value)
                if not ok:
                    fail(f"config file {path!r} sets {name} = {short(g[name])}, but {name} expects {expects(name)}")
                g[name] = value
            elif name.islower() and not name.startswith('_') and (value is None or isinstance(value, simple)):
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                fail(f"config file {path!r} sets {name!r}, which is not a config key ({hint}see --help for the keys; "
                     f"start a helper's name with '_')")
        for name in keys:
            if name not in g:
                fail(f"config file {path!r} deletes the config key {name!r}")
        print(f"Overriding config with {path}:", file=sys.stderr)
        print(text, file=sys.stderr)

    for arg in argv:
        if arg in ('--help', '-h'):
            width = max(len(k) for k in keys) if keys else 0
            print(f"usage: python {os.path.basename(script or 'script.py')} [config_file.py ...] [--key=value ...]\n")
            for k in keys:
                print(f"  --{k.ljust(width)} = {defaults[k]!r:<24} # {comments.get(k, '')}")
            sys.exit(0)
        if '=' not in arg:
            if arg.startswith('-'):
                fail(f"argument {arg!r} has no value: write --key=value (see --help)")
            run_config_file(arg)
            continue
        if not arg.startswith('--'):
            fail(f"argument {arg!r} must start with '--': write {'--' + arg.lstrip('-')!r}")
        key, val = arg[2:].split('=', 1)  # the first '=' only: --start="1+1=" keeps its '='
        if not key:
            fail(f"argument {arg!r} has no key: write --key=value (see --help)")
        if key not in keys:
            fail(f"unknown config key {key!r} (see --help for the keys)")
        try:
            attempt = ast.literal_eval(val)  # numbers, bools, None, strings, tuples...
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            attempt = val  # otherwise a plain string
        if isinstance(defaults[key], str) and not isinstance(attempt, str) and not (attempt is None and optional(key)):
            attempt = val  # --start=42 means the text "42"
        ok, attempt = convert(key, attempt)
        if not ok:
            fail(f"--{key} expects {expects(key)}, got {val!r}")
        print(f"Overriding: {key} = {attempt!r}", file=sys.stderr)
        g[key] = attempt

import builtins as _builtins  # not globals() and __import__ by name: a setting may hide them
_configure(_builtins.globals(), _builtins.__import__('sys').argv[1:])
del _builtins, _configure
