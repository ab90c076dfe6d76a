"""
The weight formats' one door (part of the CPU speed layer): which of a GPT's weights a format
replaces, with which module, and the function that makes a whole model so. load.py quantizes
through it as it reads a file, and quantized_cache.py stores and rebuilds what it made; the
formats themselves live in int8.py and int4.py.

References: gpt-fast's quantize.py (pytorch-labs), one handler per weight format.
"""
from cpu.int4 import Int4Linear, quantize_int4_
from cpu.int8 import Int8Linear, quantize_int8_
from gpt_config import BLOCK_WEIGHTS

# quantize= -> the function that makes a GPT so, in place: (model, dtype, quantized) -> model
QUANTIZERS = {'int8': quantize_int8_, 'int4': quantize_int4_}


def is_matmul_weight(name):
    """True for the state-dict names whose weights every format replaces: every Block's Linears
    (gpt_config.BLOCK_WEIGHTS) and the tied wte / lm_head."""
    return name in ('transformer.wte.weight', 'lm_head.weight') or name.endswith(BLOCK_WEIGHTS)


def quantized_class(name, quantize):
    """The module class that holds the matmul weight called name (a state-dict name) in format
    quantize: Int4Linear for a Block Linear in 'int4', else Int8Linear (the tied head stays int8
    in int4: the embedding reads its rows)."""
    return Int4Linear if quantize == 'int4' and name.endswith(BLOCK_WEIGHTS) else Int8Linear


def quantize_weight(name, w, quantize):
    """The module (see quantized_class) that holds the matmul weight called name in format quantize
    ('int8' or 'int4'), made from the float tensor w (out, in), without bias. Raises ValueError for
    another format."""
    if quantize not in QUANTIZERS:
        raise ValueError(f"quantize must be 'int8' or 'int4', got {quantize!r}")
    return quantized_class(name, quantize).from_float(w)
