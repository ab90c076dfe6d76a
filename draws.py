"""
nanoGPT's random-number use, reproduced exactly: the draws of its model construction (which move
the CPU generator before the first sample), and each sample's multinomial draws, row by row.

nanoGPT's sample.py seeds torch, then builds GPT(gptconf) on the CPU before loading the checkpoint
over it: every nn.Linear / nn.Embedding draws its default init, then GPT._init_weights and the
scaled c_proj init draw again. Only after all that is the first token sampled. We build the model
on the meta device, which draws nothing; advance_like_nanogpt_init makes up the difference, so that
the same seed gives nanoGPT's tokens. A long stretch of the CPU stream that is only to be passed
over (most of those init draws; the draws of the samples before a row's) is jumped over, not
drawn: jump_mt19937_outputs computes the generator's state after any number of outputs.

Sources: nanoGPT's model.py (karpathy/nanoGPT at 3adf61e: GPT.__init__, _init_weights), PyTorch's
nn.Linear.reset_parameters / nn.Embedding.reset_parameters / nn.Module.apply, and ATen's CPU
distribution kernels (aten/src/ATen/native/cpu/DistributionKernels.cpp, DistributionTemplates.h).
"""

import functools

import numpy as np
import torch

# A (op, numel) draw: op is 'uniform' (uniform_ on a float32 tensor) or 'normal' (normal_ on a
# contiguous float32 tensor). Bounds, mean and std do not change how many numbers are drawn.

_CHUNK = 1 << 20  # int64 elements per random_() call when skipping: 8 MB of scratch, 2^21 outputs


def nanogpt_init_draws(config):
    """The random draws of nanoGPT's GPT(config), in order, as a list of (op, numel) pairs.

    config: any object with nanoGPT's GPTConfig fields vocab_size, block_size, n_layer, n_embd
    (positive ints) and bias (bool). Raises ValueError if a size is not a positive int.

    Order, as nanoGPT's GPT.__init__ runs it (model.py at 3adf61e):
    1. constructors: wte and wpe Embeddings (normal_), then per block c_attn, attn.c_proj, c_fc,
       mlp.c_proj Linears (kaiming_uniform_ = uniform_ on the weight, then uniform_ on the bias if
       config.bias), then lm_head (uniform_, no bias). LayerNorms draw nothing.
    2. self.apply(_init_weights): Module.apply visits children before the module itself, so
       wte, wpe, each block's four Linears, then lm_head, each weight normal_ (biases zeros_).
       The tied wte / lm_head tensor is drawn twice, once per module that holds it.
    3. the scaled init: normal_ again on every parameter named '*c_proj.weight' (named_parameters
       lists the tied tensor once; it is not a c_proj).
    """
    sizes = {f: getattr(config, f) for f in ('vocab_size', 'block_size', 'n_layer', 'n_embd')}
    for field, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{field} must be a positive int, got {value!r}")
    V, T, L, C = sizes['vocab_size'], sizes['block_size'], sizes['n_layer'], sizes['n_embd']
    linears = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]  # (out, in): c_attn, attn.c_proj, c_fc, mlp.c_proj
    draws = [('normal', V * C), ('normal', T * C)]  # 1. wte, wpe constructors
    for _ in range(L):
        for n_out, n_in in linears:
            draws.append(('uniform', n_out * n_in))
            if config.bias:
                draws.append(('uniform', n_out))
    draws.append(('uniform', V * C))  # lm_head constructor
    draws += [('normal', V * C), ('normal', T * C)]  # 2. _init_weights: wte, wpe
    draws += [('normal', n_out * n_in) for _ in range(L) for n_out, n_in in linears]
    draws.append(('normal', V * C))  # lm_head: the tied tensor again
    draws += [('normal', n_out * n_in) for _ in range(L) for n_out, n_in in (linears[1], linears[3])]  # 3.
    return draws


def mt19937_outputs(op, numel):
    """How many 32-bit mt19937 outputs one (op, numel) draw takes from a CPU generator, or None
    when it also reads or writes the generator's cached normal sample (then it must be replayed).

    uniform_ on float32: one output per element (uniform_real_distribution<float>).
    normal_ on contiguous float32 with numel >= 16: ATen's normal_fill draws numel uniforms, then
    16 more to redo the last 16 when numel % 16 != 0 (Box-Muller over blocks of 16, no cache).
    normal_ with numel < 16: normal_distribution<double>, two 64-bit uniforms per pair of samples
    and the second sample cached in the generator state: None.
    """
    if op == 'uniform':
        return numel
    if op == 'normal':
        if numel < 16:
            return None
        return numel + (16 if numel % 16 else 0)
    raise ValueError(f"op must be 'uniform' or 'normal', got {op!r}")


def skip_mt19937_outputs(count, generator):
    """Consume count 32-bit outputs of generator (a CPU torch.Generator), exactly as drawing them
    would: replayed below JUMP_MIN_OUTPUTS (replay_mt19937_outputs), jumped over above
    (jump_mt19937_outputs, in a time that does not grow with count), replayed too where the
    generator's state is not one jump_mt19937_outputs can read. count <= 0: nothing."""
    if count >= JUMP_MIN_OUTPUTS and jump_mt19937_outputs(count, generator):
        return
    replay_mt19937_outputs(count, generator)


def replay_mt19937_outputs(count, generator):
    """Consume count 32-bit outputs of generator by drawing them: random_() on int64 takes two per
    element (random64), the cheapest way through ATen; an odd one goes to a one-element uniform_."""
    if count <= 0:
        return
    pairs, odd = divmod(count, 2)
    scratch = torch.empty(min(pairs, _CHUNK), dtype=torch.int64, device='cpu')
    full, rest = divmod(pairs, _CHUNK)
    for _ in range(full):
        scratch.random_(generator=generator)
    if rest:
        scratch[:rest].random_(generator=generator)
    if odd:
        torch.empty(1, dtype=torch.float32, device='cpu').uniform_(generator=generator)


# -----------------------------------------------------------------------------
# MT19937 jump-ahead: the generator's state after count outputs, computed, not drawn
#
# Source: Haramoto, Matsumoto, Nishimura, Panneton, L'Ecuyer 2008, "Efficient Jump Ahead for
# F2-Linear Random Number Generators" (INFORMS J. Computing 20(3)): with F the generator's
# transition, linear over GF(2), and phi its characteristic polynomial, F^k = g(F) for
# g = x^k mod phi (Cayley-Hamilton), so k steps cost a polynomial power mod phi, then g applied to
# the state. The generator is ATen's at::mt19937 (aten/src/ATen/core/MT19937RNGEngine.h: Matsumoto
# and Nishimura's mt19937ar with Cokus's block regeneration), read and written through
# torch.Generator.get_state / set_state (aten/src/ATen/CPUGeneratorImpl.cpp).

MT_N, MT_M = 624, 397  # words per block; the recurrence's middle term
MT_DEGREE = 32 * MT_N - 31  # 19937 bits of state: the top bit of the oldest word, then 623 words
# phi for MT19937, its 135 terms' exponents (the weight Matsumoto and Nishimura 1998 give it), as
# mt19937_characteristic_polynomial() finds them (tests/test_draws.py checks that it still does)
MT19937_CHARPOLY_EXPONENTS = (
    0, 1189, 1416, 1585, 1643, 1870, 2493, 2773, 3000, 3227, 3454, 3681, 3908, 4135, 4362, 4753,
    5661, 6337, 6569, 7129, 7477, 7525, 7583, 7752, 7979, 8206, 9505, 9901, 9969, 10128, 10693,
    10761, 10920, 11089, 11147, 11157, 11215, 11321, 11374, 11384, 11485, 11611, 11712, 11717,
    11838, 11881, 11944, 11997, 12277, 12335, 12393, 12504, 12509, 12620, 12673, 12731, 12736,
    12789, 12905, 12958, 12963, 13137, 13185, 13190, 13243, 13301, 13412, 13528, 13533, 13639,
    13697, 13760, 13813, 13866, 14093, 14151, 14209, 14320, 14325, 14436, 14547, 14552, 14605,
    14721, 14774, 14779, 14953, 15001, 15006, 15059, 15117, 15228, 15344, 15349, 15455, 15513,
    15576, 15629, 15682, 15909, 15967, 16025, 16136, 16141, 16252, 16363, 16368, 16421, 16537,
    16590, 16595, 16817, 16822, 16875, 16933, 17044, 17160, 17271, 17329, 17445, 17498, 17725,
    17783, 17841, 17952, 18068, 18179, 18237, 18406, 18633, 18691, 18860, 19087, 19314, 19937)
JUMP_MIN_OUTPUTS = 1 << 24  # from here a jump (about 40 ms at this count) costs less than replaying (2-3 ns an output)


def mt19937_words(block, length):
    """The word sequence x_0, x_1, ... of MT19937 from one block of its state.

    block: (624,) array of ints < 2**32, words x_0..x_623 (the state array of a block, as
    at::mt19937 holds it after regenerating); length >= 624. Returns a (length,) uint32 numpy array:
    x_k = x_{k-227} ^ twist(x_{k-624}, x_{k-623}), twist(u, v) = ((u's top bit | v's low 31 bits)
    >> 1) ^ (0x9908b0df if v is odd), the recurrence of mt19937ar's genrand and ATen's next_state;
    each of ATen's blocks is the next 624 words. Computed 227 words at a time (the nearest term
    of the recurrence is 227 back). Raises ValueError for a block of another shape.
    """
    block = np.asarray(block)
    if block.shape != (MT_N,):
        raise ValueError(f"block must hold {MT_N} words, got shape {block.shape}")
    words = np.empty(max(length, MT_N), dtype=np.uint32)
    words[:MT_N] = block
    lag = MT_N - MT_M
    for k in range(MT_N, length, lag):
        end = min(k + lag, length)
        old, older = words[k - MT_N + 1:end - MT_N + 1], words[k - MT_N:end - MT_N]
        mixed = (older & np.uint32(0x80000000)) | (old & np.uint32(0x7fffffff))
        odd = (old & np.uint32(1)) * np.uint32(0x9908b0df)  # MATRIX_A where v is odd
        words[k:end] = words[k - lag:end - lag] ^ (mixed >> np.uint32(1)) ^ odd
    return words[:length]


def berlekamp_massey(bits):
    """The shortest linear recurrence over GF(2) that generates bits (a sequence of 0 / 1).

    Returns (c, L): c a Python int whose bit i is the coefficient c_i of the connection polynomial
    C(z) = 1 + c_1 z + ... + c_L z^L, so that bits[n] = c_1 bits[n-1] ^ ... ^ c_L bits[n-L] for
    every n >= L. Source: Massey 1969, "Shift-register synthesis and BCH decoding" (IEEE Trans.
    Inf. Theory 15(1)), the GF(2) case. O(len(bits)^2) bit operations, done as Python int ops.
    """
    n = len(bits)
    backwards = int(''.join('1' if b else '0' for b in bits) or '0', 2)  # bit j = bits[n-1-j]
    c, b, L, shift = 1, 1, 0, 1  # C, the C before the last length change, L, steps since then
    for i in range(n):
        window = backwards >> (n - 1 - i)  # bit t = bits[i-t]
        if not (c & window).bit_count() & 1:  # no discrepancy: C still generates bits[:i + 1]
            shift += 1
            continue
        previous = c
        c ^= b << shift
        if 2 * L <= i:
            L, b, shift = i + 1 - L, previous, 1
        else:
            shift += 1
    return c, L


def mt19937_characteristic_polynomial(seed=5489):
    """The exponents of the terms of MT19937's characteristic polynomial phi, ascending: the
    minimal polynomial (Berlekamp-Massey) of bit 0 of words x_1, x_2, ... of the generator seeded
    with seed (any seed: phi is irreducible, so every nonzero sequence has it as its minimal
    polynomial), 2 * 19937 bits of it. This is how MT19937_CHARPOLY_EXPONENTS was made.
    Raises RuntimeError if the recurrence found is not of degree 19937."""
    block = _cpu_engine(torch.Generator().manual_seed(seed))[3]
    bits = (mt19937_words(block, 1 + 2 * MT_DEGREE)[1:] & 1).tolist()
    c, L = berlekamp_massey(bits)
    if L != MT_DEGREE or c >> L != 1:
        raise RuntimeError(f"Berlekamp-Massey found a recurrence of degree {L}, not {MT_DEGREE}")
    # phi(x) = x^L C(1/x): the coefficient of x^(L-i) is c_i
    return tuple(L - i for i in range(L, -1, -1) if c >> i & 1)


_CHARPOLY = sum(1 << e for e in MT19937_CHARPOLY_EXPONENTS)
_CHARPOLY_LOW = MT19937_CHARPOLY_EXPONENTS[:-1]  # x^19937 = the sum of these powers, mod phi
_LOW_BITS = (1 << MT_DEGREE) - 1
# byte b -> b with a 0 bit after each of its bits: squaring over GF(2) (no cross terms)
_SPREAD = np.array([sum((b >> i & 1) << 2 * i for i in range(8)) for b in range(256)], dtype='<u2')


def _mod_charpoly(a):
    """a mod phi, polynomials over GF(2) as Python ints (bit i: the coefficient of x^i). phi is
    sparse, so x^19937 folds down as 134 shifted copies; each fold lowers the degree by 623."""
    while a.bit_length() > MT_DEGREE:
        high = a >> MT_DEGREE
        a &= _LOW_BITS
        for e in _CHARPOLY_LOW:
            a ^= high << e
    return a


def _square(p):
    """p(x)^2 over GF(2), p a Python int: its bits spread out, one byte at a time."""
    data = np.frombuffer(p.to_bytes((p.bit_length() + 7) // 8, 'little'), dtype=np.uint8)
    return int.from_bytes(_SPREAD[data].tobytes(), 'little')


@functools.lru_cache(maxsize=8)  # a run's rows jump by one count: at most two powers per count
def x_power_mod_charpoly(k):
    """x^k mod phi (MT19937's characteristic polynomial) as a Python int of at most 19937 bits,
    k >= 0: square and multiply over the bits of k; its leading bits, while the power stays below
    x^19937, are a plain shift. About 0.1 s for k near 2**48. Raises ValueError for k < 0."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    bits = bin(k)[2:]
    e = 0
    for i, bit in enumerate(bits):
        if 2 * e + int(bit) >= MT_DEGREE:
            break
        e = 2 * e + int(bit)
    else:
        return 1 << e
    p = 1 << e
    for bit in bits[i:]:
        p = _mod_charpoly(_square(p))
        if bit == '1':
            p <<= 1
            if p >> MT_DEGREE:
                p ^= _CHARPOLY
    return p


def advance_mt19937_blocks(block, blocks):
    """The block of words `blocks` blocks after block: x_{624 b}..x_{624 b + 623} from x_0..x_623.

    block: (624,) array of ints < 2**32 (see mt19937_words); blocks: an int >= 1. Returns a (624,)
    uint32 numpy array. From x_1 on, each of the 32 bit lanes of the words is a sequence with
    characteristic polynomial phi (x_0 holds 31 bits outside the state), so with
    g = x^(624 b - 1) mod phi = sum of x^i over its terms i, x_{624 b + j} = XOR over i of
    x_{1 + i + j}: g(F) applied to the state is a sum of windows of one generated stretch of the
    sequence, at most 20,561 words (Horner's rule would apply F one word at a time, 19,937 times).
    Raises ValueError for blocks < 1 or a block of another shape.
    """
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    g = x_power_mod_charpoly(MT_N * blocks - 1)
    terms = np.flatnonzero(np.unpackbits(np.frombuffer(g.to_bytes((g.bit_length() + 7) // 8, 'little'),
                                                       dtype=np.uint8), bitorder='little'))
    words = mt19937_words(block, 1 + int(terms[-1]) + MT_N)
    out = np.zeros(MT_N, dtype=np.uint32)
    for i in terms.tolist():
        out ^= words[1 + i:1 + i + MT_N]
    return out


_STATE_BYTES = 5056  # sizeof(CPUGeneratorImplState) where uint64 is 8-byte aligned (Linux, macOS, Windows)


def _cpu_engine(generator):
    """The at::mt19937 fields of a CPU generator's state, or None where they cannot be read safely:
    (the state bytes, a writable uint8 numpy copy; left; next; the block, (624,) uint32).

    CPUGeneratorImplState (CPUGeneratorImpl.cpp), native byte order: the legacy THGenerator POD
    (uint64 the_initial_seed @0, int left @8, int seeded @12, uint64 next @16, uint64 state[624]
    @24, then normal_x / normal_y / normal_rho (double), int normal_is_valid @5040), then float
    next_float_normal_sample @5048, bool is_next_float_normal_sample_valid @5052: 5056 bytes.
    Read only a state the engine itself produces: seeded, 1 <= left <= 624, words < 2**32, and
    either left == 1 (the block used up: the next output regenerates) or left + next == 625 (next
    outputs of the block taken, state[next] the next one)."""
    raw = generator.get_state().numpy().copy()
    if raw.dtype != np.uint8 or raw.shape != (_STATE_BYTES,):
        return None
    left, seeded = (int(v) for v in raw[8:16].view(np.int32))
    nxt = int(raw[16:24].view(np.uint64)[0])
    state = raw[24:24 + 8 * MT_N].view(np.uint64)
    if seeded != 1 or not 1 <= left <= MT_N or int(state.max()) >> 32 or (left != 1 and left + nxt != MT_N + 1):
        return None
    return raw, left, nxt, state.astype(np.uint32)


def jump_mt19937_outputs(count, generator):
    """Move a CPU generator past count 32-bit outputs without drawing them: the same state, byte
    for byte, as drawing them would leave (replay_mt19937_outputs), in a time that does not grow
    with count (0.03 to 0.15 s for any count up to 2**64 and beyond).

    at::mt19937 hands out its state array one word at a time (next, left) and regenerates all 624
    words when it runs out; counting the outputs already taken from the current block, the jump
    lands in block b after it, at word c: the block is advance_mt19937_blocks(block, b), then
    next = c, left = 625 - c, as the engine has them after the same draws. The cached normal
    samples and the seed are kept. count: an int >= 0. Returns True, or False (the generator
    untouched) where its state is not one _cpu_engine reads. Raises ValueError for a generator
    not on the CPU.
    """
    if generator.device.type != 'cpu':
        raise ValueError(f"the generator must be a CPU generator, got one on {generator.device}")
    engine = _cpu_engine(generator)
    if engine is None:
        return False
    if count <= 0:
        return True
    raw, left, nxt, block = engine
    taken = MT_N if left == 1 else nxt  # outputs of the current block already taken
    blocks, within = divmod(taken + count - 1, MT_N)  # the last output: block blocks after, word within
    if blocks:
        raw[24:24 + 8 * MT_N].view(np.uint64)[:] = advance_mt19937_blocks(block, blocks)
    raw[8:12].view(np.int32)[0] = MT_N - within  # left = 625 - (within + 1)
    raw[16:24].view(np.uint64)[0] = within + 1
    generator.set_state(torch.from_numpy(raw))
    return True


def advance_like_nanogpt_init(config, generator=None):
    """Leave generator (default: torch's default CPU generator) in exactly the state that
    nanoGPT's GPT(config) construction and init leave it in, without building the model.

    config: nanoGPT's GPTConfig fields, see nanogpt_init_draws. Call it right after
    torch.manual_seed(seed), where nanoGPT's sample.py builds its model.
    Draws that touch only the mt19937 stream are counted and skipped in bulk (361M 32-bit outputs
    for GPT-2 124M); the tensors of fewer than 16 elements, whose normal_ reads and writes the
    generator's cached normal sample, are replayed with the same op, in order.
    Raises ValueError for a generator not on the CPU, for a torch default dtype other than
    float32 (nanoGPT's parameters would be drawn in that dtype), or for a bad config.
    """
    if generator is None:
        generator = torch.default_generator
    if generator.device.type != 'cpu':
        raise ValueError(f"the generator must be a CPU generator, got one on {generator.device}")
    if torch.get_default_dtype() != torch.float32:
        raise ValueError(f"torch's default dtype is {torch.get_default_dtype()}: nanoGPT draws its init in "
                         f"float32, reset it with torch.set_default_dtype(torch.float32)")
    pending = 0  # outputs counted but not yet consumed
    for op, numel in nanogpt_init_draws(config):
        count = mt19937_outputs(op, numel)
        if count is not None:
            pending += count
            continue
        skip_mt19937_outputs(pending, generator)  # the stream position matters to the replayed draw
        pending = 0
        torch.empty(numel, dtype=torch.float32, device='cpu').normal_(generator=generator)
    skip_mt19937_outputs(pending, generator)


# -----------------------------------------------------------------------------
# nanoGPT's random draws, row by row


class NanoGPTDraws:
    """The draws nanoGPT's sample.py makes, for B rows decoded together.

    nanoGPT samples one row at a time, each token with torch.multinomial(probs, 1), which ATen
    computes as argmax(probs / q) with q one exponential_(1) draw per vocabulary entry from the
    global generator; row k therefore uses the stream after the k * steps draws of the rows before
    it. Here each row gets its own torch.Generator, started at that point of the stream, and the
    stream itself is moved past all rows, as nanoGPT leaves it. A row that stops early (at
    <|endoftext|>) shifts no other row's draws.

    rows: B; steps: the draws each row would make (max_new_tokens); generator: the stream
    (None: default_generator of the first probs' device). starts: instead, B generator states
    (ByteTensors, see sample_starts, of that generator's device), row i's start; the stream is then
    not moved. Call with probs (B, V).

    The draws are made on the generator's device: probs' own on the CPU and CUDA, where they are
    nanoGPT's exactly; on any other device (MPS, ...) the CPU's, seeded by torch.manual_seed as
    nanoGPT seeds it, the probabilities brought to the CPU for the draw and the ids moved back:
    the same distribution, drawn from nanoGPT's CPU stream.
    """

    def __init__(self, rows, steps, generator=None, starts=None):
        self.rows, self.steps, self.generator, self.starts = rows, steps, generator, starts
        self.row_generators = None

    def __call__(self, probs):
        """probs (B, V) float, unnormalised rows allowed -> (B, 1) LongTensor of ids on probs' device.
        Where the generators are on another device than probs, probs go there in float32 (on the
        CPU, exponential_ then takes two mt19937 outputs per element, as skip_exponential_draws counts)."""
        q = self.exponentials(probs[0])
        p = probs if probs.device == q.device else probs.to(q.device, torch.float32)
        ids = draw_with(p, q)
        return ids if p is probs else ids.to(probs.device)

    def exponentials(self, like):
        """Each row's next draws: q (B, V), one exponential_(1) per entry from the row's own
        generator, in like's dtype (like: a probs row, (V,)) on the generators' device (float32 if
        that is not like's). multinomial(probs, 1) is argmax(probs / q): the draws do not depend
        on the probabilities, so a compiled step can take q as an input, made ahead of it."""
        if self.row_generators is None:
            self.row_generators = self.start_rows(like)
        where = self.row_generators[0].device
        q = torch.empty(len(self.row_generators), like.numel(), device=where,
                        dtype=like.dtype if like.device == where else torch.float32)
        pairs = list(zip(q, self.row_generators))  # (row of q, its generator)
        workers = min(len(pairs), torch.get_num_threads()) if where.type == 'cpu' else 1
        if workers > 1:  # one serial exponential_ per row (about 1 ms for GPT-2's vocabulary): rows in parallel
            list(_thread_pool(workers).map(_exponential_rows, [pairs[i::workers] for i in range(workers)]))
        else:
            _exponential_rows(pairs)
        return q

    def _on_draw_device(self, probs):
        """probs (M, V) as the draws read them: on the generators' device (started here on the first
        call), in float32 if it had to move there."""
        if self.row_generators is None:
            self.row_generators = self.start_rows(probs[0])
        where = self.row_generators[0].device
        return probs if probs.device == where else probs.to(where, torch.float32)

    # ---- draws by index, for speculative decoding (speculative.py); not mixed with __call__ on one object

    def pick(self, probs, which, steps):
        """(M, 1) LongTensor of ids on probs' device: row m of probs (M, V) drawn as row which[m]'s
        draw number steps[m] (0 = its first) draws it, argmax(probs[m] / q), whatever order the
        draws are asked for in. Each row's q are drawn from its generator in order, once, and kept
        (with the generator's state before each) until forget / settle."""
        p = self._on_draw_device(probs)
        if self.like is None:
            self.like = torch.empty_like(p[0])  # the q's dtype, shape and device: plain decoding's
        q = torch.stack([self.q(r, k) for r, k in zip(which, steps)])  # (M, V)
        ids = draw_with(p, q)
        return ids if p is probs else ids.to(probs.device)

    like = None  # a q row (V,) as pick draws them; set by its first call
    kept = None  # per row: [first step kept, [(q (V,), generator state before drawing it), ...]]

    def q(self, row, step):
        """Row row's q for its draw number step, (V,) on the generators' device: drawn now (with any
        before it not drawn yet) or kept from an earlier call. Only after a first pick (which fixes
        the dtype); step must not be before a forget."""
        if self.kept is None:
            self.kept = [[0, []] for _ in self.row_generators]
        first, entries = self.kept[row]
        g = self.row_generators[row]
        while first + len(entries) <= step:
            state = g.get_state()
            entries.append((torch.empty_like(self.like).exponential_(1, generator=g), state))
        return entries[step - first][0]

    def forget(self, step):
        """Free each row's q before draw number step (step: an int): no pick will ask for them."""
        for entry in self.kept or []:
            drop = max(0, min(step - entry[0], len(entry[1])))
            entry[0], entry[1] = entry[0] + drop, entry[1][drop:]

    def settle(self, steps):
        """Leave each row's generator just after draw number steps - 1, where plain decoding of
        `steps` steps leaves it (it draws for every row at every step, also for rows that ended):
        a row that drew ahead goes back to the state kept before draw `steps`, one that drew less
        draws the rest. Nothing to do if no draw was ever made (temperature 0)."""
        if self.kept is None:
            return
        scratch = torch.empty_like(self.like)
        for row, (first, entries) in enumerate(self.kept):
            g = self.row_generators[row]
            if steps < first + len(entries):
                g.set_state(entries[steps - first][1])
            for _ in range(steps - first - len(entries)):
                scratch.exponential_(1, generator=g)
            self.kept[row] = [steps, []]

    def start_rows(self, row):
        """One generator per row at its own start in the stream; the stream moves past them all.
        row: a probs row, (V,), on the device the model runs on."""
        stream = self.generator or default_generator(row.device)
        starts = self.starts or sample_starts(self.rows, self.steps, row, stream)
        row_generators = []
        for state in starts:
            g = torch.Generator(device=stream.device)
            g.set_state(state)
            row_generators.append(g)
        return row_generators


def draw_with(probs, q):
    """torch.multinomial(probs, 1) as ATen computes it, given its exponential draws q: probs and q
    (B, V) on one device -> (B, 1) LongTensor, argmax(probs / q) (the first id on a tie)."""
    return torch.argmax(probs / q, dim=-1, keepdim=True)


def sample_starts(count, steps, like, generator=None):
    """The states (ByteTensors) at which nanoGPT's next count samples start in the stream of
    generator (None: default_generator of like's device), each sample making steps
    exponential_ draws of like's shape (a probs row, (V,)); the stream is moved past them all,
    as nanoGPT leaves it. On a CPU generator the time does not grow with steps (a jump, see
    jump_mt19937_outputs); on a CUDA one the steps are replayed, one exponential_ call each."""
    stream = generator or default_generator(like.device)
    starts = []
    for _ in range(count):
        starts.append(stream.get_state())
        skip_exponential_draws(stream, steps, like)
    return starts


def _exponential_rows(pairs):
    """Fill each (row, generator) pair's row with exponential_(1) draws from its own generator."""
    for row, g in pairs:
        row.exponential_(1, generator=g)


_pool = None


def _thread_pool(workers):
    """A thread pool of at least workers threads, kept for the process. Each row has its own
    generator and its own memory, so the rows' draws are the same in any thread, in any order;
    exponential_ releases the GIL, and on the CPU it runs serially (one generator, one stream)."""
    global _pool
    if _pool is None or _pool._max_workers < workers:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='nanogpt-draws')
    return _pool


def default_generator(device):
    """The global generator (the one torch.manual_seed seeds) whose stream nanoGPT's draws for
    tensors on device (a torch.device) take: CUDA's own for a CUDA device, where the draws can be
    nanoGPT's exactly; the CPU's for the CPU and for every other device type (MPS, XPU, ...), whose
    own generators do not draw as nanoGPT's CPU or CUDA ones (NanoGPTDraws draws on the CPU there).
    Never raises for a device type."""
    if device.type == 'cuda':
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def skip_exponential_draws(generator, calls, like):
    """Advance generator as `calls` calls of torch.empty_like(like).exponential_() would.

    On the CPU each such call draws two 32-bit mt19937 outputs per element (one double uniform per
    element: ATen's exponential kernel, on float32), skipped in bulk; only the element count of
    like matters there, like may be on any device. On another generator's device the calls are replayed.
    """
    if generator.device.type != 'cpu':
        scratch = torch.empty_like(like)
        for _ in range(calls):
            scratch.exponential_(1, generator=generator)
        return
    skip_mt19937_outputs(2 * like.numel() * calls, generator)
