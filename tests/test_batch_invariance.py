"""One text per seed, whatever the batch: in every weight format, with every layout and kernel
that a timing may pick, a row's logits are bit for bit those of the same row decoded alone, and
sample.py prints the same text at --batch_size=1, 3 and the default, and with --prompts, with the
timing cache deleted before each run."""

import pytest
import torch

import cpu.layout
from cpu import int8
import load
from cpu.layout import choose_linear_layout_
from draws import NanoGPTDraws, sample_starts
from generate import decode_one_token, decode_rows, generate_tokens, prefill, prefill_rows
from helpers import DEMO, run_sample
from gpt_config import BLOCK_LINEARS
from model import GPT

# (dtype, quantize, how the Block Linears multiply): every layout of the float formats, every int8 kernel
FORCED = [('float32', None, 'row'), ('float32', None, 'col'), ('float32', None, 'packed'),
          ('bfloat16', None, 'row'), ('bfloat16', None, 'packed'), ('float32', 'int4', None)] + \
         [('float32', 'int8', k) for k in (['int_mm', 'onednn'] if int8.VNNI else ['int8pack'])]


def forced_model(init_from, out_dir, dtype, quantize, how):
    """The model loaded in a format, its Block Linears forced into one layout or int8 kernel."""
    model = load.load_model(GPT, init_from, out_dir, getattr(torch, dtype), 'cpu', quantize)
    if quantize == 'int8':
        for b in model.transformer.h:
            for n in BLOCK_LINEARS:
                b.get_submodule(n).set_kernel_(how)
    elif how:
        choose_linear_layout_(model, batch_sizes=(1, 3), layouts=(how,), calls=1, margin=-1.0, cache=False)
    return model


@torch.no_grad()
def teacher_forced_logits(model, prompts, tokens):
    """The logits (B, V) of every step when rows with prompts (lists of ids) are fed tokens (B
    lists of ids, one per step): a prefill, then decode steps, each row at its own position."""
    model.setup_caches(len(prompts), min(model.config.block_size, max(map(len, prompts)) + len(tokens[0])))
    out = [prefill_rows(model, [torch.tensor(p) for p in prompts])]
    contexts = [list(p) for p in prompts]
    for t in range(len(tokens[0]) - 1):
        idx_next = torch.tensor([[row[t]] for row in tokens])
        for c, row in zip(contexts, tokens):
            c.append(row[t])
        out.append(decode_rows(model, contexts, idx_next)[1])
    model.clear_caches()
    return torch.stack(out, 1)  # (B, steps, V)


def assert_rows_alone(model, prompts, tokens):
    together = teacher_forced_logits(model, prompts, tokens)
    for i, (p, t) in enumerate(zip(prompts, tokens)):
        assert torch.equal(together[i:i + 1], teacher_forced_logits(model, [p], [t])), f"row {i}"


@pytest.mark.parametrize('dtype, quantize, how', FORCED, ids=['-'.join(filter(None, c)) for c in FORCED])
def test_demo_rows_are_their_own_whatever_the_batch(dtype, quantize, how):
    model = forced_model('resume', DEMO, dtype, quantize, how)
    g = torch.Generator().manual_seed(0)
    V, T = model.config.vocab_size, model.config.block_size
    # prompts of 1, 5 and 20 tokens, and one of T - 3 that decodes past block_size (re-prefilled)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (1, 5, 20, T - 3)]
    tokens = [torch.randint(0, V, (8,), generator=g).tolist() for _ in prompts]
    assert_rows_alone(model, prompts, tokens)


@torch.no_grad()
def shared_prompt_logits(model, prompt, tokens):
    """The logits (B, steps, V) of rows that share prompt (a list of ids) and are then fed tokens
    (B lists of ids): sample.py's loop for one --start, every row at one position (decode_one_token)."""
    B = len(tokens)
    model.setup_caches(B, len(prompt) + len(tokens[0]))
    out = [prefill(model, torch.tensor([prompt] * B))]
    for t in range(len(tokens[0]) - 1):
        out.append(decode_one_token(model, torch.tensor([[row[t]] for row in tokens]), len(prompt) + t))
    model.clear_caches()
    return torch.stack(out, 1)


@pytest.mark.parametrize('dtype, quantize, how', FORCED, ids=['-'.join(filter(None, c)) for c in FORCED])
def test_rows_of_one_prompt_are_their_own_whatever_the_batch(dtype, quantize, how):
    # CPU attention kernels that split rows across threads give a row other bits at 3 rows than
    # alone (scaled_dot_product_attention did, from 9 cached positions on): at least 2 threads here
    model = forced_model('resume', DEMO, dtype, quantize, how)
    g = torch.Generator().manual_seed(3)
    tokens = [torch.randint(0, model.config.vocab_size, (40,), generator=g).tolist() for _ in range(3)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        together = shared_prompt_logits(model, [0], tokens)
        for i, t in enumerate(tokens):
            assert torch.equal(together[i:i + 1], shared_prompt_logits(model, [0], [t])), f"row {i}"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('dtype, quantize, how', [c for c in FORCED if c[2] != 'row'],
                         ids=['-'.join(filter(None, c)) for c in FORCED if c[2] != 'row'])
def test_gpt2_rows_are_their_own_whatever_the_batch(gpt2_hub, dtype, quantize, how):
    model = forced_model('gpt2', 'out', dtype, quantize, how)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (1, 4, 9)]
    tokens = [torch.randint(0, 50257, (3,), generator=g).tolist() for _ in prompts]
    assert_rows_alone(model, prompts, tokens)


@torch.no_grad()
def test_int8_kernels_sample_the_same_tokens_in_any_batch():
    # sample.py's own loop (one prompt, rows expanded, each row its own draws), past block_size:
    # 5 rows together and each alone, with each kernel a timing may choose, give the same tokens
    runs = []
    for how in (['int_mm', 'onednn'] if int8.VNNI else ['int8pack']):
        model = forced_model('resume', DEMO, 'float32', 'int8', how)
        x = torch.tensor([0] * 100)
        starts = sample_starts(5, 60, torch.empty(model.config.vocab_size), torch.Generator().manual_seed(0))
        together = torch.cat(list(generate_tokens(model, x[None].expand(5, -1), 60, temperature=0.8, top_k=200,
                                                  draws=NanoGPTDraws(5, 60, starts=starts))), 1)
        alone = [torch.cat(list(generate_tokens(model, x[None], 60, temperature=0.8, top_k=200,
                                                draws=NanoGPTDraws(1, 60, starts=[s]))), 1) for s in starts]
        assert torch.equal(together, torch.cat(alone)), how
        runs.append(together)
    assert all(torch.equal(r, runs[0]) for r in runs)


@pytest.mark.parametrize('fmt', [['--dtype=float32'], ['--dtype=bfloat16'], ['--quantize=int8'], ['--quantize=int4']],
                         ids=['float32', 'bfloat16', 'int8', 'int4'])
def test_sample_text_does_not_depend_on_batch_size_prompts_or_cache(tmp_path, fmt):
    # 4 samples of 130 characters from 5-6 character prompts: past the demo's block_size (128)
    args = ['--out_dir=' + DEMO, '--num_samples=4', '--max_new_tokens=130', '--seed=77', *fmt]
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('KING:\nROMEO:\n')
    runs = {}
    for i, extra in enumerate([['--start=KING:'], ['--start=KING:', '--batch_size=1'],
                               ['--start=KING:', '--batch_size=3'], ['--start=ROMEO:'],
                               ['--prompts=' + str(prompts), '--batch_size=3']]):  # batches that mix prompts
        r = run_sample(*args, *extra, env={'NANOSAMPLE_CACHE_DIR': str(tmp_path / f'cache{i}')})  # a new timing cache
        assert r.returncode == 0, r.stderr
        runs[' '.join(extra)] = r.stdout
    king, king_1, king_3, romeo, both = runs.values()
    assert king == king_1 == king_3
    assert both == king + romeo


def test_gpt2_int8_text_does_not_depend_on_batch_size(gpt2_hub, tmp_path):
    # the case: 9 samples together and one at a time, the timing cache new each time
    args = ['--init_from=gpt2', '--quantize=int8', '--start=Hello, my name is', '--num_samples=9',
            '--max_new_tokens=12']
    texts = [run_sample(*args, *extra, env={'NANOSAMPLE_CACHE_DIR': str(tmp_path / f'cache{i}')})
             for i, extra in enumerate([[], ['--batch_size=1'], ['--batch_size=4']])]
    assert all(r.returncode == 0 for r in texts), [r.stderr for r in texts]
    assert len({r.stdout for r in texts}) == 1


# ---------------------------------------------------------------- where a kernel's rows change its bits

def rows_dependent(a, w, b):
    """A stand-in kernel whose products change with the rows of the call, as GEMM libraries' do."""
    return torch.nn.functional.linear(a, w, b) * (1 + a.size(0) * 2 ** -20)


def position_dependent(a, w, b):
    """A stand-in kernel whose products change with a row's position in the call."""
    y = torch.nn.functional.linear(a, w, b)
    return y * (1 + torch.arange(a.size(0), dtype=y.dtype)[:, None] * 2 ** -20)


@pytest.mark.parametrize('fn, expected', [(cpu.layout.onednn_linear, None), (rows_dependent, cpu.layout.MIN_ROWS),
                                          (position_dependent, 1)], ids=['onednn', 'rows', 'position'])
def test_rows_per_call_makes_any_kernel_batch_invariant(fn, expected):
    # the chooser finds how many rows a call may hold; with that, each row's product is the one it
    # gets alone at every batch size, and a prefill's positions go one sequence a call
    lin = torch.nn.Linear(180, 540)
    if fn is cpu.layout.onednn_linear:
        per_call = cpu.layout._rows_per_call(lin, fn, 'row', (1, 8))
        assert per_call in (None, cpu.layout.MIN_ROWS, 1)  # this CPU's oneDNN: whatever it needs
        expected, fn = per_call, cpu.layout.onednn_linear
    else:
        kernel = fn
        fn = lambda x, w, b=None, rows_per_call=None: cpu.layout._padded(kernel, x, w, b, rows_per_call)
        assert cpu.layout._rows_per_call(lin, fn, 'row', (1, 8)) == expected
    x = torch.randn(11, 180)
    alone = torch.cat([fn(x[i:i + 1], lin.weight.detach(), lin.bias.detach(), rows_per_call=expected) for i in range(11)])
    for M in (2, 3, 5, 8, 11):
        assert torch.equal(fn(x[:M], lin.weight.detach(), lin.bias.detach(), rows_per_call=expected), alone[:M])
    seqs = torch.randn(3, 7, 180)  # (B, T, in): each sequence as it is alone
    together = fn(seqs, lin.weight.detach(), lin.bias.detach(), rows_per_call=expected)
    for i in range(3):
        assert torch.equal(together[i], fn(seqs[i:i + 1], lin.weight.detach(), lin.bias.detach(), rows_per_call=expected)[0])


@pytest.mark.parametrize('per_call', [cpu.layout.MIN_ROWS, 1])
def test_demo_rows_alone_with_calls_of_fixed_rows(per_call):
    # the fallback the chooser takes on a CPU whose kernel changes with the rows, end to end
    model = forced_model('resume', DEMO, 'float32', None, 'packed')
    for m in model.modules():
        if hasattr(m, 'rows_per_call'):
            m.rows_per_call = per_call
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 65, (n,), generator=g).tolist() for n in (1, 6, 125)]
    tokens = [torch.randint(0, 65, (6,), generator=g).tolist() for _ in prompts]
    assert_rows_alone(model, prompts, tokens)
