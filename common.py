"""
What the scripts (sample.py, train.py, bench.py) and the loaders share: one way to end on a user
error, a quiet Ctrl-C, device checks, the memory helpers (allocation failures, free memory, the C
heap) and one way to write a file whole. Importing this module does not import torch, so it can
guard `import torch` itself.
"""
import os
import signal
import sys
import tempfile
from contextlib import contextmanager


class UserError(Exception):
    """Something the user can fix (a file, a setting, the machine's memory); the message is one
    line that says what was wrong and what to do. The scripts end it with fail()."""


class LoadError(UserError):
    """A model, checkpoint or tokenizer file could not be loaded; the message says what to do."""


def fail(msg):
    """Print msg as one line on stderr ('error: ...') and exit with code 2: how every user error ends.
    msg: a str or an exception (its text). Raises SystemExit(2)."""
    msg = ' '.join(str(msg).splitlines())  # a path or value with line breaks must not split the line
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def brief(e, limit=200):
    """The text of e (an exception or a str) as it goes into a one-line message: its first line,
    runs of spaces as one, at most limit characters, cut at a word and marked ' ...' where longer."""
    text = ' '.join(str(e).strip().split('\n', 1)[0].split())
    return text if len(text) <= limit else text[:limit].rsplit(' ', 1)[0] + ' ...'


def import_torch_quietly(message=None):
    """Import torch with Ctrl-C ending the process at once (exit code 130, no traceback), then keep
    Ctrl-C quiet: from here on an uncaught KeyboardInterrupt also exits 130 without a traceback,
    printing message (if given) as one line on stderr. An import that fails (too little memory,
    a broken install) ends with one line and exit code 2. Returns the torch module."""
    global _interrupt_message
    _interrupt_message = message
    sys.excepthook = _quiet_interrupt
    share_the_cpu()
    with exit_on_ctrl_c():
        try:
            import torch
        except Exception as e:
            text = brief(e)
            what = f"{type(e).__name__}: {text}" if text else type(e).__name__
            limit = _address_space_limit()
            if limit:  # native code out of address space fails in many ways (MemoryError, SystemError, ...)
                fail(f"out of memory while importing torch under the address-space limit of {limit / 2**30:.1f} GiB "
                     f"({what}): raise the limit (ulimit -v) or use a CPU build of torch, which needs less")
            if isinstance(e, MemoryError) or any(w in text.lower() for w in ('memory', 'failed to map segment')):
                fail(f"out of memory while importing torch ({what}): free memory or raise the memory limit")
            fail(f"cannot import torch ({what}): install it as the README says")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is a KeyboardInterrupt, even if it was ignored
    return torch


def share_the_cpu():
    """Before torch is imported: OpenMP threads (libgomp, PyTorch's on Linux) that wait briefly for
    work instead of spinning 300,000 times, so that a job beside us on the same cores keeps its
    share and we keep ours (GOMP_SPINCOUNT=20000 unless the user set it; the choice is measured
    in docs/measurements.md); and under an address-space limit, one OpenBLAS thread."""
    os.environ.setdefault('GOMP_SPINCOUNT', '20000')
    if _address_space_limit():
        # under an address-space limit OpenBLAS (numpy's, loaded by CUDA builds of torch) may fail
        # to start its threads, and then raises SIGINT itself: a Ctrl-C that never happened
        os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')


def _address_space_limit():
    """This process's address-space limit in bytes (RLIMIT_AS, `ulimit -v`), or None if unlimited."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if limit == resource.RLIM_INFINITY else limit


@contextmanager
def exit_on_ctrl_c():
    """Within the block, Ctrl-C (SIGINT) ends the process at once, exit code 130, nothing printed:
    for work that holds nothing to save (importing torch, loading a model). A KeyboardInterrupt
    raised inside torch's or safetensors' native code would surface as another error instead (an
    abort, or a RuntimeError that reads like a corrupt file). Main thread only."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_interrupt(kind, value, tb):
    if issubclass(kind, KeyboardInterrupt):
        if _interrupt_message:
            print(_interrupt_message, file=sys.stderr, flush=True)
        os._exit(130)
    sys.__excepthook__(kind, value, tb)


_interrupt_message = None  # what an uncaught Ctrl-C prints (import_torch_quietly sets it)


def device_problem(device):
    """None if device (a string such as 'cpu', 'cuda:1', 'mps') can run here, else a one-line
    message saying what is wrong and which devices are available."""
    import torch
    available = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) + \
        (['mps'] if torch.backends.mps.is_available() else [])
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device={device!r} is not a device: available here: {', '.join(available)}"
    if dev.type not in available or (dev.type == 'cuda' and (dev.index or 0) >= torch.cuda.device_count()):
        return f"--device={device!r} is not available on this machine: available here: {', '.join(available)}"
    return None


def out_of_memory(e):
    """True if the exception e is an allocation failure: the CPU allocator's, CUDA's, or a failed
    mmap (ENOMEM), which is about memory, not about the file being read."""
    import torch
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or getattr(e, 'errno', None) == 12 \
        or any(s in text for s in ("can't allocate memory", 'cannot allocate memory', 'out of memory'))


def free_memory(dev):
    """Bytes this process can still allocate on dev (a torch.device), or None where unknown:
    CUDA's free memory, or on Linux the least of MemAvailable, the cgroup's limit less its usage,
    and the address-space limit (RLIMIT_AS) less our size."""
    import torch
    if dev.type == 'cuda':
        return torch.cuda.mem_get_info(dev)[0]
    if dev.type != 'cpu' or not os.path.exists('/proc/meminfo'):
        return None
    import resource
    with open('/proc/meminfo') as f:
        free = [int(l.split()[1]) * 1024 for l in f if l.startswith('MemAvailable:')]
    try:
        with open('/sys/fs/cgroup/memory.max') as f, open('/sys/fs/cgroup/memory.current') as g:
            limit = f.read().strip()
            if limit != 'max':
                free.append(int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    as_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if as_limit != resource.RLIM_INFINITY:
        with open('/proc/self/status') as f:
            size = next((int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize:')), 0)
        free.append(as_limit - size)
    return min(free) if free else None


def trim_heap():
    """Give the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).
    glibc keeps freed memory that lies between live blocks: converting a model tensor by tensor,
    the temporaries' holes between the new weights would otherwise stay in the process."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL('libc.so.6').malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # glibc's malloc_trim, found on first use (False: not glibc)


# -----------------------------------------------------------------------------
# files written whole: to a temporary file beside them, then renamed over them

def round_up(n, m):
    """The int n rounded up to a multiple of the int m (a kernel's padded width)."""
    return (n + m - 1) // m * m


def write_temporary(path, write, temp=None):
    """Write the next version of the file at path beside it: write(tmp) fills tmp, a temporary file
    in path's folder (temp, or a fresh hidden name '.<name>-*.tmp'), and flushes it as it needs.
    Returns tmp; os.replace(tmp, path) then puts it in place at once (a reader sees the old file
    or the new one, never half of one). Raises what write or the folder raises, tmp removed."""
    if temp is None:
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix=f'.{os.path.basename(path)}-',
                                    suffix='.tmp')
        os.close(fd)
    try:
        write(temp)
    except BaseException:
        remove_quietly(temp)
        raise
    return temp


def replace_atomically(path, write):
    """Write the file at path whole or not at all: write_temporary, then os.replace. Raises what
    they raise (OSError, or write's own errors), leaving the old file as it was."""
    os.replace(write_temporary(path, write), path)


def remove_quietly(path):
    """Remove the file at path if it is there; a file that cannot be removed is left."""
    try:
        os.remove(path)
    except OSError:
        pass
