"""
The CPU speed layer's entry point: what sample.py and bench.py call, once a model is loaded, to
make it decode fast on this machine (the layer: see cpu/__init__.py).
"""
from typing import NamedTuple

from cpu.compiled import FORMATS as COMPILED_FORMATS
from cpu.layout import choose_linear_layout_
from cpu.int8 import Int8Linear, choose_int8_kernel_

MAX_TUNED_ROWS = 64  # rows per call the choices are timed at, at most: more rows decode alike


class Prepared(NamedTuple):
    """What prepare_for_cpu chose."""
    layouts: dict  # {cpu.layout.LinearGroup: LayoutChoice} of a float model; {} otherwise
    int8_kernels: dict  # {int8 kernel: seconds per pass} timed or cached for an int8 model; {} otherwise


def prepare_for_cpu(model, batch_sizes, decode_steps=None, compiled=False):
    """Make model (a loaded GPT, eval mode) decode fast on this CPU, in place, for calls of
    batch_sizes rows (ints >= 1; each taken at most MAX_TUNED_ROWS).
    - float32 / bfloat16 weights: each Linear stored in the layout that runs fastest here
      (cpu.layout.choose_linear_layout_; decode_steps: the decode steps this run makes, so that a
      copy is made only where it pays, None: always the faster layout);
    - int8 weights: the Block Linears' int8 kernel that runs the first of batch_sizes fastest
      (int8.choose_int8_kernel_); int4 weights have one kernel: nothing to choose.
    Nothing is done for a model off the CPU or one whose step is compiled (compiled: Inductor packs
    the plain weights itself and cannot trace oneDNN's packed ones). Returns Prepared."""
    if compiled or model.lm_head.weight.device.type != 'cpu':
        return Prepared({}, {})
    rows = tuple(min(b, MAX_TUNED_ROWS) for b in batch_sizes)
    if isinstance(model.lm_head, Int8Linear):  # int8 or int4 (whose tied head is int8)
        return Prepared({}, choose_int8_kernel_(model, rows=rows[0]))
    return Prepared(choose_linear_layout_(model, batch_sizes=rows, decode_steps=decode_steps), {})


def compiles_by_default(device_type, fmt, kv_cache, draft=None):
    """Whether sample.py compiles the decode step when --compile is not set: on the CPU, for a
    weight format where the compiled step pays (compiled.FORMATS: fmt is the --quantize format or
    else the --dtype), with the KV cache and no draft; the same choice every run."""
    return device_type == 'cpu' and kv_cache and draft is None and fmt in COMPILED_FORMATS
