"""
advance_like_nanogpt_init against the ground truth: torch.manual_seed(s); GPT(config) on the CPU,
which runs nanoGPT's constructors and init (model.py), then the CPU generator's state byte for byte
and the next draws. Configs cover bias on and off, the bundled demo's shape, a 50304-token vocabulary
and tiny tensors (< 16 elements), whose normal_ goes through the generator's cached normal sample.

The MT19937 jump-ahead against replaying the same outputs through ATen: state bytes and next draws,
from every kind of position in a block, for counts around the block boundaries, random large ones
and compositions up to 2**64; the stored characteristic polynomial against Berlekamp-Massey; runs
of 10**12 tokens that start at once. Devices other than the CPU and CUDA: the default sampling
path on a stand-in 'mps' device (FakeMPS: no Mac here) draws what the CPU run draws.
"""
import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten, tree_map
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


# ---------------------------------------------------------------- MT19937 jump-ahead

def generator_after(seed, outputs, before=None):
    """A CPU generator seeded with seed, then before(generator) if given, then outputs replayed."""
    from draws import replay_mt19937_outputs
    g = torch.Generator().manual_seed(seed)
    if before:
        before(g)
    replay_mt19937_outputs(outputs, g)
    return g


def same_generator(a, b):
    """a and b hold the same state bytes and give the same next draws (uniform, normal, multinomial),
    drawn from copies: a and b are left as they are."""
    if not torch.equal(a.get_state(), b.get_state()):
        return False
    probs = torch.softmax(torch.linspace(0, 2, 1000), 0)
    copies = [torch.Generator().set_state(g.get_state()) for g in (a, b)]
    draws = [(torch.rand(5, generator=g), torch.randn(17, generator=g), torch.multinomial(probs, 3, generator=g))
             for g in copies]
    return all(torch.equal(x, y) for x, y in zip(*draws))


def test_berlekamp_massey_finds_a_known_recurrence():
    # the m-sequence of x^4 + x + 1 (s[n] = s[n-3] ^ s[n-4]): connection polynomial 1 + z^3 + z^4
    from draws import berlekamp_massey
    s = [1, 0, 0, 0]
    while len(s) < 30:
        s.append(s[-3] ^ s[-4])
    assert berlekamp_massey(s) == (0b11001, 4)
    assert berlekamp_massey([0] * 10) == (1, 0)
    assert berlekamp_massey([0, 0, 1])[1] == 3  # no recurrence of length < 3 explains a late 1


@pytest.mark.parametrize('seed', [5489, 1337])
def test_the_stored_characteristic_polynomial_is_what_berlekamp_massey_finds(seed):
    from draws import MT19937_CHARPOLY_EXPONENTS, mt19937_characteristic_polynomial
    assert mt19937_characteristic_polynomial(seed) == MT19937_CHARPOLY_EXPONENTS
    assert len(MT19937_CHARPOLY_EXPONENTS) == 135  # Matsumoto and Nishimura 1998: weight 135
    assert MT19937_CHARPOLY_EXPONENTS[0] == 0 and MT19937_CHARPOLY_EXPONENTS[-1] == 19937


def test_the_characteristic_polynomial_annihilates_all_32_bits_of_the_words():
    # phi(F) = 0: sum over phi's terms e of x_{1+e+t} is 0 in every bit, for t = 0..623, from another seed
    import numpy as np
    from draws import MT19937_CHARPOLY_EXPONENTS, _cpu_engine, mt19937_words
    words = mt19937_words(_cpu_engine(torch.Generator().manual_seed(99))[3], 1 + 19937 + 624)
    total = np.zeros(624, dtype=np.uint32)
    for e in MT19937_CHARPOLY_EXPONENTS:
        total ^= words[1 + e:1 + e + 624]
    assert not total.any()
    assert (total ^ words[1 + 5000:1 + 5000 + 624]).any()  # one term more: not 0, the check can fail


def test_the_words_are_the_blocks_pytorch_regenerates():
    from draws import _cpu_engine, mt19937_words
    words = mt19937_words(_cpu_engine(torch.Generator().manual_seed(3))[3], 4 * 624)
    for b in (1, 2, 3):
        state = _cpu_engine(generator_after(3, 624 * b))[3]
        assert (state == words[624 * b:624 * (b + 1)]).all()


COUNTS = [1, 2, 3, 227, 396, 397, 622, 623, 624, 625, 626, 1247, 1248, 1249, 19936, 19937, 19938,
          624 * 32 - 1, 624 * 32, 624 * 32 + 1, 100_003]


@pytest.mark.parametrize('before', [0, 1, 2, 623, 624, 625, 1248, 9_999])
def test_a_jump_leaves_the_state_that_replaying_leaves(before):
    # from a fresh seed (left 1, next 0), mid-block, at the end of a block (left 1, next 624), odd counts
    from draws import jump_mt19937_outputs
    for count in COUNTS:
        want = generator_after(11, before + count)
        got = generator_after(11, before)
        assert jump_mt19937_outputs(count, got)
        assert same_generator(got, want), (before, count)


def test_a_jump_keeps_the_cached_normal_samples():
    from draws import jump_mt19937_outputs
    cache = lambda g: torch.randn(1, generator=g)  # normal_ of < 16 elements: one double normal sample cached
    want, got = generator_after(4, 1000 + 5_000_001, cache), generator_after(4, 1000, cache)
    assert want.get_state()[NORMAL_IS_VALID].any()
    assert jump_mt19937_outputs(5_000_001, got)
    assert same_generator(got, want)


def test_large_jumps_equal_replay():
    # skip_mt19937_outputs jumps from JUMP_MIN_OUTPUTS on: counts around it, 10**7 and random ones, jumped directly too
    import random
    from draws import JUMP_MIN_OUTPUTS, jump_mt19937_outputs, skip_mt19937_outputs
    rng = random.Random(0)
    counts = [10**7, JUMP_MIN_OUTPUTS - 1, JUMP_MIN_OUTPUTS, JUMP_MIN_OUTPUTS + 1] + \
        [rng.randrange(2 * 10**6, 3 * 10**7) for _ in range(3)]
    for count in counts:
        start = rng.randrange(5000)
        want = generator_after(8, start + count)
        skipped, jumped = generator_after(8, start), generator_after(8, start)
        skip_mt19937_outputs(count, skipped)
        assert jump_mt19937_outputs(count, jumped)
        assert same_generator(skipped, want) and same_generator(jumped, want), count


def test_jumps_compose_up_to_and_past_2_64_outputs():
    import random
    from draws import jump_mt19937_outputs
    rng = random.Random(1)
    for a, b in [(rng.randrange(2**63), rng.randrange(2**63)), (2**64 - 1, 1), (rng.randrange(2**40), 2**64 + 5)]:
        one, two = generator_after(2, 77), generator_after(2, 77)
        assert jump_mt19937_outputs(a + b, one)
        assert jump_mt19937_outputs(a, two) and jump_mt19937_outputs(b, two)
        assert same_generator(one, two), (a, b)
    one, two = generator_after(2, 0), generator_after(2, 0)  # a jump then a few draws, or one jump
    assert jump_mt19937_outputs(10**15 + 777, one)
    assert jump_mt19937_outputs(10**15, two)
    from draws import replay_mt19937_outputs
    replay_mt19937_outputs(777, two)
    assert same_generator(one, two)


def test_a_state_the_jump_cannot_read_is_replayed():
    # left 5, next 3: valid for ATen's engine (set_state takes it) but not a state it produces
    from draws import JUMP_MIN_OUTPUTS, jump_mt19937_outputs, replay_mt19937_outputs, skip_mt19937_outputs
    raw = torch.Generator().manual_seed(6).get_state()
    raw[8:12] = torch.tensor([5], dtype=torch.int32).view(torch.uint8)
    raw[16:24] = torch.tensor([3], dtype=torch.int64).view(torch.uint8)
    g, want = torch.Generator(), torch.Generator()
    g.set_state(raw)
    want.set_state(raw)
    assert not jump_mt19937_outputs(JUMP_MIN_OUTPUTS, g)
    assert torch.equal(g.get_state(), raw)
    skip_mt19937_outputs(JUMP_MIN_OUTPUTS, g)
    replay_mt19937_outputs(JUMP_MIN_OUTPUTS, want)
    assert same_generator(g, want)


def test_the_polynomial_power_and_the_bad_arguments():
    from draws import MT19937_CHARPOLY_EXPONENTS, advance_mt19937_blocks, jump_mt19937_outputs, x_power_mod_charpoly
    import numpy as np
    assert x_power_mod_charpoly(0) == 1 and x_power_mod_charpoly(19936) == 1 << 19936
    assert x_power_mod_charpoly(19937) == sum(1 << e for e in MT19937_CHARPOLY_EXPONENTS[:-1])
    assert x_power_mod_charpoly(2**70).bit_length() <= 19937
    with pytest.raises(ValueError, match='>= 0'):
        x_power_mod_charpoly(-1)
    with pytest.raises(ValueError, match='>= 1'):
        advance_mt19937_blocks(np.zeros(624, dtype=np.uint32), 0)
    with pytest.raises(ValueError, match='624 words'):
        advance_mt19937_blocks(np.zeros(623, dtype=np.uint32), 1)
    with pytest.raises(ValueError, match='CPU generator'):
        jump_mt19937_outputs(5, SimpleNamespace(device=torch.device('cuda')))


HUGE = 10**12  # max_new_tokens of a run that must not wait for it


def test_sample_starts_for_huge_steps_return_quickly_where_nanogpt_would_start():
    # 3 samples of 10**12 tokens over GPT-2's padded vocabulary: 2 * 50304 * 10**12 outputs each
    import time
    from draws import jump_mt19937_outputs, sample_starts
    like = torch.empty(50304)
    g = torch.Generator().manual_seed(1337)
    t0 = time.perf_counter()
    starts = sample_starts(3, HUGE, like, g)
    assert time.perf_counter() - t0 < 5  # about 0.2 s; replaying would take days
    per_sample = 2 * 50304 * HUGE
    for k, state in enumerate(starts + [g.get_state()]):
        want = torch.Generator().manual_seed(1337)
        assert jump_mt19937_outputs(k * per_sample, want)
        assert torch.equal(state, want.get_state()), k


def test_the_first_token_of_a_huge_run_comes_quickly_and_is_nanogpts():
    # generate_tokens' own NanoGPTDraws, 3 rows of 10**12 tokens: row k's first token is
    # torch.multinomial on the stream after k * 10**12 tokens' draws, as nanoGPT's sample k
    import time
    from draws import jump_mt19937_outputs
    from generate import generate_tokens
    from helpers import tiny_model
    model, _ = tiny_model(vocab_size=65, block_size=16, n_layer=1, n_embd=16)
    model.eval()
    idx = torch.tensor([[1, 2, 3]]).expand(3, -1)
    torch.manual_seed(1337)
    t0 = time.perf_counter()
    steps = generate_tokens(model, idx, HUGE)
    first = next(steps)
    assert time.perf_counter() - t0 < 5
    steps.close()
    with torch.no_grad():
        probs = torch.softmax(model(idx[:1])[0][0, -1], -1)
    for k in range(3):
        g = torch.Generator().manual_seed(1337)
        assert jump_mt19937_outputs(k * 2 * 65 * HUGE, g)
        assert first[k, 0] == torch.multinomial(probs, 1, generator=g)[0], k


# ---------------------------------------------------------------- devices other than the CPU and CUDA

class OnFakeMPS(torch.Tensor):
    """A CPU tensor that FakeMPS reports as being on 'mps'."""
    __torch_function__ = torch._C._disabled_torch_function_impl


def _device_type(a):
    """The device type a names, if a is a str or torch.device naming one, else None."""
    if isinstance(a, (str, torch.device)):
        try:
            return torch.device(a).type
        except RuntimeError:
            return None
    return None


class FakeMPS(TorchFunctionMode):
    """An 'mps' device on a machine without one, as far as the draws can tell: tensors made with
    device='mps' or .to('mps'), and everything computed from them, report device 'mps' (their data
    stays on the CPU); .to('cpu') / .cpu() gives a plain CPU tensor; and, as on a real MPS device,
    a random op on an 'mps' tensor with a CPU generator raises. Plain CPU tensors (the model's
    weights) may mix with them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = resolve_name(func) or ''
        if name == 'torch.Tensor.device.__get__':
            return torch.device('mps') if type(args[0]) is OnFakeMPS else func(*args)
        given = list(args) + list(kwargs.values())
        on_mps = any(type(a) is OnFakeMPS for a in tree_flatten(given)[0])  # also inside lists: torch.cat
        if name in ('torch.Tensor.to', 'torch.Tensor.cpu'):
            targets = [_device_type(a) or ('mps' if type(a) is OnFakeMPS else None) for a in given[1:]]
            targets = [t for t in targets if t] + (['cpu'] if name.endswith('cpu') else [])
            on_mps = targets[-1] == 'mps' if targets else on_mps
        elif _device_type(kwargs.get('device')) == 'mps':
            on_mps = True
        generator = kwargs.get('generator')
        if on_mps and generator is not None and generator.device.type != 'mps':
            raise RuntimeError(f"{name}: expected a generator on mps, got one on {generator.device}")
        on_cpu = lambda a: a.as_subclass(torch.Tensor) if type(a) is OnFakeMPS else \
            'cpu' if _device_type(a) == 'mps' else a
        out = func(*tree_map(on_cpu, list(args)), **tree_map(on_cpu, kwargs))
        if not on_mps:
            return out
        return tree_map(lambda t: t.as_subclass(OnFakeMPS) if isinstance(t, torch.Tensor) else t, out)


def test_the_fake_mps_device_refuses_what_a_real_one_refuses():
    with FakeMPS():
        x = torch.zeros(4, device='mps')
        assert x.device.type == 'mps' and (x + 1).device.type == 'mps' and x.cpu().device.type == 'cpu'
        with pytest.raises(RuntimeError, match='generator'):
            x.exponential_(1, generator=torch.default_generator)


@pytest.mark.parametrize('device', ['mps', 'xpu', 'meta'])
def test_other_devices_draw_from_the_cpu_generator(device):
    from draws import default_generator
    assert default_generator(torch.device(device)) is torch.default_generator


def run_tokens(model, prompt, steps, rows, fake_mps, prompts=None):
    """The tokens (rows, steps) of generate_tokens with its default NanoGPTDraws (prompt: (T,) ids,
    rows of it), or with sample.py's --prompts draws (prompts: a list of (T_i,) prompts, one row
    each, started by sample_starts), seeded 1337; and the CPU generator's state after. Under
    fake_mps the prompts are on 'mps', and every token must come back there."""
    from draws import NanoGPTDraws, sample_starts
    from generate import generate_tokens
    with FakeMPS() if fake_mps else contextlib.nullcontext():
        device = 'mps' if fake_mps else 'cpu'
        torch.manual_seed(1337)
        if prompts is None:
            idx, draws = prompt.to(device)[None].expand(rows, -1), None
        else:
            idx = [p.to(device) for p in prompts]
            starts = sample_starts(rows, steps, torch.empty(model.config.vocab_size, device=device))
            draws = NanoGPTDraws(rows, steps, starts=starts)
        out = []
        for ids in generate_tokens(model, idx, steps, temperature=0.9, top_k=20, draws=draws):
            assert ids.device.type == device
            out.append(ids.cpu())
        return torch.cat(out, 1), torch.get_rng_state()


@pytest.mark.parametrize('prompts', [None, [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]])
def test_the_default_sampling_path_runs_on_another_device_with_the_cpus_draws(prompts):
    # an 'mps' run (no Mac here: FakeMPS) draws on the CPU generator where a CPU run draws: the same
    # tokens, the generator left in the same state; 20 steps past the block_size of 16
    from helpers import tiny_model
    model, _ = tiny_model(vocab_size=65, block_size=16, n_layer=1, n_embd=16)
    model.eval()
    prompts = prompts and [torch.tensor(p) for p in prompts]
    cpu = run_tokens(model, torch.tensor([1, 2, 3]), 20, 3, False, prompts)
    mps = run_tokens(model, torch.tensor([1, 2, 3]), 20, 3, True, prompts)
    assert torch.equal(mps[0], cpu[0]) and torch.equal(mps[1], cpu[1])
