"""The anchor trainers' merges, as byte pairs in creation order, for parity checks.

Each function trains one anchor on a list of documents (str) with the GPT-2
pattern and returns ``[(left bytes, right bytes), ...]``. The tests and
``bench_train.py --check`` hold gpubpe's parity modes against these.
"""

from __future__ import annotations

import json

GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_decoder() -> dict[str, int]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def hf_tokenizer(docs, vocab_size: int, *, min_frequency: int = 0, max_token_length: int | None = None):
    """HF ``BpeTrainer`` with ``ByteLevel(add_prefix_space=False)`` (its GPT-2
    regex) and the full byte alphabet, fed ``docs`` through ``train_from_iterator``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
                                  max_token_length=max_token_length)
    tok.train_from_iterator(docs, trainer)
    return tok


def hf_merges_of(tok) -> list[tuple[bytes, bytes]]:
    dec = _byte_decoder()
    merges = json.loads(tok.to_str())["model"]["merges"]
    out = []
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        out.append((bytes(dec[c] for c in a), bytes(dec[c] for c in b)))
    return out


def hf_merges(docs, vocab_size: int, **kw) -> list[tuple[bytes, bytes]]:
    return hf_merges_of(hf_tokenizer(docs, vocab_size, **kw))


def _split(token: bytes, ranks: dict[bytes, int], below: int) -> tuple[bytes, bytes]:
    """The two parts the BPE of ``token`` ends with, using the tokens ranked
    below ``below``: the merge that made ``token`` (how tiktoken-style ranks
    are turned back into merges)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < below and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            raise ValueError(f"{token!r} is not reachable by merges below rank {below}")
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def merges_from_ranks(ranked: list[tuple[bytes, int]]) -> list[tuple[bytes, bytes]]:
    """Merges from ``[(token bytes, rank)]`` where ranks 0..255 are the bytes."""
    ranks: dict[bytes, int] = {}
    for t, r in ranked:
        ranks.setdefault(t, r)
    out = []
    for t, r in sorted(ranked, key=lambda x: x[1]):
        if r >= 256:
            out.append(_split(t, ranks, r))
    return out


def rustbpe_merges(docs, vocab_size: int) -> list[tuple[bytes, bytes]]:
    import rustbpe

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(docs), vocab_size, pattern=GPT2)
    return merges_from_ranks(list(tok.get_mergeable_ranks()))


def bpeasy_merges(docs, vocab_size: int) -> list[tuple[bytes, bytes]]:
    import bpeasy

    ranks = bpeasy.train_bpe(iter(docs), GPT2, 10**6, vocab_size)
    return merges_from_ranks(list(ranks.items()))
