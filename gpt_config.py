"""
What a GPT is, before it is built: its hyperparameters (GPTConfig, nanoGPT's fields), OpenAI's four
GPT-2 sizes, and the names and dtypes of its parameters. model.py builds from these, load.py reads
files against them and the CPU speed layer (cpu/) quantizes by them; this file imports none of
them, so every import among them runs one way. (model.py imports GPTConfig: nanoGPT's
`from model import GPTConfig` still works.)
"""
from dataclasses import dataclass

import torch


@dataclass
class GPTConfig:
    """Model hyperparameters; the fields and defaults are nanoGPT's, so that
    GPTConfig(**checkpoint['model_args']) loads any checkpoint nanoGPT's train.py wrote.

    gelu and layer_norm_eps are ours: gelu is 'exact' (nanoGPT's nn.GELU(), the default, so old
    model_args keep it) or 'tanh' (GPT-2's approximation, used by from_pretrained). Raises
    ValueError for another gelu.
    """
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster
    gelu: str = 'exact'  # 'exact' (erf, nanoGPT-trained) or 'tanh' (OpenAI GPT-2, HF gelu_new)
    layer_norm_eps: float = 1e-5  # Hugging Face config.json's layer_norm_epsilon

    def __post_init__(self):
        if self.gelu not in ('exact', 'tanh'):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {self.gelu!r}")


# OpenAI's four GPT-2 checkpoints: the GPTConfig of each (as nanoGPT's from_pretrained lists them)
GPT2_CONFIGS = {
    'gpt2':        GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True, gelu='tanh'),   # 124M
    'gpt2-medium': GPTConfig(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, block_size=1024, bias=True, gelu='tanh'),  # 350M
    'gpt2-large':  GPTConfig(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024, bias=True, gelu='tanh'),  # 774M
    'gpt2-xl':     GPTConfig(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, block_size=1024, bias=True, gelu='tanh'),  # 1558M
}

# the Linears of every Block, by name: Hugging Face's GPT-2 stores their weights as Conv1D, (in, out)
# (load.py transposes them), and cpu/int8.py / cpu/int4.py quantize them (int8 also the tied wte / lm_head)
BLOCK_LINEARS = ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')
BLOCK_WEIGHTS = tuple(f'.{linear}.weight' for linear in BLOCK_LINEARS)  # their state-dict names end so


def param_dtype(name, dtype):
    """The dtype the parameter called name (a state-dict name) is kept in when the model computes in
    dtype, as nanoGPT's float32 parameters meet its autocast: LayerNorm's and wpe stay float32
    (autocast runs LayerNorm in float32 and never casts an embedding lookup), every other one in
    dtype: the Linears, and the tied wte / lm_head, which autocast casts for lm_head's matmul
    (wte's lookup reads model.Embedding.table)."""
    return torch.float32 if '.ln_' in name or name == 'transformer.wpe.weight' else dtype
