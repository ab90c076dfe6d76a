"""
How sample.py prints what it generates: nanoGPT's text (each sample followed by a line of dashes,
the first row of each batch streamed token by token as it is produced), or JSON Lines, one object
per sample with its token ids and their log-probabilities. Samples end at <|endoftext|>, at a stop
string, or after max_new_tokens.
"""
import codecs
import json
import re
import sys
import time
from typing import NamedTuple

DASHES = '\n---------------\n'
_ESCAPES = {'n': '\n', 'r': '\r', 't': '\t', '\\': '\\'}


def unescape(text):
    """text (a str) with the escapes \\n, \\r, \\t and \\\\ turned into the characters they name,
    as llama.cpp's --escape does: --stop='\\n\\n' typed in a shell reaches us as backslash, n,
    backslash, n. A backslash before any other character stays as it is."""
    return re.sub(r'\\([nrt\\])', lambda m: _ESCAPES[m.group(1)], text)


class Row(NamedTuple):
    """One row of a batch: which sample of which prompt it is, and the prompt as printed."""
    prompt_index: int
    sample_index: int
    prompt: str  # the prompt's text
    shown: list  # the prompt's ids as printed (an empty GPT-2 prompt's implicit <|endoftext|> left out)


class _Sample:
    """A row's sample as it grows: its ids, their log-probabilities, its text (with stop strings)."""

    def __init__(self, stop):
        self.tokens, self.logprobs, self.finish_reason = [], [], None
        self.text, self.stop = '', stop  # the completion decoded so far, only kept when there are stop strings
        self.utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')

    def add(self, token, logprob, token_bytes):
        """Append one id; returns the index in self.text where a stop string starts, or None."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if not self.stop:
            return None
        before = len(self.text)
        self.text += self.utf8.decode(token_bytes)
        start = max(0, before - max(map(len, self.stop)) + 1)  # a stop string may span tokens
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def held_back(self):
        """How many characters at the end of self.text could still begin a stop string."""
        return max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)


def write_batch(out, decode, batch, tok, output='text', stream=True, eot=None, stop=(), on_written=None):
    """Run one batch's decode and write its samples to out (a text stream), in row order.

    decode(stopped): the batch's steps, (ids (B, 1) LongTensor, logprobs (B, 1) or None) each
    (generate.generate_steps with all else bound; logprobs for JSONL); stopped() returns the rows
    ended at a stop string so far, so that the loop can end once every row has. batch: its B
    Rows. tok: a tokenizer.Tokenizer. output: 'text', nanoGPT's: each sample as the prompt's text,
    the completion and a line of dashes; row 0 streamed if stream (through an incremental UTF-8
    decoder: a character split across tokens is never printed in halves, and text that may begin
    a stop string is held back until it is known not to); or 'jsonl', see sample_json. eot: a row
    ends before its first eot id (None: never). stop: strings; a row ends before the first of them
    in its completion. on_written(tokens, samples): called after each flush that wrote something,
    with how many ids and whole samples reached out (row 0's ids as they stream).
    Returns the number of ids generated (up to each row's end).
    """
    samples = [_Sample(stop) for _ in batch]
    streaming = stream and output == 'text'
    plain = codecs.getincrementaldecoder('utf-8')(errors='replace')  # row 0 streamed without stop strings
    if streaming:
        out.write(plain.decode(b''.join(tok.token_bytes(i) for i in batch[0].shown)))
        out.flush()
    written, printed = 0, 0  # rows written; characters of row 0's completion streamed (with stop strings)
    counted = 0  # row 0's ids passed to on_written while it streams
    for step in decode(stopped=lambda: [r for r, s in enumerate(samples) if s.finish_reason == 'stop']):
        first = _add_step(samples, step, tok, eot)
        if streaming and not stop and first is not None:
            out.write(plain.decode(first))
        if streaming and stop:
            printed = _stream_text(out, samples[0], printed)
        if streaming:
            out.flush()
            if on_written and len(samples[0].tokens) > counted:  # counted as they go: a broken pipe may cut the row
                on_written(len(samples[0].tokens) - counted, 0)
                counted = len(samples[0].tokens)
        while written < len(batch) and samples[written].finish_reason and (written or not streaming):
            _write(out, tok, batch[written], samples[written], output, on_written)
            written += 1
    for s in samples:
        s.finish_reason = s.finish_reason or 'length'
    if streaming and written == 0:  # row 0: the rest of its text, then its dashes
        s = samples[0]
        tail = s.text[printed:] + s.utf8.decode(b'', final=True) if stop else plain.decode(b'', final=True)
        out.write(tail + DASHES)
        out.flush()
        if on_written:
            on_written(len(s.tokens) - counted, 1)
        written = 1
    for r in range(written, len(batch)):
        _write(out, tok, batch[r], samples[r], output, on_written)
    return sum(len(s.tokens) for s in samples)


def _stream_text(out, s, printed):
    """Write the streamed row's completion s.text from character printed on, less the end that may
    still begin a stop string (all of it once the row ended); returns the characters now written."""
    end = len(s.text) if s.finish_reason else len(s.text) - s.held_back()
    out.write(s.text[printed:end])
    return max(printed, end)


def _add_step(samples, step, tok, eot):
    """Add one step of the generator (ids (B, 1), logprobs (B, 1) or None) to the B samples still
    going: a row ends at eot, or before a stop string. Returns row 0's new token as bytes, or None
    if row 0 took none."""
    ids, logprobs = step
    lps = logprobs[:, 0].tolist() if logprobs is not None else [None] * len(samples)
    first = None
    for r, (i, lp) in enumerate(zip(ids[:, 0].tolist(), lps)):
        s = samples[r]
        if s.finish_reason:
            continue
        if i == eot:
            s.finish_reason = 'eot'
            continue
        at = s.add(i, lp, tok.token_bytes(i))
        if at is not None:
            s.text, s.finish_reason = s.text[:at], 'stop'
        if r == 0:
            first = tok.token_bytes(i)
    return first


def _write(out, tok, row, s, output, on_written):
    """Write one finished sample (not a streamed row 0) and flush."""
    if output == 'jsonl':
        out.write(json.dumps(sample_json(row, s, tok)) + '\n')
    elif s.finish_reason == 'stop':
        out.write(tok.decode(row.shown) + s.text + DASHES)
    else:
        out.write(tok.decode(row.shown + s.tokens) + DASHES)  # nanoGPT's text: one decode of prompt and sample
    out.flush()
    if on_written:
        on_written(len(s.tokens), 1)


def sample_json(row, s, tok):
    """The JSON object of one sample: prompt_index, sample_index, prompt, completion (the generated
    text only, cut before a stop string), tokens (the completion's ids; after a stop string the
    last one may also hold the stop string's start), logprobs (natural log of the probability the
    model gave each of tokens, at temperature 1), finish_reason ('length', 'eot' or 'stop').
    Bytes that are not UTF-8 (a character cut off at the end) decode to U+FFFD; the ids keep the
    exact bytes. json.dumps escapes control characters and everything beyond ASCII."""
    completion = s.text if s.finish_reason == 'stop' else tok.decode(s.tokens)
    return dict(prompt_index=row.prompt_index, sample_index=row.sample_index, prompt=row.prompt,
                completion=completion, tokens=s.tokens, logprobs=s.logprobs, finish_reason=s.finish_reason)


class Progress:
    """Samples written and tokens/s: a progress bar on stderr (tqdm) if show and stderr is a
    terminal, and at close one summary line on stderr, always: of what was written, so that after
    a broken pipe it counts what reached the reader. update(tokens, samples) after each write."""

    def __init__(self, total, show=False):
        self.samples, self.tokens, self.t0 = 0, 0, time.perf_counter()
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit='sample', file=sys.stderr, dynamic_ncols=True)

    def update(self, tokens, samples=1):
        self.samples += samples
        self.tokens += tokens
        if self.bar is not None and samples:
            self.bar.set_postfix_str(f"{self.tokens / (time.perf_counter() - self.t0):.1f} tokens/s", refresh=False)
            self.bar.update(samples)

    def close(self):
        """Close the bar and print the summary line: samples, tokens generated, seconds, tokens/s."""
        if self.bar is not None:
            self.bar.close()
        s = time.perf_counter() - self.t0
        print(f"{self.samples} samples, {self.tokens} tokens generated in {s:.1f} s: "
              f"{self.tokens / s if s > 0 else 0:.1f} tokens/s", file=sys.stderr)
