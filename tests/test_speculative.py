"""Speculative decoding (speculative.py) prints plain decoding's text byte for byte: the verification
pass gives each position a decode step's bits, every accepted id is the model's own pick under the
row's draws, and the draws generators end where plain decoding leaves them. Generate-level cases on
the bundled demo (its Linears laid out as sample.py lays them out) and on tiny models, then
sample.py itself: the demo, nanoGPT's own stdout (tests/test_exact.py's cases), GPT-2 shapes."""
import json
import os

import pytest
import torch

import load
from cpu.layout import choose_linear_layout_
from draws import NanoGPTDraws
from generate import generate_steps
from helpers import DEMO, REFERENCE_CASES, SHAKESPEARE_CHARS, check_error, run_sample, tiny_model
from model import GPT
from speculative import DraftLength, NgramDrafter, Payoff, generate_speculative, speculative_steps
from test_exact import nanogpt_text, run_case

STOI = {c: i for i, c in enumerate(SHAKESPEARE_CHARS)}
REPEATS = "ROMEO:\nTo be or not to be, to be or not to be, that is the question.\nTo be or not to be"


def encode(text):
    return torch.tensor([STOI[c] for c in text])


def laid_out(model):
    """model with its Linears in sample.py's CPU layout (each row's product the same at any rows a call)."""
    choose_linear_layout_(model, batch_sizes=(1, 3), calls=1, cache=False)
    return model.eval()


@pytest.fixture(scope='module')
def demo():
    return laid_out(load.load_model(GPT, 'resume', DEMO, torch.float32, 'cpu'))


@pytest.fixture(scope='module')
def demo_drafter():
    """The demo model loaded again: a drafter that is the model itself (its own KV cache)."""
    return load.load_model(GPT, 'resume', DEMO, torch.float32, 'cpu')


class Oracle:
    """A drafter that knows the text: it drafts the true next ids (right) or ids that differ (wrong)."""

    def __init__(self, rows, right=True, n_vocab=65):
        self.rows, self.right, self.n_vocab = rows, right, n_vocab  # rows: each row's whole true sequence

    def start(self, prompts, cache_len, rule):
        pass

    def propose(self, want, contexts, q_of):
        out = {}
        for i, n in want.items():
            true = self.rows[i][len(contexts[i]):len(contexts[i]) + n]
            out[i] = true if self.right else [(t + 1) % self.n_vocab for t in true]
        return {i: d for i, d in out.items() if d}

    def finish(self):
        pass


def decode(fn, model, idx, steps, seed=1337, **kwargs):
    """All steps of fn (generate_steps or speculative_steps) on their own generator: (ids (B, steps),
    logprobs or None, the stream's state, each row generator's state)."""
    g = torch.Generator().manual_seed(seed)
    B = len(idx)
    draws = NanoGPTDraws(B, steps, g)
    out = list(fn(model, idx, steps, draws=draws, **kwargs))
    assert all(isinstance(lp, torch.Tensor) == bool(kwargs.get('logprobs')) for _, lp in out)  # one type per step
    lps = torch.cat([lp for _, lp in out], 1) if kwargs.get('logprobs') else None
    ids = torch.cat([o[0] for o in out], 1)
    return ids, lps, g.get_state(), [r.get_state() for r in draws.row_generators or []]


def assert_same(model, idx, steps, draft, stats=None, draft_tokens=4, **kwargs):
    """Speculation with draft gives plain decoding's ids (and so the rows ended at eot_token),
    logprobs and draws; returns the ids."""
    plain = decode(generate_steps, model, idx, steps, **kwargs)
    spec = decode(speculative_steps, model, idx, steps, draft=draft, stats=stats, draft_tokens=draft_tokens,
                  payoff=Payoff(always=True), **kwargs)  # every round drafts, whatever the rounds cost
    assert torch.equal(spec[0], plain[0])
    if kwargs.get('logprobs'):
        assert torch.equal(spec[1], plain[1])
    assert torch.equal(spec[2], plain[2])  # the stream, moved past every row as nanoGPT leaves it
    assert len(spec[3]) == len(plain[3]) and all(torch.equal(a, b) for a, b in zip(spec[3], plain[3]))
    return plain[0]


# ---------------------------------------------------------------- the verification pass

@pytest.mark.parametrize('per_row', [False, True])
@torch.no_grad()
def test_a_pass_over_several_positions_has_the_decode_steps_bits(demo, per_row):
    # rows at one position (an int, as plain decoding of one prompt) or each at its own (a list,
    # as --prompts); a row padded past the cache's end writes nothing
    x = torch.stack([encode(REPEATS), encode(REPEATS[::-1]), encode(REPEATS[1:] + 'A')])[:, :60]
    P, n = ([30, 41, 41] if per_row else [30] * 3), 6

    def forward(ids, pos, **kwargs):
        return demo(ids, pos=pos if per_row else pos[0], **kwargs)[0]
    demo.setup_caches(3, 64)
    demo(x[:, :30], pos=0)  # rows' prompts: the first P[i] ids of each row
    demo(x[:, 30:41], pos=30)
    steps = torch.stack([forward(torch.stack([x[i, p + t:p + t + 1] for i, p in enumerate(P)]),
                                 [p + t for p in P])[:, -1] for t in range(n)], 1)
    out = forward(torch.stack([x[i, p:p + n] for i, p in enumerate(P)]), P, all_logits=True)
    assert torch.equal(out, steps)
    if per_row:
        padded = forward(torch.stack([x[i, p:p + n] for i, p in enumerate(P)]), P[:2] + [64], all_logits=True)
        assert torch.equal(padded[0], steps[0])  # (row 0 attends alone either way)
    demo.clear_caches()


# ---------------------------------------------------------------- generate-level: the same steps

@pytest.mark.parametrize('draft', ['ngram', 'model'])
@pytest.mark.parametrize('B, steps, rule', [
    (1, 150, dict(temperature=0.8, top_k=200)),        # crosses block_size (128): re-prefill steps
    (3, 60, dict(temperature=0.8, top_k=200)),         # batched rows, each accepting its own count
    (1, 60, dict(temperature=0.0)),                     # greedy: no draws at all
    (2, 60, dict(temperature=1.1, top_k=10, top_p=0.9, min_p=0.05)),
])
def test_speculation_is_plain_decoding(demo, demo_drafter, draft, B, steps, rule):
    stats = {}
    assert_same(demo, encode(REPEATS)[None].expand(B, -1), steps, demo_drafter if draft == 'model' else draft,
                stats=stats, logprobs=True, **rule)
    assert stats['tokens'] >= B * steps  # rows may verify a few ids ahead of the steps
    if draft == 'model':  # the model itself: every drafted id is accepted
        assert stats['accepted'] == stats['drafted'] > 0


def test_prompts_of_different_lengths_one_longer_than_block_size(demo):
    prompts = [encode(REPEATS), encode("JULIET:\nO Romeo, Romeo"), encode(REPEATS * 3), encode(REPEATS)]
    assert len(prompts[2]) > demo.config.block_size
    assert_same(demo, prompts, 50, 'ngram', temperature=0.8, top_k=200)


@pytest.mark.parametrize('right', [True, False])
def test_a_drafter_always_right_or_always_wrong(demo, right):
    x = encode(REPEATS)[None].expand(2, -1)
    plain = decode(generate_steps, demo, x, 80)[0]
    stats = {}
    oracle = Oracle(torch.cat([x, plain], 1).tolist(), right=right)
    assert_same(demo, x, 80, oracle, stats=stats, draft_tokens=6)
    if right:
        assert stats['accepted'] == stats['drafted'] and stats['tokens'] / stats['forwards'] > 2
    else:  # nothing accepted: one id per forward, as plain decoding (Payoff would stop the drafting)
        assert stats['accepted'] == 0 and stats['tokens'] == stats['forwards'] * 2


@torch.no_grad()
def test_end_of_text_inside_an_accepted_run():
    model = laid_out(tiny_model(vocab_size=8)[0])
    x = torch.zeros((3, 2), dtype=torch.long)
    plain = decode(generate_steps, model, x, 60, eot_token=7, temperature=2.0)[0]
    assert (plain == 7).any(dim=1).all() and plain.size(1) < 60  # every row ended early
    oracle = Oracle(torch.cat([x, plain], 1).tolist(), n_vocab=8)
    stats = {}
    assert_same(model, x, 60, oracle, stats=stats, eot_token=7, temperature=2.0, draft_tokens=8)
    assert stats['accepted'] > 0


@torch.no_grad()
def test_rows_a_caller_ends_between_steps_match_plain_decoding(demo):
    # a stop string: write_batch's stopped() names the row after a step; with eot_token it yields eot from then on
    def stopping(fn, **kwargs):
        g, out = torch.Generator().manual_seed(3), []
        stopped = lambda: [1] if len(out) >= 10 else []  # noqa: E731
        for ids, _ in fn(demo, encode(REPEATS)[None].expand(2, -1), 40, generator=g, stopped=stopped, eot_token=0,
                         **kwargs):
            out.append(ids)
        assert (torch.cat(out, 1)[1, 10:] == 0).all()
        return torch.cat(out, 1), g.get_state()
    plain, spec = stopping(generate_steps), stopping(speculative_steps, draft='ngram')
    assert torch.equal(plain[0], spec[0]) and torch.equal(plain[1], spec[1])


def test_ngram_drafts_what_followed_the_latest_match():
    d = NgramDrafter(max_ngram=3, min_ngram=2)
    d.start([torch.zeros(1)], 100, {})
    ctx = [[1, 2, 3, 9, 1, 2, 3, 4, 5, 1, 2, 3]]
    assert d.propose({0: 3}, ctx, None) == {0: [4, 5, 1]}  # after the latest earlier 1 2 3
    d.start([torch.zeros(1)], 100, {})
    assert d.propose({0: 5}, [[7, 8, 7, 8]], None) == {0: [7, 8, 7, 8, 7]}  # runs on past the end
    d.start([torch.zeros(1)], 100, {})
    assert d.propose({0: 3}, [[1, 2, 3, 4]], None) == {}  # no repeat, no draft


def test_draft_length_adapts():
    n = DraftLength(4)
    assert n.n == 4
    n.update(4, 1)
    assert n.n == 2  # one more than were accepted
    n.update(2, 2)
    assert n.n == 4
    n.update(4, 4)
    assert n.n == 4  # never more than most


def test_drafting_stops_while_it_loses_and_is_tried_again():
    p = Payoff()
    assert not p.drafts()  # the first round is plain: it measures what a plain step costs
    p.update(False, 1.0, 1)
    assert p.drafts()
    waits = []
    for _ in range(4):  # every drafting round loses: 2 steps in 3 s against 1 s a step
        p.update(True, 3.0, 2)
        off = 0
        while not p.drafts():
            off += 1
        waits.append(off)
    assert waits == [2, 4, 8, 16]  # the wait doubles each time a try still loses
    p.update(True, 0.5, 4)  # a round that pays (the average of the last two: 0.81 s a step)
    assert p.drafts() and p.wait == Payoff.WAIT


def test_speculation_needs_the_kv_cache(demo):
    with pytest.raises(ValueError, match='KV cache'):
        list(generate_speculative(demo, encode("A")[None], 3, kv_cache=False))


# ---------------------------------------------------------------- sample.py

DEMO_ARGS = [f'--out_dir={DEMO}', '--device=cpu', '--dtype=float32']


def sample_text(*args):
    r = run_sample(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize('extra', [
    ['--num_samples=3', '--max_new_tokens=200', '--start=' + REPEATS],  # batched, past block_size
    ['--num_samples=2', '--max_new_tokens=80', '--batch_size=1', '--temperature=0'],
    ['--num_samples=2', '--max_new_tokens=80', '--top_p=0.9', '--min_p=0.05', '--stop=\\n\\n', '--output=jsonl'],
    ['--num_samples=2', '--max_new_tokens=60', '--quantize=int8', '--start=' + REPEATS],  # other formats
    ['--num_samples=2', '--max_new_tokens=60', '--dtype=bfloat16', '--start=' + REPEATS],
])
def test_demo_text_is_the_same(tmp_path, extra):
    plain = sample_text(*DEMO_ARGS, *extra)
    for draft in ('ngram', DEMO):  # the context's repeats; the model itself as its own drafter
        assert sample_text(*DEMO_ARGS, *extra, f'--draft={draft}', '--draft_tokens=5') == plain, draft


def test_several_prompts_with_a_stop_string(tmp_path):
    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text(''.join(json.dumps(dict(prompt=p)) + '\n' for p in ("ROMEO:", REPEATS, "KING HENRY:\nNo")))
    args = [*DEMO_ARGS, f'--prompts={prompts}', '--num_samples=2', '--max_new_tokens=100', '--stop=\\n\\n',
            '--output=jsonl']
    plain = sample_text(*args)
    assert sample_text(*args, '--draft=ngram') == plain
    assert {json.loads(l)['finish_reason'] for l in plain.splitlines()} >= {'stop'}


@pytest.mark.parametrize('name', REFERENCE_CASES)
def test_nanogpts_own_text_with_speculation(name):
    extra = ['--stop_at_eot=False'] if name.startswith('bpe') else []
    draft = os.path.join(os.path.dirname(__file__), 'nanogpt-reference', os.path.dirname(name))
    assert run_case(name, 'defaults', *extra, '--draft=ngram') == nanogpt_text(name)
    if name.endswith('seed7.txt') or name.endswith('t1.1.txt'):  # the model as its own drafter
        assert run_case(name, 'batch_size=1', *extra, f'--draft={draft}') == nanogpt_text(name)


def test_gpt2_shapes(gpt2_hub, tmp_path):
    args = ['--init_from=gpt2', '--device=cpu', '--start=The cat sat on the mat. The cat sat on the mat. The cat',
            '--num_samples=2', '--max_new_tokens=12', '--output=jsonl']
    plain = sample_text(*args)
    assert sample_text(*args, '--draft=ngram') == plain
    assert sample_text(*args, '--draft=gpt2', '--temperature=0') == sample_text(*args, '--temperature=0')


def test_bad_draft_settings():
    check_error(run_sample(*DEMO_ARGS, '--draft=ngram', '--kv_cache=False'), '--draft', '--kv_cache=False')
    check_error(run_sample(*DEMO_ARGS, '--draft_tokens=0'), '--draft_tokens')
    check_error(run_sample(*DEMO_ARGS, '--draft=gpt2'), '--draft=gpt2')  # not cached offline: one line
