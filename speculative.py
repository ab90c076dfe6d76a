"""
Speculative decoding that prints plain decoding's text exactly: a drafter proposes a row's next
tokens, one forward pass of the model over them checks them all, and every printed token is the
model's own pick under nanoGPT's draws.

Why it can be exact: torch.multinomial(probs, 1) is argmax(probs / q), q one exponential_(1) draw
per vocabulary entry from the row's own generator (draws.NanoGPTDraws), and a row's q for step t
does not depend on the logits. So the model's token at every drafted position, c = generate.sample's
rule with that step's q, is known as soon as the position's logits are. Drafted tokens are accepted
while they equal c; at the first mismatch c itself is printed and the rest dropped (the KV cache
entries past it are stale, overwritten by the next pass). Every printed token is some c, so the
text is plain decoding's, given the same logits: a forward over several positions gives each one a
one-position decode step's bits where the Linears' products do not depend on the rows of a call
(the layouts and int8 / int4 kernels sample.py sets up on the CPU, cpu.layout.MIN_ROWS) and
attention runs position by position (model.attend_cached). A row's generator ends where plain
decoding leaves it (NanoGPTDraws.settle).

References:
1) Leviathan, Kalman, Matias 2023, "Fast Inference from Transformers via Speculative Decoding";
   Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling".
2) Saxena 2023, prompt lookup decoding (github.com/apoorvumang/prompt-lookup-decoding): drafts
   copied from the context's own n-grams (NgramDrafter).
3) gpt-fast's generate.py (speculative_decode): a draft model with its own KV cache, verified by
   one forward of the model over the drafted positions (ModelDrafter).
"""
import os
import time

import torch

from common import UserError
from draws import NanoGPTDraws
from generate import decode_n_tokens, decode_next, decode_rows, prefill, prefill_rows, sample

# -----------------------------------------------------------------------------
# drafters: propose(want, contexts, q_of) -> {row: [ids]}, at most want[row] ids after contexts[row]


class NgramDrafter:
    """Prompt lookup: a row's draft is the tokens that followed the latest earlier occurrence of
    its context's last k tokens (k from max_ngram down to min_ngram, the longest match first),
    continued periodically where that occurrence runs into the end of the context. No model, no
    draws. Each row keeps an index {k-gram (tuple of ids): where its latest earlier occurrence
    ends}, extended as its context grows."""

    def __init__(self, max_ngram=3, min_ngram=2):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, prompts, cache_len, rule):
        """A new batch of len(prompts) rows (1-D LongTensors)."""
        self.index = [{} for _ in prompts]
        self.indexed = [1] * len(prompts)  # per row: the context ends indexed so far (an end j is followed by ids[j])

    def propose(self, want, contexts, q_of):
        """want {row: n >= 1}; contexts: B lists of ids. Returns {row: up to n ids} for rows with a match."""
        out = {}
        for i, n in want.items():
            c, index = contexts[i], self.index[i]
            N = len(c)
            for j in range(self.indexed[i], N):  # each end j < N: a k-gram c[j-k:j], then c[j]
                for k in range(self.min_ngram, min(self.max_ngram, j) + 1):
                    index[tuple(c[j - k:j])] = j
            self.indexed[i] = max(self.indexed[i], N)
            for k in range(min(self.max_ngram, N), self.min_ngram - 1, -1):
                j = index.get(tuple(c[N - k:]))
                if j is not None:
                    d = []
                    for m in range(n):  # past the context's end the draft repeats itself: j + m - N < m
                        d.append(c[j + m] if j + m < N else d[j + m - N])
                    out[i] = d
                    break
        return out

    def finish(self):
        self.index = None


class ModelDrafter:
    """A smaller model with the same tokenizer drafts with its own KV cache: its token at each
    drafted step is generate.sample's rule on its own logits with the q the model will use at that
    step (argmax(p_draft / q)), so it agrees with the model wherever their distributions are close.
    model: a GPT (its caches are its own: not the model being verified). A row whose context no
    longer fits the drafter's cache gets no drafts."""

    def __init__(self, model):
        self.model = model

    def start(self, prompts, cache_len, rule):
        """A new batch: prompts (B 1-D LongTensors), the verified model's cache length, the sampling
        rule (generate.sample's keyword arguments). Prefills the prompts that fit."""
        m, self.rule = self.model, rule
        self.L = min(m.config.block_size, cache_len)
        self.device = m.transformer.wpe.weight.device
        m.setup_caches(len(prompts), self.L)
        fits = [len(p) <= self.L for p in prompts]
        prefill_rows(m, [(p if ok else p[:1]).to(self.device) for p, ok in zip(prompts, fits)])
        self.cached = [len(p) if ok else None for p, ok in zip(prompts, fits)]  # context ids in the cache
        self.fed = [[] for _ in prompts]  # drafted ids in the cache after them

    def propose(self, want, contexts, q_of):
        """want {row: n >= 1}; contexts: B lists of ids; q_of(row, j): the q of row's j-th drafted
        token ((V,) tensor), None at temperature 0. Returns {row: n ids}: n forward passes of the
        drafter, all rows together, each at its own positions."""
        todo = {}  # row: (first position to feed, ids to feed, drafts)
        for i, n in want.items():
            if self.cached[i] is None:
                continue
            start, tail = self.cached[i], contexts[i][self.cached[i]:]
            same = 0  # drafted ids already in the cache that the context kept
            while same < min(len(tail) - 1, len(self.fed[i])) and tail[same] == self.fed[i][same]:
                same += 1
            start, tail = start + same, tail[same:]
            if start + len(tail) > self.L:
                self.cached[i] = None  # the context outgrew the drafter's cache
                continue
            n = min(n, self.L - start - len(tail) + 1)  # the last draft fed sits at start + len(tail) + n - 2
            if n >= 1:
                todo[i] = (start, tail, n)
        if not todo:
            return {}
        B = len(self.cached)
        which = list(todo)
        ids = torch.zeros(B, max(len(t) for _, t, _ in todo.values()), dtype=torch.long)
        pos = [self.L] * B  # rows not drafting: padding, nothing written
        for i, (start, tail, _) in todo.items():
            ids[i, :len(tail)], pos[i] = torch.tensor(tail), start
        logits = self.model(ids.to(self.device), pos=pos, all_logits=True)[0]
        logits = logits[which, [len(todo[i][1]) - 1 for i in which]]  # (len(which), V): after each row's last id
        drafts = {i: [] for i in which}
        for s in range(max(n for _, _, n in todo.values())):
            if s:  # feed each row's last draft, get the next
                which = [i for i in which if todo[i][2] > s]
                ids, pos = torch.zeros(B, 1, dtype=torch.long), [self.L] * B
                for i in which:
                    ids[i, 0], pos[i] = drafts[i][-1], todo[i][0] + len(todo[i][1]) + s - 1
                logits = self.model(ids.to(self.device), pos=pos)[0][which, -1]
            for i, t in zip(which, self._pick(logits, [q_of(i, s) for i in which]).tolist()):
                drafts[i].append(t)
        for i, (start, tail, n) in todo.items():
            self.cached[i], self.fed[i] = start + len(tail), drafts[i][:-1]
        return drafts

    def _pick(self, logits, qs):
        """The drafter's ids (M,) for logits (M, V_draft) with the model's q (M of (V,) or None)."""
        if qs[0] is None:  # temperature 0: argmax, no draws
            return sample(logits, **self.rule)[:, 0]
        q = torch.stack(qs).to(logits.device, torch.float32)
        nv = min(q.size(-1), logits.size(-1), self.rule['n_vocab'] or logits.size(-1))
        return sample(logits, **self.rule, draws=lambda p: torch.argmax(p[:, :nv].float() / q[:, :nv], dim=-1,
                                                                        keepdim=True))[:, 0]

    def finish(self):
        self.model.clear_caches()


def make_drafter(draft):
    """The drafter draft names: 'ngram' (NgramDrafter), a GPT (ModelDrafter) or a drafter as it is
    (start / propose / finish). Raises ValueError for anything else."""
    if isinstance(draft, str):
        if draft == 'ngram':
            return NgramDrafter()
        raise ValueError(f"draft={draft!r}: use 'ngram' or a model (load_drafter loads one)")
    if isinstance(draft, torch.nn.Module):
        return ModelDrafter(draft)
    if all(hasattr(draft, a) for a in ('start', 'propose', 'finish')):
        return draft
    raise ValueError(f"draft must be 'ngram', a GPT or a drafter, got {type(draft).__name__}")


def load_drafter(draft, out_dir, dtype, device, tok):
    """The drafter sample.py's --draft names: 'ngram', or a smaller model with the same tokenizer
    as tok (a tokenizer.Tokenizer): a folder holding a nanoGPT ckpt.pt (its meta.pkl beside it),
    else whatever init_from takes. Raises UserError (LoadError) if it cannot load or its tokenizer
    differs."""
    if draft == 'ngram':
        return NgramDrafter()
    import load
    from model import GPT
    from tokenizer import load_tokenizer, meta_paths
    resume = os.path.isfile(os.path.join(draft, 'ckpt.pt'))
    init_from, folder = ('resume', draft) if resume else (draft, out_dir)
    try:
        model = load.load_model(GPT, init_from, folder, dtype, device)
    except UserError as e:
        raise type(e)(f"--draft={draft}: not a drafter: {e}") from None
    theirs = load_tokenizer(meta_paths(init_from, folder, getattr(model, 'train_config', {})), model.config.vocab_size)
    if (theirs.n_vocab, theirs.eot_token) != (tok.n_vocab, tok.eot_token) or \
            any(theirs.token_bytes(i) != tok.token_bytes(i) for i in range(tok.n_vocab)):
        raise UserError(f"--draft={draft}: its tokenizer is not the model's ({theirs.n_vocab} ids against "
                        f"{tok.n_vocab}, or other ids): a drafter must share the model's vocabulary")
    return ModelDrafter(model)


# -----------------------------------------------------------------------------
# when to draft, and how many


class DraftLength:
    """How many ids the rows draft next round: `most` at first; after a check, two more if every
    drafted id was accepted (at most `most`), else one more than were accepted."""

    def __init__(self, most):
        self.most, self.n = most, most

    def update(self, drafted, accepted):
        if drafted:
            self.n = min(self.most, self.n + 2) if accepted == drafted else accepted + 1


class Payoff:
    """Whether the next round drafts, from what the rounds of this run cost: seconds per step
    yielded by plain rounds and by drafting rounds (moving averages of wall-clock times; only the
    speed depends on them, never the text, which is plain decoding's either way). While drafting
    rounds yield steps more slowly than plain ones, drafting stops for a wait that doubles each
    time a try still loses (WAIT up to 64 rounds). The first round is plain, to measure it.
    always=True: every round drafts (for tests, whose cases must not depend on a timing)."""
    WAIT = 2

    def __init__(self, always=False):
        self.plain = self.spec = None  # seconds per step
        self.off, self.wait, self.always = 0, self.WAIT, always

    def drafts(self):
        if self.always:
            return True
        if self.plain is None:
            return False
        if self.off:
            self.off -= 1
            return False
        return True

    def update(self, drafted, seconds, steps):
        per_step = seconds / steps
        if not drafted:
            self.plain = per_step if self.plain is None else 0.8 * self.plain + 0.2 * per_step
            return
        self.spec = per_step if self.spec is None else 0.5 * self.spec + 0.5 * per_step
        if self.plain is not None and self.spec > self.plain:
            self.off, self.wait = self.wait, min(2 * self.wait, 64)
        else:
            self.wait = self.WAIT


# -----------------------------------------------------------------------------
# the loop


class Rounds:
    """The state of one speculative run (generate_speculative's arguments): each row's ids so far,
    the row's draws, the drafter, and how the rounds pay. A round returns [(ids, logits (B, V))],
    one entry per step every row advances."""

    def __init__(self, model, prompts, ragged, max_new_tokens, rule, draws, done, eot_token, drafter, draft_tokens,
                 payoff, stats):
        self.model, self.rule, self.draws, self.done, self.eot_token = model, rule, draws, done, eot_token
        self.drafter, self.stats, self.max_new_tokens = drafter, stats, max_new_tokens
        self.B, self.block_size, self.device = len(prompts), model.config.block_size, prompts[0].device
        self.L = min(self.block_size, max(map(len, prompts)) + max_new_tokens)  # the KV cache's length
        self.contexts = [p.tolist() for p in prompts]  # every row's ids so far, as plain decoding feeds them
        self.ragged = ragged  # rows at their own positions (a list of prompts), as generate_tokens runs them
        self.length, self.payoff = DraftLength(draft_tokens), payoff
        self.yielded = 0  # steps yielded so far
        self.pending = []  # the current round's steps not yet yielded: [(ids, logits)]

    def pick(self, logits, which):
        """The model's ids (a list) for logits (M, V), row m being row which[m][0]'s id after
        `yielded` + which[m][1] steps, drawn with that draw (NanoGPTDraws.pick)."""
        return sample(logits, **self.rule, draws=lambda p: self.draws.pick(
            p, [i for i, _ in which], [self.yielded + k for _, k in which]))[:, 0].tolist()

    def q_of(self, i, k):
        """Row i's q for its k-th drafted id ((V,) tensor), None at temperature 0 (no draws)."""
        return None if self.rule['temperature'] == 0 else self.draws.q(i, self.yielded + k)

    def first(self, idx):
        """The prefill of the prompts (a (B, T) tensor or the list of B prompts): (ids (B, 1), logits (B, V))."""
        self.model.setup_caches(self.B, self.L)
        logits = prefill_rows(self.model, list(idx)) if self.ragged else prefill(self.model, idx[:, -self.block_size:])
        self.stats['forwards'] += 1
        self.drafter.start(list(idx), self.L, self.rule)
        return self.as_step(self.pick(logits, [(i, 0) for i in range(self.B)]), logits)

    def as_step(self, ids, logits):
        """A step as generate.decode_n_tokens takes it: ids (a list of B) as a (B, 1) LongTensor, logits (B, V)."""
        return torch.tensor(ids, device=self.device)[:, None], logits

    def plain_step(self):
        """Plain decoding's step, every row, in its mode (generate.row_steps or cached_steps): [(ids, logits (B, V))]."""
        idx_next = torch.tensor([c[-1] for c in self.contexts], device=self.device)[:, None]
        pos = len(self.contexts[0]) - 1
        if self.ragged:
            logits = decode_rows(self.model, self.contexts, idx_next)[1]
        else:  # the last id, or past block_size the last block_size of them (a re-prefill)
            tail = [c[-self.block_size:] for c in self.contexts] if pos >= self.block_size else idx_next
            logits = decode_next(self.model, torch.as_tensor(tail, device=self.device), pos)
        self.stats['forwards'] += 1
        return [(self.pick(logits, [(i, 0) for i in range(self.B)]), logits)]

    def drafts(self):
        """Each live row's drafted ids, all of one length n >= 1 (the fewest any row drafted: rows
        advance together), or None when this round should be plain: no room left, a context past
        block_size, drafting not paying (Payoff), or a live row without a draft."""
        positions = [len(c) - 1 for c in self.contexts]  # each row's last id, not yet in the cache
        live = [i for i in range(self.B) if not (self.eot_token is not None and self.done[i])]
        most = min(self.L - 1 - max(positions), self.max_new_tokens - self.yielded - 1, self.length.n)
        if most < 1 or max(positions) >= self.block_size or not live or not self.payoff.drafts():
            return None
        drafts = self.drafter.propose({i: most for i in live}, self.contexts, self.q_of)
        n = min((len(drafts.get(i, [])) for i in live))
        return {i: drafts[i][:n] for i in live} if n else None

    def verify(self, drafts):
        """One forward of the model over each row's [last id, drafts] (an ended row fed end-of-text,
        as plain decoding feeds it): the rows accept their drafts while each equals the model's own
        pick, and all advance by the fewest ids any row made. Returns [(ids, logits (B, V))]."""
        n, pad = len(next(iter(drafts.values()))), 0 if self.eot_token is None else self.eot_token
        ids = torch.full((self.B, 1 + n), pad, dtype=torch.long)
        for i, c in enumerate(self.contexts):
            ids[i, :1 + len(drafts.get(i, []))] = torch.tensor([c[-1]] + drafts.get(i, []))
        positions = [len(c) - 1 for c in self.contexts]
        out = self.model(ids.to(self.device), pos=positions if self.ragged else positions[0], all_logits=True)[0]
        self.stats['forwards'] += 1
        which = [(i, k) for i in drafts for k in range(1 + n)]
        picked = self.pick(out[[i for i, _ in which], [k for _, k in which]], which)
        made = {}
        for m, (i, d) in enumerate(drafts.items()):
            c = picked[m * (1 + n):(m + 1) * (1 + n)]
            accepted = 0
            while accepted < n and c[accepted] == d[accepted] and c[accepted] != self.eot_token:
                accepted += 1
            made[i] = c[:accepted + 1]
            self.stats['drafted'] += n
            self.stats['accepted'] += accepted
        k = min(map(len, made.values()))
        self.length.update(n, k - 1)
        return [([made[i][j] if i in made else pad for i in range(self.B)], out[:, j]) for j in range(k)]

    def next_round(self):
        """The next round, plain or drafted, timed for Payoff: [(ids, logits (B, V))]."""
        t0 = time.perf_counter()
        drafts = self.drafts()
        steps = self.verify(drafts) if drafts else self.plain_step()
        self.payoff.update(bool(drafts), time.perf_counter() - t0, len(steps))
        return steps

    def advance(self, idx_next, q):
        """generate.decode_n_tokens' step after idx_next (B, 1), the ids just yielded (q: unused,
        the rows draw their own): (ids (B, 1), logits (B, V)), the next of this round or a new one's."""
        for c, t in zip(self.contexts, idx_next[:, 0].tolist()):
            c.append(t)
        self.draws.forget(self.yielded)
        if not self.pending:
            self.pending = self.next_round()
        return self.as_step(*self.pending.pop(0))


@torch.no_grad()
def speculative_steps(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=1.0, eot_token=None,
                      n_vocab=None, generator=None, kv_cache=True, decode_fn=None, free_caches=True, min_p=0.0,
                      draws=None, stopped=None, logprobs=False, draft='ngram', draft_tokens=4, payoff=None,
                      stats=None):
    """generate.generate_steps with speculation: the same arguments, the same steps (ids, logprobs,
    draws), drafted by draft (see make_drafter), at most draft_tokens ids a row per forward pass of
    the model. Only with the KV cache, eagerly (kv_cache=False or a decode_fn: ValueError).

    Each round (Rounds), every live row drafts the same number of ids (DraftLength: fewer after
    rejections) and one forward of the model over [each row's last id, its drafts] gives the
    model's own id at every position with the row's next draws; a row accepts its drafts while
    they equal those ids. The rows advance together by the fewest ids any of them verified, so
    that every row sits where plain decoding has it at each step and every attention call is the
    one a decode step makes (model.attend_cached): a row's bits never depend on how far other
    rows got. A round is plain decoding's step itself when drafting does not pay (payoff: a
    Payoff, a new one if None), when a row has no draft, and once a context is past block_size.
    stats: a dict to which 'forwards' (passes of the model), 'tokens' (ids yielded, all rows),
    'drafted' and 'accepted' (by each row) are added. A row that ends inside a round has the rest
    of it fed its drafts, not end-of-text: only its logprobs there (which no output reads) differ.
    """
    if not kv_cache or decode_fn is not None:
        raise ValueError("speculative decoding runs on the KV cache, eagerly: kv_cache=True and decode_fn=None")
    if max_new_tokens <= 0:
        return
    B = len(idx)
    draws = NanoGPTDraws(B, max_new_tokens, generator) if draws is None else draws
    done = torch.zeros(B, 1, dtype=torch.bool, device=idx[0].device)  # the rows ended: only the others draft
    stats = {} if stats is None else stats
    for key in ('forwards', 'tokens', 'drafted', 'accepted'):
        stats.setdefault(key, 0)
    rule = dict(temperature=temperature, top_k=top_k, top_p=top_p, n_vocab=n_vocab, min_p=min_p)
    rounds = Rounds(model, list(idx), isinstance(idx, (list, tuple)), max_new_tokens, rule, draws, done, eot_token,
                    make_drafter(draft), draft_tokens, payoff or Payoff(), stats)
    try:
        for step in decode_n_tokens(rounds.first(idx), rounds.advance, max_new_tokens, draws, rule, eot_token,
                                    stopped, logprobs, done=done):
            rounds.yielded += 1
            stats['tokens'] += B
            yield step
    finally:
        draws.settle(rounds.yielded)
        rounds.drafter.finish()
        if free_caches:
            model.clear_caches()


@torch.no_grad()
def generate_speculative(model, idx, max_new_tokens, *args, **kwargs):
    """speculative_steps' ids alone, as generate.generate_tokens: the next (B, 1) LongTensor of ids
    per step. The same arguments, logprobs excepted."""
    for ids, _ in speculative_steps(model, idx, max_new_tokens, *args, **kwargs):
        yield ids
