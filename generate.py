"""
Generation: nanoGPT's sampling rule and random draws, nanoGPT's reference loop, and the KV-cache
engine that reproduces it faster (prefill, decode one token, re-prefill past block_size).

References:
1) nanoGPT's GPT.generate (model.py), whose rule and draws this file keeps, row by row.
2) gpt-fast's generate.py: prefill / decode_one_token, a KV cache written at input_pos.
3) nanochat's engine.py: one batch-1 prefill of a shared prompt, copied to every row.
"""
from functools import partial

import torch
import torch.nn.functional as F

from draws import NanoGPTDraws, draw_with

# -----------------------------------------------------------------------------
# the sampling rule


def sample(logits, temperature=1.0, top_k=None, top_p=1.0, n_vocab=None, draws=None, min_p=0.0):
    """Pick the next token of each row from the last position's logits: nanoGPT's rule, in order.

    logits: (B, V) in the model's compute dtype (bf16 logits stay bf16, as under nanoGPT's autocast);
    it is not modified. Returns a (B, 1) LongTensor.
    1) temperature: logits / temperature (0 = greedy: argmax over ids < n_vocab, no draw);
    2)-6) top_k, softmax, padded ids, min_p, top_p: see sample_probs;
    7) one draw per row: draws(probs) (a NanoGPTDraws), or nanoGPT's torch.multinomial on the
       generator draws (None: the global one).
    """
    if temperature == 0:
        return torch.argmax(logits[:, :n_vocab], dim=-1, keepdim=True)
    probs = sample_probs(logits, temperature, top_k, top_p, n_vocab, min_p)
    if draws is None or isinstance(draws, torch.Generator):
        return torch.multinomial(probs, num_samples=1, generator=draws)  # nanoGPT's draw
    return draws(probs)


def _on(value, off):
    """Whether a sampling setting is in use: a tensor (a compiled step's input) always is."""
    return torch.is_tensor(value) or value != off


def sample_probs(logits, temperature, top_k=None, top_p=1.0, n_vocab=None, min_p=0.0):
    """The probabilities (B, V) nanoGPT draws the next token from, unnormalised where ids were
    removed, from logits (B, V) (not modified; the softmax runs in their dtype, float32 on CUDA as
    under autocast). temperature > 0, top_p and min_p: Python numbers, or 0-d float32 tensors (a
    compiled step's inputs: a new value then needs no new graph; a tensor top_p / min_p is always
    applied). Under torch.compile no branch depends on the values, so it traces whole; eagerly the
    two rare fixes below are skipped where no row needs them (the same values).
    1) temperature: logits / temperature;
    2) top_k: logits below the k-th largest become -inf (k clamped to V; None or 0 = off). The
       padded ids >= n_vocab count here, as they do in nanoGPT;
    3) softmax;
    4) padded ids (>= n_vocab, which the tokenizer cannot decode) get probability 0;
    5) min_p (Nguyen et al. 2024, "min-p sampling"): ids whose probability is below min_p times
       the row's largest get probability 0 (0.0 = off). It reads the probabilities after
       temperature; top-k removes only ids below its threshold and leaves the ratios to the
       largest as they were, so min_p keeps the same ids before or after top-k;
    6) top_p (nucleus, Holtzman et al. 2019): keep the smallest set of most likely ids whose
       probability reaches top_p, at least one (1.0 = off).
    A row whose mass was all on padded ids (a tiny top_k) gets its best decodable id.
    """
    scaled = logits / temperature
    # a tiny temperature can overflow the largest logit (nanoGPT's softmax would give NaN): that row
    # shifts its max to 0 first, which cannot overflow. The max stays exactly 0: a temperature below
    # the dtype's smallest number (1e-300 in float32) divides as 0, and 0 / 0 is NaN (every draw was
    # id 0); the others go to -inf or near it: greedy, a tie drawn at random
    finite = torch.isfinite(scaled.amax(dim=-1, keepdim=True))  # (B, 1)
    if torch.compiler.is_compiling() or not bool(finite.all()):  # (eagerly, only then: 2 passes over V saved)
        shifted = logits - logits.amax(dim=-1, keepdim=True)
        scaled = torch.where(finite, scaled, (shifted / temperature).masked_fill(shifted == 0, 0))
    logits = scaled
    if top_k:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], -float('Inf'))
    probs = F.softmax(logits.float() if logits.device.type == 'cuda' else logits, dim=-1)
    if n_vocab is not None and n_vocab < probs.size(-1):
        probs[:, n_vocab:] = 0  # after top-k, whose threshold counted them
    if _on(min_p, 0.0):
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0)
    if _on(top_p, 1.0):
        probs = nucleus(probs, top_p)
    empty = probs.amax(dim=-1, keepdim=True) == 0  # (B, 1): all the mass was on padded ids (a tiny top_k)
    if torch.compiler.is_compiling() or bool(empty.any()):  # there: the best decodable id
        best = F.one_hot(torch.argmax(logits[:, :n_vocab], dim=-1), probs.size(-1)).to(probs.dtype)
        probs = torch.where(empty, best, probs)
    return probs


def nucleus(probs, top_p):
    """probs (B, V), not necessarily normalised, with the ids outside each row's nucleus set to 0:
    the smallest set of most likely ids whose share of the row's mass reaches top_p (at least one)."""
    sorted_probs, sorted_idx = torch.sort(probs, dim=-1, descending=True)
    # the share of the ids strictly more likely than each one; the first has 0, so it survives
    share_before = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) / probs.sum(dim=-1, keepdim=True)
    remove = torch.zeros_like(share_before, dtype=torch.bool).scatter(1, sorted_idx, share_before >= top_p)
    return probs.masked_fill(remove, 0)


# -----------------------------------------------------------------------------
# one step of each mode: the next position's logits


def reference_forward(model, idx):
    """nanoGPT's step: a full forward pass over idx (B, T), cropped to its last block_size tokens.
    Returns the last position's logits (B, V)."""
    block_size = model.config.block_size
    idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
    logits, _ = model(idx_cond)
    return logits[:, -1, :]


def prefill(model, idx):
    """Write the keys and values of idx (B, T), T <= block_size, at positions 0..T-1 of the KV cache.
    When every row holds the same tokens, row 0 alone is computed and copied to the others; rows
    that differ (a re-prefill past block_size) go through prefill_rows, one distinct row at a time,
    so that each row's logits are those of a run of that row alone. Returns the last position's
    logits (B, V)."""
    B = idx.size(0)
    if B > 1 and not bool((idx == idx[:1]).all()):
        return prefill_rows(model, list(idx))
    logits, _ = model(idx[:1], pos=0)
    if B > 1:
        model.broadcast_caches(idx.size(1))
        logits = logits.expand(B, -1, -1)
    return logits[:, -1, :]


def decode_one_token(model, idx_next, pos, decode_fn=None):
    """Feed idx_next (B, 1) at position pos against the cached keys and values (positions < pos).
    decode_fn: a compiled model.decode_step, or None for the eager forward. Returns logits (B, V)."""
    if decode_fn is not None:
        return decode_fn(idx_next, torch.tensor([pos], device=idx_next.device))[:, -1, :]
    logits, _ = model(idx_next, pos=pos)
    return logits[:, -1, :]


def decode_next(model, tail, pos, decode_fn=None):
    """The cached step of rows at one position: the logits (B, V) after tail (B, t), the rows' last
    ids, the last one at position pos and not yet in the KV cache. While pos < block_size, a
    decode step of tail[:, -1:] (pass idx_next itself: a compiled decode_fn keeps its shapes and
    strides); after, a re-prefill of tail's last block_size ids (it must hold them) at positions
    0..block_size-1, as the reference conditions on them: GPT-2's positions are learned and
    absolute, so cached keys at other positions cannot be reused."""
    block_size = model.config.block_size
    if pos < block_size:
        return decode_one_token(model, tail[:, -1:], pos, decode_fn)
    return prefill(model, tail[:, -block_size:])


def prefill_rows(model, prompts):
    """Prefill rows whose prompts differ: prompts is a list of B 1-D LongTensors, row i's prompt,
    of any lengths. Each distinct prompt's last block_size tokens are computed once, at positions
    0..T-1 of cache row 0, then copied to every row holding it (the prompt of row 0 last, so
    that its prefill is the one row 0 keeps). Returns the last position's logits (B, V)."""
    block_size = model.config.block_size
    holders = {}  # each distinct window: the rows holding it
    for i, p in enumerate(prompts):
        holders.setdefault(tuple(p[-block_size:].tolist()), []).append(i)
    logits = None
    for window, which in sorted(holders.items(), key=lambda item: 0 in item[1]):
        out, _ = model(torch.tensor(window, device=prompts[0].device)[None], pos=0)  # (1, 1, V)
        model.broadcast_caches(len(window), which)
        if logits is None:
            logits = out.new_empty(len(prompts), out.size(-1))
        logits[which] = out[0, -1]
    return logits


def decode_rows(model, contexts, idx_next, step=None, q=None, sampling=None):
    """The next logits (B, V) of rows whose contexts (a list of B lists of ids, idx_next (B, 1)
    already appended) have different lengths: a decode step of every row at its own position,
    then, for the rows whose context is longer than block_size, nanoGPT's full forward over the
    last block_size tokens instead, one row at a time as a run of that row alone computes it (their
    cache is no longer read: a dummy position 0 is written). Returns (ids, logits): ids None, or
    with step (a compiled.CompiledStep, which samples too) the (B, 1) ids drawn with q (B, V)
    (None at temperature 0), those of the rows past block_size by sample's rule (sampling: its
    keyword arguments) on their full forward's logits and their own row of q."""
    block_size = model.config.block_size
    pos = [len(c) - 1 for c in contexts]
    at = [p if p < block_size else 0 for p in pos]
    if step is not None:
        ids, logits = step(idx_next, torch.tensor(at, device=idx_next.device), q)
    else:
        ids, logits = None, model(idx_next, pos=at)[0][:, -1, :]
    for i in (i for i, p in enumerate(pos) if p >= block_size):
        window = torch.tensor(contexts[i][-block_size:], device=idx_next.device)[None]  # (1, block_size)
        logits[i] = model(window)[0][0, -1, :].to(logits.dtype)
        if ids is not None:
            ids[i] = sample(logits[i:i + 1], draws=None if q is None else partial(draw_with, q=q[i:i + 1]), **sampling)[0]
    return ids, logits


# -----------------------------------------------------------------------------
# the loops, one per mode: each yields (ids (B, 1), logprobs (B, 1) or None) per step


def decode_n_tokens(first, advance, max_new_tokens, draws, sampling, eot_token=None, stopped=None, logprobs=False,
                    ahead=False, done=None):
    """The loop every mode shares (gpt-fast's decode_n_tokens): yield (ids (B, 1) LongTensor,
    logprobs (B, 1) float32 or None) max_new_tokens times, fewer once every row has ended.

    first: (ids (B, 1) or None, logits (B, V)) of the prefill; ids None: drawn here with draws (a
    NanoGPTDraws) by sample's rule (sampling: its keyword arguments). advance(idx_next, q) -> (ids
    or None, logits): the mode's step after idx_next; ids where it drew them already (a compiled
    step), with q (B, V), the next draws' exponentials, given when ahead (else None).
    eot_token: a row that produced it yields it from then on (None: never). stopped: a callable
    returning the rows (indices) the caller has ended so far, asked after each step (a stop
    string), or None. logprobs: the natural log of each id's probability at temperature 1 over
    the ids < n_vocab. done: the (B, 1) bool tensor of ended rows to keep, or None (a new one).
    """
    ids, logits = first
    if done is None:
        done = torch.zeros(logits.size(0), 1, dtype=torch.bool, device=logits.device)
    for i in range(max_new_tokens):
        idx_next = ids if ids is not None else sample(logits, draws=draws, **sampling)
        if eot_token is not None:  # an ended row yields end-of-text
            idx_next = idx_next.masked_fill(done, eot_token)
            done |= idx_next == eot_token
        lps = torch.log_softmax(logits[:, :sampling['n_vocab']].float(), dim=-1).gather(1, idx_next) if logprobs else None
        yield idx_next, lps
        for r in stopped() if stopped is not None else ():
            done[r] = True
        if i == max_new_tokens - 1 or bool(done.all()):
            return
        q = draws.exponentials(logits[0]) if ahead else None
        ids, logits = advance(idx_next, q)


def on_cache(model, B, positions, first, advance, max_new_tokens, draws, sampling, step, free_caches, **loop):
    """decode_n_tokens on a KV cache for B rows of up to `positions` ids (at most block_size kept;
    a compiled.CompiledStep runs its own rows and cache length), freed at the end if free_caches:
    first() prefills it and returns the first logits (B, V)."""
    try:
        if step is None:
            model.setup_caches(B, min(model.config.block_size, positions))
        else:
            model.setup_caches(max(B, step.rows), step.cache_length(positions))
        ahead = step is not None and sampling['temperature'] != 0  # a compiled step draws with q
        yield from decode_n_tokens((None, first()), advance, max_new_tokens, draws, sampling, ahead=ahead, **loop)
    finally:
        if free_caches:
            model.clear_caches()


@torch.no_grad()
def reference_steps(model, idx, max_new_tokens, draws, sampling, **loop):
    """nanoGPT's loop: a full forward pass over the (cropped) sequence idx (B, T) per token, no
    cache. loop: decode_n_tokens' eot_token, stopped and logprobs. Yields as decode_n_tokens."""
    def advance(idx_next, q):
        nonlocal idx
        idx = torch.cat((idx, idx_next), dim=1)
        return None, reference_forward(model, idx)
    yield from decode_n_tokens((None, reference_forward(model, idx)), advance, max_new_tokens, draws, sampling, **loop)


@torch.no_grad()
def cached_steps(model, idx, max_new_tokens, draws, sampling, decode_fn=None, step=None, free_caches=True, **loop):
    """Rows at one position on the KV cache: 1) prefill the last block_size ids of idx (B, T);
    2) sample; 3) decode the new ids (decode_next: a decode step, or a re-prefill past block_size).
    decode_fn: a compiled model.decode_step for 3); step: instead, a compiled.CompiledStep, which
    decodes and samples in one graph (the first id, from the prefill, and those past block_size
    are drawn eagerly, as in a run of that row alone). free_caches: free the KV cache at the end
    (False keeps it for the next call of the same size: a compiled step then replays)."""
    B, block_size = idx.size(0), model.config.block_size

    def advance(idx_next, q):
        nonlocal idx
        idx = torch.cat((idx, idx_next), dim=1)
        pos = idx.size(1) - 1  # idx_next's position, while the context fits in block_size
        if step is not None and pos < block_size:
            return step(idx_next, torch.full((B,), pos, device=idx.device), q)
        logits = decode_next(model, idx_next if pos < block_size else idx, pos, decode_fn)
        return (None if q is None else sample(logits, draws=partial(draw_with, q=q), **sampling)), logits
    yield from on_cache(model, B, idx.size(1) + max_new_tokens, lambda: prefill(model, idx[:, -block_size:]), advance,
                        max_new_tokens, draws, sampling, step, free_caches, **loop)


@torch.no_grad()
def row_steps(model, prompts, max_new_tokens, draws, sampling, step=None, free_caches=True, **loop):
    """Rows at their own positions on the KV cache: prompts, a list of B 1-D LongTensors of any
    lengths, one per row; each row's text is what it would be alone. 1) prefill each distinct
    prompt (prefill_rows); 2) sample; 3) decode_rows. step, free_caches: as in cached_steps."""
    contexts = [p.tolist() for p in prompts]

    def advance(idx_next, q):
        for c, t in zip(contexts, idx_next[:, 0].tolist()):
            c.append(t)
        return decode_rows(model, contexts, idx_next, step, q, sampling)
    yield from on_cache(model, len(prompts), max(map(len, contexts)) + max_new_tokens, lambda: prefill_rows(model, prompts),
                        advance, max_new_tokens, draws, sampling, step, free_caches, **loop)


@torch.no_grad()
def generate_steps(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=1.0, eot_token=None,
                   n_vocab=None, generator=None, kv_cache=True, decode_fn=None, free_caches=True, min_p=0.0,
                   draws=None, stopped=None, logprobs=False, step=None):
    """Yield (ids (B, 1) LongTensor, logprobs (B, 1) float32 or None) max_new_tokens times after
    the prompt idx: a (B, T) LongTensor, or a list of B 1-D LongTensors (one prompt per row, of
    any lengths: row_steps, on the KV cache whatever kv_cache says).

    kv_cache=False: nanoGPT's loop (reference_steps); True: cached_steps (decode_fn, step and
    free_caches are theirs). temperature / top_k / top_p / min_p / n_vocab: see sample. Draws:
    draws (a NanoGPTDraws), else nanoGPT's, row by row, on generator (None: the global one).
    eot_token, stopped, logprobs: see decode_n_tokens; the loop ends once every row has ended.
    """
    if max_new_tokens <= 0:
        return
    draws = NanoGPTDraws(len(idx), max_new_tokens, generator) if draws is None else draws
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, n_vocab=n_vocab, min_p=min_p)
    loop = dict(eot_token=eot_token, stopped=stopped, logprobs=logprobs)
    if isinstance(idx, (list, tuple)):
        yield from row_steps(model, idx, max_new_tokens, draws, sampling, step, free_caches, **loop)
    elif kv_cache:
        yield from cached_steps(model, idx, max_new_tokens, draws, sampling, decode_fn, step, free_caches, **loop)
    else:
        yield from reference_steps(model, idx, max_new_tokens, draws, sampling, **loop)


@torch.no_grad()
def generate_tokens(model, idx, max_new_tokens, *args, **kwargs):
    """generate_steps' ids alone: yield the next (B, 1) LongTensor of ids, max_new_tokens times
    (fewer once every row has ended). The same arguments, logprobs excepted."""
    for ids, _ in generate_steps(model, idx, max_new_tokens, *args, **kwargs):
        yield ids
