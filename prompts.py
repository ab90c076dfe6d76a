"""
The prompts sample.py conditions on: --start (text, or 'FILE:' and a UTF-8 file) or a --prompts
file of many (.jsonl: one {"prompt": "..."} object per line; anything else: one prompt per line),
read and checked before the model loads, then encoded with the model's tokenizer.
"""
import json

from common import UserError


def read_prompt(start):
    """The prompt text: start itself, or the contents of the UTF-8 file named after 'FILE:'.
    Raises UserError for a file that is missing or not UTF-8 text."""
    if not start.startswith('FILE:'):
        return start
    path = start[5:]
    return _read_text(path, f"prompt file {path!r} (from --start=FILE:{path})")


def read_prompts(path):
    """The prompts of a --prompts file, a list of str in file order: a .jsonl file holds one JSON
    object with a string 'prompt' per line, any other file one prompt per line (its line break
    not included). Raises UserError naming the file and line for an empty line, a line that is not
    JSON, or an object without a string 'prompt', and for a file that is missing, not UTF-8 or
    holds no prompt."""
    text = _read_text(path, f"prompts file {path!r}")
    found = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            raise UserError(f"{path}, line {n}: empty line: write one prompt per line (in a .jsonl file, "
                            f"{{\"prompt\": \"...\"}}; there, an empty prompt is {{\"prompt\": \"\"}})")
        if not path.endswith('.jsonl'):
            found.append(line)
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}, line {n}: not valid JSON ({e}): write {{\"prompt\": \"...\"}}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get('prompt'), str):
            raise UserError(f"{path}, line {n}: needs an object with a string \"prompt\", like {{\"prompt\": \"...\"}}")
        found.append(obj['prompt'])
    if not found:
        raise UserError(f"prompts file {path!r} holds no prompt: write one per line")
    return found


def _read_text(path, what):
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{what} does not exist") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} is not UTF-8 text: save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {what}: {e.strerror}") from None


def encode_prompt(tok, prompt, vocab_size, out_dir):
    """The prompt's ids (a list of ints, at least one: an empty GPT-2 prompt is <|endoftext|>).
    Raises UserError for an empty character-level prompt or ids beyond vocab_size."""
    ids = tok.encode(prompt)
    if not ids:
        if tok.eot_token is None:
            raise UserError("the prompt is empty: a character-level model needs at least one character, "
                            "e.g. --start='\\n'")
        ids = [tok.eot_token]  # unconditional: GPT-2 starts from <|endoftext|>
    if max(ids) >= vocab_size:
        raise UserError(f"the prompt encodes to id {max(ids)}, beyond the model's vocabulary of {vocab_size}: "
                        f"is its meta.pkl missing from {out_dir} (or data/<dataset>/)?")
    return ids
