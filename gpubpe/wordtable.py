"""The WordTable: the seam between counting and the merge loop (DESIGN §2).

Every backend takes the same WordTable and returns the same merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class WordTable:
    """Unique pre-tokens as symbol sequences, CSR by word.

    symbols: int32[total]  token ids (byte values at the start of training)
    offsets: int64[W + 1]  word ``k`` is ``symbols[offsets[k]:offsets[k + 1]]``
    counts:  int64[W]      how often word ``k`` occurs (always > 0)
    """

    symbols: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.symbols.dtype != np.int32 or self.offsets.dtype != np.int64 or self.counts.dtype != np.int64:
            raise TypeError("WordTable wants symbols int32, offsets int64, counts int64")
        if self.offsets.shape[0] != self.counts.shape[0] + 1:
            raise ValueError("WordTable: offsets must have one entry more than counts")

    @property
    def num_words(self) -> int:
        return int(self.counts.shape[0])

    def max_merges(self) -> int:
        """An upper bound on the merges that can happen: each merge shortens at
        least one word by at least one symbol, so no run makes more than the
        table's symbols minus its words. Backends size their memory by
        ``min(requested, max_merges())``, never by a vocabulary that cannot be reached."""
        lengths = np.diff(self.offsets)
        return int(np.maximum(lengths - 1, 0).sum())

    @classmethod
    def from_counts(cls, word_counts: Mapping[bytes, int]) -> "WordTable":
        """Build from ``{pre-token bytes: count}``. Words of one byte are kept
        (they hold no pair, and the merge loop skips them at no cost)."""
        words = [w for w, c in word_counts.items() if c > 0 and len(w) > 0]
        counts = np.fromiter((word_counts[w] for w in words), dtype=np.int64, count=len(words))
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        symbols = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int32)
        return cls(symbols, offsets, counts)

    def to_counts(self) -> dict[bytes, int]:
        """The table as ``{word bytes: count}`` (symbols must still be bytes)."""
        symbols, offsets = self.symbols, self.offsets
        missing = np.flatnonzero(np.bincount(symbols, minlength=256)[:256] == 0)
        if missing.size:
            # Join the words around a byte that none of them holds (0xFF never
            # occurs in well-formed UTF-8) and let bytes.split cut them in C:
            # about a third of the cost of one slice per word.
            sep = int(missing[-1])
            words = _join_words(symbols, offsets, sep).tobytes().split(bytes([sep]))
        else:
            raw = symbols.astype(np.uint8).tobytes()
            offs = offsets.tolist()
            words = map(raw.__getitem__, map(slice, offs[:-1], offs[1:]))
        return dict(zip(words, self.counts.tolist()))


def _join_words(symbols: np.ndarray, offsets: np.ndarray, sep: int) -> np.ndarray:
    """The words' bytes (uint8) with the byte ``sep`` between consecutive words:
    word ``k``'s symbols move ``k`` places right, the separators fill the gaps."""
    n = offsets.shape[0] - 1
    out = np.full(symbols.shape[0] + max(n - 1, 0), sep, np.uint8)
    shift = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    out[np.arange(symbols.shape[0], dtype=np.int64) + shift] = symbols
    return out
