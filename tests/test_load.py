"""Loading: any GPT-2-architecture model from a hub id or a local directory, the same logits as
Hugging Face; clear errors; peak memory near one copy of the weights."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_sample, save_to_hub_cache
import load
from load import config_from_hf
from model import GPT, LoadError


@pytest.fixture(scope='module')
def distilgpt2():
    """A 6-layer GPT-2 (distilgpt2's shapes, exact GELU and eps 1e-6 to prove config.json is
    read) saved under the hub id 'distilgpt2' and returned with its snapshot directory."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=6, n_head=12, n_embd=768, n_positions=256, activation_function='gelu',
                     layer_norm_epsilon=1e-6)
    hf = GPT2LMHeadModel(cfg).eval()
    return hf, save_to_hub_cache(hf, 'distilgpt2')


@torch.no_grad()
@pytest.mark.parametrize('by', ['hub id', 'local directory'])
def test_any_gpt2_architecture_matches_hugging_face(distilgpt2, by):
    hf, snapshot = distilgpt2
    model = load.from_hf('distilgpt2' if by == 'hub id' else snapshot).eval()
    c = model.config
    assert (c.n_layer, c.block_size, c.gelu, c.layer_norm_eps) == (6, 256, 'exact', 1e-6)
    x = torch.randint(0, 50257, (2, 17))
    torch.testing.assert_close(model(x, targets=x)[0], hf(x).logits, atol=1e-5, rtol=0)


def test_local_directory_through_sample_py(distilgpt2, tmp_path):
    _, snapshot = distilgpt2
    r = run_sample(f'--init_from={snapshot}', '--start=Hi', '--num_samples=1', '--max_new_tokens=3', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('Hi')


@torch.no_grad()
def test_lands_in_the_requested_dtype(gpt2_hub):
    # as under nanoGPT's autocast: matmul weights and embeddings in bf16, LayerNorm's float32
    model = GPT.from_pretrained('gpt2', dtype=torch.bfloat16)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if '.ln_' in name else torch.bfloat16), name
    assert model.lm_head.weight is model.transformer.wte.weight
    full = GPT.from_pretrained('gpt2')
    for (name, p), q in zip(model.named_parameters(), full.parameters()):
        assert torch.equal(p, q.to(p.dtype)), name


@pytest.mark.parametrize('field, value', [
    ('add_cross_attention', True),
    ('activation_function', 'relu'),
    ('scale_attn_by_inverse_layer_idx', True),
    ('scale_attn_weights', False),
    ('n_inner', 1000),
    ('model_type', 'llama'),
])
def test_unrepresentable_config_names_the_field(field, value):
    c = dict(model_type='gpt2', n_layer=2, n_head=2, n_embd=64)
    c[field] = value
    with pytest.raises(LoadError, match=field):
        config_from_hf(c)


def test_unrepresentable_local_model_through_sample_py(distilgpt2, tmp_path):
    _, snapshot = distilgpt2
    d = tmp_path / 'model'
    d.mkdir()
    c = json.load(open(os.path.join(snapshot, 'config.json')))
    c['add_cross_attention'] = True
    (d / 'config.json').write_text(json.dumps(c))
    os.symlink(os.path.join(snapshot, 'model.safetensors'), d / 'model.safetensors')
    r = run_sample(f'--init_from={d}', '--num_samples=1', '--max_new_tokens=1', cwd=tmp_path)
    assert r.returncode == 2 and 'add_cross_attention' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.parametrize('name', ['gpt2-large', 'someone/unknown-model'])
def test_missing_weights_offline_is_one_line(name, tmp_path):
    r = run_sample(f'--init_from={name}', cwd=tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith('error: ') and name in line and 'HF_HOME' in line and 'local directory' in line


def test_gpt2_names_mean_the_hub_even_with_a_folder_of_that_name(gpt2_hub, tmp_path):
    (tmp_path / 'gpt2').mkdir()  # an empty folder called gpt2 must not shadow the hub model
    r = run_sample('--init_from=gpt2', '--start=Hi', '--num_samples=1', '--max_new_tokens=2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr


MEASURE = r'''
import sys, torch
sys.path.insert(0, sys.argv[1])
from model import GPT
def status(field):  # bytes; VmHWM is this process's peak RSS (getrusage's ru_maxrss survives exec from the parent)
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = status('VmRSS')
model = GPT.from_pretrained('gpt2')
for p in model.parameters():  # touch every weight, as sampling will
    p.sum()
peak = status('VmHWM')
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(before, peak, weights)
'''


def test_peak_memory_while_loading_is_about_one_copy(gpt2_hub):
    # a fresh process: the rise of peak RSS over what it held before loading
    out = subprocess.run([sys.executable, '-c', MEASURE, ROOT], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr
    before, peak, weights = map(int, out.stdout.split())
    assert weights > 400e6  # the gpt2 shapes: 124M float32 parameters
    assert peak - before < 1.3 * weights, (peak - before) / weights


def test_resume_and_safetensors_paths_do_not_import_transformers(gpt2_hub):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import load; load.from_pretrained('gpt2'); "
            "load.from_checkpoint(sys.argv[1] + '/out-shakespeare-char/ckpt.pt'); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code, ROOT], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'


def test_corrupt_safetensors_is_one_line(distilgpt2, tmp_path):
    _, snapshot = distilgpt2
    d = tmp_path / 'model'
    d.mkdir()
    (d / 'config.json').write_bytes(open(os.path.join(snapshot, 'config.json'), 'rb').read())
    (d / 'model.safetensors').write_bytes(open(os.path.join(snapshot, 'model.safetensors'), 'rb').read()[:5000])
    r = run_sample(f'--init_from={d}', cwd=tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert 'model.safetensors' in r.stderr.strip().splitlines()[-1] and 'corrupt' in r.stderr
    (d / 'model.safetensors').write_bytes(os.urandom(3000))
    r = run_sample(f'--init_from={d}', cwd=tmp_path)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'model.safetensors' in r.stderr
