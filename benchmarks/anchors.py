"""The anchor trainers' merges, as byte pairs in creation order, for parity checks.

Each function trains one anchor on a list of documents (str) with the GPT-2
pattern and returns ``[(left bytes, right bytes), ...]``. The tests and
``bench_train.py --check`` hold gpubpe's parity modes against these.
"""

from __future__ import annotations

import json

GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


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
    """A trained HF tokenizer's merges as byte pairs (its tokens are GPT-2-escaped)."""
    from gpubpe.formats import unescape

    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(unescape(x) for x in (m.split(" ") if isinstance(m, str) else m)) for m in merges]


def hf_merges(docs, vocab_size: int, **kw) -> list[tuple[bytes, bytes]]:
    return hf_merges_of(hf_tokenizer(docs, vocab_size, **kw))


def merges_from_ranks(ranked: list[tuple[bytes, int]]) -> list[tuple[bytes, bytes]]:
    """Merges from ``[(token bytes, rank)]`` where ranks 0..255 are the bytes
    (tiktoken's way back from ranks to merges, as gpubpe's tiktoken loader does it)."""
    from gpubpe.formats import merges_from_ranks as from_ranks

    ranks: dict[bytes, int] = {}
    for t, r in ranked:
        ranks.setdefault(t, r)
    return from_ranks(ranks)


def rustbpe_merges(docs, vocab_size: int) -> list[tuple[bytes, bytes]]:
    import rustbpe

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(docs), vocab_size, pattern=GPT2)
    return merges_from_ranks(list(tok.get_mergeable_ranks()))


def bpeasy_merges(docs, vocab_size: int) -> list[tuple[bytes, bytes]]:
    import bpeasy

    ranks = bpeasy.train_bpe(iter(docs), GPT2, 10**6, vocab_size)
    return merges_from_ranks(list(ranks.items()))
