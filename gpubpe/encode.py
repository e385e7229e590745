"""Encode whole corpora to a token array (``gpubpe encode``).

The corpus is read in chunks cut where pre-tokenization cannot change (the
same cuts training uses, :func:`gpubpe.corpus.iter_chunks`), the chunks
are encoded in worker processes, each with its own cache from unique
pre-token to ids (text is Zipfian: after the first few MB nearly every
pre-token is a cache hit, so the merge loop runs once per distinct word, not
once per occurrence), and the ids are appended in order to a ``.npy`` file.

Memory is bounded: at most two chunks per worker are in flight, and the ids
go to disk as each chunk finishes. A pre-token of any length costs about 18
bytes of working memory per byte (a run of millions of letters is merged by a
heap over flat arrays, in O(n log n), and is not kept in the cache). The
output is written to a temporary file next to ``out`` and renamed at the end,
so an interrupted run leaves no half-written array under the final name; on
SIGTERM or Ctrl-C the workers are stopped and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import _numba

_numba.load()  # before anything compiled runs: Numba without SciPy (see gpubpe._numba)

import numpy as np
from numba import njit

from . import _validate, config
from ._files import umask
from ._pool import process_pool
from .corpus import input_size, iter_chunks, special_bytes
from .tokenizer import Tokenizer, _word_bytes


@dataclass
class EncodeStats:
    """What an encoding run did."""

    path: Path
    input_bytes: int
    tokens: int
    dtype: str
    seconds: float

    def summary(self) -> str:
        rate = self.input_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        bpt = self.input_bytes / self.tokens if self.tokens else 0.0
        return "\n".join(
            [
                f"input          {self.input_bytes:,} bytes",
                f"tokens         {self.tokens:,} ({self.dtype}, {bpt:.3f} bytes/token)",
                f"time           {self.seconds:.2f} s ({rate:.1f} MB/s)",
                f"wrote          {self.path}",
            ]
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while :func:`encode_files` ran.

    A KeyboardInterrupt, so that whatever handles Ctrl-C handles it too; a
    caller that cares which signal it was catches this class first.
    """


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab size <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------

_worker: _ChunkEncoder | None = None


def _init_worker(encoder: _ChunkEncoder) -> None:
    global _worker
    _worker = encoder


def _encode_chunk(data: bytes) -> np.ndarray:
    """One chunk's ids; runs in a worker, whose cache lives across chunks."""
    return _worker.encode(data)


_CACHE_WORDS = config.ENCODE_CACHE_WORDS
_CACHE_BYTES = config.ENCODE_CACHE_BYTES
_LONG_WORD = config.ENCODE_LONG_WORD
_UNCACHED_WORD = config.ENCODE_UNCACHED_WORD
_HEAP_SLACK = config.ENCODE_HEAP_SLACK


class _ChunkEncoder:
    """Encodes chunks of bytes; one per worker process.

    With the GPT-2 pattern, the Numba pre-tokenizer gives the pre-token
    spans, and a Numba hash table keyed by the pre-token's bytes (the cache)
    gives their ids; a pre-token the cache has not seen is added to it and
    merged once, by a Numba copy of :meth:`Tokenizer._bpe`. Other patterns use
    :meth:`Tokenizer.encode` (``regex`` and a dict cache): the same ids, slower.
    """

    def __init__(self, tok: Tokenizer, dtype: np.dtype) -> None:
        self.tok = tok
        self.dtype = dtype
        self.fast = _fast_available(tok)
        if self.fast:
            from .corpus import special_regex as _special_regex
            from .pretok import unicode
            from .pretok.machine import token_spans

            self._stage = unicode.scan_tables()
            self._token_spans = token_spans
            specials = special_bytes(tok.special_tokens)
            self._special_re = _special_regex(specials) if specials else None
            self._special_id = {s.encode("utf-8"): i for s, i in tok.special_ids.items()}
            self.cache = _Cache()
        else:
            self._words: dict[str, list[int]] = {}
        self._pairs = _pair_table(tok)
        self._byte_ids = np.asarray(tok._byte_ids, np.int64)
        # byte length of each id: the heap loop finds a symbol's right
        # neighbour from it, so it needs no linked list
        self._tlen = np.zeros(tok.vocab_size, np.int64)
        for i, b in tok.vocab.items():
            self._tlen[i] = len(b)

    def __reduce__(self):
        # for spawn (not Linux): rebuilt in the worker, not pickled with its cache
        return (_ChunkEncoder, (self.tok, self.dtype))

    def warm(self) -> _ChunkEncoder:
        """Compile (or load from Numba's cache) every kernel now: forked
        workers then inherit them instead of each loading them again."""
        sample = "warm up: it's 12 cafés 日本 😀  \n\n".encode() * 3
        for s in self.tok.special_tokens[:1]:
            sample += s.encode("utf-8")
        # one cached long word and one uncached: both heap-loop variants
        sample += b" " + b"x" * (_LONG_WORD + 1) + b" " + b"y" * _UNCACHED_WORD
        self.encode(sample)
        if self.fast:
            self.cache = _Cache()
        else:
            self._words = {}
        return self

    def encode(self, data: bytes) -> np.ndarray:
        if not self.fast:
            return self._encode_regex(data)
        # the pieces between special tokens, and the special tokens themselves
        cuts = [0]
        sp_pos: list[int] = []
        sp_ids: list[int] = []
        if self._special_re is not None:
            for m in self._special_re.finditer(data):
                cuts += [m.start(), m.end()]
                sp_pos.append(m.start())
                sp_ids.append(self._special_id[m.group()])
        cuts.append(len(data))
        b = np.asarray(cuts, dtype=np.int64).reshape(-1, 2)
        b = b[b[:, 1] > b[:, 0]]
        buf = np.frombuffer(data, np.uint8)
        starts, ends = self._token_spans(
            buf, np.ascontiguousarray(b[:, 0]), np.ascontiguousarray(b[:, 1]), *self._stage
        )

        c = self.cache
        if c.nwords > _CACHE_WORDS or c.koff[c.nwords] > _CACHE_BYTES:
            self.cache = c = _Cache()  # bounded memory on endless corpora
        idx = np.empty(starts.shape[0], np.int64)
        lens = ends - starts
        # the uncached spans take no room in the cache
        cached_lens = np.where(lens < _UNCACHED_WORD, lens, 0)
        first_new = c.nwords
        k = 0
        while k < starts.shape[0]:
            # ensure room for every remaining span being new, then look up / insert
            c.reserve(starts.shape[0] - k, int(cached_lens[k:].sum()))
            k = _lookup_insert(buf, starts, ends, k, c.slots, c.small, c.hashes, c.koff, c.keys, c.n, idx,
                               _UNCACHED_WORD)
            if k < starts.shape[0]:
                c.rehash()  # a table passed half full
        if c.nwords > first_new:
            self._merge_new(first_new)
        loff, lvals = self._merge_uncached(buf, starts, lens, idx)
        sp_pos_a = np.asarray(sp_pos, np.int64)
        sp_ids_a = np.asarray(sp_ids, np.int64)
        out = np.empty(_total_ids(idx, c.voff, loff) + len(sp_ids), self.dtype)
        _assemble(idx, starts, sp_pos_a, sp_ids_a, c.voff, c.vals, loff, lvals, out)
        return out

    def _encode_regex(self, data: bytes) -> np.ndarray:
        """Tokenizer.encode of the chunk, except that pre-tokens of _LONG_WORD
        bytes or more go to the heap loop, and those of _UNCACHED_WORD or more
        stay out of the cache: the tokenizer's own loop and cache would hold
        them as Python objects, about 200 bytes per byte."""
        tok = self.tok
        text = data.decode("utf-8", "surrogateescape")
        pieces = [text] if tok._special_split is None else tok._special_split(text)
        cache = self._words
        if len(cache) > config.TOKENIZER_CACHE_MAX:  # the tokenizer's own bound
            cache.clear()
        parts: list[np.ndarray] = []
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k & 1:  # odd pieces are the captured special tokens
                ids.append(tok.special_ids[piece])
                continue
            for word in tok._findall(piece):
                got = cache.get(word)
                if got is None:
                    b = _word_bytes(word)
                    if len(b) < _LONG_WORD:
                        got = cache[word] = tok._bpe(b)
                    else:
                        long_ids = self._bpe_span(np.frombuffer(b, np.uint8), 0, len(b))
                        if len(b) >= _UNCACHED_WORD:
                            parts += [np.array(ids, self.dtype), long_ids.astype(self.dtype)]
                            ids = []
                            continue
                        got = cache[word] = long_ids.tolist()
                ids.extend(got)
        parts.append(np.array(ids, self.dtype))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _bpe_span(self, wbuf: np.ndarray, s: int, n: int) -> np.ndarray:
        """The ids of the pre-token wbuf[s:s + n], by the heap loop."""
        dt = _sym_dtype(n, self.tok.vocab_size)
        sym = np.empty(n, dt)
        return sym[: self._bpe_long(wbuf, s, n, sym, *_heap_scratch(n, dt))]

    def _merge_uncached(self, buf, starts, lens, idx):
        """The ids of the spans _lookup_insert left out of the cache (idx -1).

        Span k's ids become lvals[loff[j]:loff[j + 1]], and idx[k] = -1 - j.
        """
        long_k = np.flatnonzero(idx < 0)
        if long_k.shape[0] == 0:
            return np.zeros(1, np.int64), np.zeros(0, np.int32)
        n_max = int(lens[long_k].max())
        # every symbol is written in place of the last one: lvals starts as
        # the bytes' ids and shrinks to the merged ids, word after word
        lvals = np.empty(int(lens[long_k].sum()), _sym_dtype(n_max, self.tok.vocab_size))
        left, heap = _heap_scratch(n_max, lvals.dtype)
        loff = np.zeros(long_k.shape[0] + 1, np.int64)
        m = 0
        for j, k in enumerate(long_k.tolist()):
            n = int(lens[k])
            m += self._bpe_long(buf, int(starts[k]), n, lvals[m : m + n], left, heap)
            loff[j + 1] = m
            idx[k] = -1 - j
        return loff, lvals

    def _bpe_long(self, wbuf, s, n, sym, left, heap) -> int:
        """Tokenizer._bpe of the pre-token wbuf[s:s + n]: its ids go to sym[:m]; returns m."""
        slots, keys, ranks, news = self._pairs
        if n * (len(self.tok.merges) + 1) >= 1 << 63:
            raise MemoryError(f"a pre-token of {n:,} bytes is past what the heap keys can index")
        return _bpe_heap(wbuf, s, n, self._byte_ids, self._tlen, slots, keys, ranks, news,
                         sym, left, heap[: _heap_size(n)])

    def _merge_new(self, w0: int) -> None:
        """Fill the ids of the cache's words w0.. (just inserted)."""
        c = self.cache
        # a word never has more ids than bytes
        c.vals = c._grow(c.vals, int(c.voff[w0]) + int(c.koff[c.nwords] - c.koff[w0]))
        slots, keys, ranks, news = self._pairs
        w = w0
        while w < c.nwords:
            w = _bpe_words(c.keys, c.koff, w, c.nwords, self._byte_ids, slots, keys, ranks, news, _LONG_WORD, c.vals, c.voff)
            if w < c.nwords:  # a long word: the heap loop
                s = int(c.koff[w])
                ids = self._bpe_span(c.keys, s, int(c.koff[w + 1]) - s)
                v = int(c.voff[w])
                c.vals[v : v + ids.shape[0]] = ids
                c.voff[w + 1] = v + ids.shape[0]
                w += 1


def _fast_available(tok: Tokenizer) -> bool:
    from .patterns import GPT2_PATTERN

    return tok.pattern == GPT2_PATTERN


def _pair_table(tok: Tokenizer):
    """The merges as an open-addressing table: key (left id << 32 | right id) -> (rank, new id)."""
    items = list(tok._merge_of.items())
    keys = np.fromiter(((a << 32) | b for (a, b), _ in items), np.int64, len(items))
    ranks = np.fromiter((r for _, (r, _n) in items), np.int64, len(items))
    news = np.fromiter((n for _, (_r, n) in items), np.int64, len(items))
    slots = np.zeros(1 << max(4, (4 * len(items)).bit_length()), np.int64)
    _insert_pairs(slots, keys)
    return slots, keys, ranks, news


class _Cache:
    """Pre-token bytes -> ids, as flat arrays the Numba kernels read and fill.

    small   int64[2 * cap]  words of up to 7 bytes: (bytes packed with their
                            length, word index + 1) per slot, 0 = empty. Most
                            pre-tokens are this short; one cache line answers them.
    slots   int64[cap]      longer words: word index + 1 (0 = empty)
    hashes  uint64[W]       hash of word k (longer words)
    koff    int64[W + 1]    word k's bytes are keys[koff[k]:koff[k + 1]]
    voff    int64[W + 1]    word k's ids are vals[voff[k]:voff[k + 1]]
    n       int64[3]        words in all, longer words, short words
    Both tables use open addressing with linear probing and stay at most half
    full; the arrays grow by doubling (amortised O(1) per word).
    """

    def __init__(self) -> None:
        self.small = np.zeros(2 << 16, np.int64)
        self.slots = np.zeros(1 << 14, np.int64)
        self.hashes = np.zeros(1 << 12, np.uint64)
        self.koff = np.zeros((1 << 12) + 1, np.int64)
        self.voff = np.zeros((1 << 12) + 1, np.int64)
        self.keys = np.zeros(1 << 16, np.uint8)
        self.vals = np.zeros(1 << 16, np.int64)
        self.n = np.zeros(3, np.int64)

    @property
    def nwords(self) -> int:
        return int(self.n[0])

    @staticmethod
    def _grow(a: np.ndarray, need: int) -> np.ndarray:
        if need <= a.shape[0]:
            return a
        b = np.zeros(max(need, 2 * a.shape[0]), a.dtype)
        b[: a.shape[0]] = a
        return b

    def reserve(self, words: int, nbytes: int) -> None:
        """Room for ``words`` more words of ``nbytes`` bytes in all."""
        w = self.nwords
        self.hashes = self._grow(self.hashes, w + words)
        self.koff = self._grow(self.koff, w + words + 1)
        self.voff = self._grow(self.voff, w + words + 1)
        self.keys = self._grow(self.keys, int(self.koff[w]) + nbytes)

    def rehash(self) -> None:
        """Double whichever table is half full, and put its words back."""
        if 2 * int(self.n[1]) >= self.slots.shape[0]:
            self.slots = np.zeros(2 * self.slots.shape[0], np.int64)
            _insert_all(self.slots, self.hashes, self.koff, self.nwords)
        if int(self.n[2]) >= self.small.shape[0] // 4:
            self.small = np.zeros(2 * self.small.shape[0], np.int64)
            _insert_all_small(self.small, self.keys, self.koff, self.nwords)


# ---------------------------------------------------------------------------
# Numba kernels (compiled on first use, then read from Numba's disk cache)
# ---------------------------------------------------------------------------

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@njit(cache=True, nogil=True)
def _hash(buf, s, e):
    h = _FNV_OFFSET
    for i in range(s, e):
        h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def _pack(buf, s, e):
    """A word of 1..7 bytes as one nonzero int64: its bytes, and its length in the top byte."""
    key = np.int64(e - s) << 56
    for i in range(s, e):
        key |= np.int64(buf[i]) << (8 * (i - s))
    return key


@njit(cache=True, nogil=True)
def _small_slot(key, nslots):
    return np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(17)) & (nslots - 1)


@njit(cache=True, nogil=True)
def _append_word(buf, s, e, koff, keys, n, idx, k):
    w = n[0]
    base = koff[w]
    for i in range(e - s):
        keys[base + i] = buf[s + i]
    koff[w + 1] = base + (e - s)
    n[0] = w + 1
    idx[k] = w
    return w


@njit(cache=True, nogil=True)
def _lookup_insert(buf, starts, ends, k0, slots, small, hashes, koff, keys, n, idx, uncached):
    """idx[k] = the cache's word for span k, inserting the spans not yet there.

    Spans of ``uncached`` bytes or more get idx -1 and stay out of the cache.
    Starts at span k0; returns the span it stopped at: the number of spans
    when done, earlier when a table got half full (the caller rehashes and
    calls again). Room in hashes/koff/keys is the caller's job.
    """
    mask = np.uint64(slots.shape[0] - 1)
    nsmall = small.shape[0] // 2
    for k in range(k0, starts.shape[0]):
        if 2 * n[1] >= slots.shape[0] or n[2] >= nsmall // 2:
            return k
        s = starts[k]
        e = ends[k]
        if e - s >= uncached:
            idx[k] = -1
            continue
        if e - s <= 7:
            key = _pack(buf, s, e)
            j = _small_slot(key, nsmall)
            while True:
                v = small[2 * j]
                if v == key:
                    idx[k] = small[2 * j + 1] - 1
                    break
                if v == 0:
                    w = _append_word(buf, s, e, koff, keys, n, idx, k)
                    small[2 * j] = key
                    small[2 * j + 1] = w + 1
                    n[2] += 1
                    break
                j = (j + 1) & (nsmall - 1)
            continue
        h = _hash(buf, s, e)
        j = np.int64(h & mask)
        while True:
            v = slots[j]
            if v == 0:  # new word: append its bytes
                w = _append_word(buf, s, e, koff, keys, n, idx, k)
                hashes[w] = h
                slots[j] = w + 1
                n[1] += 1
                break
            w = v - 1
            if hashes[w] == h and koff[w + 1] - koff[w] == e - s:
                base = koff[w] - s
                same = True
                for i in range(s, e):
                    if keys[base + i] != buf[i]:
                        same = False
                        break
                if same:
                    idx[k] = w
                    break
            j = np.int64((np.uint64(j) + np.uint64(1)) & mask)
    return starts.shape[0]


@njit(cache=True, nogil=True)
def _insert_all(slots, hashes, koff, nwords):
    """Put every longer word back into the (new, larger) slots."""
    mask = np.uint64(slots.shape[0] - 1)
    for w in range(nwords):
        if koff[w + 1] - koff[w] <= 7:
            continue
        j = np.int64(hashes[w] & mask)
        while slots[j] != 0:
            j = np.int64((np.uint64(j) + np.uint64(1)) & mask)
        slots[j] = w + 1


@njit(cache=True, nogil=True)
def _insert_all_small(small, keys, koff, nwords):
    """Put every short word back into the (new, larger) small table."""
    nsmall = small.shape[0] // 2
    for w in range(nwords):
        if koff[w + 1] - koff[w] > 7:
            continue
        key = _pack(keys, koff[w], koff[w + 1])
        j = _small_slot(key, nsmall)
        while small[2 * j] != 0:
            j = (j + 1) & (nsmall - 1)
        small[2 * j] = key
        small[2 * j + 1] = w + 1


@njit(cache=True, nogil=True)
def _pair_slot(key, mask):
    return np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask


@njit(cache=True, nogil=True)
def _insert_pairs(slots, keys):
    mask = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        j = _pair_slot(keys[i], mask)
        while slots[j] != 0:
            j = (j + 1) & mask
        slots[j] = i + 1


@njit(cache=True, nogil=True)
def _find_pair(slots, keys, key):
    mask = slots.shape[0] - 1
    j = _pair_slot(key, mask)
    while True:
        v = slots[j]
        if v == 0:
            return -1
        if keys[v - 1] == key:
            return v - 1
        j = (j + 1) & mask


@njit(cache=True, nogil=True)
def _bpe_words(wbuf, woff, w0, w1, byte_ids, slots, keys, ranks, news, long_len, vals, voff):
    """Tokenizer._bpe on words w0..w1-1: the lowest (rank, position) merge
    first, one at a time, until none applies. Writes vals from voff[w0] and
    sets voff[w + 1]. Returns w1, or the first word of long_len bytes or more
    (left to the caller, who then continues after it)."""
    sym = np.empty(long_len, np.int64)
    pr = np.empty(long_len, np.int64)  # pr[i]: the merge of (sym[i], sym[i+1]), or -1
    m = voff[w0]
    for w in range(w0, w1):
        s = woff[w]
        n = woff[w + 1] - s
        if n >= long_len:
            return w
        for i in range(n):
            sym[i] = byte_ids[wbuf[s + i]]
        for i in range(n - 1):
            pr[i] = _find_pair(slots, keys, (sym[i] << 32) | sym[i + 1])
        # rescan the cached pair ranks only: a merge changes the two pairs around it
        while n > 1:
            at = -1
            best = 0
            for i in range(n - 1):
                p = pr[i]
                if p >= 0 and (at < 0 or ranks[p] < best):
                    best = ranks[p]
                    at = i
            if at < 0:
                break
            sym[at] = news[pr[at]]
            for i in range(at + 1, n - 1):
                sym[i] = sym[i + 1]
            for i in range(at + 1, n - 2):
                pr[i] = pr[i + 1]
            n -= 1
            if at > 0:
                pr[at - 1] = _find_pair(slots, keys, (sym[at - 1] << 32) | sym[at])
            if at < n - 1:
                pr[at] = _find_pair(slots, keys, (sym[at] << 32) | sym[at + 1])
        for i in range(n):
            vals[m] = sym[i]
            m += 1
        voff[w + 1] = m
    return w1


def _sym_dtype(n: int, vocab_size: int) -> np.dtype:
    """The heap loop's index and id type: int32 halves its memory wherever it fits."""
    return np.dtype(np.int32) if n < (1 << 31) - 1 and vocab_size <= 1 << 31 else np.dtype(np.int64)


def _heap_size(n: int) -> int:
    return n + int(n * _HEAP_SLACK) + 2


def _heap_scratch(n: int, dt: np.dtype):
    """The heap loop's working arrays for pre-tokens of up to n bytes."""
    return np.empty(n, dt), np.empty(_heap_size(n), np.int64)


@njit(cache=True, nogil=True)
def _sift_down(heap, h, i):
    x = heap[i]
    while True:
        c = 2 * i + 1
        if c >= h:
            break
        if c + 1 < h and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] >= x:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = x


@njit(cache=True, nogil=True)
def _sift_up(heap, i):
    x = heap[i]
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] <= x:
            break
        heap[i] = heap[p]
        i = p
    heap[i] = x


@njit(cache=True, nogil=True)
def _heap_entry_live(key, n, sym, tlen, slots, keys, ranks):
    """Whether the merge the entry was pushed for still applies at its position.

    A rank names one pair, so comparing the rank of the pair there now with
    the entry's is comparing the pairs (Tokenizer._bpe_heap keeps both ids).
    """
    r = key // n
    i = key - r * n
    a = sym[i]
    if a < 0:
        return False
    j = i + tlen[a]
    if j >= n:
        return False
    p = _find_pair(slots, keys, (np.int64(a) << 32) | np.int64(sym[j]))
    return p >= 0 and ranks[p] == r


@njit(cache=True, nogil=True)
def _compact_heap(heap, h, n, sym, tlen, slots, keys, ranks):
    w = 0
    for t in range(h):
        if _heap_entry_live(heap[t], n, sym, tlen, slots, keys, ranks):
            heap[w] = heap[t]
            w += 1
    for t in range(w // 2 - 1, -1, -1):
        _sift_down(heap, w, t)
    return w


@njit(cache=True, nogil=True)
def _bpe_heap(wbuf, s, n, byte_ids, tlen, slots, keys, ranks, news, sym, left, heap):
    """Tokenizer._bpe_heap on the word wbuf[s:s + n], in flat arrays.

    sym[i] is the id of the symbol starting at byte i (-1 inside a symbol);
    its right neighbour starts at i + tlen[sym[i]], and left[e] is the start
    of the symbol ending at byte e, so no linked list is needed. Heap entries
    are rank * n + position: popping the smallest merges the lowest (rank,
    position) first, as the tokenizer does; stale entries are skipped when
    popped, and dropped when the heap fills. The ids end up in sym[:m];
    returns m.
    """
    for i in range(n):
        sym[i] = byte_ids[wbuf[s + i]]
        left[i] = i
    h = 0
    for i in range(n - 1):
        p = _find_pair(slots, keys, (np.int64(sym[i]) << 32) | np.int64(sym[i + 1]))
        if p >= 0:
            heap[h] = ranks[p] * n + i
            h += 1
    for t in range(h // 2 - 1, -1, -1):
        _sift_down(heap, h, t)
    cap = heap.shape[0]
    while h > 0:
        key = heap[0]
        h -= 1
        if h > 0:
            heap[0] = heap[h]
            _sift_down(heap, h, 0)
        if not _heap_entry_live(key, n, sym, tlen, slots, keys, ranks):
            continue
        i = key - (key // n) * n
        j = i + tlen[sym[i]]
        p = _find_pair(slots, keys, (np.int64(sym[i]) << 32) | np.int64(sym[j]))
        c = news[p]
        sym[i] = c
        sym[j] = -1
        k = i + tlen[c]
        left[k - 1] = i
        if h + 2 > cap:
            # only live pairs are left, and each merge removed one: room again
            h = _compact_heap(heap, h, n, sym, tlen, slots, keys, ranks)
        if i > 0:
            q = left[i - 1]
            p = _find_pair(slots, keys, (np.int64(sym[q]) << 32) | np.int64(c))
            if p >= 0:
                heap[h] = ranks[p] * n + q
                _sift_up(heap, h)
                h += 1
        if k < n:
            p = _find_pair(slots, keys, (np.int64(c) << 32) | np.int64(sym[k]))
            if p >= 0:
                heap[h] = ranks[p] * n + i
                _sift_up(heap, h)
                h += 1
    m = 0
    i = 0
    while i < n:  # m <= i: compacting in place overwrites only symbols already read
        a = sym[i]
        sym[m] = a
        m += 1
        i += tlen[a]
    return m


@njit(cache=True, nogil=True)
def _total_ids(idx, voff, loff):
    n = 0
    for k in range(idx.shape[0]):
        w = idx[k]
        if w < 0:
            n += loff[-w] - loff[-1 - w]
        else:
            n += voff[w + 1] - voff[w]
    return n


@njit(cache=True, nogil=True)
def _assemble(idx, starts, sp_pos, sp_ids, voff, vals, loff, lvals, out):
    """Each span's ids, and the special tokens' ids at their positions, in text order.

    A span with idx -1 - j has the uncached ids lvals[loff[j]:loff[j + 1]]."""
    m = 0
    p = 0
    for k in range(idx.shape[0]):
        while p < sp_pos.shape[0] and sp_pos[p] < starts[k]:
            out[m] = sp_ids[p]
            m += 1
            p += 1
        w = idx[k]
        if w < 0:
            for i in range(loff[-1 - w], loff[-w]):
                out[m] = lvals[i]
                m += 1
            continue
        for i in range(voff[w], voff[w + 1]):
            out[m] = vals[i]
            m += 1
    while p < sp_pos.shape[0]:
        out[m] = sp_ids[p]
        m += 1
        p += 1


def _pool(workers: int, encoder: _ChunkEncoder):
    # fork hands the warm encoder (tokenizer, merge table, compiled kernels) to
    # the workers without pickling; elsewhere spawn rebuilds it per worker.
    return process_pool(workers, _init_worker, (encoder,))


_STOP_SECONDS = config.ENCODE_STOP_SECONDS


def _stop_pool(pool) -> None:
    """End the workers now: the pool's own shutdown would wait for the chunks in flight."""
    # No public way to reach the processes before Python 3.14's terminate_workers.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    results = getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + _STOP_SECONDS
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
    # A worker killed while sending its ids leaves half a message in the
    # result pipe: the pool's manager thread then waits in recv for the rest,
    # and the interpreter, at exit, for that thread. With the workers gone,
    # the write end held here is the last one: closing it ends the wait (EOF,
    # which the pool handles as a broken pool).
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`Terminated` in the main thread while the block runs.

    Python's default for SIGTERM is to die at once, which skips the cleanup
    (temporary file, workers). Signal handlers can only be set from the main
    thread; elsewhere, and where a handler not set from Python is in place,
    nothing changes.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    prev = signal.getsignal(signal.SIGTERM)
    if prev is None:
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


@contextlib.contextmanager
def _signals_held():
    """Ignore SIGINT and SIGTERM for the block (main thread only).

    Cleanup after an interrupt runs here: a second Ctrl-C would otherwise
    raise in the middle of it and leave the temporary file or the workers
    behind, and the run is ending anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for name in ("SIGINT", "SIGTERM"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not None:
            saved[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------
# The .npy file, streamed
# ---------------------------------------------------------------------------

# A header reserved for the largest count, rewritten with the real count at the
# end (padded to the same length). The alternative, writing raw ids and then
# copying them behind a header, doubles the disk traffic for no gain.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def _npy_header(dtype: np.dtype, count: int, size: int | None = None) -> bytes:
    d = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': ({count},), }}"
    if size is None:
        # 20 digits hold any 64-bit count; round the whole header up to 64 bytes
        size = -(-(len(_NPY_MAGIC) + 2 + len(d) + 20 + 1) // 64) * 64
    body = size - len(_NPY_MAGIC) - 2
    text = d.ljust(body - 1) + "\n"
    if len(text) != body:
        raise AssertionError("npy header does not fit its reserved size")
    return _NPY_MAGIC + body.to_bytes(2, "little") + text.encode("latin1")


class _NpyWriter:
    """Append ids to a 1-D ``.npy`` under a temporary name; ``commit`` renames it."""

    def __init__(self, out: Path, dtype: np.dtype) -> None:
        self.out = out
        self.dtype = dtype
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        except PermissionError as e:
            raise PermissionError(
                e.errno, f"cannot create a file in {str(out.parent)!r}, the directory of the output: "
                "write the output in a directory you can write to"
            ) from None
        self.f = os.fdopen(fd, "wb")
        self.header = _npy_header(dtype, 0)
        self.f.write(self.header)
        self.count = 0

    def write(self, ids: np.ndarray) -> None:
        self.f.write(memoryview(np.ascontiguousarray(ids, dtype=self.dtype)).cast("B"))
        self.count += int(ids.shape[0])

    def commit(self) -> None:
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, self.count, len(self.header)))
        self.f.close()
        # mkstemp makes the file private (0600); the array gets the mode of
        # any other file the user creates
        os.chmod(self.tmp, 0o666 & ~umask())
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass  # a full disk fails the last flush; the file goes anyway
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


def encode_files(
    inputs,
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    chunk_size: int = config.CHUNK_SIZE,
    progress: bool | None = None,
) -> EncodeStats:
    """Encode ``inputs`` (a path or a list of paths) into the token array ``out`` (``.npy``).

    The ids equal ``tokenizer.encode`` of each file's text (files one after
    the other; no pre-token spans two files), special tokens included. The
    array is uint16 when the vocab fits, else uint32. ``workers`` processes
    (default: all cores) encode chunks of about ``chunk_size`` bytes; the
    result does not depend on either. The file gets the umask's mode.

    ``out`` must not be one of the inputs, and its directory must be
    writable: both are checked before any work. On any failure, and on
    Ctrl-C or SIGTERM, the workers are stopped, no file is left behind and
    the exception propagates: ``KeyboardInterrupt`` for Ctrl-C, and for
    SIGTERM :class:`Terminated`, a subclass of it (while this function runs
    in the main thread, SIGTERM raises instead of killing the process; the
    previous handler is back when it returns).

    >>> tok = Tokenizer.load("tokenizer/")  # doctest: +SKIP
    >>> encode_files("TinyStories-valid.txt", tok, "valid.npy").tokens  # doctest: +SKIP
    """
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a gpubpe.Tokenizer (Tokenizer.load(dir)), got {type(tokenizer).__name__}")
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    # file checks of the trainer's validation, except that an empty file is
    # fine here: it encodes to no tokens
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(x, (str, os.PathLike)) for x in inputs):
        raise TypeError("encode_files takes a path or a list of paths; for text in memory use "
                        "Tokenizer.encode or Tokenizer.encode_iterable")
    if not inputs:
        raise ValueError("inputs is an empty list: give at least one file")
    paths = [_validate.input_path(x) for x in _validate.expand_inputs(inputs)]
    from .corpus import is_records

    records = [p for p in paths if is_records(p)]
    if records:
        raise ValueError(f"{str(records[0])!r} holds records (JSONL or Parquet): encode reads text files "
                         "(compressed ones too); write the records' text to a file, one document after another")
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"the output {str(out)!r} is a directory: give a file name such as tokens.npy")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the directory of the output {str(out)!r} does not exist: create it first")
    for p in paths:
        if _same_file(out, p):
            other = p.with_suffix(".npy") if p.suffix != ".npy" else p.with_name(p.stem + ".tokens.npy")
            raise ValueError(f"the output {str(out)!r} is the input {str(p)!r}: the tokens would replace the text; "
                             f"give the output a new file name, such as {str(other)!r}")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create a file in {str(out.parent)!r}, the directory of the output: "
                              "write the output in a directory you can write to")

    from ._progress import bar as _bar, want_progress as _want_progress  # the trainer's look

    dtype = token_dtype(tokenizer.vocab_size)
    total = input_size(paths)
    specials = special_bytes(tokenizer.special_tokens)
    t0 = time.perf_counter()
    nbytes = 0
    bar = None
    with _sigterm_raises():
        writer = _NpyWriter(out, dtype)  # an unwritable directory fails here, before any work
        try:
            bar = _bar(_want_progress(progress), total=total, unit="B", unit_scale=True, desc="encode")
            chunks = iter_chunks(paths, None, specials, chunk_size, pattern=tokenizer.pattern)
            encoder = _ChunkEncoder(tokenizer, dtype).warm()
            # a stream (total None) may be long: workers
            if nworkers == 1 or (total is not None and total < config.MIN_PARALLEL_BYTES):
                _init_worker(encoder)
                results = ((len(c), _encode_chunk(c)) for c in chunks)
                for n, ids in results:
                    writer.write(ids)
                    nbytes += n
                    if bar is not None:
                        bar.update(n)
            else:
                pool = _pool(nworkers, encoder)
                try:
                    pending: list = []

                    def drain_one():
                        nonlocal nbytes
                        n, fut = pending.pop(0)
                        writer.write(fut.result())
                        nbytes += n
                        if bar is not None:
                            bar.update(n)

                    for c in chunks:
                        pending.append((len(c), pool.submit(_encode_chunk, c)))
                        if len(pending) >= 2 * nworkers:  # bounded read-ahead
                            drain_one()
                    while pending:
                        drain_one()
                except BaseException:
                    with _signals_held():
                        _stop_pool(pool)
                    raise
                pool.shutdown()
            writer.commit()
        except BaseException:
            with _signals_held():
                writer.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
    return EncodeStats(out, nbytes, writer.count, dtype.name, time.perf_counter() - t0)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False
