"""cpu.speed.py, the CPU speed layer's entry point: what it prepares for each weight format, and
that a compiled step's model is left as loaded."""
import pytest
import torch

from cpu import compiled
from cpu import int8
from cpu.layout import DenseLinear, PackedLinear
from cpu.speed import compiles_by_default, prepare_for_cpu
from helpers import tiny_model
from cpu.int4 import quantize_int4_
from cpu.int8 import Int8Linear, quantize_int8_
from gpt_config import BLOCK_LINEARS


def test_a_float_model_gets_its_layouts():
    model, _ = tiny_model(n_embd=64, n_head=4)
    prepared = prepare_for_cpu(model.eval(), batch_sizes=(3,), decode_steps=None)
    assert prepared.layouts and not prepared.int8_kernels
    assert all(isinstance(b.get_submodule(n), (DenseLinear, PackedLinear)) for b in model.transformer.h for n in BLOCK_LINEARS)


def test_an_int8_model_gets_its_kernel_and_an_int4_one_keeps_its_own():
    model, _ = tiny_model(n_embd=64, n_head=4)
    quantize_int8_(model.eval())
    prepared = prepare_for_cpu(model, batch_sizes=(100,))  # timed at 64 rows at most
    assert not prepared.layouts
    assert set(prepared.int8_kernels) == ({'int_mm', 'onednn'} if int8.VNNI else set())
    chosen = min(prepared.int8_kernels, key=prepared.int8_kernels.get) if int8.VNNI else int8.KERNEL
    assert all(b.get_submodule(n).kernel == chosen for b in model.transformer.h for n in BLOCK_LINEARS)
    model, _ = tiny_model(n_embd=64, n_head=4)
    quantize_int4_(model.eval())
    assert prepare_for_cpu(model, batch_sizes=(1,)) == ({}, {})


def test_a_compiled_step_keeps_the_plain_weights():
    model, _ = tiny_model(n_embd=64, n_head=4)
    before = {n: type(m) for n, m in model.named_modules()}
    assert prepare_for_cpu(model.eval(), batch_sizes=(1,), compiled=True) == ({}, {})
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, Int8Linear)


@pytest.mark.parametrize('fmt', ['float32', 'bfloat16', 'float16', 'int8', 'int4'])
def test_the_compiled_step_is_the_default_only_where_it_pays(fmt):
    assert compiles_by_default('cpu', fmt, kv_cache=True) == (fmt in compiled.FORMATS)  # where it pays
    assert not compiles_by_default('cpu', fmt, kv_cache=False)
    assert not compiles_by_default('cpu', fmt, kv_cache=True, draft='ngram')
    assert not compiles_by_default('cuda', fmt, kv_cache=True)
