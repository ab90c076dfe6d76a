"""
The CUDA path, against nanoGPT itself on the same GPU (issue 16). Every test but the last is skipped,
with the reason, where torch.cuda.is_available() is False; `bash tools/gpu_check.sh` runs them first
thing on a GPU machine.

1. Draws: NanoGPTDraws on the CUDA generator give nanoGPT's row-after-row torch.multinomial.
2. nanoGPT's loop: our sample.py --kv_cache=False --batch_size=1 prints what nanoGPT's own sample.py
   prints (run here by tools/run_nanogpt.py) on every reference checkpoint, in bfloat16 (nanoGPT's
   CUDA default, autocast, compile=False) and float32; on a difference, both models' logits there.
3. Our defaults (KV cache, all rows at once): the same, byte for byte in float32; in bfloat16 a decode
   step may round otherwise than a full forward, so a difference is reported per sample, not failed.
4. Compiled decode (CUDA graphs) gives eager's tokens, 1 and 10 rows, two batches, past block_size.
5. gpt2-xl shapes load in bfloat16 within 1.1x the weights plus the KV cache; peak host RSS reported.
6. Without a GPU, tools/gpu_check.sh ends at once with one error line (this one runs on the CPU).

NANOGPT_DIR: a clone of karpathy/nanoGPT at commit 3adf61e, for tests 2 and 3, which are skipped, with
the reason, without it:
    git clone https://github.com/karpathy/nanoGPT && git -C nanoGPT checkout 3adf61e
CUDA_REPORT: a file the reported figures are appended to (they are printed too: run pytest with -s to
see them).
"""
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import torch

from helpers import DEMO, REFERENCE, REFERENCE_CASES, ROOT, check_error, drop_diagnostics, hub_snapshot, run_sample

RUN_NANOGPT = os.path.join(ROOT, 'tools', 'run_nanogpt.py')  # nanoGPT's sample.py on a checkpoint folder
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU here (torch.cuda.is_available() is False): "
                                "bash tools/gpu_check.sh runs these on a machine with one")
DTYPES = ['bfloat16', 'float32']  # nanoGPT's CUDA default (autocast, where the GPU has bf16), then float32
MODES = {'loop': ['--kv_cache=False', '--batch_size=1'], 'defaults': []}  # nanoGPT's loop; KV cache, rows together
SEPARATOR = '\n---------------\n'  # after each sample


def report(line):
    """Print a figure for the closing note and append it to the file CUDA_REPORT names, if set."""
    print(f"[cuda] {line}", flush=True)
    if os.environ.get('CUDA_REPORT'):
        with open(os.environ['CUDA_REPORT'], 'a', encoding='utf-8') as f:
            f.write(line + '\n')


def nanogpt_dir():
    """NANOGPT_DIR, nanoGPT's checkout (see the module docstring), as tools/run_nanogpt.py checks it;
    skips the calling test, with the reason, where it is not set or not such a checkout."""
    spec = importlib.util.spec_from_file_location('run_nanogpt', RUN_NANOGPT)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    where, why = runner.nanogpt_dir()
    if where is None:
        pytest.skip(why)
    return where


def samples(text):
    """The samples of a stdout, each without its line of dashes."""
    return text.split(SEPARATOR)[:-1]


# ---------------------------------------------------------------- the runs, started together

class Runs:
    """Subprocess runs started together, a group at a time, when a test first asks for one of the group:
    each run is mostly start-up and small kernel launches, so they overlap well on one GPU.
    groups: {name: a function returning {key: a function that runs one and returns its result}}."""

    def __init__(self, groups):
        self.groups, self.started, self.pool = groups, {}, ThreadPoolExecutor(max_workers=12)

    def start(self, group):
        """Start every run of group (once)."""
        if group not in self.started:
            self.started[group] = {k: self.pool.submit(run) for k, run in self.groups[group]().items()}

    def get(self, group, key):
        """The result of one run (a CompletedProcess), waiting for it."""
        self.start(group)
        return self.started[group][key].result()


def text_runs():
    """nanoGPT's sample.py and ours (in each of MODES) on every reference case, in each of DTYPES."""
    nanogpt_dir()  # or skip
    runs = {}
    for name, settings in REFERENCE_CASES.items():
        out_dir = os.path.join(REFERENCE, os.path.dirname(name))
        eot = ['--stop_at_eot=False'] if name.startswith('bpe') else []  # nanoGPT never stops
        for dtype in DTYPES:
            args = ['--device=cuda', f'--dtype={dtype}', *settings]
            runs['nanogpt', name, dtype] = partial(
                subprocess.run, [sys.executable, RUN_NANOGPT, out_dir, *args], capture_output=True, text=True,
                timeout=600)
            for mode, flags in MODES.items():
                runs['ours', name, dtype, mode] = partial(run_sample, f'--out_dir={out_dir}', *args, *eot, *flags)
    return runs


COMPILE_ROWS = {1: 2, 10: 20}  # rows decoded together -> samples: two batches, the second replays the graph


def compile_runs():
    """The demo (block_size 128) for 200 new tokens, eager and compiled, for each of COMPILE_ROWS and DTYPES;
    TORCH_LOGS=recompiles makes torch.compile say if the second batch recompiled."""
    runs = {}
    for dtype in DTYPES:
        for rows, num_samples in COMPILE_ROWS.items():
            args = [f'--out_dir={DEMO}', '--device=cuda', f'--dtype={dtype}', f'--num_samples={num_samples}',
                    f'--batch_size={rows}', '--max_new_tokens=200', '--seed=7']
            for compiled in (False, True):
                runs[dtype, rows, compiled] = partial(run_sample, *args, f'--compile={compiled}',
                                                      env={'TORCH_LOGS': 'recompiles'})
    return runs


@pytest.fixture(scope='module')
def runs():
    r = Runs({'text': text_runs, 'compile': compile_runs})
    r.start('compile')  # the longest (torch.compile): under way while the text tests run
    yield r
    r.pool.shutdown(cancel_futures=True)


def ended_well(r, who):
    """Assert that a run (a CompletedProcess) exited 0 without a traceback."""
    assert r.returncode == 0 and 'Traceback' not in r.stderr, f"{who} failed ({r.returncode}): {r.stderr[-3000:]}"


def texts(runs, name, dtype, mode):
    """(nanoGPT's stdout less its diagnostic lines, ours in mode) for a reference case."""
    if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    theirs, ours = runs.get('text', ('nanogpt', name, dtype)), runs.get('text', ('ours', name, dtype, mode))
    ended_well(theirs, "nanoGPT's sample.py")
    ended_well(ours, 'our sample.py')
    return drop_diagnostics(theirs.stdout), ours.stdout


# ---------------------------------------------------------------- where two texts part, and why

def reference_tokenizer(name):
    """(the tokenizer of a reference case's checkpoint, its prompt's ids)."""
    from tokenizer import load_tokenizer, meta_paths
    out_dir = os.path.join(REFERENCE, os.path.dirname(name))
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True, mmap=True)
    tok = load_tokenizer(meta_paths('resume', out_dir, ckpt.get('config', {})), ckpt['model_args']['vocab_size'])
    start = next((a[len('--start='):] for a in REFERENCE_CASES[name] if a.startswith('--start=')), '\n')
    if start.startswith('FILE:'):
        with open(start[5:], encoding='utf-8') as f:
            start = f.read()
    return tok, tok.encode(start)


def identical_tokens(name, want, got):
    """Per sample, how many new tokens (the texts re-encoded) are the same before the first difference."""
    tok, prompt = reference_tokenizer(name)
    counts = []
    for a, b in zip(samples(want), samples(got)):
        ids_a, ids_b = tok.encode(a), tok.encode(b)
        same = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
        counts.append(same - len(prompt))
    return counts


@torch.no_grad()
def top5_logits(name, dtype, ids):
    """Both models' top 5 (id, logit) for the token after ids (cropped to block_size) on CUDA in dtype:
    nanoGPT's model.py (NANOGPT_DIR) under autocast, as its sample.py runs it; ours as load.load_model gives it."""
    import load
    from model import GPT
    out_dir, ptdtype = os.path.join(REFERENCE, os.path.dirname(name)), getattr(torch, dtype)
    torch.backends.cuda.matmul.allow_tf32 = True  # as both sample.py set it
    spec = importlib.util.spec_from_file_location('nanogpt_model', os.path.join(nanogpt_dir(), 'model.py'))
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cuda', weights_only=True)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(**ckpt['model_args']))
    theirs.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
    theirs.eval().to('cuda')
    ours = load.load_model(GPT, 'resume', out_dir, ptdtype, 'cuda')
    x = torch.tensor([ids[-ours.config.block_size:]], device='cuda')
    with torch.autocast('cuda', dtype=ptdtype, enabled=ptdtype != torch.float32):
        their_logits = theirs(x)[0][0, -1].float()
    top5 = lambda logits: [(i, round(v, 4)) for v, i in zip(*map(torch.Tensor.tolist, logits.topk(5)))]
    return top5(their_logits), top5(ours(x)[0][0, -1].float())


def first_difference(name, dtype, want, got):
    """Where our text first parts from nanoGPT's: the sample, the token, and both models' logits there."""
    tok, _ = reference_tokenizer(name)
    for k, (a, b) in enumerate(zip(samples(want), samples(got))):
        ids_a, ids_b = tok.encode(a), tok.encode(b)
        if ids_a != ids_b:
            i = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
            pick = lambda ids: repr(tok.decode(ids[i:i + 1])) if i < len(ids) else 'the end'
            theirs, ours = top5_logits(name, dtype, ids_a[:i])
            return (f"{name}, {dtype}: sample {k}, token {i} (prompt included): nanoGPT {pick(ids_a)}, ours "
                    f"{pick(ids_b)}; top-5 (id, logit) there: nanoGPT {theirs}, ours (full forward) {ours}")
    return f"{name}, {dtype}: {len(samples(want))} samples from nanoGPT, {len(samples(got))} from us"


# ---------------------------------------------------------------- 1. draws

@needs_cuda
@pytest.mark.parametrize('vocab', [65, 50304])
@pytest.mark.parametrize('rows', [1, 3, 10])
def test_row_draws_are_nanogpts_multinomial_on_the_cuda_generator(rows, vocab):
    # nanoGPT: row after row, torch.multinomial((1, V) probs, 1) per token on the CUDA generator;
    # NanoGPTDraws: each row its own generator started where nanoGPT's row starts. Same ids, same final state.
    from draws import NanoGPTDraws
    steps = 5
    g = torch.Generator(device='cuda').manual_seed(3)
    probs = torch.rand(steps, rows, vocab, device='cuda', generator=g) ** 4
    probs /= probs.sum(dim=-1, keepdim=True)  # float32, as autocast's softmax gives them
    torch.cuda.manual_seed(1337)
    draws = NanoGPTDraws(rows, steps)
    ours = torch.stack([draws(probs[t]) for t in range(steps)])  # (steps, rows, 1)
    ours_state = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(1337)
    theirs = torch.empty_like(ours)
    for r in range(rows):
        for t in range(steps):
            theirs[t, r] = torch.multinomial(probs[t, r:r + 1], num_samples=1)[0]
    assert torch.equal(ours, theirs)
    assert torch.equal(ours_state, torch.cuda.get_rng_state())


# ---------------------------------------------------------------- 2. and 3. the text, beside nanoGPT's

@needs_cuda
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('name', REFERENCE_CASES)
def test_nanogpts_loop_prints_nanogpts_text(runs, name, dtype):
    want, got = texts(runs, name, dtype, 'loop')
    assert got == want, first_difference(name, dtype, want, got)


@needs_cuda
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('name', REFERENCE_CASES)
def test_kv_cache_and_batched_rows_print_nanogpts_text(runs, name, dtype):
    want, got = texts(runs, name, dtype, 'defaults')
    if dtype == 'float32' or got == want:
        assert got == want, first_difference(name, dtype, want, got)
        return
    # bf16: a one-token decode step (and a re-prefill of several rows) may use other kernels than nanoGPT's
    # full forward of one row, and round otherwise; once a token differs, the samples part
    same = identical_tokens(name, want, got)
    report(f"{name}, bfloat16, KV cache + rows together: new tokens identical to nanoGPT's before the first "
           f"difference, per sample: {same} ({first_difference(name, dtype, want, got)})")
    # each sample's first token comes from a prefill of the prompt alone, nanoGPT's own forward pass: a
    # difference there would be the draws (each row's generator), not the kernels
    assert len(same) == len(samples(want)) and min(same) >= 1, same


# ---------------------------------------------------------------- 4. compiled decode

@needs_cuda
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('rows', COMPILE_ROWS)
def test_compiled_decode_gives_eager_tokens(runs, rows, dtype):
    if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    eager, compiled = (runs.get('compile', (dtype, rows, c)) for c in (False, True))
    ended_well(eager, 'sample.py --compile=False')
    ended_well(compiled, 'sample.py --compile=True')
    assert 'compiling the decode step' in compiled.stderr
    assert 'Recompiling' not in compiled.stderr, compiled.stderr[-3000:]  # the second batch replayed the first's graph
    if dtype == 'float32' or compiled.stdout == eager.stdout:
        assert compiled.stdout == eager.stdout
        return
    # bf16: Inductor fuses the decode step's elementwise work, which rounds otherwise than eager's kernels
    same = [len(os.path.commonprefix([a, b])) - 1 for a, b in zip(samples(eager.stdout), samples(compiled.stdout))]
    report(f"compiled decode, bfloat16, {rows} rows: characters identical to eager's before the first "
           f"difference, per sample: {same}")
    assert len(same) == COMPILE_ROWS[rows] and min(same) >= 1, same  # the first token comes from the (eager) prefill


# ---------------------------------------------------------------- 5. memory

XL = dict(rows=10, prompt=16, new=48)  # the run after loading

MEASURE = os.path.join(ROOT, 'tests', 'measure.py')  # run as a script: a process of its own


@pytest.fixture(scope='module')
def gpt2_xl_hub():
    """gpt2-xl's shapes (1.56B parameters) with random bfloat16 weights, drawn on the GPU, as model.safetensors
    and config.json (Conv1D weights (in, out), as OpenAI's) in the offline hub cache under 'gpt2-xl'."""
    from safetensors.torch import save_file
    from gpt_config import BLOCK_WEIGHTS, GPT2_CONFIGS
    from model import GPT
    config = GPT2_CONFIGS['gpt2-xl']
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items() if k != 'lm_head.weight'}
    g = torch.Generator(device='cuda').manual_seed(0)
    tensors = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g, device='cuda', dtype=torch.bfloat16) * 0.02 if len(shape) == 2 else \
            torch.zeros(shape, device='cuda', dtype=torch.bfloat16)
        tensors[k] = (t.t() if k.endswith(BLOCK_WEIGHTS) else t).contiguous().cpu()
    folder = hub_snapshot('gpt2-xl')
    save_file(tensors, os.path.join(folder, 'model.safetensors'))
    del tensors
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(dict(model_type='gpt2', n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                       n_positions=config.block_size, vocab_size=config.vocab_size), f)
    return folder


@needs_cuda
def test_gpt2_xl_loads_in_bf16_within_its_weights_and_kv_cache(gpt2_xl_hub):
    from gpt_config import GPT2_CONFIGS
    r = subprocess.run([sys.executable, MEASURE, 'gpt2_xl_on_cuda', *map(str, XL.values())], capture_output=True,
                       text=True, env=dict(os.environ), timeout=600)
    ended_well(r, 'loading gpt2-xl')
    weights, loaded, peak, host = map(int, r.stdout.split()[-4:])
    c = GPT2_CONFIGS['gpt2-xl']
    kv = 2 * c.n_layer * XL['rows'] * (XL['prompt'] + XL['new']) * c.n_embd * 2  # keys and values, bf16
    report(f"gpt2-xl bfloat16 on {torch.cuda.get_device_name()}: weights {weights / 1e9:.3f} GB, KV cache "
           f"{kv / 1e6:.1f} MB ({XL['rows']} rows x {XL['prompt'] + XL['new']} positions); peak GPU memory "
           f"{loaded / 1e9:.3f} GB loaded, {peak / 1e9:.3f} GB after sampling "
           f"({peak / (weights + kv):.3f}x weights + KV cache); peak host RSS {host / 1e9:.2f} GB")
    assert 3.0e9 < weights < 3.3e9
    assert peak <= 1.1 * (weights + kv), peak / (weights + kv)


# ---------------------------------------------------------------- 6. the script, without a GPU

@pytest.mark.skipif(CUDA, reason='this machine has a CUDA GPU: tools/gpu_check.sh runs its checks here')
def test_gpu_check_without_a_gpu_is_one_error_line():
    r = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'gpu_check.sh')], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=300)
    check_error(r, 'no CUDA GPU', 'torch.cuda.is_available() is False', others=())
    assert r.stdout == ''
