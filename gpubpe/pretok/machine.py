"""The GPT-2 pre-tokenizer as a byte-level state machine, and exact counting (Numba).

Everything here is a pure function of a byte buffer and the class tables of
:mod:`gpubpe.pretok.unicode`; nothing depends on Python objects (the
resynchronisation rule below lets chunks be scanned independently, one per
thread).

Semantics: :func:`scan_count` finds exactly the matches that ``regex.findall``
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
merged word by word (counts are additive), and the last two are read into
one WordTable in two threads without being merged (:func:`emit_pair`).
"""

from __future__ import annotations

import sys

from .. import _numba

_numba.load()  # before anything compiled runs: Numba without SciPy (see gpubpe._numba)

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3

_SEED = np.uint64(0xCBF29CE484222325)


# ---------------------------------------------------------------------------
# The scanner
# ---------------------------------------------------------------------------
#
# One function, with the decoding written out where it is needed, because
# helpers that take arrays cost more than the work per byte here: every call,
# and every helper inlined by Numba, increments and decrements the arrays'
# reference counts (atomic operations) per pre-token. Measured on small.txt
# with 30% multibyte bytes: the same machine with helpers ran at 97-150 MB/s,
# written out at 290 MB/s. The loop below holds no reference operation.
#
# Classes come from three tables (gpubpe.pretok.unicode.scan_tables):
#   cls    uint8[256]    the class of an ASCII byte; HIGH for every byte >= 0x80
#   bmp    uint8[65536]  the class of every code point below U+10000 (one
#                        load for the 2- and 3-byte sequences of most scripts)
#   stage1, stage2       the two-level table, for 4-byte sequences (U+10000..)
# A run of ASCII letters or digits is consumed eight bytes per step
# (_run_end_mask), any other ASCII run by a two-instruction loop; a byte
# >= 0x80 is decoded only where the run reaches one.
#
# Where the time goes (small.txt, 8.36 million pre-tokens, warm, one core of
# a 2.0 GHz Xeon VM): the scan alone (mode 0, ends into a reused buffer)
# 0.14 s, 270 MB/s, about 17 ns a pre-token; scan and count (mode 1) 0.33 s.
# Counting the same pre-tokens from spans found before takes 0.12 s (keys
# 0.04 s, table 0.08 s): the rest is the two interfering, the key building
# costing 0.11 s right after the scan of its batch and 0.04 s on its own.
# Tried and dropped, each no faster than the loop below (within 3%) or
# slower: scanning a batch of 256 to 4096 pre-tokens into their ends and
# counting it in a loop of its own (with and without prefetch); no prefetch
# (5-10% slower); rings of 16 and 64, and of 1 (RING below was 15% faster
# than that on an AMD EPYC, within 3% here); a branch-free key mask; huge
# pages for the tables. Nearly 90% of pre-tokens are one of the 4,096 most
# frequent words, whose slots stay in cache, so a small table in front would
# not help.

HIGH = 4  # cls[] of a byte >= 0x80: decode the sequence it starts
RING = 32  # words in flight between the prefetch of their slot and their addition (a power of 2;
#             measured on small.txt: 32 counts about 15% faster than adding each word at once, 64 no faster)


@intrinsic
def prefetch(typingctx, arr, idx):
    """Ask the CPU for the cache line of ``arr[idx]`` (``llvm.prefetch``: a
    read, kept in all cache levels); no load waits for it."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@intrinsic
def at(typingctx, arr, idx):
    """``arr[idx]`` for an index known to be >= 0: without the fix-up of a
    negative index that Numba adds to every load with a signed index (LLVM
    cannot drop it where it cannot prove the sign). The scanner's byte and
    class loads go through it: measured 6% faster on small.txt."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i], wraparound=False)
        return builder.load(ptr)

    return arr.dtype(arr, idx), codegen


@intrinsic
def load8(typingctx, arr, idx):
    """The 8 bytes ``arr[idx:idx + 8]`` of a uint8 array as one little-endian
    uint64, in one unaligned load. Written as eight byte loads, Numba adds a
    negative-index check to each and LLVM cannot fuse them: measured 4x slower
    for the keys of the hash tables. The caller keeps ``idx + 8 <= len(arr)``."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        value = builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)
        return builder.bswap(value) if sys.byteorder == "big" else value

    return types.uint64(arr, idx), codegen


# SWAR ("SIMD within a register") tests of eight ASCII bytes at once, for the
# runs of ASCII letters and digits that make up most bytes of text: a byte's
# high bit in the result is set where the byte ends the run. Adding 0x80 - lo
# to a byte of at most 0x7F sets its high bit exactly when it is >= lo and
# never carries into the next byte. scan_tables() checks that the ASCII classes
# are the ones assumed here (A-Z a-z letters, 0-9 numbers, nothing else).
_HI = np.uint64(0x8080808080808080)
_LO7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_CASE = np.uint64(0x2020202020202020)
_GE_A = np.uint64(0x1F1F1F1F1F1F1F1F)  # + 0x1F: high bit iff (b | 0x20) >= 'a'
_GT_Z = np.uint64(0x0505050505050505)  # + 0x05: high bit iff (b | 0x20) > 'z'
_GE_0 = np.uint64(0x5050505050505050)  # + 0x50: high bit iff b >= '0'
_GT_9 = np.uint64(0x4646464646464646)  # + 0x46: high bit iff b > '9'


@njit(cache=True, nogil=True, inline="always")
def _run_end_mask(x, k):
    """High bits of the bytes of ``x`` that are not ASCII of class ``k``
    (LETTER or NUMBER); 0 when all eight continue the run."""
    if k == LETTER:
        t = (x | _CASE) & _LO7
        inside = (t + _GE_A) & ~(t + _GT_Z)
    else:
        t = x & _LO7
        inside = (t + _GE_0) & ~(t + _GT_9)
    return ~(inside & ~x) & _HI


@njit(cache=True, nogil=True)
def scan_count(data, i, e, room, cls, bmp, stage1, stage2, mode, out, short, mid, n, longs, ring):
    """Pre-tokenize ``at(data, i:e)`` (one piece, or its rest) from ``i``, at most
    ``room`` pre-tokens; returns ``(where it stopped, pre-tokens found, long
    pre-tokens written to longs)``. Call again from there to go on.

    ``mode`` 0: write each pre-token's end offset to ``out``. ``mode`` 1:
    count each pre-token as it ends: words of up to 15 bytes go into
    ``short``/``mid`` (room for ``room`` more words reserved by the caller),
    longer ones are written to ``longs`` as (start, end) pairs for the caller
    to add. A pure function of the bytes, so worker threads run it on their
    chunks independently.
    """
    dlen = data.shape[0]
    m = 0
    nl = 0
    head = 0  # pre-tokens put into the ring, and taken out of it
    tail = 0
    smask = short.shape[0] // 2 - 1
    mmask = mid.shape[0] // 3 - 1
    while True:
        if i >= e or m == room:
            if tail == head:
                break
        else:
            b = at(data, i)
            j = i
            if b == 39 and i + 1 < e:  # "'": the contractions come first; ASCII lower case only
                c = at(data, i + 1)
                if c == 115 or c == 100 or c == 109 or c == 116:  # s d m t
                    j = i + 2
                elif i + 2 < e:
                    d = at(data, i + 2)
                    if (c == 108 and d == 108) or (c == 118 and d == 101) or (c == 114 and d == 101):  # ll ve re
                        j = i + 3
            if j == i:
                # ' ?' joins one ASCII space to the letter, number or other run that follows
                s = i
                if b == 32 and i + 1 < e and at(cls, at(data, i + 1)) != SPACE:
                    s = i + 1  # tentatively: a multibyte space undoes it below
                # the first character: its class k, its end j
                b0 = np.int64(at(data, s))
                k = np.int64(at(cls, b0))
                j = s + 1
                if k == HIGH:
                    k = OTHER  # invalid UTF-8: the byte alone, class other
                    if b0 < 0xE0:
                        if b0 >= 0xC2 and s + 1 < e:
                            b1 = np.int64(at(data, s + 1))
                            if (b1 & 0xC0) == 0x80:
                                k = np.int64(at(bmp, ((b0 & 0x1F) << 6) | (b1 & 0x3F)))
                                j = s + 2
                    elif b0 < 0xF0:
                        if s + 2 < e:
                            b1 = np.int64(at(data, s + 1))
                            b2 = np.int64(at(data, s + 2))
                            cp = ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
                            # no overlongs (cp >= 0x800), no surrogates
                            if (b1 & 0xC0) == 0x80 and (b2 & 0xC0) == 0x80 and cp >= 0x800 and (cp < 0xD800 or cp > 0xDFFF):
                                k = np.int64(at(bmp, cp))
                                j = s + 3
                    elif b0 <= 0xF4 and s + 3 < e:
                        b1 = np.int64(at(data, s + 1))
                        b2 = np.int64(at(data, s + 2))
                        b3 = np.int64(at(data, s + 3))
                        cp = ((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F)
                        # no overlongs, nothing above U+10FFFF
                        if ((b1 & 0xC0) == 0x80 and (b2 & 0xC0) == 0x80 and (b3 & 0xC0) == 0x80
                                and cp >= 0x10000 and cp <= 0x10FFFF):
                            k = np.int64(at(stage2, np.int64(at(stage1, cp >> 8)) * 256 + (cp & 0xFF)))
                            j = s + 4
                    if k == SPACE and s > i:  # ' ' before a multibyte space: a whitespace run from i
                        j = i + 1
                # the rest of the run of class k
                lastmb = i  # start of the last multibyte character taken
                while True:
                    if k == LETTER or k == NUMBER:
                        while j + 8 <= e:
                            stop = _run_end_mask(load8(data, j), k)
                            if stop != 0:
                                j += np.int64(trailing_zeros(stop) >> np.uint64(3))
                                break
                            j += 8
                    while j < e and at(cls, at(data, j)) == k:
                        j += 1
                    if j >= e:
                        break
                    b0 = np.int64(at(data, j))
                    if b0 < 0x80:
                        break
                    kk = OTHER
                    nn = 1
                    if b0 < 0xE0:
                        if b0 >= 0xC2 and j + 1 < e:
                            b1 = np.int64(at(data, j + 1))
                            if (b1 & 0xC0) == 0x80:
                                kk = np.int64(at(bmp, ((b0 & 0x1F) << 6) | (b1 & 0x3F)))
                                nn = 2
                    elif b0 < 0xF0:
                        if j + 2 < e:
                            b1 = np.int64(at(data, j + 1))
                            b2 = np.int64(at(data, j + 2))
                            cp = ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
                            if (b1 & 0xC0) == 0x80 and (b2 & 0xC0) == 0x80 and cp >= 0x800 and (cp < 0xD800 or cp > 0xDFFF):
                                kk = np.int64(at(bmp, cp))
                                nn = 3
                    elif b0 <= 0xF4 and j + 3 < e:
                        b1 = np.int64(at(data, j + 1))
                        b2 = np.int64(at(data, j + 2))
                        b3 = np.int64(at(data, j + 3))
                        cp = ((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F)
                        if ((b1 & 0xC0) == 0x80 and (b2 & 0xC0) == 0x80 and (b3 & 0xC0) == 0x80
                                and cp >= 0x10000 and cp <= 0x10FFFF):
                            kk = np.int64(at(stage2, np.int64(at(stage1, cp >> 8)) * 256 + (cp & 0xFF)))
                            nn = 4
                    if kk != k:
                        break
                    lastmb = j
                    j += nn
                if k == SPACE and j < e:
                    # \s+(?!\S) before a non-space: a run longer than one character
                    # gives up its last one (which an ASCII byte ends, or lastmb starts)
                    last = j - 1 if at(data, j - 1) < 0x80 else lastmb
                    if last > i:
                        j = last
            m += 1
            if mode == 0:
                out[m - 1] = j
                i = j
                continue
            # count at(data, i:j) now, its bytes still in L1: the key is the bytes
            # themselves, one unaligned 8-byte load (load8) and a mask
            length = j - i
            if length > MID_MAX:
                longs[2 * nl] = i
                longs[2 * nl + 1] = j
                nl += 1
                i = j
                continue
            k0 = np.uint64(0)
            if i + 8 <= dlen:
                k0 = load8(data, i)
                if length < 8:
                    k0 &= (np.uint64(1) << np.uint64(8 * length)) - np.uint64(1)
            else:
                for t in range(min(length, 8)):
                    k0 |= np.uint64(at(data, i + t)) << np.uint64(8 * t)
            if length <= SHORT_MAX:
                k0 = (k0 << np.uint64(8)) | np.uint64(length)
                k1 = np.uint64(0)
                q = np.int64(((k0 * _GOLDEN) >> np.uint64(32)) & np.uint64(smask))
                prefetch(short, 2 * q)
            else:
                r = length - 8
                k1 = np.uint64(0)
                if i + 16 <= dlen:
                    k1 = load8(data, i + 8)
                    k1 &= (np.uint64(1) << np.uint64(8 * r)) - np.uint64(1)
                else:
                    for t in range(r):
                        k1 |= np.uint64(at(data, i + 8 + t)) << np.uint64(8 * t)
                k1 = (k1 << np.uint64(8)) | np.uint64(length)
                q = np.int64((((k0 ^ (k1 * _MIX)) * _GOLDEN) >> np.uint64(32)) & np.uint64(mmask))
                prefetch(mid, 3 * q)
            i = j
            # The slot's cache line is fetched while the next pre-tokens are
            # scanned: the word is added RING pre-tokens later (a table of 400,000
            # words does not fit in L2, and most of its lines are cold).
            r = head & (RING - 1)
            ring[3 * r] = k0
            ring[3 * r + 1] = k1
            ring[3 * r + 2] = np.uint64(q)
            head += 1
            if head - tail < RING:
                continue
        # add the oldest word of the ring
        r = tail & (RING - 1)
        k0 = ring[3 * r]
        k1 = ring[3 * r + 1]
        q = np.int64(ring[3 * r + 2])
        tail += 1
        if k1 == 0:
            while True:
                v = short[2 * q]
                if v == k0:
                    short[2 * q + 1] += np.uint64(1)
                    break
                if v == 0:
                    short[2 * q] = k0
                    short[2 * q + 1] = np.uint64(1)
                    n[2] += 1
                    break
                q = (q + 1) & smask
        else:
            while True:
                v = mid[3 * q + 1]
                if v == k1 and mid[3 * q] == k0:
                    mid[3 * q + 2] += np.uint64(1)
                    break
                if v == 0:
                    mid[3 * q] = k0
                    mid[3 * q + 1] = k1
                    mid[3 * q + 2] = np.uint64(1)
                    n[3] += 1
                    break
                q = (q + 1) & mmask
    return i, m, nl


@njit(cache=True, nogil=True)
def token_spans(data, starts, ends, cls, bmp, stage1, stage2):
    """(starts, ends), int64, of every pre-token of the pieces ``data[starts[p]:ends[p]]``.

    The pre-tokens of a piece tile it.
    """
    total = 0
    for p in range(starts.shape[0]):
        total += ends[p] - starts[p]
    out = np.empty(total, dtype=np.int64)  # at most one pre-token per byte
    none8 = np.zeros(2, dtype=np.uint64)
    none4 = np.zeros(4, dtype=np.int64)
    m = 0
    for p in range(starts.shape[0]):
        _, k, _ = scan_count(data, starts[p], ends[p], ends[p] - starts[p], cls, bmp, stage1, stage2, 0, out[m:],
                             none8, none8, none4, none4, none8)
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
# before the scanner counts a batch of at most m pre-tokens, _reserve makes
# room for m more short and mid words; the long pre-tokens of the batch are
# added after it, with room made for their bytes. The loop then only stores; a call per
# insertion that passed and returned the arrays measured 300 ns per long word.
# (A jitclass would hold the arrays more neatly but cannot be cached to disk;
# the Python side keeps them in gpubpe.pretok.tables.CountTable.)

SHORT_MAX = 7
MID_MAX = 15
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's first multiplier


@njit(cache=True, nogil=True)
def _hash(data, s, e):
    """A 64-bit hash of ``data[s:e]``, eight bytes per step (multiply and
    xor-shift, finished with a full avalanche: the low bits pick the slot and
    the high bits are the tag). Each step is one 8-byte load (load8), the
    last partial step too where 8 bytes end at ``e``; the loads are not a
    helper taking the array, which would cost two reference-count operations
    per call."""
    h = _SEED ^ np.uint64(e - s)
    q = s
    while q + 8 <= e:
        h = (h ^ load8(data, q)) * _GOLDEN
        h ^= h >> np.uint64(29)
        q += 8
    if q < e:  # the last 1..7 bytes, zero-padded
        if e >= 8:  # as the high bytes of the 8 that end at e: one load
            w = load8(data, e - 8) >> np.uint64(8 * (8 - (e - q)))
        else:
            w = np.uint64(0)
            for t in range(e - q):
                w |= np.uint64(data[q + t]) << np.uint64(8 * t)
        h = (h ^ w) * _GOLDEN
        h ^= h >> np.uint64(29)
    h *= _MIX
    return h ^ (h >> np.uint64(32))


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
def _probe_long(data, s, e, h, slots, offs, arena):
    """Where the word ``data[s:e]`` (hash ``h``) is in a long-word table:
    ``(its id, -1)``, or ``(-1, the empty slot that ends its probe)``. The tag
    (the hash's top bits) rules most slots out; a slot whose tag matches is
    confirmed by comparing the bytes, so two words are never taken for one."""
    mask = slots.shape[0] - 1
    tag = np.int64(h >> np.uint64(33))
    q = np.int64(h & np.uint64(mask))
    length = e - s
    while True:
        v = slots[q]
        if v == 0:
            return -1, q
        if (v >> 32) == tag:
            w = (v & 0xFFFFFFFF) - 1
            o = offs[w]
            if offs[w + 1] - o == length:
                same = True
                t = 0
                while t + 8 <= length:  # 8 bytes per compare; the word ends inside both arrays
                    if load8(arena, o + t) != load8(data, s + t):
                        same = False
                        break
                    t += 8
                while same and t < length:
                    if arena[o + t] != data[s + t]:
                        same = False
                    t += 1
                if same:
                    return w, np.int64(-1)
        q = (q + 1) & mask


@njit(cache=True, nogil=True)
def _add_long(data, s, e, h, c, slots, hashes, offs, arena, counts, n):
    """Add ``c`` to the word ``data[s:e]`` with hash ``h`` (room reserved)."""
    w, q = _probe_long(data, s, e, h, slots, offs, arena)
    if w >= 0:
        counts[w] += c
        return
    tag = np.int64(h >> np.uint64(33))
    length = e - s
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
def count_pieces(data, starts, ends, cls, bmp, stage1, stage2, batch,
                 short, mid, slots, hashes, offs, arena, counts, n):
    """Pre-tokenize the pieces ``data[starts[p]:ends[p]]`` and add every
    pre-token to the tables, ``batch`` pre-tokens at a time (room for that
    many words is reserved before each batch, so the scan only stores). Returns
    the tables' (possibly reallocated) arrays."""
    longs = np.empty(2 * batch, dtype=np.int64)
    none = np.empty(0, dtype=np.int64)
    ring = np.empty(3 * RING, dtype=np.uint64)
    for p in range(starts.shape[0]):
        i = starts[p]
        e = ends[p]
        while i < e:
            room = min(batch, e - i)  # a pre-token is at least one byte
            short, mid, slots, hashes, offs, arena, counts = _reserve(
                short, mid, slots, hashes, offs, arena, counts, n, room, 0
            )
            i, _, nl = scan_count(data, i, e, room, cls, bmp, stage1, stage2, 1, none, short, mid, n, longs, ring)
            if nl:
                nbytes = 0
                for t in range(nl):
                    nbytes += longs[2 * t + 1] - longs[2 * t]
                short, mid, slots, hashes, offs, arena, counts = _reserve(
                    short, mid, slots, hashes, offs, arena, counts, n, nl, nbytes
                )
                for t in range(nl):
                    s = longs[2 * t]
                    j = longs[2 * t + 1]
                    _add_long(data, s, j, _hash(data, s, j), 1, slots, hashes, offs, arena, counts, n)
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
def flatten(short, mid, offs, arena, counts, n, gaps, like):
    """Every word of the tables: ``(bytes, offsets int64, counts int64, sep)``,
    the bytes in an array of ``like``'s dtype (uint8 for a dict, int32 for a
    WordTable's symbols, written at once instead of converted after).

    Short words first, in slot order, then mid words in slot order, then the
    long words in insertion order; word ``k`` is ``bytes[offsets[k] + g * k :
    offsets[k + 1] + g * k]`` with ``g`` 1 if ``gaps`` else 0. With ``gaps``,
    one byte follows every word but the last, set to ``sep``: the largest byte
    value that no word holds, so that ``bytes.split`` cuts the words apart in
    C (the Python dict of ``count_pretokens`` is built that way); ``sep`` is -1
    when every byte value occurs (then slice by the offsets). Without gaps
    the bytes are a WordTable's symbols (``sep`` -1)."""
    nlong = n[0]
    used = n[1]
    nwords = n[2] + n[3] + nlong
    g = 1 if gaps else 0
    nbytes = used
    for r in range(short.shape[0] // 2):
        nbytes += np.int64(short[2 * r] & np.uint64(0xFF))
    for r in range(mid.shape[0] // 3):
        nbytes += np.int64(mid[3 * r + 1] & np.uint64(0xFF))
    out = np.empty(nbytes + g * max(nwords - 1, 0), dtype=like.dtype)
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
                out[pos + t] = (key >> np.uint64(8 * (t + 1))) & np.uint64(0xFF)
            pos += length + g
            out_counts[w] = np.int64(short[2 * r + 1])
            w += 1
            offsets[w] = pos - g * w
    for r in range(mid.shape[0] // 3):
        k1 = mid[3 * r + 1]
        if k1 != 0:
            k0 = mid[3 * r]
            length = np.int64(k1 & np.uint64(0xFF))
            for t in range(8):
                out[pos + t] = (k0 >> np.uint64(8 * t)) & np.uint64(0xFF)
            for t in range(length - 8):
                out[pos + 8 + t] = (k1 >> np.uint64(8 * (t + 1))) & np.uint64(0xFF)
            pos += length + g
            out_counts[w] = np.int64(mid[3 * r + 2])
            w += 1
            offsets[w] = pos - g * w
    for k in range(nlong):
        o = offs[k]
        length = offs[k + 1] - o
        for t in range(length):
            out[pos + t] = arena[o + t]
        pos += length + g
        out_counts[w] = counts[k]
        w += 1
        offsets[w] = pos - g * w
    sep = -1
    if gaps and nwords > 1:
        seen = np.zeros(256, dtype=np.bool_)
        for k in range(nwords):  # the words only: the gaps hold what np.empty left
            for q in range(offsets[k] + k, offsets[k + 1] + k):
                seen[out[q]] = True
        for b in range(255, -1, -1):
            if not seen[b]:
                sep = b
                break
        if sep >= 0:
            for k in range(nwords - 1):
                out[offsets[k + 1] + k] = sep
    return out, offsets, out_counts, sep


# ---------------------------------------------------------------------------
# Two tables into one WordTable, in two threads, without merging them
# ---------------------------------------------------------------------------
#
# The last merge of the worker tables is a chain of insertions into one table
# that no other thread can help with, and flatten() then reads the result in
# one thread too. emit_pair() instead writes the words of two tables A and B
# straight into one WordTable, half in each thread, reading both tables and
# writing neither: the thread for A writes every word of A, with B's count
# added where B has it; the thread for B writes the words that A lacks. The
# first part's size is known before either starts (all of A), so both write
# into the same arrays and nothing is copied after.


@njit(cache=True, nogil=True)
def _find_long(data, s, e, h, slots, offs, arena):
    """The word id of ``data[s:e]`` (hash ``h``) in a long-word table, or -1."""
    return _probe_long(data, s, e, h, slots, offs, arena)[0]


@njit(cache=True, nogil=True)
def table_bytes(short, mid, n):
    """(words, bytes) of a table's words."""
    nbytes = n[1]
    for r in range(short.shape[0] // 2):
        nbytes += np.int64(short[2 * r] & np.uint64(0xFF))
    for r in range(mid.shape[0] // 3):
        nbytes += np.int64(mid[3 * r + 1] & np.uint64(0xFF))
    return n[0] + n[2] + n[3], nbytes


@njit(cache=True, nogil=True)
def emit_pair(short, mid, hashes, offs, arena, counts, n, o_short, o_mid, o_slots, o_offs, o_arena, o_counts,
              first, symbols, offsets, out_counts, w0, pos0, g, seen):
    """Write this table's words as WordTable rows from row ``w0`` and symbol
    ``pos0`` on (``offsets[w0]`` already set): with ``first``, every word,
    its count plus the other table's (arrays prefixed ``o_``) where that has
    it; without, only the words the other table lacks. Returns the rows
    written.

    ``g`` 1 lays the words out as :func:`flatten` with ``gaps`` does (one
    byte left after every word, word ``k`` at ``symbols[offsets[k] + k:
    offsets[k + 1] + k]``, ``pos0`` counting the gaps before it) and marks
    every byte value written in ``seen`` (256 entries), from which the
    caller picks the separator; ``g`` 0 is a WordTable's layout (``seen``
    untouched)."""
    smask = o_short.shape[0] // 2 - 1
    mmask = o_mid.shape[0] // 3 - 1
    w = w0
    pos = pos0
    for r in range(short.shape[0] // 2):
        key = short[2 * r]
        if key == 0:
            continue
        q = _short_slot(key, smask)
        other = np.uint64(0)
        found = False
        while True:
            v = o_short[2 * q]
            if v == key:
                other = o_short[2 * q + 1]
                found = True
                break
            if v == 0:
                break
            q = (q + 1) & smask
        if found and not first:
            continue
        length = np.int64(key & np.uint64(0xFF))
        for t in range(length):
            x = (key >> np.uint64(8 * (t + 1))) & np.uint64(0xFF)
            symbols[pos + t] = x
            if g:
                seen[x] = 1
        pos += length + g
        out_counts[w] = np.int64(short[2 * r + 1] + other)
        w += 1
        offsets[w] = pos - g * w
    for r in range(mid.shape[0] // 3):
        k1 = mid[3 * r + 1]
        if k1 == 0:
            continue
        k0 = mid[3 * r]
        q = _mid_slot(k0, k1, mmask)
        other = np.uint64(0)
        found = False
        while True:
            v = o_mid[3 * q + 1]
            if v == k1 and o_mid[3 * q] == k0:
                other = o_mid[3 * q + 2]
                found = True
                break
            if v == 0:
                break
            q = (q + 1) & mmask
        if found and not first:
            continue
        length = np.int64(k1 & np.uint64(0xFF))
        for t in range(8):
            x = (k0 >> np.uint64(8 * t)) & np.uint64(0xFF)
            symbols[pos + t] = x
            if g:
                seen[x] = 1
        for t in range(length - 8):
            x = (k1 >> np.uint64(8 * (t + 1))) & np.uint64(0xFF)
            symbols[pos + 8 + t] = x
            if g:
                seen[x] = 1
        pos += length + g
        out_counts[w] = np.int64(mid[3 * r + 2] + other)
        w += 1
        offsets[w] = pos - g * w
    for k in range(n[0]):
        o = offs[k]
        e = offs[k + 1]
        x = _find_long(arena, o, e, hashes[k], o_slots, o_offs, o_arena)
        if x >= 0 and not first:
            continue
        for t in range(e - o):
            symbols[pos + t] = arena[o + t]
            if g:
                seen[arena[o + t]] = 1
        pos += e - o + g
        out_counts[w] = counts[k] + (o_counts[x] if x >= 0 else 0)
        w += 1
        offsets[w] = pos - g * w
    return w - w0
