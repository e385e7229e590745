"""Tie rules: which of two pairs with equal counts is merged first.

``cs336`` (the default, DESIGN §1.4): the lexicographically greatest
``(bytes(left), bytes(right))``.

The other two reproduce another trainer bit for bit. Both pick the *smallest*
``(rank(left), rank(right))``, where a merge's rank is its id (256 + i: merges
in creation order) and a byte's rank depends on the trainer:

``rustbpe`` (and bpeasy): the byte's value, so ids are compared raw.

``hf`` (HF ``tokenizers`` ``BpeTrainer`` with the ``ByteLevel`` pre-tokenizer
and its full initial alphabet): HF numbers the alphabet in the order of the
code points of GPT-2's printable stand-ins for the bytes (``!``..``~`` first,
then ``¡``..``¬``, ``®``..``ÿ``, then the remapped bytes 0..32, 127..160 and
173), so the two rules differ exactly when a tie compares one of those 68
remapped bytes. HF also keeps one id per distinct string: a merge whose bytes
an earlier token holds reuses that token (see ``trainer``).

Every backend takes the rule as a byte rank table (:func:`byte_rank`): empty
for ``cs336``, else int64[256].
"""

from __future__ import annotations

import numpy as np

TIES = ("cs336", "hf", "rustbpe")


def gpt2_stand_ins() -> list[int]:
    """The code point GPT-2's byte-level alphabet gives each byte (space is U+0120 'Ġ')."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = [0] * 256
    for b in printable:
        out[b] = b
    n = 0
    for b in range(256):
        if b not in printable:
            out[b] = 256 + n
            n += 1
    return out


def check(rule) -> str:
    """``rule`` when it names a tie rule, else a ValueError that lists them."""
    if not isinstance(rule, str) or rule not in TIES:
        raise ValueError(f"ties must be one of {', '.join(map(repr, TIES))} (the CS336 rule, HF tokenizers', "
                         f"rustbpe's), got {rule!r}")
    return rule


def byte_rank(ties: str) -> np.ndarray:
    """The rank table of tie rule ``ties``: int64[0] for 'cs336', else int64[256]."""
    check(ties)
    if ties == "cs336":
        return np.zeros(0, np.int64)
    if ties == "rustbpe":
        return np.arange(256, dtype=np.int64)
    if ties == "hf":
        order = sorted(range(256), key=gpt2_stand_ins().__getitem__)
        rank = np.empty(256, np.int64)
        rank[order] = np.arange(256)
        return rank
    raise AssertionError(ties)  # check() knows only the rules above


def reuses_ids(ties: str) -> bool:
    """Whether the rule's trainer gives a merge that repeats an earlier token's
    bytes that token's id (HF), instead of an id of its own (CS336, rustbpe)."""
    return ties == "hf"
