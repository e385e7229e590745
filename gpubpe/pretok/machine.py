"""The GPT-2 pre-tokenizer as a byte-level state machine, and exact counting (Numba).

Everything here is a pure function of a byte buffer and the class tables of
:mod:`gpubpe.pretok.unicode`; nothing depends on Python objects (the
resynchronisation rule below lets chunks be scanned independently, one per
thread).

Semantics: :func:`scan` returns exactly the matches that ``regex.findall``
finds for the GPT-2 pattern

    '(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

on ``data.decode("utf-8", "surrogateescape")``: a byte that does not start a
well-formed UTF-8 sequence (Unicode Table 3-7: no overlongs, no surrogates
``ED A0..BF``, nothing above U+10FFFF) is one character of class "other", as a
lone surrogate U+DC80..U+DCFF is for ``regex``. The alternatives reduce to:

* ``'`` followed by ``s d m t`` or ``ll ve re`` (lower case ASCII only) is a
  contraction; otherwise ``'`` is an ordinary "other" character;
* a run of letters, of numbers, or of others, optionally preceded by one
  ASCII space (U+0020, and only that one);
* a whitespace run reaching the end of the piece is one pre-token; a run
  followed by a non-space character gives up its last character, which then
  either is a space that joins the next run or stands alone.

Resynchronisation rule: where a non-whitespace character is followed by a
whitespace character there is always a pre-token boundary (no alternative
matches non-space then space), and no alternative looks behind, so the pieces
on either side pre-tokenize independently. Chunks may be cut there.

Counting uses open-addressing hash tables keyed by the pre-token bytes:
words of up to 15 bytes are the key themselves, longer ones are found by a
64-bit hash and confirmed by a full comparison of the bytes, so two different
pre-tokens are never merged. Each worker fills its own tables; tables are
merged word by word (counts are additive).
"""

from __future__ import annotations

import numpy as np
from numba import njit

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3

_SEED = np.uint64(0xCBF29CE484222325)


# ---------------------------------------------------------------------------
# Decoding and the state machine
# ---------------------------------------------------------------------------
#
# The scanner is one function with the ASCII cases written out: calls between
# Numba functions that pass arrays cost more than the work per byte here
# (measured: a function called once per pre-token ran at 60 MB/s, this loop at
# 240 MB/s on the same text). Only the multi-byte decoder is a function of its
# own, inlined at the IR level.


@njit(cache=True, nogil=True, inline="always")
def decode_class(data, i, end, stage1, stage2):
    """``(class << 3) | length`` of the character starting at ``data[i] >= 0x80``.

    Invalid UTF-8: the byte at ``i`` alone is one "other" character. Checking
    only the sequence starting at ``i`` (not Python's maximal-subpart error
    ranges) gives the same characters, because every later byte of a rejected
    sequence is a continuation byte or a lead byte that is checked on its own.
    """
    b0 = np.int64(data[i])
    n = end - i
    cp = np.int64(-1)
    length = np.int64(1)
    if 0xC2 <= b0 <= 0xDF:
        if n >= 2:
            b1 = np.int64(data[i + 1])
            if 0x80 <= b1 <= 0xBF:
                cp = ((b0 & 0x1F) << 6) | (b1 & 0x3F)
                length = 2
    elif 0xE0 <= b0 <= 0xEF:
        if n >= 3:
            b1 = np.int64(data[i + 1])
            b2 = np.int64(data[i + 2])
            lo = 0xA0 if b0 == 0xE0 else 0x80  # no overlongs
            hi = 0x9F if b0 == 0xED else 0xBF  # no surrogates
            if lo <= b1 <= hi and 0x80 <= b2 <= 0xBF:
                cp = ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
                length = 3
    elif 0xF0 <= b0 <= 0xF4:
        if n >= 4:
            b1 = np.int64(data[i + 1])
            b2 = np.int64(data[i + 2])
            b3 = np.int64(data[i + 3])
            lo = 0x90 if b0 == 0xF0 else 0x80  # no overlongs
            hi = 0x8F if b0 == 0xF4 else 0xBF  # nothing above U+10FFFF
            if lo <= b1 <= hi and 0x80 <= b2 <= 0xBF and 0x80 <= b3 <= 0xBF:
                cp = ((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F)
                length = 4
    if cp < 0:
        return np.int64(OTHER << 3) | 1
    return (np.int64(stage2[np.int64(stage1[cp >> 8]) * 256 + (cp & 0xFF)]) << 3) | length


@njit(cache=True, nogil=True)
def scan(data, i, end, stage1, stage2, out):
    """Pre-tokenize ``data[i:end]`` (one piece, or its rest) from ``i``.

    Writes the end offset of each pre-token to ``out`` until the piece ends or
    ``out`` is full, and returns ``(number written, where it stopped)``; call
    again from there to go on. A pure function of the bytes, so worker threads
    run it on their chunks independently.
    """
    m = 0
    cap = out.shape[0]
    while i < end and m < cap:
        b = np.int64(data[i])
        if b < 0x80:
            k = np.int64(stage2[b])
            n = np.int64(1)
        else:
            kn = decode_class(data, i, end, stage1, stage2)
            k = kn >> 3
            n = kn & 7
        done = False
        if b == 39 and i + 1 < end:  # "'": alternative 1 comes first
            c = data[i + 1]
            if c == 115 or c == 100 or c == 109 or c == 116:  # s d m t
                i += 2
                done = True
            elif i + 2 < end:
                d = data[i + 2]
                if (c == 108 and d == 108) or (c == 118 and d == 101) or (c == 114 and d == 101):  # ll ve re
                    i += 3
                    done = True
        if not done:
            if k == SPACE and b == 32 and i + 1 < end:
                # ' ?' joins one ASCII space to a following letter, number or other run
                b1 = np.int64(data[i + 1])
                if b1 < 0x80:
                    k1 = np.int64(stage2[b1])
                    n1 = np.int64(1)
                else:
                    kn = decode_class(data, i + 1, end, stage1, stage2)
                    k1 = kn >> 3
                    n1 = kn & 7
                if k1 != SPACE:
                    k = k1
                    n = n1 + 1
            if k != SPACE:  # a run of one class
                j = i + n
                while j < end:
                    c = np.int64(data[j])
                    if c < 0x80:
                        if np.int64(stage2[c]) != k:
                            break
                        j += 1
                    else:
                        kn = decode_class(data, j, end, stage1, stage2)
                        if (kn >> 3) != k:
                            break
                        j += kn & 7
                i = j
            else:
                # A whitespace run: \s+(?!\S) backs off one character before a
                # non-space when the run is longer than one; \s+ takes a lone one.
                last = i
                j = i + n
                stop = end
                while j < end:
                    c = np.int64(data[j])
                    if c < 0x80:
                        kk = np.int64(stage2[c])
                        nn = np.int64(1)
                    else:
                        kn = decode_class(data, j, end, stage1, stage2)
                        kk = kn >> 3
                        nn = kn & 7
                    if kk != SPACE:
                        stop = last if last > i else j
                        break
                    last = j
                    j += nn
                i = stop
        out[m] = i
        m += 1
    return m, i


@njit(cache=True, nogil=True)
def token_spans(data, starts, ends, stage1, stage2):
    """(starts, ends), int64, of every pre-token of the pieces ``data[starts[p]:ends[p]]``.

    The pre-tokens of a piece tile it.
    """
    total = 0
    for p in range(starts.shape[0]):
        total += ends[p] - starts[p]
    out = np.empty(total, dtype=np.int64)  # at most one pre-token per byte
    m = 0
    for p in range(starts.shape[0]):
        i = starts[p]
        while i < ends[p]:
            k, i = scan(data, i, ends[p], stage1, stage2, out[m:])
            m += k
    out_e = out[:m].copy()
    out_s = np.empty(m, dtype=np.int64)
    q = 0
    for p in range(starts.shape[0]):
        prev = starts[p]
        while q < m and out_e[q] <= ends[p]:
            out_s[q] = prev
            prev = out_e[q]
            q += 1
    return out_s, out_e


# ---------------------------------------------------------------------------
# Exact counting: hash tables keyed by the bytes
# ---------------------------------------------------------------------------
#
# Words of at most 7 bytes (85% of pre-tokens in English text) live in a
# "short" table keyed by the word itself packed into a uint64: bytes in bits
# 8..63, length in bits 0..7 (never 0 for a non-empty word, so 0 marks an
# empty slot). Key and count sit side by side, so a lookup touches one cache
# line and compares no bytes.
#   short    uint64[2 * scap]  short[2q] packed word (0 = empty), short[2q + 1] its count
#
# Words of 8 to 15 bytes (another 13%) live in a "mid" table keyed the same
# way by two uint64: the first 8 bytes, then the rest packed with the length.
#   mid      uint64[3 * mcap]  mid[3q] first 8 bytes, mid[3q + 1] rest << 8 | length
#                              (0 = empty), mid[3q + 2] its count
#
# Longer words live in a "long" table: the bytes in an arena, found through
# open addressing on a 64-bit hash, confirmed by comparing the bytes,
# so two distinct words are never merged.
#   slots    int64[cap]        0 = empty, else (high 31 bits of the hash << 32) | (word id + 1)
#   hashes   uint64[wcap]      hash of word k
#   offs     int64[wcap + 1]   word k is arena[offs[k]:offs[k + 1]]
#   arena    uint8[acap]       the words' bytes, back to back
#   counts   int64[wcap]       occurrences of word k
#   n        int64[4]          (long words, arena bytes used, short words, mid words)
# Every table is at most half full (linear probing stays short).
#
# Growth happens between batches of pre-tokens, never inside the hot loop:
# before a batch of m pre-tokens spanning b bytes, _reserve makes room for m
# more words and b more arena bytes. The loop then only stores; a call per
# insertion that passed and returned the arrays measured 300 ns per long word.
# (A jitclass would hold the arrays more neatly but cannot be cached to disk;
# the Python side keeps them in gpubpe.pretok.tables.CountTable.)

SHORT_MAX = 7
MID_MAX = 15
_BATCH = 4096  # pre-tokens scanned per call of scan() while counting
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's first multiplier


@njit(cache=True, nogil=True)
def _load(data, s, e):
    """The bytes ``data[s:e]`` (at most 8) as a little-endian uint64.

    Where the buffer allows, it reads 8 bytes and masks: a fixed number of
    loads, no branch on the length (which mispredicts, token after token)."""
    length = e - s
    if s + 8 <= data.shape[0]:
        w = (
            np.uint64(data[s])
            | (np.uint64(data[s + 1]) << np.uint64(8))
            | (np.uint64(data[s + 2]) << np.uint64(16))
            | (np.uint64(data[s + 3]) << np.uint64(24))
            | (np.uint64(data[s + 4]) << np.uint64(32))
            | (np.uint64(data[s + 5]) << np.uint64(40))
            | (np.uint64(data[s + 6]) << np.uint64(48))
            | (np.uint64(data[s + 7]) << np.uint64(56))
        )
        if length >= 8:
            return w
        return w & ((np.uint64(1) << np.uint64(8 * length)) - np.uint64(1))
    w = np.uint64(0)
    for q in range(s, e):
        w |= np.uint64(data[q]) << np.uint64(8 * (q - s))
    return w


@njit(cache=True, nogil=True)
def _hash(data, s, e):
    """A 64-bit hash of ``data[s:e]``, eight bytes per step (multiply and
    xor-shift, finished with a full avalanche: the low bits pick the slot and
    the high bits are the tag)."""
    h = _SEED ^ np.uint64(e - s)
    q = s
    while q < e:
        w = _load(data, q, min(q + 8, e))
        h = (h ^ w) * _GOLDEN
        h ^= h >> np.uint64(29)
        q += 8
    h *= _MIX
    return h ^ (h >> np.uint64(32))


@njit(cache=True, nogil=True)
def _pack(data, s, e):
    """The short word ``data[s:e]`` (1 to 7 bytes) as its table key."""
    return (_load(data, s, e) << np.uint64(8)) | np.uint64(e - s)


@njit(cache=True, nogil=True)
def _short_slot(key, mask):
    return np.int64(((key * _GOLDEN) >> np.uint64(32)) & np.uint64(mask))


@njit(cache=True, nogil=True)
def _rehash_short(short, cap):
    mask = cap - 1
    new = np.zeros(2 * cap, dtype=np.uint64)
    for r in range(short.shape[0] // 2):
        v = short[2 * r]
        if v != 0:
            p = _short_slot(v, mask)
            while new[2 * p] != 0:
                p = (p + 1) & mask
            new[2 * p] = v
            new[2 * p + 1] = short[2 * r + 1]
    return new


@njit(cache=True, nogil=True)
def _mid_slot(k0, k1, mask):
    return _short_slot(k0 ^ (k1 * _MIX), mask)


@njit(cache=True, nogil=True)
def _rehash_mid(mid, cap):
    mask = cap - 1
    new = np.zeros(3 * cap, dtype=np.uint64)
    for r in range(mid.shape[0] // 3):
        k1 = mid[3 * r + 1]
        if k1 != 0:
            k0 = mid[3 * r]
            p = _mid_slot(k0, k1, mask)
            while new[3 * p + 1] != 0:
                p = (p + 1) & mask
            new[3 * p] = k0
            new[3 * p + 1] = k1
            new[3 * p + 2] = mid[3 * r + 2]
    return new


@njit(cache=True, nogil=True)
def _rehash_long(slots, hashes, nwords, cap):
    mask = cap - 1
    new = np.zeros(cap, dtype=np.int64)
    for w in range(nwords):
        hw = hashes[w]
        p = np.int64(hw & np.uint64(mask))
        while new[p] != 0:
            p = (p + 1) & mask
        new[p] = (np.int64(hw >> np.uint64(33)) << 32) | (w + 1)
    return new


@njit(cache=True, nogil=True)
def _reserve(short, mid, slots, hashes, offs, arena, counts, n, words, nbytes):
    """Room for ``words`` more words in each table and ``nbytes`` more arena bytes."""
    if 4 * (n[2] + words) > short.shape[0]:  # slots = shape / 2; keep them at most half full
        cap = short.shape[0] // 2
        while 2 * (n[2] + words) > cap:
            cap *= 2
        short = _rehash_short(short, cap)
    if 6 * (n[3] + words) > mid.shape[0]:  # slots = shape / 3
        cap = mid.shape[0] // 3
        while 2 * (n[3] + words) > cap:
            cap *= 2
        mid = _rehash_mid(mid, cap)
    nw = n[0]
    if nw + words > 2**31 - 2:
        raise ValueError("more than 2**31 - 2 unique pre-tokens in one table")
    if 2 * (nw + words) > slots.shape[0]:
        cap = slots.shape[0]
        while 2 * (nw + words) > cap:
            cap *= 2
        slots = _rehash_long(slots, hashes, nw, cap)
    if nw + words > hashes.shape[0]:
        wcap = hashes.shape[0]
        while nw + words > wcap:
            wcap *= 2
        h2 = np.empty(wcap, dtype=np.uint64)
        h2[:nw] = hashes[:nw]
        hashes = h2
        c2 = np.empty(wcap, dtype=np.int64)
        c2[:nw] = counts[:nw]
        counts = c2
        o2 = np.empty(wcap + 1, dtype=np.int64)
        o2[: nw + 1] = offs[: nw + 1]
        offs = o2
    used = n[1]
    if used + nbytes > arena.shape[0]:
        acap = arena.shape[0]
        while used + nbytes > acap:
            acap *= 2
        a2 = np.empty(acap, dtype=np.uint8)
        a2[:used] = arena[:used]
        arena = a2
    return short, mid, slots, hashes, offs, arena, counts


@njit(cache=True, nogil=True)
def _add_mid(k0, k1, c, mid, n):
    """Add ``c`` to the mid word ``(k0, k1)`` (room reserved)."""
    mask = mid.shape[0] // 3 - 1
    q = _mid_slot(k0, k1, mask)
    while True:
        v = mid[3 * q + 1]
        if v == k1 and mid[3 * q] == k0:
            mid[3 * q + 2] += np.uint64(c)
            return
        if v == 0:
            mid[3 * q] = k0
            mid[3 * q + 1] = k1
            mid[3 * q + 2] = np.uint64(c)
            n[3] += 1
            return
        q = (q + 1) & mask


@njit(cache=True, nogil=True)
def _add_short(key, c, short, n):
    """Add ``c`` to the short word ``key`` (room reserved)."""
    mask = short.shape[0] // 2 - 1
    q = _short_slot(key, mask)
    while True:
        v = short[2 * q]
        if v == key:
            short[2 * q + 1] += np.uint64(c)
            return
        if v == 0:
            short[2 * q] = key
            short[2 * q + 1] = np.uint64(c)
            n[2] += 1
            return
        q = (q + 1) & mask


@njit(cache=True, nogil=True)
def _add_long(data, s, e, h, c, slots, hashes, offs, arena, counts, n):
    """Add ``c`` to the word ``data[s:e]`` with hash ``h`` (room reserved)."""
    mask = slots.shape[0] - 1
    tag = np.int64(h >> np.uint64(33))
    q = np.int64(h & np.uint64(mask))
    length = e - s
    while True:
        v = slots[q]
        if v == 0:
            break
        if (v >> 32) == tag:
            w = (v & 0xFFFFFFFF) - 1
            o = offs[w]
            if offs[w + 1] - o == length:
                same = True
                for t in range(length):
                    if arena[o + t] != data[s + t]:
                        same = False
                        break
                if same:
                    counts[w] += c
                    return
        q = (q + 1) & mask
    nw = n[0]
    used = n[1]
    for t in range(length):
        arena[used + t] = data[s + t]
    hashes[nw] = h
    counts[nw] = c
    offs[nw + 1] = used + length
    slots[q] = (tag << 32) | (nw + 1)
    n[0] = nw + 1
    n[1] = used + length


@njit(cache=True, nogil=True)
def count_pieces(data, starts, ends, stage1, stage2, short, mid, slots, hashes, offs, arena, counts, n):
    """Pre-tokenize the pieces ``data[starts[p]:ends[p]]`` and add every
    pre-token to the tables. Returns the tables' (possibly reallocated) arrays."""
    out = np.empty(_BATCH, dtype=np.int64)
    for p in range(starts.shape[0]):
        i = starts[p]
        e = ends[p]
        while i < e:
            m, stop = scan(data, i, e, stage1, stage2, out)
            short, mid, slots, hashes, offs, arena, counts = _reserve(
                short, mid, slots, hashes, offs, arena, counts, n, m, stop - i
            )
            for t in range(m):
                j = out[t]
                length = j - i
                if length <= SHORT_MAX:
                    _add_short(_pack(data, i, j), 1, short, n)
                elif length <= MID_MAX:
                    _add_mid(_load(data, i, i + 8), (_load(data, i + 8, j) << np.uint64(8)) | np.uint64(length), 1, mid, n)
                else:
                    _add_long(data, i, j, _hash(data, i, j), 1, slots, hashes, offs, arena, counts, n)
                i = j
    return short, mid, slots, hashes, offs, arena, counts


@njit(cache=True, nogil=True)
def merge_tables(short, mid, slots, hashes, offs, arena, counts, n, o_short, o_mid, o_hashes, o_offs, o_arena, o_counts, o_n):
    """Add every word of another table (its arrays prefixed ``o_``) to this one."""
    short, mid, slots, hashes, offs, arena, counts = _reserve(
        short, mid, slots, hashes, offs, arena, counts, n, max(o_n[0], o_n[2], o_n[3]), o_n[1]
    )
    for r in range(o_short.shape[0] // 2):
        if o_short[2 * r] != 0:
            _add_short(o_short[2 * r], o_short[2 * r + 1], short, n)
    for r in range(o_mid.shape[0] // 3):
        if o_mid[3 * r + 1] != 0:
            _add_mid(o_mid[3 * r], o_mid[3 * r + 1], o_mid[3 * r + 2], mid, n)
    for w in range(o_n[0]):
        _add_long(o_arena, o_offs[w], o_offs[w + 1], o_hashes[w], o_counts[w], slots, hashes, offs, arena, counts, n)
    return short, mid, slots, hashes, offs, arena, counts


@njit(cache=True, nogil=True)
def flatten(short, mid, offs, arena, counts, n):
    """The WordTable arrays of all tables: (symbols int32, offsets int64, counts int64).

    Short words first, in slot order, then mid words in slot order, then the
    long words in insertion order."""
    nlong = n[0]
    used = n[1]
    nwords = n[2] + n[3] + nlong
    nbytes = used
    for r in range(short.shape[0] // 2):
        nbytes += np.int64(short[2 * r] & np.uint64(0xFF))
    for r in range(mid.shape[0] // 3):
        nbytes += np.int64(mid[3 * r + 1] & np.uint64(0xFF))
    symbols = np.empty(nbytes, dtype=np.int32)
    offsets = np.empty(nwords + 1, dtype=np.int64)
    out_counts = np.empty(nwords, dtype=np.int64)
    offsets[0] = 0
    w = 0
    pos = 0
    for r in range(short.shape[0] // 2):
        key = short[2 * r]
        if key != 0:
            length = np.int64(key & np.uint64(0xFF))
            for t in range(length):
                symbols[pos + t] = np.int32((key >> np.uint64(8 * (t + 1))) & np.uint64(0xFF))
            pos += length
            out_counts[w] = np.int64(short[2 * r + 1])
            w += 1
            offsets[w] = pos
    for r in range(mid.shape[0] // 3):
        k1 = mid[3 * r + 1]
        if k1 != 0:
            k0 = mid[3 * r]
            length = np.int64(k1 & np.uint64(0xFF))
            for t in range(8):
                symbols[pos + t] = np.int32((k0 >> np.uint64(8 * t)) & np.uint64(0xFF))
            for t in range(length - 8):
                symbols[pos + 8 + t] = np.int32((k1 >> np.uint64(8 * (t + 1))) & np.uint64(0xFF))
            pos += length
            out_counts[w] = np.int64(mid[3 * r + 2])
            w += 1
            offsets[w] = pos
    for q in range(used):
        symbols[pos + q] = arena[q]
    for k in range(nlong):
        out_counts[w + k] = counts[k]
        offsets[w + k + 1] = pos + offs[k + 1]
    return symbols, offsets, out_counts
