"""The Tokenizer: encode text to token ids and decode ids back (DESIGN §2, last stage).

Encoding follows the rules the model was trained with: the text is cut at
special tokens (longest match first), each piece is split with the
pre-tokenization pattern, and inside each pre-token the merges are applied
lowest rank first (rank = creation order), leftmost first among equal ranks,
until none applies. This is GPT-2's and HF ``tokenizers``' BPE, and the
CS336 tokenizer.

The encode path is plain Python over a cache from pre-token to ids: it
compiles nothing and imports nothing when called (the CS336 memory test runs
``encode`` under an address-space limit of the current RSS plus 1 MB, where a
JIT compiler would abort the process instead of raising ``MemoryError``).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from .corpus import iter_chunks
from . import config
from .model import BPEModel, assign_special_ids
from .patterns import GPT2_PATTERN, resolve_pattern

_HEAP_MIN_LEN = config.TOKENIZER_HEAP_MIN_LEN
_CACHE_MAX = config.TOKENIZER_CACHE_MAX


class Tokenizer:
    """Encode text to token ids and decode ids to text with a trained BPE.

    vocab:          ``{id: token bytes}``. Every single byte must have an id.
    merges:         ``[(left bytes, right bytes), ...]`` in creation order (rank).
    special_tokens: strings that always encode to their own id, matched longest
                    first (``<|endoftext|><|endoftext|>`` wins over
                    ``<|endoftext|>`` when both are given). One that is not in
                    ``vocab`` gets the next free id.
    pattern:        the pre-tokenization regex, or a name such as ``'gpt2'``
                    (keyword-only; GPT-2's by default).

    When two merges create the same bytes (``(a, bc)`` and ``(ab, c)``), both
    merges apply at their own rank and both produce the lowest id holding those
    bytes; the other id decodes but is never produced. Every export keeps the
    same lowest id (see :mod:`gpubpe.formats`).

    >>> import gpubpe
    >>> tok = gpubpe.Tokenizer.load("tokenizer/")  # doctest: +SKIP
    >>> tok.decode(tok.encode("Hello, world"))  # doctest: +SKIP
    'Hello, world'
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | None = None,
        *,
        pattern: str = GPT2_PATTERN,
    ) -> None:
        self.vocab: dict[int, bytes] = {int(i): bytes(b) for i, b in vocab.items()}
        self.merges: list[tuple[bytes, bytes]] = [(bytes(a), bytes(b)) for a, b in merges]
        self.pattern = resolve_pattern(pattern)
        if isinstance(special_tokens, (str, bytes)):
            raise TypeError(
                f"special_tokens must be a list of strings, not a single {type(special_tokens).__name__}: "
                f"write special_tokens=[{special_tokens!r}]"
            )
        specials = list(special_tokens or ())
        for s in specials:
            if not isinstance(s, str):
                raise TypeError(f"special tokens must be str, got {type(s).__name__} ({s!r})")
            if not s:
                raise ValueError("special tokens must not be empty strings: remove '' from special_tokens")
        if len(set(specials)) != len(specials):
            dup = next(t for t in specials if specials.count(t) > 1)
            raise ValueError(f"special token {dup!r} is given twice: list each special token once")
        self.special_tokens: list[str] = specials

        self.vocab, self.special_ids = assign_special_ids(self.vocab, self.special_tokens)
        # bytes -> lowest id holding them (the id encode produces)
        self._bytes_to_id: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            self._bytes_to_id.setdefault(self.vocab[i], i)

        missing = [b for b in range(256) if bytes([b]) not in self._bytes_to_id]
        if missing:
            raise ValueError(
                f"vocab lacks {len(missing)} single byte(s) (first: {bytes([missing[0]])!r}): a byte-level "
                "BPE vocab needs all 256 bytes so that every text can be encoded"
            )
        self._byte_ids: list[int] = [self._bytes_to_id[bytes([b])] for b in range(256)]

        # (left id, right id) -> (rank, merged id). Both sides resolve to their
        # lowest id, so a merge whose side has a duplicate still applies.
        self._merge_of: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            try:
                key = (self._bytes_to_id[a], self._bytes_to_id[b])
                new = self._bytes_to_id[a + b]
            except KeyError:
                raise ValueError(
                    f"merge {rank} ({a!r}, {b!r}) uses or creates bytes that are not in vocab: "
                    "vocab and merges must come from the same model"
                ) from None
            self._merge_of.setdefault(key, (rank, new))

        import regex  # here, not at import time: `import gpubpe` stays light

        self._regex = regex.compile(self.pattern)
        self._findall = self._regex.findall
        if self.special_tokens:
            ordered = sorted(self.special_tokens, key=len, reverse=True)  # longest match first
            self._special_split = regex.compile("(" + "|".join(regex.escape(s) for s in ordered) + ")").split
        else:
            self._special_split = None
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        vocab_filepath: str | os.PathLike,
        merges_filepath: str | os.PathLike,
        special_tokens: Sequence[str] | None = None,
        *,
        pattern: str = GPT2_PATTERN,
    ) -> Tokenizer:
        """Load GPT-2-style ``vocab.json`` and ``merges.txt`` (byte-to-unicode escaped)."""
        from .formats import load_gpt2

        return cls.from_model(load_gpt2(vocab_filepath, merges_filepath, special_tokens=special_tokens, pattern=pattern))

    @classmethod
    def from_model(cls, model) -> Tokenizer:
        """The tokenizer of a :class:`~gpubpe.BPEModel` (trained, or loaded by :mod:`gpubpe.formats`)."""
        return cls(model.vocab, model.merges, model.special_tokens, pattern=model.pattern)

    def to_model(self):
        """This tokenizer as plain data (:class:`~gpubpe.BPEModel`), as every export takes it."""
        return BPEModel(vocab=dict(self.vocab), merges=list(self.merges), special_tokens=list(self.special_tokens),
                        pattern=self.pattern)

    @classmethod
    def load(cls, path: str | os.PathLike, *, special_tokens: Sequence[str] | None = None) -> Tokenizer:
        """Load from a directory written by ``gpubpe train`` or ``gpubpe export``, or one file.

        A directory is read from the most exact format it holds: ``model.json``
        (native), ``tokenizer.json`` (HF), ``vocab.json`` + ``merges.txt``
        (GPT-2), ``tokenizer.tiktoken``. A file is read by its name.
        ``special_tokens`` is needed only for a tiktoken file, which holds none.
        """
        from .formats import load_any

        return cls.from_model(load_any(Path(path), special_tokens=special_tokens))

    # ------------------------------------------------------------------
    # encoding
    # ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids may have holes in a loaded vocab)."""
        return max(self.vocab) + 1

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``; special tokens become their own ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes str, got {type(text).__name__}: decode bytes first, or use encode_bytes")
        if self._special_split is None:
            return self._encode_ordinary(text)
        out: list[int] = []
        special_ids = self.special_ids
        for k, piece in enumerate(self._special_split(text)):
            if k & 1:  # odd pieces are the captured special tokens
                out.append(special_ids[piece])
            elif piece:
                out.extend(self._encode_ordinary(piece))
        return out

    def encode_bytes(self, data: bytes) -> list[int]:
        """The token ids of ``data``; bytes that are not UTF-8 are encoded as
        the trainer saw them (each its own character, DESIGN §1.2)."""
        return self.encode(bytes(data).decode("utf-8", "surrogateescape"))

    def encode_iterable(self, iterable: Iterable[str], *, chunk_size: int = 1 << 20) -> Iterator[int]:
        """Encode a stream of str (a file's lines, say) lazily, in bounded memory.

        The stream is joined as the lines of a file are, then cut only where
        pre-tokenization cannot change (between a non-space and an ASCII space
        or newline, never inside a special token), so the ids equal
        ``encode("".join(iterable))``: a run of whitespace split across two
        strings is still one pre-token. Memory is about ``chunk_size`` bytes
        plus the longest stretch without such a cut point. (That rule holds for
        GPT-2's pattern; with any other pattern the stream is cut only after
        special tokens, so a stream without them is held whole.)
        """
        specials = tuple(s.encode("utf-8") for s in self.special_tokens)
        for chunk in iter_chunks(None, iterable, specials, chunk_size, pattern=self.pattern):
            yield from self.encode(chunk.decode("utf-8", "surrogateescape"))

    def _encode_ordinary(self, text: str) -> list[int]:
        cache = self._cache
        if len(cache) > _CACHE_MAX:
            cache.clear()
        out: list[int] = []
        extend = out.extend
        get = cache.get
        for word in self._findall(text):
            ids = get(word)
            if ids is None:
                ids = cache[word] = self._bpe(_word_bytes(word))
            extend(ids)
        return out

    def _bpe(self, word: bytes) -> list[int]:
        """Apply the merges to one pre-token, lowest rank first."""
        byte_ids = self._byte_ids
        parts = [byte_ids[b] for b in word]
        if len(parts) < 2:
            return parts
        if len(parts) >= _HEAP_MIN_LEN:
            return self._bpe_heap(parts)
        merge_of = self._merge_of
        # Rescan for the lowest (rank, position) and merge there, one at a
        # time: the order HF tokenizers and the heap path use. (GPT-2's code
        # merges all occurrences of the pair per pass; for merges produced by
        # training the two agree, since a new pair always ranks after the
        # merge that made it.)
        while True:
            best_rank = -1
            at = -1
            prev = parts[0]
            for i in range(1, len(parts)):
                cur = parts[i]
                m = merge_of.get((prev, cur))
                if m is not None and (at < 0 or m[0] < best_rank):
                    best_rank, at, new = m[0], i - 1, m[1]
                prev = cur
            if at < 0:
                return parts
            parts[at : at + 2] = [new]
            if len(parts) == 1:
                return parts

    def _bpe_heap(self, parts: list[int]) -> list[int]:
        """The same merges as :meth:`_bpe` on a long pre-token, in O(n log n).

        A doubly linked list over the symbols and a heap of (rank, position)
        for every adjacent pair that has a merge; stale entries are skipped
        when popped (lazy invalidation). Popping the lowest (rank, position)
        merges the leftmost occurrence of the lowest-ranked pair first, which is
        what the rescan loop does.
        """
        merge_of = self._merge_of
        n = len(parts)
        sym = list(parts)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[int, int, int, int]] = []
        for i in range(n - 1):
            m = merge_of.get((sym[i], sym[i + 1]))
            if m is not None:
                heap.append((m[0], i, sym[i], sym[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, i, left, right = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            # stale: the left symbol changed, or its right neighbour did
            if j >= n or sym[i] != left or sym[j] != right:
                continue
            sym[i] = merge_of[(left, right)][1]
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
            p = prv[i]
            if p >= 0:
                m = merge_of.get((sym[p], sym[i]))
                if m is not None:
                    heapq.heappush(heap, (m[0], p, sym[p], sym[i]))
            if k < n:
                m = merge_of.get((sym[i], sym[k]))
                if m is not None:
                    heapq.heappush(heap, (m[0], i, sym[i], sym[k]))
        out = []
        i = 0
        while i < n:
            out.append(sym[i])
            i = nxt[i]
        return out

    # ------------------------------------------------------------------
    # decoding
    # ------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` (a list, any iterable, or a NumPy array), joined."""
        vocab = self.vocab
        if hasattr(ids, "tolist"):
            ids = ids.tolist()  # NumPy: plain ints, and much faster lookups
        elif not isinstance(ids, (list, tuple)):
            ids = list(ids)
        try:
            return b"".join([vocab[i] for i in ids])
        except KeyError:
            bad = next(i for i in ids if i not in vocab)
            raise ValueError(f"id {bad!r} is not in the vocab (ids are 0..{self.vocab_size - 1})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; byte sequences that are not UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __reduce__(self):
        # the compiled regexes and the cache are rebuilt, not pickled
        return (_rebuild, (self.vocab, self.merges, self.special_tokens, self.pattern))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={self.special_tokens!r})"
        )


def _rebuild(vocab, merges, special_tokens, pattern) -> Tokenizer:
    return Tokenizer(vocab, merges, special_tokens, pattern=pattern)


def _word_bytes(word: str) -> bytes:
    """A pre-token's bytes: lone surrogates from ``surrogateescape`` are the
    raw bytes they stand for; any other lone surrogate becomes U+FFFD (as
    tiktoken does), so encoding never raises on a str."""
    try:
        return word.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        out = bytearray()
        for ch in word:
            try:
                out += ch.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                out += "\ufffd".encode("utf-8")
        return bytes(out)
