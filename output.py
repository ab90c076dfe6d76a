"""
How sample.py prints what it generates: nanoGPT's text, each sample followed by a line of dashes,
the first row of each batch streamed token by token as it is produced.
"""
import codecs

import torch


def print_samples(out, tokens, tok, shown_prompt, rows, stream=True, eot=None):
    """Write rows samples to out (a text stream), each as the prompt's text, the sample's text and
    a line of dashes, as nanoGPT's sample.py prints them.

    tokens: an iterator of (rows, 1) LongTensors, one per step (generate.generate_tokens).
    tok: a tokenizer.Tokenizer. shown_prompt: the prompt's ids as printed (the implicit
    <|endoftext|> of an empty GPT-2 prompt left out). stream: write row 0 token by token as it
    comes, through an incremental UTF-8 decoder (a character split across tokens is never printed
    in halves; the bytes equal the whole text's); the other rows follow once all steps are done.
    eot: a row ends before its first eot id (not printed); None prints every id.
    """
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
    if stream:
        out.write(utf8.decode(b''.join(tok.token_bytes(i) for i in shown_prompt)))
        out.flush()
    new, streaming = [], stream
    for idx_next in tokens:
        new.append(idx_next)
        i = idx_next[0, 0].item() if streaming else None
        if streaming and i != eot:
            out.write(utf8.decode(tok.token_bytes(i)))
            out.flush()
        streaming = streaming and i != eot
    for r, row in enumerate(torch.cat(new, dim=1).tolist() if new else [[] for _ in range(rows)]):
        if eot is not None and eot in row:
            row = row[:row.index(eot)]
        if r == 0 and stream:
            out.write(utf8.decode(b'', final=True) + '\n---------------\n')
        else:
            out.write(tok.decode(shown_prompt + row) + '\n---------------\n')
        out.flush()
