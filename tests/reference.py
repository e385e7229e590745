"""The oracle: a slow, obviously correct BPE trainer (DESIGN §1), written from
the rules alone. Full recount per merge; no cleverness to get wrong."""

from __future__ import annotations

import re
from collections import Counter

import regex

GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def reference_pretokens(data: bytes, special_tokens=()) -> list[bytes]:
    text = data.decode("utf-8", "surrogateescape")
    if special_tokens:
        alts = "|".join(re.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        pieces = re.split(alts, text)
    else:
        pieces = [text]
    return [m.encode("utf-8", "surrogateescape") for p in pieces for m in regex.findall(GPT2, p)]


def gpt2_alphabet_rank(b: int) -> int:
    """HF's id of byte ``b`` under ByteLevel: the bytes sorted by the code point of
    their GPT-2 stand-in character (written here from that rule, not from gpubpe)."""
    stand_in = {c: ord(ch) for c, ch in gpt2_bytes_to_unicode().items()}
    return sorted(range(256), key=stand_in.__getitem__).index(b)


def reference_merges_from_counts(word_counts: dict[bytes, int], num_merges: int, max_len: int = 0,
                                 ties: str = "cs336", min_count: int = 0,
                                 counts_out: list | None = None, forced=()) -> list[tuple[bytes, bytes]]:
    """``max_len``: when set, a pair whose merged token is longer is never a candidate.
    ``ties``: 'cs336' (greatest bytes), or 'hf' / 'rustbpe': the smallest
    (id(left), id(right)), a byte's id being HF's alphabet position or its value
    and a merge's id 256 + its index. ``min_count``: stop at a best count below it.
    ``counts_out``: a list that gets each merge's count. ``forced``: byte pairs
    merged first, in order, whatever their counts. Words hold bytes, so two
    merges making the same bytes make one token (HF's one id per string)."""
    words = {tuple(bytes([b]) for b in w): c for w, c in word_counts.items() if c > 0}
    byte_id = [gpt2_alphabet_rank(b) for b in range(256)] if ties == "hf" else list(range(256))
    ident = {bytes([b]): byte_id[b] for b in range(256)}
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for i in range(len(w) - 1):  # every adjacent position, overlaps too
                if max_len and len(w[i]) + len(w[i + 1]) > max_len:
                    continue
                pairs[(w[i], w[i + 1])] += c
        if len(merges) < len(forced):
            best = tuple(forced[len(merges)])
            ident.setdefault(best[0] + best[1], 256 + len(merges))
            merges.append(best)
            if counts_out is not None:
                counts_out.append(pairs.get(best, 0))
            words = _apply(words, best)
            continue
        if not pairs:
            break
        # highest count, then the greatest (left, right) as Python compares bytes
        if ties == "cs336":
            best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        else:
            best = max(pairs.items(), key=lambda kv: (kv[1], -ident[kv[0][0]], -ident[kv[0][1]]))[0]
        if pairs[best] < min_count:
            break
        ident.setdefault(best[0] + best[1], 256 + len(merges))
        merges.append(best)
        if counts_out is not None:
            counts_out.append(pairs[best])
        words = _apply(words, best)
    return merges


def _apply(words, best):
    """Every word with ``best`` merged, left to right, non-overlapping."""
    merged = {}
    for w, c in words.items():
        out = []
        i = 0
        while i < len(w):
            if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                out.append(w[i] + w[i + 1])
                i += 2
            else:
                out.append(w[i])
                i += 1
        merged[tuple(out)] = merged.get(tuple(out), 0) + c
    return merged


def reference_train(data: bytes, vocab_size: int, special_tokens=()):
    counts = Counter(reference_pretokens(data, special_tokens))
    merges = reference_merges_from_counts(counts, vocab_size - 256 - len(special_tokens))
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    for s in special_tokens:
        vocab[len(vocab)] = s.encode("utf-8")
    return vocab, merges


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (space is 'Ġ', newline 'Ċ')."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
