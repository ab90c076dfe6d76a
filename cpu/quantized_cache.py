"""
Quantized weights cached on disk, so that quantizing a model is paid once: the first
`--quantize=int8` (or int4) load of a file writes what it made (the int8 / int4 weights with
their scales, and the model's other tensors) to one file (torch.save's format) in the user's cache
(cpu.cache.cache_dir(), quantized/); later loads of the same file read that instead of
quantizing again (gpt2-xl: 6.2 GB of float32 read and quantized -> 1.6 GB read).

Each file is keyed by the source file's absolute path, size and modification time, the format,
the dtype, the int4 group size, a digest of the quantizers' own source (int8.py, int4.py,
quantize.py and this file: a change to how weights are quantized or stored makes every old file
a miss), torch's version and ATen's CPU capability (int4's packed layout is the kernel's for this
CPU). Every record of a file is checked against its zip CRC-32 before use (about 0.5 s per GB).
A cache file that is missing, unreadable, corrupt or for another key means quantizing again (and
the file is rewritten), never an error; one that cannot be written is skipped. Safe to delete (the folder can
grow by one file per model, format and dtype used). Read back memory-mapped, so a cached model
costs no copy.
"""
import hashlib
import json
import mmap
import os
import shutil
import struct
import zipfile
import zlib

import torch

from common import replace_atomically
from cpu.cache import cache_dir
from cpu.int4 import GROUP_SIZE
from cpu.quantize import is_matmul_weight, quantized_class

MIN_FREE = 1 << 30  # bytes a cache file must leave free on its disk
QUANTIZER_SOURCES = ('int8.py', 'int4.py', 'quantize.py', 'quantized_cache.py')  # how weights are quantized and stored
SEP = '::'  # '<matmul weight name>::<buffer of its quantized module>', e.g. 'transformer.h.0.attn.c_attn.weight::scales'


def cache_file(source, quantize, dtype):
    """(path of the cache file for source (a checkpoint or safetensors file) quantized to quantize
    with compute dtype dtype, its key as a string); (None, None) if source cannot be stat'ed."""
    try:
        st = os.stat(source)
    except OSError:
        return None, None
    key = json.dumps([quantizer_digest(), os.path.abspath(source), st.st_size, st.st_mtime_ns, quantize, str(dtype),
                      GROUP_SIZE, torch.__version__, torch.backends.cpu.get_cpu_capability()])
    name = hashlib.sha1(key.encode()).hexdigest()[:20] + '.pt'
    return os.path.join(cache_dir(), 'quantized', name), key


def quantizer_digest():
    """SHA-256 (hex, 16 digits) of the source of the modules that quantize, pack and store the
    weights (QUANTIZER_SOURCES, beside this file): part of every cache key."""
    h = hashlib.sha256()
    for name in QUANTIZER_SOURCES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), 'rb') as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def intact(path):
    """Whether every record of the zip file at path (torch.save's format: records stored, not
    compressed) holds the bytes its CRC-32 says: a flipped byte anywhere in the data is caught,
    which torch.load does not check. Reads the file through a memory map, no copy."""
    try:
        with zipfile.ZipFile(path) as zf, open(path, 'rb') as f, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    return False
                # a local header: 30 bytes, then the name and an extra field of lengths it gives, then the data
                name_len, extra_len = struct.unpack('<HH', view[info.header_offset + 26:info.header_offset + 30])
                start = info.header_offset + 30 + name_len + extra_len
                if start + info.file_size > len(view) or zlib.crc32(view[start:start + info.file_size]) != info.CRC:
                    return False
        return True
    except (OSError, ValueError, zipfile.BadZipFile, struct.error):
        return False


def save(model, path, key):
    """Write model's quantized tensors to path (torch.save's zip format, with key): every matmul
    weight's quantized buffers under '<name>::<buffer>' (the tied wte / lm_head once, under
    wte's name), every other tensor under its state-dict name. Written to a temporary file and
    renamed. Skipped where the disk would keep less than MIN_FREE bytes free; a write that fails
    (a full disk, a read-only home) leaves no file and is ignored."""
    tensors = {}
    for k, v in model.state_dict().items():
        module, _, buffer = k.rpartition('.')
        if module in ('lm_head', 'transformer.wte'):
            continue  # the tied head, once, below
        weight = module + '.weight'
        tensors[f'{weight}{SEP}{buffer}' if is_matmul_weight(weight) and buffer != 'bias' else k] = v
    for buffer in ('weight', 'scales'):
        tensors[f'transformer.wte.weight{SEP}{buffer}'] = getattr(model.lm_head, buffer)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if shutil.disk_usage(os.path.dirname(path)).free < nbytes + MIN_FREE:
            return  # never fill the user's disk for a cache
        replace_atomically(path, lambda tmp: torch.save({'key': key, 'tensors': tensors}, tmp))
    except (OSError, RuntimeError):  # torch.save's writer reports a full disk as a RuntimeError
        pass


def load(path, key, shapes, quantize):
    """The cached tensors at path if it holds key: (tensors, premade), tensors a list of (name,
    tensor) for load.assemble (a meta placeholder of its shape for each matmul weight), premade
    {matmul weight name: its quantized module} (an Int8Linear, or an Int4Linear for a Block
    Linear in int4). Every tensor is a view of the memory-mapped file (torch.load(mmap=True):
    64-byte aligned, no copy, pages read as used). shapes: {state-dict name: shape} of the model.
    None if the file is missing, unreadable, corrupt (intact), for another key, or lacks a tensor."""
    if not intact(path):
        return None
    try:
        cached = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        if not isinstance(cached, dict) or cached.get('key') != key:
            return None
        stored = cached['tensors']
    except Exception:  # a missing, truncated or foreign file: quantize again
        return None
    tensors, premade = [], {}
    try:
        for name, shape in shapes.items():
            if not is_matmul_weight(name):
                tensors.append((name, stored[name]))
                continue
            out_features, in_features = shape
            m = quantized_class(name, quantize)(in_features, out_features, bias=False, device='meta')
            m.load_state_dict({b: stored[f'{name}{SEP}{b}'] for b, _ in m.named_buffers()}, assign=True)
            premade[name] = m
            tensors.append((name, torch.empty(shape, device='meta')))
    except (KeyError, TypeError, RuntimeError, ValueError):
        return None
    return tensors, premade
