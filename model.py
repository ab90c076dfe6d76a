"""
The GPT language model, in nanoGPT's shape and with nanoGPT's names.
References:
1) OpenAI's GPT-2 (TensorFlow): https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face's GPT-2 (PyTorch): transformers/models/gpt2/modeling_gpt2.py
3) nanoGPT's model.py, whose parameter names and checkpoint format this file keeps.
"""

import math
import os
import pickle
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

GPT2_SHAPES = {
    # n_layer, n_head and n_embd of OpenAI's four GPT-2 checkpoints
    'gpt2':        dict(n_layer=12, n_head=12, n_embd=768),   # 124M params
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    'gpt2-large':  dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    'gpt2-xl':     dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}

# OpenAI stored these as Conv1D weights of shape (in, out); nn.Linear wants (out, in)
CONV1D_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


class LoadError(Exception):
    """A model or checkpoint could not be loaded; the message says what to do."""


def out_of_memory(e):
    """True if the exception e is an allocation failure: the CPU allocator's, CUDA's, or a failed
    mmap (ENOMEM), which is about memory, not about the file."""
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or getattr(e, 'errno', None) == 12 \
        or any(s in text for s in ("can't allocate memory", 'cannot allocate memory', 'out of memory'))


def param_dtype(name, dtype):
    """The dtype a parameter is kept in when the model computes in dtype: LayerNorm's stay float32
    (nanoGPT's autocast runs LayerNorm in float32), every other one (Linears, embeddings) in dtype."""
    return torch.float32 if '.ln_' in name else dtype


def matmul_dtype(linear):
    """The dtype a Linear's input is cast to: its weight's (bf16 / fp16 as under autocast)."""
    return linear.weight.dtype


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's nn.LayerNorm cannot drop only the bias).

    Input and output: (..., ndim) float tensor. eps is 1e-5 in GPT-2.
    """

    def __init__(self, ndim, bias, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, self.eps)


class KVCache(nn.Module):
    """Keys and values of one attention layer, for up to max_seq_len positions of batch_size rows.

    k_cache, v_cache: (batch_size, n_head, max_seq_len, head_size) in the compute dtype,
    registered persistent=False so that state dicts and checkpoints never carry them.
    Allocated at run time by GPT.setup_caches, as in gpt-fast (pytorch-labs/gpt-fast).
    """

    def __init__(self, batch_size, max_seq_len, n_head, head_size, dtype, device):
        super().__init__()
        shape = (batch_size, n_head, max_seq_len, head_size)
        self.register_buffer('k_cache', torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer('v_cache', torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos, k, v):
        """Write k, v (B, nh, T, hs) at positions pos..pos+T-1 of rows 0..B-1 (pos: int or a
        (1,) LongTensor, which keeps shapes static for torch.compile). Returns the (B, nh, L, hs)
        views of both caches over all L positions."""
        B, _, T, _ = k.shape
        input_pos = torch.arange(T, device=k.device) + pos  # (T,)
        k_cache, v_cache = self.k_cache[:B], self.v_cache[:B]
        k_cache.index_copy_(2, input_pos, k.to(k_cache.dtype))
        v_cache.index_copy_(2, input_pos, v.to(v_cache.dtype))
        return k_cache, v_cache


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017, "Attention Is All You Need").

    Input and output: (B, T, n_embd). Attention runs through F.scaled_dot_product_attention.
    With a KV cache (self.kv_cache set by GPT.setup_caches) and pos given, the new keys and
    values are written at positions pos..pos+T-1 first: a prefill (pos 0) attends causally to
    itself; a decode step (T 1) attends to the cached positions 0..pos, sliced (eager) or through
    attn_mask over the whole cache (static shapes for torch.compile / CUDA graphs).
    """

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        # key, query, value projections for all heads, in one batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.kv_cache = None

    def forward(self, x, pos=None, attn_mask=None):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        x = x.to(matmul_dtype(self.c_attn))  # the float32 LayerNorm output, as autocast casts it
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if pos is None or self.kv_cache is None:
            # causal attention: (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T) -> (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.attn_dropout if self.training else 0,
                                               is_causal=True)
        else:
            k_all, v_all = self.kv_cache.update(pos, k, v)  # (B, nh, L, hs)
            if attn_mask is not None:  # static decode: the whole cache, masked to positions <= pos
                y = F.scaled_dot_product_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=attn_mask)
            elif T > 1:  # prefill, always from position 0: causal over the new keys themselves
                assert isinstance(pos, int) and pos == 0, "a prefill starts at position 0"
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # decode: one query against cached keys 0..pos. No mask: is_causal would
                # align top-left and hide all but key 0 from the query
                y = F.scaled_dot_product_attention(q, k_all[:, :, :pos + 1].to(q.dtype), v_all[:, :, :pos + 1].to(q.dtype))
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: n_embd -> 4*n_embd -> GELU -> n_embd. Input and output (B, T, n_embd).

    GELU is exact (erf) for nanoGPT-trained checkpoints and the tanh approximation
    (OpenAI's GPT-2, Hugging Face's gelu_new) for imported GPT-2 weights; config.gelu chooses.
    """

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh' if config.gelu == 'tanh' else 'none')
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = x.to(matmul_dtype(self.c_fc))  # the float32 LayerNorm output, as autocast casts it
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm transformer block (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, pos=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), pos, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


def _embedding(num, dim):
    """nn.Embedding, but built on the meta device (for loading) without its random init, whose
    first call imports torch._dynamo: a second of start-up for nothing."""
    w = torch.empty(num, dim)
    return nn.Embedding(num, dim, _weight=w) if w.is_meta else nn.Embedding(num, dim)


@dataclass
class GPTConfig:
    """Model hyperparameters; the fields and defaults are nanoGPT's, so that
    GPTConfig(**checkpoint['model_args']) loads any checkpoint nanoGPT's train.py wrote.

    gelu and layer_norm_eps are ours: gelu is 'exact' (nanoGPT's nn.GELU(), the default, so old
    model_args keep it) or 'tanh' (GPT-2's approximation, used by from_pretrained).
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


class GPT(nn.Module):
    """GPT-2-style decoder-only transformer (Radford et al. 2019, "Language Models are
    Unsupervised Multitask Learners"), with nanoGPT's module names and tied wte / lm_head.
    """

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=_embedding(config.vocab_size, config.n_embd),
            wpe=_embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.bias, config.layer_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (https://paperswithcode.com/method/weight-tying)
        self.transformer.wte.weight = self.lm_head.weight
        if self.transformer.wte.weight.device.type != 'meta':
            self.apply(self._init_weights)
            # scaled init of the residual projections, per the GPT-2 paper
            for pn, p in self.named_parameters():
                if pn.endswith('c_proj.weight'):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Number of parameters (int). Position embeddings are subtracted by default;
        token embeddings stay, since they are tied to lm_head and used as its weights."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, pos=None, attn_mask=None):
        """idx: (B, T) LongTensor of token ids, T <= block_size.
        Returns (logits, loss): with targets (B, T), logits are (B, T, vocab_size) and loss the
        mean cross-entropy (ignore_index -1); without, logits are (B, 1, vocab_size) for the
        last position only (inference needs nothing else) and loss is None.
        pos (int or (1,) LongTensor): idx sits at positions pos..pos+T-1 and its keys / values
        go into the KV cache (see setup_caches); None runs without the cache. attn_mask:
        (1, 1, 1, L) bool over the cache, for the static-shape decode step.
        """
        device = idx.device
        b, t = idx.size()
        assert t <= self.config.block_size, f"Cannot forward sequence of length {t}, block size is only {self.config.block_size}"
        pos_ids = torch.arange(0, t, dtype=torch.long, device=device)  # shape (t)
        if pos is not None:
            pos_ids = pos_ids + pos
        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos_ids)  # position embeddings of shape (t, n_embd)
        # the residual stream is float32 whatever the weights' dtype, as under nanoGPT's autocast
        x = self.transformer.drop(tok_emb.float() + pos_emb.float())
        for block in self.transformer.h:
            x = block(x, pos, attn_mask)
        x = self.transformer.ln_f(x).to(matmul_dtype(self.lm_head))
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # list index [-1] keeps the time dim: (b, 1, vocab_size)
            loss = None
        return logits, loss

    @torch.no_grad()
    def cast_(self, dtype, device=None):
        """Move every parameter to device and to its dtype when computing in dtype (see param_dtype:
        LayerNorm's float32, the rest dtype), in place, keeping the wte / lm_head tie. Returns self."""
        for name, p in self.named_parameters():  # the tied tensor is listed once
            p.data = p.data.to(device=device, dtype=param_dtype(name, dtype))
        return self

    @torch.no_grad()
    def column_major_(self):
        """Store every weight matrix (the Linears' and the tied wte / lm_head) transposed in
        memory, keeping shapes, names and values: F.linear then runs as x @ W over an (in, out)
        array, the layout MKL's small-batch GEMM reads fastest on CPU (measured here: the batch-8
        lm_head 13.6 -> 6.5 ms, batch 1 3.9 -> 3.0 ms). Imported GPT-2 Conv1D weights are
        already stored this way (no copy); others are copied one at a time. wpe stays row-major,
        since it is only indexed. Returns self."""
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != 'transformer.wpe.weight' and p.stride() != (1, p.size(0)):
                p.data = p.data.t().contiguous().t()
        return self

    def setup_caches(self, batch_size, max_seq_len):
        """Allocate a KV cache in every attention layer: batch_size rows, max_seq_len positions
        (at most block_size), in the dtype and on the device of the weights. Memory:
        2 * n_layer * batch_size * max_seq_len * n_embd elements. A call with other sizes replaces
        the caches; one with the same sizes keeps them (stale entries are overwritten before use)."""
        assert max_seq_len <= self.config.block_size
        w = self.transformer.wte.weight
        hs = self.config.n_embd // self.config.n_head
        old = self.transformer.h[0].attn.kv_cache
        if old is not None and old.k_cache.shape == (batch_size, self.config.n_head, max_seq_len, hs) \
                and old.k_cache.dtype == w.dtype and old.k_cache.device == w.device:
            return  # the same buffers again: a compiled decode step replays without recompiling
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, max_seq_len, self.config.n_head, hs, w.dtype, w.device)

    def clear_caches(self):
        """Free the KV caches."""
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def broadcast_caches(self, length):
        """Copy row 0 of every cache, positions 0..length-1, into all rows: one prefill of a
        prompt shared by every row serves the whole batch."""
        for block in self.transformer.h:
            c = block.attn.kv_cache
            c.k_cache[1:, :, :length] = c.k_cache[:1, :, :length]
            c.v_cache[1:, :, :length] = c.v_cache[:1, :, :length]

    def compiled_decode_step(self):
        """decode_step compiled with torch.compile: static shapes, replayed as CUDA graphs on CUDA
        ('reduce-overhead'). The KV cache must stay the same buffers between calls (setup_caches
        keeps same-size ones), or it recompiles."""
        cuda = self.lm_head.weight.device.type == 'cuda'
        return torch.compile(self.decode_step, fullgraph=True, dynamic=False,
                             mode='reduce-overhead' if cuda else 'default')

    def decode_step(self, idx, input_pos):
        """One static-shape decode step for torch.compile / CUDA graphs: idx (B, 1) LongTensor
        at position input_pos ((1,) LongTensor); attends to the whole cache through a mask, so no
        shape depends on the position. Returns (B, 1, vocab_size) logits."""
        L = self.transformer.h[0].attn.kv_cache.k_cache.size(2)
        attn_mask = (torch.arange(L, device=idx.device) <= input_pos).view(1, 1, 1, L)
        return self(idx, pos=input_pos, attn_mask=attn_mask)[0]

    @classmethod
    def from_pretrained(cls, model_type, override_args=None, dtype=torch.float32, device='cpu'):
        """OpenAI's GPT-2 weights from the Hugging Face hub, landed once in dtype on device.

        model_type: 'gpt2', 'gpt2-medium', 'gpt2-large' or 'gpt2-xl' (always the hub models);
        override_args may set 'dropout'. The hub's local cache is read first (HF_HOME;
        HF_HUB_OFFLINE=1 works once cached); only model.safetensors is read, never a pickle.
        GELU is the tanh approximation, as in GPT-2.
        Raises LoadError (unknown name, weights unavailable, names / shapes that do not match).
        """
        if model_type not in GPT2_SHAPES:
            raise LoadError(f"unknown GPT-2 model {model_type!r}: use one of {', '.join(GPT2_SHAPES)}")
        override_args = override_args or {}
        assert all(k == 'dropout' for k in override_args), "only dropout can be overridden"
        config_args = dict(GPT2_SHAPES[model_type], vocab_size=50257, block_size=1024, bias=True, gelu='tanh')
        config_args.update(override_args)
        path = hub_file(model_type, 'model.safetensors')
        return cls.from_safetensors(path, GPTConfig(**config_args), dtype, device)

    @classmethod
    def from_hf(cls, name, dtype=torch.float32, device='cpu'):
        """Any GPT-2-architecture model in Hugging Face's layout: a local directory holding
        config.json and model.safetensors, or a hub id (e.g. 'distilgpt2', a fine-tune) whose
        config.json says model_type 'gpt2'. Dimensions come from config.json (see
        config_from_hf). Landed once in dtype on device. Raises LoadError.
        """
        import json
        local = os.path.isdir(name)
        config_path = os.path.join(name, 'config.json') if local else hub_file(name, 'config.json')
        try:
            with open(config_path, encoding='utf-8') as f:
                hf_config = json.load(f)
        except (OSError, ValueError) as e:
            raise LoadError(f"{config_path}: cannot read a JSON config ({e})") from None
        config = config_from_hf(hf_config, config_path)
        path = os.path.join(name, 'model.safetensors') if local else hub_file(name, 'model.safetensors')
        if not os.path.isfile(path):
            raise LoadError(f"{name}: no model.safetensors (pickled pytorch_model.bin files are not read: "
                            f"convert it with transformers' save_pretrained(safe_serialization=True))")
        return cls.from_safetensors(path, config, dtype, device)

    @classmethod
    def from_safetensors(cls, path, config, dtype=torch.float32, device='cpu'):
        """Build a GPT from a Hugging Face GPT-2 model.safetensors file without a second copy:
        the model is made on the meta device (no memory, no random init), the file is
        memory-mapped, and each tensor lands once, transposed if it is one of the four Conv1D
        weights ((in, out) -> nn.Linear's (out, in)), in dtype, on device.

        Keys may carry Hugging Face's 'transformer.' prefix or not; the 'attn.bias' /
        'attn.masked_bias' mask buffers and the tied 'lm_head.weight' are ignored.
        Raises LoadError naming the file and the first unexpected / missing key or wrong shape.
        """
        from safetensors import SafetensorError
        with torch.device('meta'):
            model = cls(config)  # no memory, no random init: every tensor is assigned below
        expected = {k: v.shape for k, v in model.state_dict().items() if k != 'lm_head.weight'}
        sd = {}
        try:
            for key, t in read_by_layer(path):  # memory-mapped: no copy yet
                name = key if key.startswith('transformer.') else 'transformer.' + key
                if name.endswith(('.attn.bias', '.attn.masked_bias')) or key == 'lm_head.weight':
                    continue  # causal-mask buffers and the tied head: not parameters of ours
                if name not in expected:
                    raise LoadError(f"{path}: unexpected tensor {key!r}; is this a GPT-2 model of the right size?")
                if name.endswith(CONV1D_WEIGHTS):
                    t = t.t()  # Conv1D (in, out) -> nn.Linear's (out, in) shape, as a column-major view
                if t.shape != expected[name]:
                    raise LoadError(f"{path}: {key!r} has shape {tuple(t.shape)}, expected "
                                    f"{tuple(expected[name])} for {config.n_layer} layers x {config.n_embd}")
                sd[name] = t.to(device=device, dtype=param_dtype(name, dtype))  # the one copy, if any
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            if out_of_memory(e):
                raise LoadError(f"out of memory reading {path} ({e}): free memory, or use --dtype=bfloat16 "
                                f"or a smaller model") from None
            raise LoadError(f"{path}: not a readable safetensors file, truncated or corrupt? ({e})") from None
        missing = sorted(set(expected) - set(sd))
        if missing:
            raise LoadError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
        sd['lm_head.weight'] = sd['transformer.wte.weight']
        model.load_state_dict(sd, strict=True, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # assign=True breaks the tie: restore it
        return model

    @classmethod
    def from_checkpoint(cls, ckpt_path):
        """Load a checkpoint that nanoGPT's train.py (or ours) wrote: a dict with 'model'
        (state dict, maybe with torch.compile's '_orig_mod.' prefix and pre-2.0 'attn.bias'
        mask buffers) and 'model_args' (GPTConfig fields). Weights-only unpickling: a file that
        carries code is refused, never run. The tensors are memory-mapped, not copied.

        Returns (model on the CPU in the checkpoint's dtype, checkpoint dict without the
        'model' and 'optimizer' entries, so their memory can be freed).
        Raises LoadError naming the file and what is wrong with it.
        """
        if not os.path.isfile(ckpt_path):
            raise LoadError(f"no checkpoint at {ckpt_path}: train one with train.py, or sample the bundled "
                            f"demo with --out_dir=out-shakespeare-char, or GPT-2 with --init_from=gpt2")
        try:
            try:
                checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as e:
                if 'mmap' not in str(e):
                    raise
                checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True)  # legacy format
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ''
            raise LoadError(f"{ckpt_path}: refused, it holds objects other than tensors and plain data, "
                            f"which could run code ({first[:160]})") from None
        except Exception as e:
            if out_of_memory(e):
                raise LoadError(f"out of memory reading {ckpt_path} ({str(e).strip()[:160]}): free memory") from None
            raise LoadError(f"{ckpt_path}: not a readable checkpoint, truncated or corrupt? "
                            f"({type(e).__name__}: {str(e).strip()[:160]})") from None
        if not isinstance(checkpoint, dict) or not {'model', 'model_args'} <= checkpoint.keys():
            raise LoadError(f"{ckpt_path}: not a nanoGPT checkpoint, it needs 'model' and 'model_args' entries")
        try:
            config = GPTConfig(**checkpoint['model_args'])
        except (TypeError, ValueError) as e:
            raise LoadError(f"{ckpt_path}: bad model_args ({e})") from None
        state_dict = checkpoint.pop('model')
        checkpoint.pop('optimizer', None)  # twice the model's size, and sampling never needs it
        unwanted_prefix = '_orig_mod.'  # left by torch.compile
        state_dict = {(k[len(unwanted_prefix):] if k.startswith(unwanted_prefix) else k): v
                      for k, v in state_dict.items()}
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith('.attn.bias')}  # pre-2.0 masks
        with torch.device('meta'):
            model = cls(config)
        try:
            model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as e:
            detail = ' '.join(str(e).split())[:300]
            raise LoadError(f"{ckpt_path}: weights do not match its model_args ({detail})") from None
        model.lm_head.weight = model.transformer.wte.weight  # assign=True breaks the tie: restore it
        return model, checkpoint

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, **kwargs):
        """Take a conditioning sequence of indices idx (LongTensor of shape (b,t)) and complete
        the sequence max_new_tokens times, feeding the predictions back into the model each time;
        nanoGPT's signature and return value. Returns a (b, t + max_new_tokens) LongTensor, or
        shorter if eot_token is given and every row has produced it (rows that stopped earlier are
        padded with eot_token). Other keyword arguments: see generate.generate_tokens.
        """
        from generate import generate_tokens
        new = list(generate_tokens(self, idx, max_new_tokens, temperature, top_k, **kwargs))
        return torch.cat([idx] + new, dim=1)


def read_by_layer(path):
    """Yield (key, tensor) for every tensor of a safetensors file, memory-mapped (no copy).

    The file is mapped once per transformer layer ('h.N.' keys; the rest together): copying a
    tensor to another dtype or device faults its pages into this process, and closing a mapping
    releases them, so a converting load holds its copies plus one layer, not the whole file
    besides (measured: gpt2-xl in bfloat16 on CPU, peak RSS 9.4 GB -> 3.5 GB). Tensors that are
    kept as they are keep their mapping alive. Raises OSError / safetensors errors on a bad file.
    """
    import re
    from safetensors import safe_open
    with safe_open(path, framework='pt') as f:
        keys = list(f.keys())
    layers = {}
    for key in keys:
        m = re.search(r'(?:^|\.)h\.(\d+)\.', key)
        layers.setdefault(m.group(1) if m else None, []).append(key)
    for group in layers.values():
        with safe_open(path, framework='pt') as f:
            for key in group:
                yield key, f.get_tensor(key)


def config_from_hf(c, where='config.json'):
    """GPTConfig from a Hugging Face GPT-2 config.json dict: n_layer, n_head, n_embd,
    n_positions (block_size), vocab_size, activation_function, layer_norm_epsilon.
    Raises LoadError naming the first field this model cannot represent."""
    def bad(field, why):
        raise LoadError(f"{where}: {field}={c.get(field)!r} {why}; this GPT implements plain GPT-2 only")
    if c.get('model_type') != 'gpt2':
        bad('model_type', "is not 'gpt2'")
    gelu = {'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu': 'exact'}.get(c.get('activation_function', 'gelu_new'))
    if gelu is None:
        bad('activation_function', "is not implemented (gelu_new, gelu_pytorch_tanh or gelu are)")
    if c.get('add_cross_attention'):
        bad('add_cross_attention', "needs cross-attention layers")
    if c.get('scale_attn_by_inverse_layer_idx'):
        bad('scale_attn_by_inverse_layer_idx', "scales attention per layer")
    if c.get('scale_attn_weights', True) is not True:
        bad('scale_attn_weights', "turns off the 1/sqrt(head size) attention scale")
    n_embd = c.get('n_embd', 768)
    if c.get('n_inner') not in (None, 4 * n_embd):
        bad('n_inner', f"is not 4 * n_embd ({4 * n_embd})")
    try:
        return GPTConfig(block_size=int(c.get('n_positions', 1024)), vocab_size=int(c.get('vocab_size', 50257)),
                         n_layer=int(c.get('n_layer', 12)), n_head=int(c.get('n_head', 12)), n_embd=int(n_embd),
                         dropout=0.0, bias=True, gelu=gelu, layer_norm_eps=float(c.get('layer_norm_epsilon', 1e-5)))
    except (TypeError, ValueError) as e:
        raise LoadError(f"{where}: a dimension is not a number ({e})") from None


def hub_file(repo_id, filename):
    """Local path of filename in a Hugging Face hub model repo: the cache (HF_HOME) first,
    then a download with the hub's progress bar unless HF_HUB_OFFLINE=1.
    Raises LoadError, one line saying what is missing and how to get it.
    """
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import logging as hf_logging
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return cached
    try:
        if not constants.HF_HUB_OFFLINE:  # no network at all: say so now, not after 20 s of retries
            socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        hf_logging.set_verbosity_error()  # its retry warnings would bury our one line
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # offline, network down, no such repo: all leave the user the same choices
        why = ('HF_HUB_OFFLINE=1 and it is not cached' if constants.HF_HUB_OFFLINE else
               'no network' if isinstance(e, OSError) else type(e).__name__)
        raise LoadError(f"cannot get {filename} of {repo_id!r} from the Hugging Face hub ({why}): run once with "
                        f"network (HF_HUB_OFFLINE unset) to cache it in {constants.HF_HUB_CACHE} (under HF_HOME), "
                        f"or use a local directory with config.json and model.safetensors") from None
