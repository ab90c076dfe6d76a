"""
advance_like_nanogpt_init against the ground truth: torch.manual_seed(s); GPT(config) on the CPU,
which runs nanoGPT's constructors and init (model.py), then the CPU generator's state byte for byte
and the next draws. Configs cover bias on and off, the bundled demo's shape, a 50304-token vocabulary
and tiny tensors (< 16 elements), whose normal_ goes through the generator's cached normal sample.
"""
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from draws import advance_like_nanogpt_init, mt19937_outputs, nanogpt_init_draws, skip_mt19937_outputs
from model import GPT, GPTConfig

CONFIGS = {
    'demo': dict(n_layer=6, n_head=6, n_embd=180, vocab_size=65, block_size=128, bias=False),
    'demo-bias': dict(n_layer=6, n_head=6, n_embd=180, vocab_size=65, block_size=128, bias=True),
    'bpe': dict(n_layer=2, n_head=2, n_embd=64, vocab_size=50304, block_size=32, bias=False),
    'bpe-bias': dict(n_layer=2, n_head=2, n_embd=64, vocab_size=50304, block_size=32, bias=True),
    'char-bias': dict(n_layer=3, n_head=4, n_embd=96, vocab_size=65, block_size=48, bias=True),
    'tiny-2': dict(n_layer=1, n_head=1, n_embd=2, vocab_size=3, block_size=1, bias=True),  # every normal_ < 16
    'tiny-3': dict(n_layer=2, n_head=1, n_embd=3, vocab_size=5, block_size=3, bias=False),  # ends with a cached normal
    'tiny-4': dict(n_layer=3, n_head=2, n_embd=4, vocab_size=7, block_size=5, bias=True),  # < 16 and >= 16 mixed
}
NORMAL_IS_VALID = slice(5040, 5044)  # CPU state bytes: legacy_pod.normal_is_valid (int32), after the 624-word state


def state_after(step, config, seed, before=None):
    """The CPU generator's state (5056 uint8) after seeding, running before(), then step(config)."""
    torch.manual_seed(seed)
    if before:
        before()
    step(config)
    return torch.get_rng_state()


def ground_truth(config, seed, before=None):
    """The state after building GPT(config), nanoGPT's construction and init."""
    return state_after(GPT, config, seed, before)


def advanced(config, seed, before=None):
    """The state after advance_like_nanogpt_init(config) instead."""
    return state_after(advance_like_nanogpt_init, config, seed, before)


def next_draws():
    """The sampler's next draws: uniforms, then a multinomial over 65 and over 50304 classes."""
    probs = torch.softmax(torch.linspace(0, 3, 65), 0)
    wide = torch.softmax(torch.linspace(0, 1, 50304), 0)
    return torch.rand(7), torch.multinomial(probs, 1), torch.multinomial(wide, 3)


@pytest.mark.parametrize('seed', [1337, 7])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_state_and_next_draws_equal_nanogpt_construction(name, seed):
    config = GPTConfig(**CONFIGS[name])
    want = ground_truth(config, seed)
    want_next = next_draws()
    got = advanced(config, seed)
    got_next = next_draws()
    assert torch.equal(got, want)
    for g, w in zip(got_next, want_next):
        assert torch.equal(g, w)


def test_a_cached_normal_sample_at_the_end_is_reproduced():
    # tiny-3's last tiny normal_ leaves a normal sample cached: the state bytes say so, and match
    config = GPTConfig(**CONFIGS['tiny-3'])
    want = ground_truth(config, 1337)
    assert want[NORMAL_IS_VALID].any()
    assert torch.equal(advanced(config, 1337), want)


@pytest.mark.parametrize('name', ['tiny-2', 'tiny-4', 'demo'])
def test_a_normal_sample_cached_before_the_call_is_used_as_nanogpt_would(name):
    config = GPTConfig(**CONFIGS[name])
    before = lambda: torch.randn(1)  # leaves a cached double normal sample
    assert torch.equal(advanced(config, 3, before), ground_truth(config, 3, before))


def test_an_explicit_generator_is_advanced_and_the_default_one_left_alone():
    config = GPTConfig(**CONFIGS['tiny-4'])
    want = ground_truth(config, 11)
    torch.manual_seed(99)
    default_before = torch.get_rng_state()
    g = torch.Generator().manual_seed(11)
    advance_like_nanogpt_init(config, generator=g)
    assert torch.equal(g.get_state(), want)
    assert torch.equal(torch.get_rng_state(), default_before)


def test_draws_happen_on_the_cpu_under_a_meta_default_device():
    # our loader builds the model under torch.device('meta'): the advance must still draw
    config = GPTConfig(**CONFIGS['tiny-4'])
    want = ground_truth(config, 5)
    torch.manual_seed(5)
    with torch.device('meta'):
        advance_like_nanogpt_init(config)
    assert torch.equal(torch.get_rng_state(), want)


def test_the_comparison_can_fail():
    # a plan one draw off, or none at all, gives another state: the equality above is not vacuous
    config = GPTConfig(**CONFIGS['demo'])
    want = ground_truth(config, 1337)
    for other in (dict(CONFIGS['demo'], bias=True), dict(CONFIGS['demo'], n_layer=5),
                  dict(CONFIGS['demo'], block_size=127)):
        assert not torch.equal(advanced(GPTConfig(**other), 1337), want)
    torch.manual_seed(1337)
    assert not torch.equal(torch.get_rng_state(), want)


class DrawRecorder(TorchDispatchMode):
    """Records every ATen random fill as (op, numel), op without the trailing underscore."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ('normal_', 'uniform_', 'random_', 'bernoulli_', 'exponential_', 'cauchy_',
                    'log_normal_', 'geometric_'):
            self.draws.append((name[:-1], args[0].numel()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('name', ['demo-bias', 'tiny-3'])
def test_the_plan_is_the_ops_that_construction_runs(name):
    config = GPTConfig(**CONFIGS[name])
    with DrawRecorder() as recorder:
        GPT(config)
    assert recorder.draws == nanogpt_init_draws(config)


@pytest.mark.parametrize('op', ['uniform', 'normal'])
def test_output_counts_match_what_the_ops_consume(op):
    # state after the op itself == state after skipping the counted outputs (contiguous float32)
    for numel in list(range(1, 50)) + [1000, 1001, 65536 + 7]:
        count = mt19937_outputs(op, numel)
        if count is None:
            assert op == 'normal' and numel < 16
            continue
        torch.manual_seed(numel)
        getattr(torch.empty(numel), op + '_')()
        want = torch.get_rng_state()
        torch.manual_seed(numel)
        skip_mt19937_outputs(count, torch.default_generator)
        assert torch.equal(torch.get_rng_state(), want), (op, numel, count)


def test_bad_arguments_raise_value_error():
    config = GPTConfig(**CONFIGS['tiny-2'])
    with pytest.raises(ValueError, match='positive int'):
        advance_like_nanogpt_init(SimpleNamespace(**dict(CONFIGS['tiny-2'], n_layer=0)))
    with pytest.raises(ValueError, match='CPU generator'):
        advance_like_nanogpt_init(config, generator=SimpleNamespace(device=torch.device('cuda')))
    with pytest.raises(ValueError, match="'uniform' or 'normal'"):
        mt19937_outputs('bernoulli', 3)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(ValueError, match='float32'):
            advance_like_nanogpt_init(config)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize('rows', [1, 2, 3, 8])
def test_row_draws_equal_nanogpts_multinomial_row_after_row(rows):
    # nanoGPT samples row after row, one torch.multinomial per token on the global generator;
    # NanoGPTDraws gives each row its own generator (filled in parallel threads): same ids, and the
    # global generator left where nanoGPT leaves it
    from draws import NanoGPTDraws
    steps, V = 5, 1000
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(steps, rows, V, generator=g) ** 4  # unnormalised rows, as multinomial takes them
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        torch.manual_seed(1337)
        draws = NanoGPTDraws(rows, steps)
        ours = torch.stack([draws(probs[t]) for t in range(steps)])  # (steps, rows, 1)
        ours_state = torch.get_rng_state()
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(1337)
    ref = torch.stack([torch.stack([torch.multinomial(probs[t, r], 1) for t in range(steps)]) for r in range(rows)], 1)
    assert torch.equal(ours, ref)
    assert torch.equal(ours_state, torch.get_rng_state())
