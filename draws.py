"""
nanoGPT's random-number use, reproduced exactly: the draws of its model construction (which move
the CPU generator before the first sample), and each sample's multinomial draws, row by row.

nanoGPT's sample.py seeds torch, then builds GPT(gptconf) on the CPU before loading the checkpoint
over it: every nn.Linear / nn.Embedding draws its default init, then GPT._init_weights and the
scaled c_proj init draw again. Only after all that is the first token sampled. We build the model
on the meta device, which draws nothing; advance_like_nanogpt_init makes up the difference, so that
the same seed gives nanoGPT's tokens.

Sources: nanoGPT's model.py (karpathy/nanoGPT at 3adf61e: GPT.__init__, _init_weights), PyTorch's
nn.Linear.reset_parameters / nn.Embedding.reset_parameters / nn.Module.apply, and ATen's CPU
distribution kernels (aten/src/ATen/native/cpu/DistributionKernels.cpp, DistributionTemplates.h).
"""

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
    """Consume count 32-bit outputs of generator: random_() on int64 takes two per element
    (random64), the cheapest way through ATen; an odd one goes to a one-element uniform_."""
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
    (None: the global generator of the device of the first probs). starts: instead, B generator
    states (ByteTensors, see sample_starts), row i's start; the stream is then not moved.
    Call with probs (B, V).
    """

    def __init__(self, rows, steps, generator=None, starts=None):
        self.rows, self.steps, self.generator, self.starts = rows, steps, generator, starts
        self.row_generators = None

    def __call__(self, probs):
        """probs (B, V) float, unnormalised rows allowed -> (B, 1) LongTensor of ids."""
        if self.row_generators is None:
            self.row_generators = self.start_rows(probs[0])
        q = torch.empty_like(probs)
        rows = list(zip(q, self.row_generators))
        workers = min(len(rows), torch.get_num_threads()) if probs.device.type == 'cpu' else 1
        if workers > 1:  # one serial exponential_ per row (about 1 ms for GPT-2's vocabulary): rows in parallel
            list(_thread_pool(workers).map(_exponential_rows, [rows[i::workers] for i in range(workers)]))
        else:
            _exponential_rows(rows)
        return torch.argmax(probs / q, dim=-1, keepdim=True)

    def start_rows(self, row):
        """One generator per row at its own start in the stream; the stream moves past them all."""
        starts = self.starts or sample_starts(self.rows, self.steps, row, self.generator)
        row_generators = []
        for state in starts:
            g = torch.Generator(device=row.device)
            g.set_state(state)
            row_generators.append(g)
        return row_generators


def sample_starts(count, steps, like, generator=None):
    """The states (ByteTensors) at which nanoGPT's next count samples start in the stream of
    generator (None: the global generator of like's device), each sample making steps
    exponential_ draws of like's shape (a probs row, (V,)); the stream is moved past them all,
    as nanoGPT leaves it."""
    stream = generator or default_generator(like.device)
    starts = []
    for _ in range(count):
        starts.append(stream.get_state())
        skip_exponential_draws(stream, steps, like)
    return starts


def _exponential_rows(rows):
    """Fill each (row, generator) pair's row with exponential_(1) draws from its own generator."""
    for row, g in rows:
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
    """torch's global generator of a device (the one torch.manual_seed seeds)."""
    if device.type == 'cuda':
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    if device.type == 'cpu':
        return torch.default_generator
    raise ValueError(f"no global generator known for {device}")


def skip_exponential_draws(generator, calls, like):
    """Advance generator as `calls` calls of torch.empty_like(like).exponential_() would.

    On the CPU each such call draws two 32-bit mt19937 outputs per element (one double uniform per
    element: ATen's exponential kernel), skipped in bulk; elsewhere the calls are replayed.
    """
    if generator.device.type != 'cpu':
        scratch = torch.empty_like(like)
        for _ in range(calls):
            scratch.exponential_(1, generator=generator)
        return
    skip_mt19937_outputs(2 * like.numel() * calls, generator)
