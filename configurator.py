"""
Poor man's configurator, after nanoGPT's. A script declares its config as module-level
globals, one per line with an inline comment, then runs

$ exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())

which reads sys.argv[1:]:
- an argument without '=' is a config file: it is printed, then exec'd (it is Python, run on
  purpose: only pass config files you trust);
- --key=value overrides the global 'key' (split at the first '=' only). The value goes
  through ast.literal_eval, falling back to the raw string, and must match the type of the
  default: an int is accepted where a float is expected, and None where the default is None
  or the key's comment mentions None (an optional key, like top_k);
- --help prints every key with its default and its comment, and exits 0.
A bad argument, an unknown key or a mismatched type is one line on stderr and exit code 2.
Messages go to stderr so that stdout carries only what the script itself prints.
"""

def _configure(g, argv):
    import ast, os, re, sys

    def fail(msg):
        msg = ' '.join(msg.splitlines())  # one line, whatever the user's text held
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)

    # the config keys: simple-typed globals, as nanoGPT's config_keys; comments from the source
    keys = [k for k, v in g.items() if not k.startswith('_') and (v is None or isinstance(v, (int, float, bool, str)))]
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

    def expected_type(key):
        d = defaults[key]
        return type(d).__name__ if d is not None else 'any'

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
            # a config file: print it, then exec it in the script's globals
            if not os.path.isfile(arg):
                hint = f" (did you mean --{arg}=...?)" if arg in keys else ""
                fail(f"config file {arg!r} not found{hint}; overrides are written --key=value (see --help)")
            try:
                with open(arg, encoding='utf-8') as f:
                    code = compile(f.read(), arg, 'exec')  # a syntax error stops here, before any output
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
                fail(f"config file {arg!r} cannot be read: {type(e).__name__}: {e}")
            print(f"Overriding config with {arg}:", file=sys.stderr)
            with open(arg, encoding='utf-8') as f:
                print(f.read(), file=sys.stderr)
            try:
                exec(code, g)
            except Exception as e:
                fail(f"config file {arg!r} failed: {type(e).__name__}: {e}")
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
        default = defaults[key]
        if attempt is None and optional(key):
            pass
        elif isinstance(default, str):
            attempt = attempt if isinstance(attempt, str) else val  # --start=42 means the text "42"
        elif default is None:
            pass  # an untyped optional key takes any value
        elif isinstance(default, bool) or isinstance(attempt, bool):
            if type(attempt) is not type(default):
                fail(f"--{key} expects {expected_type(key)} (True or False), got {val!r}")
        elif isinstance(default, float) and type(attempt) is int:
            attempt = float(attempt)  # --temperature=1 means 1.0
        elif type(attempt) is not type(default):
            none = " or None" if optional(key) else ""
            fail(f"--{key} expects {expected_type(key)}{none}, got {val!r}")
        print(f"Overriding: {key} = {attempt!r}", file=sys.stderr)
        g[key] = attempt

_configure(globals(), __import__('sys').argv[1:])
del _configure
