"""
The GPT language model, in nanoGPT's shape and with nanoGPT's names.
References:
1) OpenAI's GPT-2 (TensorFlow): https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face's GPT-2 (PyTorch): transformers/models/gpt2/modeling_gpt2.py
3) nanoGPT's model.py, whose parameter names and checkpoint format this file keeps.
The hyperparameters (GPTConfig) and the parameters' names live in gpt_config.py, the loaders in load.py.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from generate import generate_tokens  # (generate.py never imports model.py: one way)
from gpt_config import GPTConfig, param_dtype  # noqa: F401 (GPTConfig: nanoGPT's `from model import GPTConfig, GPT`)


def matmul_dtype(linear):
    """The dtype a Linear's input is cast to: its weight's (bf16 / fp16 as under autocast), or the
    compute_dtype of a Linear whose weight is stored otherwise (int8, oneDNN-packed)."""
    return getattr(linear, 'compute_dtype', None) or linear.weight.dtype


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
        """Write k, v (B, nh, T, hs) at positions pos..pos+T-1 of rows 0..B-1 (pos: an int); with pos
        a list of B ints, row i at positions pos[i]..pos[i]+T-1, where a position at or past the
        cache's length is not written (a row padded to T, see GPT.forward); with T 1 and pos a (B,)
        LongTensor (a (1,) one: every row), row i at position pos[i] (a tensor keeps shapes static
        for torch.compile). Returns the (B, nh, L, hs) views of both caches over all L positions."""
        B, _, T, _ = k.shape
        if torch.is_tensor(pos) and T == 1:  # a position per row, or one for all, in a static shape
            which = torch.arange(B, device=k.device)
            at = pos.expand(B)
            self.k_cache[which, :, at] = k[:, :, 0].to(self.k_cache.dtype)  # (B, nh, hs) into (B, nh, hs)
            self.v_cache[which, :, at] = v[:, :, 0].to(self.v_cache.dtype)
            return self.k_cache[:B], self.v_cache[:B]
        if isinstance(pos, list):  # positions per row (prompts of different lengths, speculation)
            at = torch.tensor(pos, device=k.device)[:, None] + torch.arange(T, device=k.device)  # (B, T)
            keep = at < self.k_cache.size(2)
            which = torch.arange(B, device=k.device)[:, None].expand(B, T)[keep]
            self.k_cache[which, :, at[keep]] = k.transpose(1, 2)[keep].to(self.k_cache.dtype)  # (N, nh, hs)
            self.v_cache[which, :, at[keep]] = v.transpose(1, 2)[keep].to(self.v_cache.dtype)
            return self.k_cache[:B], self.v_cache[:B]
        input_pos = torch.arange(T, device=k.device) + pos  # (T,)
        k_cache, v_cache = self.k_cache[:B], self.v_cache[:B]
        k_cache.index_copy_(2, input_pos, k.to(k_cache.dtype))
        v_cache.index_copy_(2, input_pos, v.to(v_cache.dtype))
        return k_cache, v_cache


def matmul_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(hs)) v as two matmuls, for q (B, nh, T, hs) against k, v (B, nh, S, hs) of
    q's dtype; mask: (B, 1, T, S) bool, True where a query may attend, or None. Returns (B, nh, T, hs).
    On the CPU a row's bits do not depend on the other rows (unlike SDPA's kernel), and Inductor
    fuses the scale, mask and softmax."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, S)
    if mask is not None:
        att = att.masked_fill(~mask, float('-inf'))
    return F.softmax(att, dim=-1) @ v


def attend_cached(q, k_all, v_all, pos, which=None):
    """Attention of queries q (B, nh, T, hs) at positions pos..pos+T-1 (pos an int) to the cached
    keys and values k_all, v_all (B, nh, L, hs) at positions 0 up to each query's own; which (a
    LongTensor of row indices): those rows only, q already (len(which), nh, T, hs). Returns q's
    shape and dtype. One attention call per position, each exactly the call a one-position
    decode step of those rows makes (no mask: is_causal would align top-left). On the CPU a row's
    bits never depend on the other rows of the call: float32 runs matmuls and a softmax; bfloat16
    and float16 run scaled_dot_product_attention (as nanoGPT under autocast) one row a call.
    Elsewhere one scaled_dot_product_attention call. So a forward over T positions gives each
    one a decode step's bits (speculative decoding's verification; one masked call over all T
    may round otherwise). A query at or past L attends to all L positions: padding, whose output
    no one reads."""
    L = k_all.size(2)
    ys = []
    for t in range(q.size(2)):
        end = min(pos + t + 1, L)
        k, v = (k_all[:, :, :end], v_all[:, :, :end]) if which is None else (k_all[which, :, :end], v_all[which, :, :end])
        qt = q[:, :, t:t + 1] if q.size(2) > 1 else q
        if q.device.type == 'cpu' and q.dtype == torch.float32:  # matmuls: a row's bits the same at any batch
            # size (SDPA's CPU kernel splits the work by the batch's shape, and a row's bits follow)
            ys.append(matmul_attention(qt, k, v))  # (B, nh, 1, hs)
        elif q.device.type == 'cpu':  # bfloat16 / float16: SDPA, autocast's bits (nanoGPT's), one row a call as alone
            ys.append(torch.cat([F.scaled_dot_product_attention(qt[i:i + 1], k[i:i + 1].to(q.dtype),
                                                                v[i:i + 1].to(q.dtype))
                                 for i in range(qt.size(0))]))
        else:
            ys.append(F.scaled_dot_product_attention(qt, k.to(q.dtype), v.to(q.dtype)))
    return ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)


def cached_attention(q, k, v, k_all, v_all, pos, attn_mask=None):
    """Attention of queries q (B, nh, T, hs) at positions pos.. once their keys and values k, v (B, nh,
    T, hs) are in the KV cache, whose views k_all, v_all (B, nh, L, hs) KVCache.update returned; pos
    and attn_mask as in GPT.forward. Returns q's shape and dtype. One branch per mode:
    - the static decode step (attn_mask given): the whole cache, masked to positions <= each row's;
    - rows at their own positions (pos a list): rows that share a position attend together, to
      exactly what a run of those rows alone reads;
    - a prefill from position 0 (T > 1): causal over the new keys themselves, as nanoGPT's forward;
    - a decode step (T 1), or T positions after cached ones (verifying drafted tokens): each query
      against the cached keys 0..its position (attend_cached)."""
    if attn_mask is not None:
        if q.device.type == 'cpu':  # one query: Inductor fuses these; SDPA's masked kernel is slow here
            return matmul_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask)
        return F.scaled_dot_product_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=attn_mask)
    if isinstance(pos, list):
        y = torch.empty_like(q)
        for p in sorted(set(pos)):
            which = torch.tensor([i for i, r in enumerate(pos) if r == p], device=q.device)
            y[which] = attend_cached(q[which], k_all, v_all, p, which)
        return y
    if q.size(2) > 1 and pos == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend_cached(q, k_all, v_all, pos)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017, "Attention Is All You Need").

    Input and output: (B, T, n_embd). Without a KV cache, or without pos, causal attention over
    the T positions through F.scaled_dot_product_attention (nanoGPT's). With a KV cache
    (self.kv_cache set by GPT.setup_caches) and pos given, the new keys and values are written at
    positions pos..pos+T-1 first, then attended to by mode (cached_attention).
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
        if pos is None or self.kv_cache is None:  # nanoGPT's forward: causal over these T positions
            # (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T) -> (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.attn_dropout if self.training else 0,
                                               is_causal=True)
        else:
            y = cached_attention(q, k, v, *self.kv_cache.update(pos, k, v), pos, attn_mask)
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


class Embedding(nn.Embedding):
    """nn.Embedding (same weight, init and state dict) whose lookup may read a wider copy of its
    weight: idx (...) LongTensor -> (..., embedding_dim) rows of `table` if set, else of weight.

    Under nanoGPT's autocast the parameters stay float32: wte(idx) returns float32 rows, and only
    lm_head, tied to the same tensor, multiplies by it rounded to bf16 / fp16. Ours keeps the tied
    weight in the compute dtype, for lm_head, and `table` holds the rows as they were, (num,
    dim) float32 (or the file's dtype): the lookup then reads what nanoGPT's reads. load.py sets it,
    on CPU as a view of the memory-mapped file (only the rows looked up become resident); it is no
    parameter or buffer, so state dicts keep nanoGPT's format, but .to() moves it with the module.
    Loading a state dict into the weight drops it (it would be stale).
    """
    table = None

    def forward(self, idx):
        return F.embedding(idx, self.weight if self.table is None else self.table)

    def _apply(self, fn, recurse=True):
        if self.table is not None:
            self.table = fn(self.table)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self.table = None
        super()._load_from_state_dict(*args, **kwargs)


def _embedding(num, dim):
    """Embedding, but built on the meta device (for loading) without its random init, whose
    first call imports torch._dynamo: a second of start-up for nothing."""
    w = torch.empty(num, dim)
    return Embedding(num, dim, _weight=w) if w.is_meta else Embedding(num, dim)


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

    def forward(self, idx, targets=None, pos=None, attn_mask=None, all_logits=False):
        """idx: (B, T) LongTensor of token ids, T <= block_size.
        Returns (logits, loss): with targets (B, T), logits are (B, T, vocab_size) and loss the
        mean cross-entropy (ignore_index -1); without, logits are (B, 1, vocab_size) for the
        last position only (inference needs nothing else) and loss is None; all_logits: (B, T,
        vocab_size) for every position (speculative decoding's verification).
        pos (int): idx sits at positions pos..pos+T-1 and its keys / values go into the KV cache
        (see setup_caches); a list of B ints: row i's tokens sit at positions pos[i]..pos[i]+T-1,
        and those at or past the cache's length are padding (not written, position embedding
        block_size - 1, outputs meaningless); a (B,) LongTensor (with T 1): row i's token sits at
        position pos[i] (a (1,) tensor: every row's); None runs without the cache. attn_mask:
        (B or 1, 1, 1, L) bool over the cache, for the static-shape decode step.
        """
        device = idx.device
        b, t = idx.size()
        assert t <= self.config.block_size, f"Cannot forward sequence of length {t}, block size is only {self.config.block_size}"
        pos_ids = torch.arange(0, t, dtype=torch.long, device=device)  # shape (t)
        if isinstance(pos, list):
            pos_ids = (torch.tensor(pos, dtype=torch.long, device=device)[:, None] + pos_ids).clamp(
                max=self.config.block_size - 1)  # (b, t): positions per row
        elif torch.is_tensor(pos):
            pos_ids = pos.view(-1, 1) + pos_ids  # (b or 1, t)
        elif pos is not None:
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
            # in float32 from bf16 / fp16 logits, as autocast runs cross_entropy (float32: no copy)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        elif all_logits:
            logits, loss = self.lm_head(x), None
        else:
            logits = self.lm_head(x[:, [-1], :])  # list index [-1] keeps the time dim: (b, 1, vocab_size)
            loss = None
        return logits, loss

    @property
    def compute_dtype(self):
        """The dtype the matmuls run in (and the KV cache is kept in): the Linears' input dtype."""
        return matmul_dtype(self.transformer.h[0].attn.c_attn)

    @torch.no_grad()
    def cast_(self, dtype, device=None):
        """Move every parameter to device and to its dtype when computing in dtype (see param_dtype:
        LayerNorm's and wpe float32, the rest dtype), in place, keeping the wte / lm_head tie. Where
        that rounds wte (float32 to bf16 / fp16), its rows as they were become wte.table, as under
        nanoGPT's autocast (see Embedding). Returns self."""
        wte = self.transformer.wte
        if isinstance(wte, Embedding):  # (int8.Int8Embedding is another format)
            if wte.table is not None:  # cast from the rows as they were, not from their rounding
                wte.weight.data, wte.table = wte.table, None
            if dtype not in (wte.weight.dtype, torch.float32):  # float32 holds bf16 / fp16 values exactly
                wte.table = wte.weight.detach().to(device=device)  # the old tensor: .data is replaced below
        for name, p in self.named_parameters():  # the tied tensor is listed once
            p.data = p.data.to(device=device, dtype=param_dtype(name, dtype))
        return self

    def setup_caches(self, batch_size, max_seq_len):
        """Allocate a KV cache in every attention layer: batch_size rows, max_seq_len positions
        (at most block_size), in the dtype and on the device of the weights. Memory:
        2 * n_layer * batch_size * max_seq_len * n_embd elements. A call with other sizes replaces
        the caches; one with the same sizes keeps them (stale entries are overwritten before use)."""
        assert max_seq_len <= self.config.block_size
        dtype, device = self.compute_dtype, self.transformer.wpe.weight.device  # keys and values: c_attn's output
        hs = self.config.n_embd // self.config.n_head
        old = self.transformer.h[0].attn.kv_cache
        if old is not None and old.k_cache.shape == (batch_size, self.config.n_head, max_seq_len, hs) \
                and old.k_cache.dtype == dtype and old.k_cache.device == device:
            return  # the same buffers again: a compiled decode step replays without recompiling
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, max_seq_len, self.config.n_head, hs, dtype, device)

    def clear_caches(self):
        """Free the KV caches."""
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def broadcast_caches(self, length, which=None):
        """Copy row 0 of every cache, positions 0..length-1, into the rows which (a list of row
        indices; None: all rows): one prefill of a prompt serves every row that shares it."""
        if which is not None:
            which = [r for r in which if r != 0]  # row 0 holds the prefill already
            if not which:
                return
        which = slice(1, None) if which is None else torch.tensor(which, device=self.transformer.wpe.weight.device)
        for block in self.transformer.h:
            c = block.attn.kv_cache
            for cache in (c.k_cache, c.v_cache):  # (an index_put may not read the tensor it writes: a copy of row 0)
                cache[which, :, :length] = cache[:1, :, :length] if isinstance(which, slice) else cache[:1, :, :length].clone()

    def compiled_decode_step(self):
        """decode_step compiled with torch.compile: static shapes, replayed as CUDA graphs on CUDA
        ('reduce-overhead'). The KV cache must stay the same buffers between calls (setup_caches
        keeps same-size ones), or it recompiles."""
        cuda = self.lm_head.weight.device.type == 'cuda'
        return torch.compile(self.decode_step, fullgraph=True, dynamic=False,
                             mode='reduce-overhead' if cuda else 'default')

    def decode_step(self, idx, input_pos):
        """One static-shape decode step for torch.compile / CUDA graphs: idx (B, 1) LongTensor,
        row i at position input_pos[i] (a (B,) LongTensor, or (1,): every row's); attends to the
        whole cache through a mask, so no shape depends on a position. Returns (B, 1, vocab_size) logits."""
        L = self.transformer.h[0].attn.kv_cache.k_cache.size(2)
        attn_mask = (torch.arange(L, device=idx.device) <= input_pos.view(-1, 1)).view(-1, 1, 1, L)
        return self(idx, pos=input_pos, attn_mask=attn_mask)[0]

    @classmethod
    def from_pretrained(cls, model_type, override_args=None, dtype=torch.float32, device='cpu'):
        """OpenAI's GPT-2 ('gpt2' ... 'gpt2-xl') from the Hugging Face hub, as nanoGPT's
        GPT.from_pretrained; override_args may set only 'dropout'. The loader is load.from_pretrained,
        given this class (load.py never imports model.py: no cycle); imported here, so that the
        model alone never imports the loader and the CPU layer it quantizes through. Raises
        common.LoadError."""
        import load
        return load.from_pretrained(cls, model_type, dtype, device, override_args=override_args)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, **kwargs):
        """Take a conditioning sequence of indices idx (LongTensor of shape (b,t)) and complete
        the sequence max_new_tokens times, feeding the predictions back into the model each time;
        nanoGPT's signature and return value. Returns a (b, t + max_new_tokens) LongTensor, or
        shorter if eot_token is given and every row has produced it (rows that stopped earlier are
        padded with eot_token). Other keyword arguments: see generate.generate_tokens.
        """
        new = list(generate_tokens(self, idx, max_new_tokens, temperature, top_k, **kwargs))
        return torch.cat([idx] + new, dim=1)
