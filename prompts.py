"""
The prompts sample.py conditions on: --start (text, or 'FILE:' and a UTF-8 file) or a --prompts
file of many (.jsonl: one {"prompt": "..."} object per line; anything else: one prompt per line),
read and checked before the model loads, then encoded with the model's tokenizer; and the batches
their samples are decoded in (plan_batches).
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
    """The prompts of a --prompts file, a list of str in file order, prompt i on line i + 1: a
    .jsonl file holds one JSON object with a string 'prompt' per line, any other file one prompt
    per line (its line break not included). Lines end at '\\n' or '\\r\\n' only: a form feed,
    U+2028 and the other characters str.splitlines breaks at stay inside a prompt. Blank lines
    at the end are ignored. Raises UserError naming the file and line for an empty line before
    the last prompt, a line that is not JSON, or an object without a string 'prompt', and for a
    file that is missing, not UTF-8 or holds no prompt."""
    lines = _read_text(path, f"prompts file {path!r}", newline='').split('\n')
    lines = [line[:-1] if line.endswith('\r') else line for line in lines]
    while lines and not lines[-1].strip():  # the file's last line break, and blank lines after the last prompt
        lines.pop()
    found = []
    for n, line in enumerate(lines, start=1):
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


def _read_text(path, what, newline=None):
    """The text of the UTF-8 file at path, less a leading byte-order mark (Notepad writes one);
    newline: open()'s (None: nanoGPT's universal newlines, '' the line breaks as they are)."""
    try:
        with open(path, 'r', encoding='utf-8-sig', newline=newline) as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{what} does not exist") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} is not UTF-8 text: save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {what}: {e.strerror}") from None


def encode_prompt(tok, prompt, vocab_size, out_dir, where=None):
    """The prompt's ids (a list of ints, at least one: an empty GPT-2 prompt is <|endoftext|>).
    where: which prompt it is for the messages ('prompts.txt, line 3'), or None (--start).
    Raises UserError for an empty character-level prompt, a character the tokenizer lacks or
    ids beyond vocab_size."""
    try:
        return _encode(tok, prompt, vocab_size, out_dir)
    except UserError as e:
        raise UserError(f"{where}: {e}" if where else str(e)) from None


def _encode(tok, prompt, vocab_size, out_dir):
    ids = tok.encode(prompt)  # a character-level tokenizer raises UserError on a character it lacks
    if not ids:
        if tok.eot_token is None:
            raise UserError("the prompt is empty: a character-level model needs at least one character, "
                            "e.g. a newline: --start=\"'\\n'\"")
        ids = [tok.eot_token]  # unconditional: GPT-2 starts from <|endoftext|>
    if max(ids) >= vocab_size:
        raise UserError(f"the prompt encodes to id {max(ids)}, beyond the model's vocabulary of {vocab_size}: "
                        f"is its meta.pkl missing from {out_dir} (or data/<dataset>/)?")
    return ids


def plan_batches(n_prompts, num_samples, batch_size=0, mix_prompts=True):
    """The batches that decode every prompt's num_samples samples, in prompt then sample order: a
    list of batches, each a list of (prompt index, sample index) pairs, all batch_size long but
    maybe the last (0: one batch of all of them). mix_prompts False (nanoGPT's loop, which cannot
    decode different prompts together): each prompt's samples in batches of their own, at most
    num_samples long. n_prompts, num_samples >= 1 and batch_size >= 0 are ints."""
    assert n_prompts >= 1 and num_samples >= 1 and batch_size >= 0, (n_prompts, num_samples, batch_size)
    if mix_prompts:
        samples = [(p, k) for p in range(n_prompts) for k in range(num_samples)]
        size = min(batch_size or len(samples), len(samples))
        return [samples[i:i + size] for i in range(0, len(samples), size)]
    size = min(batch_size or num_samples, num_samples)
    return [[(p, k) for k in range(i, min(i + size, num_samples))]
            for p in range(n_prompts) for i in range(0, num_samples, size)]
