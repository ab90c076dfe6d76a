"""
Loading a GPT: a checkpoint nanoGPT's train.py wrote, OpenAI's GPT-2 from the Hugging Face hub, or
any GPT-2-architecture model in Hugging Face's layout. Every loader has one signature,
(cls, source, dtype=torch.float32, device='cpu', quantize=None) -> a cls (model.GPT) in eval mode:
the class is given, never imported, so that model.py's GPT.from_pretrained may call this file
while this file imports only gpt_config.py of the model (one way). Every loader lands each
tensor once (quantize='int8' or 'int4': weight-only Linears, quantized as they are read): the
model is built on the meta device (no memory, no random init), the file is memory-mapped, and each
tensor is copied only if its dtype or device changes.

References: nanoGPT's GPT.from_pretrained (the Conv1D transposes); gpt-fast's _load_model (meta
device + mmap + load_state_dict(assign=True)); nanochat's checkpoint_manager.py.
"""
import json
import os
import pickle
import re
from dataclasses import replace

import torch

from cpu import quantized_cache
from common import LoadError, brief, out_of_memory, trim_heap
from gpt_config import BLOCK_WEIGHTS, GPT2_CONFIGS, GPTConfig, param_dtype
from cpu.quantize import QUANTIZERS, is_matmul_weight, quantize_weight

ROOT = os.path.dirname(os.path.abspath(__file__))


def load_model(cls, init_from, out_dir, dtype=torch.float32, device='cpu', quantize=None):
    """The model sample.py's init_from names, a cls (model.GPT) in eval mode: 'resume'
    (out_dir/ckpt.pt, see from_checkpoint), one of GPT2_CONFIGS (always the hub's, see
    from_pretrained), a local directory or a Hugging Face hub id of a GPT-2-architecture model
    (see from_hf). dtype (a torch.dtype), device and quantize as in assemble. Raises LoadError,
    also for running out of memory while loading."""
    try:
        if init_from == 'resume':
            ckpt_path = os.path.join(out_dir, 'ckpt.pt')
            if not os.path.isfile(ckpt_path):
                demo = os.path.relpath(os.path.join(ROOT, 'out-shakespeare-char'))
                demo = demo if not demo.startswith('..') else os.path.join(ROOT, 'out-shakespeare-char')
                raise LoadError(f"no checkpoint at {os.path.abspath(ckpt_path)}: train one with train.py, sample "
                                f"the bundled demo with --out_dir={demo}, or GPT-2 with --init_from=gpt2")
            return from_checkpoint(cls, ckpt_path, dtype, device, quantize)
        if init_from in GPT2_CONFIGS:  # always the hub's, even if a folder of that name is here
            return from_pretrained(cls, init_from, dtype, device, quantize)
        if os.path.isdir(init_from):
            return from_hf(cls, init_from, dtype, device, quantize)
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", init_from) or init_from.startswith(('.', '/')) or '--' in init_from:
            raise LoadError(f"--init_from={init_from!r} is neither a local directory nor a hub id: use 'resume' "
                            f"(with --out_dir), 'gpt2' to 'gpt2-xl', the Hugging Face hub id of a GPT-2-architecture "
                            f"model, or a local directory with config.json and model.safetensors")
        try:
            return from_hf(cls, init_from, dtype, device, quantize)
        except LoadError as e:
            raise LoadError(f"{e}; --init_from also takes 'resume' or 'gpt2' to 'gpt2-xl'") from None
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        dtype_name = str(dtype).replace('torch.', '')
        raise LoadError(f"out of memory while loading the model in {dtype_name} on {device}: free memory, or use "
                        f"--dtype=bfloat16 or a smaller model ({type(e).__name__}: {brief(e, 120)})") from None


def assemble(cls, config, tensors, where, dtype=torch.float32, device='cpu', quantize=None, wte_view=None,
             premade=None):
    """A cls (model.GPT) of config built on the meta device from tensors, an iterable of (name,
    tensor) in our state-dict names (the tied lm_head.weight may be left out), each landed in its
    dtype (see gpt_config.param_dtype) on device, then assigned without a copy. Where that rounds
    wte (a float32 file in bf16 / fp16), wte's lookup keeps the file's rows, as nanoGPT's autocast
    reads them (see lookup_table; wte_view: a function returning the file's wte through a mapping
    of its own). quantize='int8': then every Linear (and the tied wte / lm_head) becomes int8
    weight-only (cpu.int8.quantize_int8_), one at a time; 'int4': every Block Linear int4 in groups
    of 32, the tied wte / lm_head int8 (cpu.int4.quantize_int4_); the other tensors are copied out
    of the file, so each layer's mapping closes once its weights are quantized and peak memory
    stays near the quantized bytes; premade: {matmul weight name: quantized module} to use instead
    of quantizing that tensor (read from quantized_cache). Raises LoadError naming where (the file)
    and the first unexpected, missing or wrongly shaped tensor."""
    with torch.device('meta'):
        model = cls(config)  # no memory, no random init: every tensor is assigned below
    expected = {k: v.shape for k, v in model.state_dict().items() if k != 'lm_head.weight'}
    sd, int8, table = {}, {}, None
    for name, t in tensors:
        if name not in expected:
            raise LoadError(f"{where}: unexpected tensor {name!r}; is this a GPT-2 model of the right size?")
        if t.shape != expected[name]:
            raise LoadError(f"{where}: weights do not match the config: {name!r} has shape {tuple(t.shape)}, "
                            f"expected {tuple(expected[name])} for {config.n_layer} layers x {config.n_embd}")
        if quantize and is_matmul_weight(name):
            int8[name] = (premade or {}).get(name) or quantize_weight(name, t, quantize)  # as it is read: the float weights never all resident
            sd[name] = torch.empty(t.shape, device='meta')  # replaced by the quantized module below
            del t
            trim_heap()  # the temporaries' holes, between the int8 weights
            continue
        if name == 'transformer.wte.weight' and dtype not in (t.dtype, torch.float32):
            table = lookup_table(t, device, wte_view)  # rows for the lookup; the rounded copy for lm_head
        landed = t.to(device=device, dtype=param_dtype(name, dtype))  # the one copy, if any
        if landed.data_ptr() == t.data_ptr() and (quantize or not is_matmul_weight(name)):
            # small (LayerNorm, biases, wpe): a copy holds no reference to the file's mapping, so
            # each layer's mapping, and its resident pages, go once its matmul weights are
            # converted (another dtype here, or a weight layout in cpu.layout.choose_linear_layout_)
            landed = landed.clone()
        sd[name] = landed
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise LoadError(f"{where}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    sd['lm_head.weight'] = sd['transformer.wte.weight']
    model.load_state_dict(sd, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True breaks the tie: restore it
    model.transformer.wte.table = table  # (after load_state_dict, which drops a table)
    if quantize:
        QUANTIZERS[quantize](model, dtype, int8)
    return model.eval()


def assemble_quantized(cls, config, tensors, where, dtype=torch.float32, device='cpu', quantize=None, wte_view=None):
    """assemble, through the cache of quantized weights (quantized_cache) when quantize is set and
    the model lands on the CPU: a file quantized before is read from the cache (tensors is then
    not read), else quantized here and written to it. where: the source file's path."""
    if not quantize or torch.device(device).type != 'cpu':
        return assemble(cls, config, tensors, where, dtype, device, quantize, wte_view)
    cache, key = quantized_cache.cache_file(where, quantize, dtype)
    if cache:
        with torch.device('meta'):
            shapes = {k: v.shape for k, v in cls(config).state_dict().items() if k != 'lm_head.weight'}
        hit = quantized_cache.load(cache, key, shapes, quantize)
        if hit:
            return assemble(cls, config, hit[0], cache, dtype, device, quantize, premade=hit[1])
    model = assemble(cls, config, tensors, where, dtype, device, quantize, wte_view)
    if cache:
        quantized_cache.save(model, cache, key)
    return model


def lookup_table(t, device, wte_view=None):
    """wte's rows as the file holds them, (vocab_size, n_embd) in the file's dtype (float32), for
    wte's lookup (model.Embedding.table) while lm_head multiplies by the copy rounded to bf16 / fp16.
    t: the file's wte, as assemble reads it. On CPU, from a memory-mapped file: wte_view(), a view
    through a mapping of its own, whose pages the load never reads (t's mapping has all of them
    resident once the rounded copy is made), so only the rows looked up ever become resident:
    no float32 copy (gpt2-xl's would be 321 MB). On CPU without wte_view: t itself if it is memory
    of its own (a file read whole), else a copy, which frees t's mapping. On CUDA: a copy on the
    GPU (4 bytes x vocab_size x n_embd, a tenth of the bf16 weights): a lookup in host memory would
    move the token ids off the GPU at every step, a sync that no CUDA graph can hold."""
    if torch.device(device).type != 'cpu':
        return t.to(device)
    view = wte_view() if wte_view is not None and not t.untyped_storage().resizable() else None
    if view is not None and view.shape == t.shape and view.dtype == t.dtype:
        return view
    return t if t.untyped_storage().resizable() else t.clone()


# -----------------------------------------------------------------------------
# nanoGPT checkpoints

def from_checkpoint(cls, ckpt_path, dtype=torch.float32, device='cpu', quantize=None):
    """A checkpoint that nanoGPT's train.py (or ours) wrote: a dict with 'model' (state dict, maybe
    with torch.compile's '_orig_mod.' prefix and pre-2.0 'attn.bias' mask buffers) and 'model_args'
    (GPTConfig fields). Weights-only unpickling: a file that carries code is refused, never run.
    The returned model's train_config is the checkpoint's 'config' dict ({} if none): sample.py
    finds data/<dataset>/meta.pkl through it, as nanoGPT does. Raises LoadError."""
    def wte_view():  # the file mapped anew: none of its pages read yet (see lookup_table)
        sd = torch.load(ckpt_path, map_location='cpu', weights_only=True, mmap=True)['model']
        return sd.get('transformer.wte.weight', sd.get('_orig_mod.transformer.wte.weight'))
    try:
        problem = checkpoint_problem(ckpt_path)  # garbage never reaches the unpickler
    except OSError as e:
        raise LoadError(f"{ckpt_path}: cannot be read ({e.strerror or e})") from None
    if problem:
        raise LoadError(f"{ckpt_path}: not a readable checkpoint, truncated or corrupt ({problem}): copy or "
                        f"train it again")
    mapped = True
    try:
        try:
            checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError as e:
            if 'mmap' not in str(e):
                raise
            checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True)  # legacy format
            mapped = False  # read whole: no mapping to view
    except pickle.UnpicklingError as e:
        raise LoadError(f"{ckpt_path}: refused, it holds objects other than tensors and plain data, "
                        f"which could run code ({brief(e, 160)})") from None
    except Exception as e:
        if out_of_memory(e):
            raise LoadError(f"out of memory reading {ckpt_path} ({brief(e)}): free memory") from None
        raise LoadError(f"{ckpt_path}: cannot be read ({type(e).__name__}: {brief(e)})") from None
    if not isinstance(checkpoint, dict) or not {'model', 'model_args'} <= checkpoint.keys():
        raise LoadError(f"{ckpt_path}: not a nanoGPT checkpoint, it needs 'model' and 'model_args' entries")
    try:
        config = GPTConfig(**checkpoint['model_args'])
    except (TypeError, ValueError) as e:
        raise LoadError(f"{ckpt_path}: bad model_args ({e})") from None
    unwanted_prefix = '_orig_mod.'  # left by torch.compile
    tensors = ((k[len(unwanted_prefix):] if k.startswith(unwanted_prefix) else k, v)
               for k, v in checkpoint['model'].items())
    tensors = ((k, v) for k, v in tensors if k != 'lm_head.weight' and not k.endswith('.attn.bias'))  # tied; pre-2.0 masks
    model = assemble_quantized(cls, config, tensors, ckpt_path, dtype, device, quantize, wte_view if mapped else None)
    config_dict = checkpoint.get('config')
    model.train_config = config_dict if isinstance(config_dict, dict) else {}
    return model


# -----------------------------------------------------------------------------
# Hugging Face GPT-2 (safetensors)

def from_pretrained(cls, model_type, dtype=torch.float32, device='cpu', quantize=None, override_args=None):
    """OpenAI's GPT-2 weights from the Hugging Face hub: 'gpt2', 'gpt2-medium', 'gpt2-large' or
    'gpt2-xl' (always the hub models). The hub's local cache is read first (HF_HOME;
    HF_HUB_OFFLINE=1 works once cached); only model.safetensors is read, never a pickle.
    GELU is the tanh approximation, as in GPT-2. override_args: as nanoGPT's, only 'dropout'.
    Raises LoadError."""
    if model_type not in GPT2_CONFIGS:
        raise LoadError(f"unknown GPT-2 model {model_type!r}: use one of {', '.join(GPT2_CONFIGS)}")
    override_args = override_args or {}
    assert all(k == 'dropout' for k in override_args), "only dropout can be overridden"
    config = replace(GPT2_CONFIGS[model_type], **override_args)  # a copy: model.config must not be the table's entry
    return from_safetensors(cls, hub_file(model_type, 'model.safetensors'), config, dtype, device, quantize)


def from_hf(cls, name, dtype=torch.float32, device='cpu', quantize=None):
    """Any GPT-2-architecture model in Hugging Face's layout: a local directory holding config.json
    and model.safetensors, or a hub id (e.g. 'distilgpt2', a fine-tune) whose config.json says
    model_type 'gpt2'. Dimensions come from config.json (see config_from_hf). Raises LoadError."""
    local = os.path.isdir(name)
    config_path = os.path.join(name, 'config.json') if local else hub_file(name, 'config.json')
    try:
        with open(config_path, encoding='utf-8') as f:
            hf_config = json.load(f)
    except (OSError, ValueError) as e:
        raise LoadError(f"{config_path}: cannot read a JSON config ({e})") from None
    config = config_from_hf(hf_config, config_path)
    path = os.path.join(name, 'model.safetensors') if local else hub_file(name, 'model.safetensors')
    if not os.path.isfile(path):
        raise LoadError(f"{name}: no model.safetensors (pickled pytorch_model.bin files are not read: "
                        f"convert it with transformers' save_pretrained(safe_serialization=True))")
    return from_safetensors(cls, path, config, dtype, device, quantize)


def from_safetensors(cls, path, config, dtype=torch.float32, device='cpu', quantize=None):
    """A cls (model.GPT) of config from a Hugging Face GPT-2 model.safetensors file. The four
    Conv1D weights are transposed ((in, out) -> nn.Linear's (out, in), a column-major view, no
    copy); keys may carry Hugging Face's 'transformer.' prefix or not; the 'attn.bias' /
    'attn.masked_bias' mask buffers and the tied 'lm_head.weight' are skipped. Raises LoadError."""
    from safetensors import SafetensorError, safe_open

    def tensors():
        for key, t in map_by_layer(path, lazy=('wte.weight',) if quantize else ()):  # no copy yet
            name = key if key.startswith('transformer.') else 'transformer.' + key
            if name.endswith(('.attn.bias', '.attn.masked_bias')) or key == 'lm_head.weight':
                continue  # causal-mask buffers and the tied head: not parameters of ours
            yield name, (t.t() if name.endswith(BLOCK_WEIGHTS) else t)  # OpenAI's Conv1D (in, out) -> (out, in)

    def wte_view():  # the file mapped anew: none of its pages read yet (see lookup_table)
        with safe_open(path, framework='pt') as f:
            return next((f.get_tensor(k) for k in f.keys() if k in ('wte.weight', 'transformer.wte.weight')), None)
    try:
        return assemble_quantized(cls, config, tensors(), path, dtype, device, quantize, wte_view)
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        if out_of_memory(e):
            raise LoadError(f"out of memory reading {path} ({e}): free memory, or use --dtype=bfloat16 "
                            f"or a smaller model") from None
        problem = safetensors_problem(path)
        if problem:
            raise LoadError(f"{path}: not a readable safetensors file, truncated or corrupt ({problem}): "
                            f"download it again") from None
        raise LoadError(f"{path}: cannot be read ({type(e).__name__}: {brief(e)})") from None


def safetensors_problem(path):
    """None if the file at path is whole as far as its safetensors header tells (an 8-byte
    little-endian header length, a JSON header, every tensor's data_offsets inside the file),
    else what is wrong, in a few words."""
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(8)
            n = int.from_bytes(head, 'little')
            if len(head) < 8 or n > size - 8:
                return f"{size:,} bytes: the header is cut off"
            header = json.loads(f.read(n))
        end = max((v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "the header is not a safetensors header"
    except OSError as e:
        return e.strerror or str(e)
    if 8 + n + end > size:
        return f"the header describes {8 + n + end:,} bytes, the file has {size:,}"
    return None


LEGACY_MAGIC = (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')  # what torch.save pickled first before zip files


def checkpoint_problem(path):
    """None if the file at path is a whole zip archive (torch.save's format since PyTorch 1.6: every
    entry inside the file) or a legacy torch.save file (a pickle that begins with torch's magic
    number), else what is wrong. Reads the header and the zip directory, never unpickles.
    Raises OSError if the file cannot be read."""
    import zipfile
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(32)
        if head[:4] != b'PK\x03\x04':
            legacy = head[:1] == b'\x80' and LEGACY_MAGIC in head  # pickle's PROTO, then the number
            return None if legacy else "not a torch.save file"
        with zipfile.ZipFile(path) as z:
            if any(i.header_offset + i.compress_size > size for i in z.infolist()):
                return "an entry ends beyond the end of the file"
    except zipfile.BadZipFile:
        return f"{size:,} bytes, the end of the archive is missing"
    return None


def map_by_layer(path, lazy=()):
    """Yield (key, tensor) for every tensor of a safetensors file, memory-mapped (no copy).

    The file is mapped anew for each transformer layer ('h.N.' keys; the rest together), so that
    a load which converts (copies to another dtype or device, or quantizes) holds its copies plus
    one layer of the file: the pages of a mapping are released once it is closed and no tensor
    refers to it. Keys ending with one of lazy come as LazyTensors, read a slice of rows at a time
    (the embedding, quantized without ever being whole in memory). Raises OSError /
    SafetensorError on a bad file.
    """
    from safetensors import safe_open
    with safe_open(path, framework='pt') as f:
        keys = list(f.keys())
    layers = {}
    for key in keys:
        m = re.search(r'(?:^|\.)h\.(\d+)\.', key)
        layers.setdefault(m.group(1) if m else None, []).append(key)
    for group in layers.values():
        with safe_open(path, framework='pt') as f:
            for key in group:
                yield key, (LazyTensor(path, key) if key.endswith(lazy) else f.get_tensor(key))


class LazyTensor:
    """A 2-D tensor of a safetensors file read lazily: shape, size(dim), and rows[i:j] as a torch
    tensor. Each read maps the file anew and unmaps it, so its pages do not stay resident."""

    def __init__(self, path, key):
        from safetensors import safe_open
        self.path, self.key = path, key
        with safe_open(path, framework='pt') as f:
            self.shape = torch.Size(f.get_slice(key).get_shape())

    def size(self, dim):
        return self.shape[dim]

    def __getitem__(self, index):
        from safetensors import safe_open
        with safe_open(self.path, framework='pt') as f:
            return f.get_slice(self.key)[index].clone()  # a copy: the mapping closes on return


def config_from_hf(c, where='config.json'):
    """GPTConfig from a Hugging Face GPT-2 config.json dict: n_layer, n_head, n_embd,
    n_positions (block_size), vocab_size, activation_function, layer_norm_epsilon.
    Raises LoadError naming the first field this model cannot represent."""
    def bad(field, why):
        raise LoadError(f"{where}: {field}={c.get(field)!r} {why}; this GPT implements plain GPT-2 only")
    if c.get('model_type') != 'gpt2':
        bad('model_type', "is not 'gpt2'")
    gelu = {'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu': 'exact'}.get(c.get('activation_function', 'gelu_new'))
    if gelu is None:
        bad('activation_function', "is not implemented (gelu_new, gelu_pytorch_tanh or gelu are)")
    if c.get('add_cross_attention'):
        bad('add_cross_attention', "needs cross-attention layers")
    if c.get('scale_attn_by_inverse_layer_idx'):
        bad('scale_attn_by_inverse_layer_idx', "scales attention per layer")
    if c.get('scale_attn_weights', True) is not True:
        bad('scale_attn_weights', "turns off the 1/sqrt(head size) attention scale")
    n_embd = c.get('n_embd', 768)
    if c.get('n_inner') not in (None, 4 * n_embd):
        bad('n_inner', f"is not 4 * n_embd ({4 * n_embd})")
    try:
        return GPTConfig(block_size=int(c.get('n_positions', 1024)), vocab_size=int(c.get('vocab_size', 50257)),
                         n_layer=int(c.get('n_layer', 12)), n_head=int(c.get('n_head', 12)), n_embd=int(n_embd),
                         dropout=0.0, bias=True, gelu=gelu, layer_norm_eps=float(c.get('layer_norm_epsilon', 1e-5)))
    except (TypeError, ValueError) as e:
        raise LoadError(f"{where}: a dimension is not a number ({e})") from None


def hub_file(repo_id, filename):
    """Local path of filename in a Hugging Face hub model repo: the cache (HF_HOME) first, then a
    download with the hub's progress bar unless HF_HUB_OFFLINE=1. Raises LoadError, one line
    saying what is missing and how to get it."""
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import logging as hf_logging
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return cached
    try:
        if not constants.HF_HUB_OFFLINE:  # no network at all: say so now, not after 20 s of retries
            socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        hf_logging.set_verbosity_error()  # its retry warnings would bury our one line
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # offline, network down, no such repo: all leave the user the same choices
        why = ('HF_HUB_OFFLINE=1 and it is not cached' if constants.HF_HUB_OFFLINE else
               'no network' if isinstance(e, OSError) else type(e).__name__)
        raise LoadError(f"cannot get {filename} of {repo_id!r} from the Hugging Face hub ({why}): run once with "
                        f"network (HF_HUB_OFFLINE unset) to cache it in {constants.HF_HUB_CACHE} (under HF_HOME), "
                        f"or use a local directory with config.json and model.safetensors") from None
