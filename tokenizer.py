"""
The tokenizer of a model, as nanoGPT's sample.py chooses it: a character-level vocabulary from a
meta.pkl (looked for in out_dir, then in data/<dataset>/), else GPT-2's BPE through tiktoken.
A meta.pkl is read with an unpickler that builds only plain data, so it cannot run code.
"""
import os
import pickle
import sys
from collections import namedtuple

from common import LoadError, UserError, brief

Tokenizer = namedtuple('Tokenizer', 'encode decode token_bytes n_vocab eot_token')
Tokenizer.__doc__ = """encode: str -> list of ids (raises UserError on a character the vocabulary
lacks); decode: list of ids -> str; token_bytes: id -> bytes (for streaming UTF-8);
n_vocab: ids the tokenizer can decode (the model's vocab_size may be padded beyond it);
eot_token: the <|endoftext|> id, or None (character level)."""


def meta_paths(init_from, out_dir, train_config):
    """Where a character-level meta.pkl may be, in order: out_dir/meta.pkl, then
    data/<dataset>/meta.pkl (dataset from the checkpoint's config dict, as nanoGPT looks);
    none unless init_from is 'resume'."""
    if init_from != 'resume':
        return []
    paths = [os.path.join(out_dir, 'meta.pkl')]
    dataset = train_config.get('dataset')
    if isinstance(dataset, str) and dataset:
        paths.append(os.path.join('data', dataset, 'meta.pkl'))
    return paths


def load_tokenizer(paths, vocab_size):
    """A Tokenizer: the first character-level meta.pkl of paths that exists, else GPT-2 BPE
    (tiktoken), which a model with fewer than GPT-2's 50257 ids (vocab_size) cannot be using.
    Prints which one it took on stderr, as nanoGPT does on stdout. Raises LoadError."""
    meta_path = next((p for p in paths if os.path.isfile(p)), None)
    if meta_path:
        print(f"Loading meta from {meta_path}...", file=sys.stderr)
        stoi, itos = load_meta(meta_path)
        if len(itos) != vocab_size:
            raise LoadError(f"{meta_path} has a vocabulary of {len(itos)} characters, the model {vocab_size} ids: "
                            f"it belongs to another model; put the meta.pkl written with this checkpoint beside it")
        return char_tokenizer(stoi, itos, meta_path)
    enc = gpt2_encoding()
    if vocab_size < enc.n_vocab:
        raise LoadError(f"the model's vocabulary has {vocab_size} ids, too few for GPT-2's encoding: its "
                        f"character-level meta.pkl is missing (looked at {' and '.join(paths) or 'nothing'})")
    print("No meta.pkl found, assuming GPT-2 encodings...", file=sys.stderr)
    return Tokenizer(lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}), enc.decode,
                     enc.decode_single_token_bytes, enc.n_vocab, enc.eot_token)


def gpt2_encoding():
    """tiktoken's GPT-2 encoding. Its two BPE files are downloaded once into tiktoken's cache
    (TIKTOKEN_CACHE_DIR, else a data-gym-cache folder in the temp dir); raises LoadError, one
    line, where they are neither cached nor downloadable."""
    import tempfile
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError, a proxy's or a cache folder's error
        cache = os.environ.get('TIKTOKEN_CACHE_DIR') or os.environ.get('DATA_GYM_CACHE_DIR') or \
            os.path.join(tempfile.gettempdir(), 'data-gym-cache')
        raise LoadError(f"cannot get GPT-2's BPE files for tiktoken ({type(e).__name__}; not in its cache {cache}): "
                        f"run once with network, or set TIKTOKEN_CACHE_DIR to a folder holding them") from None


def char_tokenizer(stoi, itos, where):
    """The Tokenizer of a character-level vocabulary: stoi {char: id}, itos {id: char}; where
    (the meta.pkl's path) names it in the error for a character it lacks."""
    def encode(s):
        unknown = sorted(set(c for c in s if c not in stoi))
        if unknown:
            shown = ', '.join(repr(c) for c in unknown[:5]) + (', ...' if len(unknown) > 5 else '')
            raise UserError(f"the prompt has {len(unknown)} character(s) the model's vocabulary ({where}) "
                            f"lacks: {shown}")
        return [stoi[c] for c in s]
    return Tokenizer(encode, lambda l: ''.join(itos[i] for i in l), lambda i: itos[i].encode('utf-8'),
                     len(itos), None)


class _PlainUnpickler(pickle.Unpickler):
    """Builds only plain data (dict, list, tuple, str, int, float): any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def load_meta(path):
    """(stoi, itos) of the character-level meta.pkl at path, as nanoGPT's prepare.py writes it:
    stoi {str: int}, itos {int: str}. Raises LoadError for a file that is not such plain data."""
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except Exception as e:
        raise LoadError(f"{path}: not a plain-data meta.pkl ({type(e).__name__}: {brief(e, 120)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get('stoi'), dict) or not isinstance(meta.get('itos'), dict):
        raise LoadError(f"{path}: a meta.pkl needs 'stoi' and 'itos' dicts")
    stoi, itos = meta['stoi'], meta['itos']
    if not all(type(i) is int and isinstance(c, str) for c, i in stoi.items()) or \
            not all(type(i) is int and isinstance(c, str) for i, c in itos.items()):
        raise LoadError(f"{path}: stoi must map characters to ids and itos ids to characters")
    return stoi, itos
