"""
What the CPU speed layer caches on disk, in one folder, and the key that ties an entry to this
machine: the float layouts' and int8 kernels' timings in one JSON file (cache_path), the quantized
weights (quantized_cache) and the compiled step's packages with Inductor's own files (compiled.py)
in folders beside it. Every file is written whole (common.replace_atomically); all are safe to
delete (what they held is timed or made again).
"""
import json
import os

import torch

from common import replace_atomically


def cache_dir():
    """nanosample's cache folder: $NANOSAMPLE_CACHE_DIR, else $XDG_CACHE_HOME/nanosample/ or
    ~/.cache/nanosample/ (layout and kernel timings here, quantized weights in quantized_cache)."""
    return os.environ.get('NANOSAMPLE_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'nanosample')


def cache_path():
    """The JSON file of cached timings, cache_dir()/layouts.json. Safe to delete (the layouts and
    kernels are timed again)."""
    return os.path.join(cache_dir(), 'layouts.json')


# ---------------------------------------------------------------- this machine

CPU_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_bf16')


def cpu_info():
    """(model name, set of flags) of the CPU's first entries in /proc/cpuinfo, '' or an empty set
    for what it does not list; None where the file cannot be read (not Linux)."""
    name, flags = '', set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name' and not name:
                    name = value.strip()
                elif key.strip() == 'flags' and not flags:
                    flags = set(value.split())
    except OSError:
        return None
    return name, flags


def machine_key():
    """What a timing depends on besides the shapes, as a JSON-able list: CPU model, its
    GEMM-relevant flags (CPU_FLAGS), ATen's CPU capability, torch's threads and version."""
    info = cpu_info()
    if info is None:
        import platform
        info = platform.processor(), set()
    name, flags = info
    return [name, sorted(flags & set(CPU_FLAGS)), torch.backends.cpu.get_cpu_capability(),
            torch.get_num_threads(), torch.__version__]


QUIET = 0.5  # a machine whose 1-minute load average per core is at most this counts as quiet


def machine_load():
    """This machine's 1-minute load average per core (0.0 where the OS does not tell)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return 0.0


# ---------------------------------------------------------------- the timings file

def read_cache(path):
    """{key: entry} from the cache file at path; {} if it is missing, unreadable or corrupt."""
    try:
        with open(path, encoding='utf-8') as f:
            entries = json.load(f)
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_entry(path, key):
    """The entry cached under key in the cache file at path, or None: missing, or timed on a busy
    machine (its 'load' above QUIET) while this one is quiet now, so that a quiet run times again
    and replaces it (other jobs only ever make a timing slower, and unevenly)."""
    entry = read_cache(path).get(key)
    load = entry.get('load') if isinstance(entry, dict) else None
    if isinstance(load, (int, float)) and load > QUIET and machine_load() <= QUIET:
        return None
    return entry


def write_entry(path, key, entry, load):
    """Add entry (a JSON-able dict) under key to the cache file at path, with 'load': the machine's
    load per core when it was timed (machine_load, read before the timing); written whole (a
    reader never sees half a file); a file that cannot be written is skipped."""
    entries = read_cache(path)
    entries[key] = dict(entry, load=round(load, 3))

    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(entries, f, indent=1)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_atomically(path, write)
    except OSError:
        pass  # a read-only home: time again next run
