"""The CPU merge loop: NumPy + Numba, incremental.

Input is the WordTable (the backend seam, DESIGN §2); output is the merges as
``(left_id, right_id)`` rows in creation order.

Algorithm (per merge, cost proportional to the words the merge touches, never a
full recount):

* pair ids without a hash table. Every initial pair is two bytes: a dense
  256 x 256 table names them. A merge of ``(a, b)`` into the new token ``t``
  only creates pairs that hold ``t`` -- ``(x, t)`` and ``(t, y)`` -- so
  they are found through two per-merge arrays indexed by ``x`` and ``y``,
  reset after the merge. (A global open-addressing table from
  ``left << 32 | right`` to ids was the first version: two cache misses per
  lookup, about five lookups per occurrence.)
* pair ids stored beside the symbols  ``ws[2 i]`` is symbol ``i`` and
  ``ws[2 i + 1]`` the id of the pair starting there, so a word's symbols and
  pair ids arrive in one cache miss and a decrement needs no lookup.
* pair records  ``pdata[p] = (count, key, vstart, vlen, vcap)``: the 64-bit
  weighted count, ``key = left << 32 | right``, and the pair's word vector
  (the words that hold it, possibly stale) in one shared pool. Vectors read
  sequentially; the linked lists of the first version cost a miss per word.
  A new pair's words are all found in the merge that creates it, so its
  vector is placed once, exact-size, after that merge (growing vectors by
  doubling left 60% of a 160 MB pool as garbage on ``small``).
* word records  ``wd[k] = (offset, length, count, unused)``. A pair's vector
  holds each word once (a word is appended only while it is processed, and
  the last entry is checked), so no per-merge stamp is needed.
* prefetching  the words a merge visits are known in advance: the loop asks
  for the records of the word 16 ahead and all the symbols of the word 8
  ahead (``llvm.prefetch`` through a Numba intrinsic). Vectors are filled in
  word order, so the visits walk memory forwards.
* 4-ary max-heap with lazy invalidation and a threshold  rows ``(count,
  key, pair id)`` (4-ary: half the levels of a binary heap, children in
  adjacent rows). A row may hold a count above the true one (decrements push
  nothing); a stale top is re-pushed with the true count. Only pairs with
  count >= ``thresh`` are in the heap: a pair gains count only in the merge
  that creates it, so a pair below ``thresh`` cannot beat a top above it, and
  waits outside until the heap runs dry and ``_refill`` halves the threshold
  (about log2(largest count) O(pairs) scans per run). The heap stays at the
  pairs within a factor 2 of the best, in cache, and most new pairs (small
  counts) are never pushed: 20% of the loop's time on ``small`` went to a
  heap of all pairs. Invariant: every live pair of count >= ``thresh`` has a
  row whose count is >= its true count, so a valid top is the exact maximum.
* tie rule (DESIGN §1.4)  equal counts go to the lexicographically greatest
  ``(bytes(left), bytes(right))``. Rows carry the key, so comparisons read
  only the heap and the token byte buffer, which is small and stays cached.

Words are rewritten in place (a merge only shortens a word). The pairs removed
and added are computed locally: old pairs at positions ``i-1, i, i+1`` around
each occurrence, new pairs at ``j-1, j`` around each new symbol, each position
once, so runs like ``a a a a`` stay exact. The old pairs' decrements are
deferred through a short ring: each pair record is prefetched when its
decrement is found and written 16 decrements later, so those misses overlap
(nothing in a merge's word loop reads an old pair's count).

The loop is bound by memory latency: on the 38 MB ``small`` corpus, 32,000
merges visit about 4.7 million words (a fifth of them stale). Its helpers are
compiled without reference counting, and its large arrays are backed by huge
pages (see ``huge_pages``). Tried and dropped: a one-pass rewrite (fewer
scans, slower), word headers inside the symbol arena (no gain), a separate
count array (no gain), prefetching the neighbours' pair records right before
the decrement (slower; the ring's lag is what helps).
"""

from __future__ import annotations

import sys

from .. import _numba

_numba.load()  # before anything compiled runs: Numba without SciPy (see gpubpe._numba)

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to load arr[idx] into cache (llvm.prefetch; no effect on results)."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_HUGE = 1 << 21  # bytes in a transparent huge page (x86-64 and arm64 Linux)


@intrinsic
def huge_pages(typingctx, arr):
    """Ask Linux to back the whole 2 MiB pages inside arr with huge pages
    (``madvise(MADV_HUGEPAGE)``; a hint with no effect on results, nothing
    elsewhere). Call it on a large array before it is first written."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.void(arr)

    def codegen(context, builder, signature, args):
        if not sys.platform.startswith("linux"):
            return context.get_dummy_value()
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i64 = ir.IntType(64)
        start = builder.ptrtoint(ary.data, i64)
        nbytes = builder.mul(ary.nitems, context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(aryty.dtype))))
        lo = builder.and_(builder.add(start, i64(_HUGE - 1)), i64(~(_HUGE - 1)))
        hi = builder.and_(builder.add(start, nbytes), i64(~(_HUGE - 1)))
        with builder.if_then(builder.icmp_unsigned(">", hi, lo)):
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.IntType(32), [i8p, i64, ir.IntType(32)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "madvise")
            builder.call(fn, [builder.inttoptr(lo, i8p), builder.sub(hi, lo), ir.IntType(32)(14)])  # MADV_HUGEPAGE
        return context.get_dummy_value()

    return sig, codegen


# pdata columns
_COUNT, _KEY, _VSTART, _VLEN, _VCAP = 0, 1, 2, 3, 4
_PCOLS = 5
# wd columns
_OFF, _LEN, _WCOUNT = 0, 1, 2
# merge_loop's deferred decrements (see there): the lag, and the ring's size
# less one (a power of two above the lag). Lags 8 to 32 were within 1% of
# each other on small at 32,000, and 9% faster than no lag.
_DEC_LAG = 16
_DEC_MASK = 255


# Reference counting. Numba counts the references to every array a compiled
# function takes: a call to a helper costs an atomic increment and decrement
# (each a call into the runtime) per array argument, and more for arrays it
# returns. In the loop's hot paths (every heap comparison, every new pair)
# that was about a tenth of the run. So every helper below that the loop calls
# per merge or more often is compiled with ``_nrt=False`` (no reference
# counting; Numba then refuses to compile anything in it that allocates):
# the loop makes room first, with a size check of its own, and only the rare
# growth calls an allocating helper (``_grown``, ``_grown_rows``).


@njit(cache=True, nogil=True)
def _grown(a, keep, size):
    """A new 1-D array of ``size`` entries that starts with ``a[:keep]``."""
    out = np.empty(size, a.dtype)
    huge_pages(out)
    out[:keep] = a[:keep]
    return out


@njit(cache=True, nogil=True)
def _grown_rows(a, keep, rows):
    """A new 2-D array of ``rows`` rows that starts with ``a[:keep]``."""
    out = np.empty((rows, a.shape[1]), a.dtype)
    huge_pages(out)
    out[:keep] = a[:keep]
    return out


@njit(cache=True, nogil=True, _nrt=False)
def _forced_pair(a, b, byte_pair, made_at, pdata):
    """The pair id of a forced merge (a, b), or -1 when the pair is absent.
    A pair is made in the merge that creates the later of its tokens (or is
    two bytes), so it is found among that merge's new pairs without a hash table."""
    if a < 256 and b < 256:
        return np.int64(byte_pair[a * 256 + b])
    later = max(a, b) - 256
    want = (a << 32) | b
    for q in range(made_at[later], made_at[later + 1]):
        if pdata[q, _KEY] == want:
            return np.int64(q)
    return np.int64(-1)


@njit(cache=True, nogil=True, _nrt=False)
def _token_bytes(buf, buf_used, toff, tlen, t, a, b):
    """Write token t's bytes (a's then b's) at the end of the byte buffer,
    which has room for them (``_buf_size``); returns its new fill."""
    la = tlen[a]
    lb = tlen[b]
    toff[t] = buf_used
    tlen[t] = la + lb
    for i in range(la):
        buf[buf_used + i] = buf[toff[a] + i]
    for i in range(lb):
        buf[buf_used + la + i] = buf[toff[b] + i]
    return buf_used + la + lb


@njit(cache=True, nogil=True)
def _buf_size(cap, buf_used, need):
    """0 when a byte buffer of ``cap`` bytes has room for ``need`` more, else
    the size to grow it to (``_grown``)."""
    if buf_used + need <= cap:
        return 0
    return 2 * cap + need


@njit(cache=True, nogil=True, _nrt=False)
def _pair_add(pdata, npairs, key):
    """Add pair ``key`` with count 0 as id ``npairs``; ``pdata`` has room for it."""
    pdata[npairs, _COUNT] = 0
    pdata[npairs, _KEY] = key
    pdata[npairs, _VSTART] = 0
    pdata[npairs, _VLEN] = 0
    pdata[npairs, _VCAP] = -1  # while its merge runs: the last word recorded for it


@njit(cache=True, nogil=True, _nrt=False)
def _pair_in_word(pdata, p, count, k, tmp, nt):
    """Occurrences of pair ``p`` in word ``k`` add ``count``; the first one of
    this word records (p, k) in ``tmp`` (word vectors are placed after the
    merge, :func:`_place`; ``_VCAP`` holds the last word recorded meanwhile).
    Returns the records in ``tmp``."""
    pdata[p, _COUNT] += count
    if pdata[p, _VCAP] != k:
        pdata[p, _VCAP] = k
        pdata[p, _VLEN] += 1
        tmp[2 * nt] = p
        tmp[2 * nt + 1] = k
        nt += 1
    return nt


@njit(cache=True, nogil=True, _nrt=False)
def _place(pool, used, pdata, first_new, npairs, tmp, nt):
    """Give the pairs a merge created exact-size word vectors at the pool's end
    (the pool has room for ``nt`` more entries); returns the new fill mark.

    All words of a new pair are found in the merge that creates it, so its
    vector is sized once, here: a counting sort of the merge's (pair, word)
    records, kept in word-visit order (so every vector stays sorted). No
    vector ever grows in place, so the only garbage is the vectors of merged
    or dead pairs, which ``_compact`` reclaims in place.
    """
    for p in range(first_new, npairs):
        n = pdata[p, _VLEN]
        pdata[p, _VSTART] = used
        pdata[p, _VCAP] = n
        pdata[p, _VLEN] = 0
        used += n
    for r in range(nt):
        p = tmp[2 * r]
        pool[pdata[p, _VSTART] + pdata[p, _VLEN]] = tmp[2 * r + 1]
        pdata[p, _VLEN] += 1
    return used


@njit(cache=True, nogil=True, _nrt=False)
def _compact(pool, pdata, npairs):
    """Squeeze out the vectors of merged and dead pairs (count 0), in place.

    Vectors lie in the pool in pair-id order (initial pairs in id order, new
    pairs appended in id order after their merge), so moving each live vector
    down never overwrites one not yet moved, and no second pool is needed.
    Returns the new fill mark.
    """
    used = 0
    for p in range(npairs):
        n = pdata[p, _VLEN] if pdata[p, _COUNT] > 0 else 0
        src = pdata[p, _VSTART]
        if src != used:
            for i in range(n):
                pool[used + i] = pool[src + i]
        pdata[p, _VSTART] = used
        pdata[p, _VLEN] = n
        pdata[p, _VCAP] = n
        used += n
    return used


@njit(cache=True, nogil=True, _nrt=False)
def _tok_cmp(buf, toff, tlen, x, y):
    """Compare the bytes of tokens x and y: <0, 0 or >0 (a proper prefix is smaller)."""
    if x == y:
        return 0
    ox = toff[x]
    oy = toff[y]
    lx = tlen[x]
    ly = tlen[y]
    n = min(lx, ly)
    for i in range(n):
        a = buf[ox + i]
        b = buf[oy + i]
        if a != b:
            return np.int64(a) - np.int64(b)
    return np.int64(lx) - np.int64(ly)


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _rank(rank, t):
    return rank[t] if t < 256 else t


@njit(cache=True, nogil=True, _nrt=False)
def _above(h, i, j, buf, toff, tlen, rank):
    """True when heap entry i ranks strictly above entry j: higher count, then
    the tie rule. Entries carry their pair's key, so a comparison reads only
    the heap and the (small, cached) token bytes or ranks.

    ``rank`` empty: the CS336 rule, the greater (left bytes, right bytes).
    ``rank`` int64[256]: the id-order rules (``gpubpe.ties``), the smaller
    (rank(left), rank(right)) where rank(t) is ``rank[t]`` for a byte and t
    for a merge."""
    if h[i, 0] != h[j, 0]:
        return h[i, 0] > h[j, 0]
    k1 = h[i, 1]
    k2 = h[j, 1]
    if k1 == k2:
        return False
    if rank.shape[0] != 0:
        l1 = k1 >> 32
        l2 = k2 >> 32
        if l1 != l2:
            return _rank(rank, l1) < _rank(rank, l2)
        return _rank(rank, k1 & 0xFFFFFFFF) < _rank(rank, k2 & 0xFFFFFFFF)
    r = _tok_cmp(buf, toff, tlen, k1 >> 32, k2 >> 32)
    if r != 0:
        return r > 0
    return _tok_cmp(buf, toff, tlen, k1 & 0xFFFFFFFF, k2 & 0xFFFFFFFF) > 0


@njit(cache=True, nogil=True, _nrt=False)
def _swap(h, i, j):
    for c in range(3):
        x = h[i, c]
        h[i, c] = h[j, c]
        h[j, c] = x


@njit(cache=True, nogil=True, _nrt=False)
def _sift_down(h, size, i, buf, toff, tlen, rank):
    # 4-ary: half the levels of a binary heap, and the four children of a row
    # are adjacent (two cache lines), so a pop from a large heap misses less.
    while True:
        c = 4 * i + 1
        if c >= size:
            return
        best = c
        for d in range(c + 1, min(c + 4, size)):
            if _above(h, d, best, buf, toff, tlen, rank):
                best = d
        if not _above(h, best, i, buf, toff, tlen, rank):
            return
        _swap(h, i, best)
        i = best


@njit(cache=True, nogil=True, _nrt=False)
def _sift_up(h, i, buf, toff, tlen, rank):
    while i > 0:
        parent = (i - 1) >> 2
        if not _above(h, i, parent, buf, toff, tlen, rank):
            return
        _swap(h, i, parent)
        i = parent


@njit(cache=True, nogil=True, _nrt=False)
def _heap_add(h, size, count, key, p, buf, toff, tlen, rank):
    """Add a row to a heap with room for it; returns the new size."""
    h[size, 0] = count
    h[size, 1] = key
    h[size, 2] = p
    _sift_up(h, size, buf, toff, tlen, rank)
    return size + 1


@njit(cache=True, nogil=True, _nrt=False)
def _refill(h, pdata, npairs, thresh, buf, toff, tlen, rank):
    """Lower the heap's threshold below ``thresh`` and admit the pairs it now covers.

    Called when the heap holds no pair of count >= ``thresh``; ``h`` has at
    least ``npairs`` rows (one per pair at most is admitted). The new
    threshold is half the largest count left below the old one, so it takes
    about log2(largest count) refills in a whole run, each one O(pairs).
    Returns ``(size, new threshold)``; the threshold is 0 when no pair is left.
    """
    top = np.int64(0)
    for p in range(npairs):
        c = pdata[p, _COUNT]
        if c < thresh and c > top:
            top = c
    if top == 0:
        return np.int64(0), np.int64(0)
    low = max(np.int64(1), top // 2)
    size = np.int64(0)
    for p in range(npairs):
        c = pdata[p, _COUNT]
        if c >= low and c < thresh:
            h[size, 0] = c
            h[size, 1] = pdata[p, _KEY]
            h[size, 2] = p
            size += 1
    for i in range((size - 2) // 4, -1, -1):
        _sift_down(h, size, i, buf, toff, tlen, rank)
    return size, low


@njit(cache=True, nogil=True, _nrt=False)
def _pop_best(h, size, thresh, pdata, npairs, buf, toff, tlen, rank, max_len):
    """Pop the best valid heap entry: ``(pair id or -1 when none is left,
    size, thresh)``; ``h`` has at least ``npairs`` rows (see ``_refill``). A
    stale-high row is re-pushed with its true count; a pair whose token would
    exceed ``max_len`` is dropped (its tokens' lengths never change and its
    count only falls, so it can never become a candidate, and the order of
    all other pairs is unchanged)."""
    while True:
        if size == 0:
            if thresh <= 1:
                return np.int64(-1), size, thresh  # every live pair has been admitted: none is left
            size, thresh = _refill(h, pdata, npairs, thresh, buf, toff, tlen, rank)
            if size == 0:
                return np.int64(-1), size, thresh
        c = h[0, 0]
        key = h[0, 1]
        p = h[0, 2]
        size -= 1
        if size > 0:
            h[0, 0] = h[size, 0]
            h[0, 1] = h[size, 1]
            h[0, 2] = h[size, 2]
            _sift_down(h, size, 0, buf, toff, tlen, rank)
        cur = pdata[p, _COUNT]
        if cur == c and c > 0:
            if max_len > 0 and tlen[key >> 32] + tlen[key & 0xFFFFFFFF] > max_len:
                continue
            return p, size, thresh
        if cur >= thresh and cur < c:
            # stale-high entry: re-insert with the true count (below
            # thresh it waits for _refill like any other pair); the row
            # popped above left room for it
            size = _heap_add(h, size, cur, key, p, buf, toff, tlen, rank)


@njit(cache=True, nogil=True)
def _heap_rows(cap, size, npairs, extra):
    """0 when a heap of ``cap`` rows has room for ``extra`` more rows and for
    a refill (one row per pair), else the row count to grow it to (``_grown_rows``)."""
    need = max(size + extra, npairs)
    if need <= cap:
        return 0
    return max(2 * cap, need)


@njit(cache=True, nogil=True)
def _setup(symbols, offsets, counts, num_merges):
    """Phase 1 of a merge loop: word records, the symbol/pair-id array, pair
    records with exact-size word vectors, token bytes. Shared by ``merge_loop``
    and the step loop (gpubpe.backends.cpu_steps); it runs once per run.
    Returns ``(wd, ws, pdata, npairs, pool, used, byte_pair, lastw, toff, tlen, buf, buf_used)``."""
    nwords = counts.shape[0]
    nsym = symbols.shape[0]

    # token bytes: ids 0..255 are the bytes themselves
    toff = np.zeros(256 + num_merges, np.int64)
    tlen = np.zeros(256 + num_merges, np.int64)
    buf = np.empty(max(1024, 256 + 16 * num_merges), np.uint8)
    for i in range(256):
        buf[i] = i
        toff[i] = i
        tlen[i] = 1
    buf_used = 256

    # Every pair ever created is an initial pair or was made by a merge at one
    # of at most 2 positions per removed symbol, so 3 * symbols rows always
    # suffice; the 32 * num_merges guess serves the usual case (the merge
    # loop grows it when a merge could overflow it). It holds all initial
    # pairs (at most 256 * 256), so they are written here in place, with no
    # growth check in the scan.
    pdata = np.empty((max(1 << 16, min(32 * num_merges, 3 * nsym)), _PCOLS), np.int64)
    npairs = 0
    # ws[2 i] is symbol i, ws[2 i + 1] the id of the pair starting there:
    # side by side, so a word's symbols and pair ids come in one cache miss,
    # and a decrement needs no lookup.
    ws = np.empty(2 * nsym, np.int32)
    wd = np.empty((nwords, 4), np.int64)
    huge_pages(pdata)
    huge_pages(ws)
    huge_pages(wd)

    # ---- phase 1: word records, symbols, initial pair counts -----------------
    # one pass over the words: their records, symbols and pair ids are written
    # as the pairs are counted, straight into pdata
    byte_pair = np.full(256 * 256, -1, np.int64)  # every initial pair is two bytes
    lastw = np.full(256 * 256, -1, np.int64)
    for k in range(nwords):
        base = offsets[k]
        end = offsets[k + 1]
        w = counts[k]
        wd[k, _OFF] = base
        wd[k, _LEN] = end - base
        wd[k, _WCOUNT] = w
        wd[k, 3] = 0
        if end == base:
            continue
        x = np.int64(symbols[base])
        for i in range(base, end - 1):
            y = np.int64(symbols[i + 1])
            ws[2 * i] = x
            p = byte_pair[x * 256 + y]
            if p == -1:
                p = npairs
                npairs += 1
                byte_pair[x * 256 + y] = p
                pdata[p, _COUNT] = 0
                pdata[p, _KEY] = (x << 32) | y
                pdata[p, _VLEN] = 0
            ws[2 * i + 1] = p
            pdata[p, _COUNT] += w
            if lastw[p] != k:  # words per pair, to size the vectors exactly
                lastw[p] = k
                pdata[p, _VLEN] += 1
            x = y
        ws[2 * (end - 1)] = x
        ws[2 * (end - 1) + 1] = -1  # no pair starts at a word's last symbol
    # exact-size vectors, filled in word order (so every vector is sorted)
    used = 0
    for p in range(npairs):
        pdata[p, _VSTART] = used
        pdata[p, _VCAP] = pdata[p, _VLEN]
        used += pdata[p, _VLEN]
        pdata[p, _VLEN] = 0
    # Capacities are generous on purpose: pages that are never written are
    # never resident, while growing by copying holds two copies at once.
    pool = np.empty(max(3 * used, 1024), np.int32)
    huge_pages(pool)
    lastw[:] = -1
    for k in range(nwords):
        base = wd[k, _OFF]
        for i in range(base, base + wd[k, _LEN] - 1):
            p = ws[2 * i + 1]
            if lastw[p] != k:
                lastw[p] = k
                pool[pdata[p, _VSTART] + pdata[p, _VLEN]] = k
                pdata[p, _VLEN] += 1

    return wd, ws, pdata, npairs, pool, used, byte_pair, lastw, toff, tlen, buf, buf_used


@njit(cache=True, nogil=True)
def merge_loop(symbols, offsets, counts, num_merges, progress, max_len, rank, forced, min_count):
    """Run up to ``num_merges`` merges over the WordTable.

    symbols: int32[total] byte values (0..255), CSR by word; not modified.
    offsets: int64[W + 1]; counts: int64[W] (> 0).
    progress: int64[2]: ``progress[0]`` is kept set to the number of merges
    done (read by a progress thread; this function releases the GIL), and a
    nonzero ``progress[1]``, written by another thread, stops the loop after
    the current merge (an interrupt: signals reach only the main thread, and
    compiled code never looks at them).
    max_len: 0, or the most bytes a merged token may hold: a pair whose token
    would be longer is dropped when it reaches the top of the heap (its
    tokens' lengths never change and its count only falls, so it can never
    become a candidate), which leaves the order of all other pairs unchanged.
    rank: int64[0] for the CS336 tie rule, or int64[256] for an id-order rule
    (see ``_above``).
    forced: int32[k, 2]: the first k merges, given (a parent model's, replayed
    with training semantics; k <= num_merges), then the loop chooses.
    min_count: the loop stops at the first chosen pair whose count is below it.
    Returns ``(merges, counts, ntokens)``: int32[n, 2] with n <= num_merges
    (fewer when no pair is left), each merge's count when it was made, and
    the number of tokens the words now hold, weighted.
    """
    nwords = counts.shape[0]
    stoppable = progress.shape[0] > 1
    wd, ws, pdata, npairs, pool, used, byte_pair, lastw, toff, tlen, buf, buf_used = _setup(
        symbols, offsets, counts, num_merges)
    wdf = wd.reshape(-1)
    garbage = 0  # pool entries of merged pairs' vectors, reclaimed by _compact

    # ---- phase 2: the heap: rows (count, key, pair id) ----------------------
    # Only pairs with count >= thresh are in it. A pair gains count only in the
    # merge that creates it, so one below thresh can never beat the heap's top
    # while the top is >= thresh: it waits outside until _refill lowers thresh.
    # The heap then holds the pairs within a factor 2 of the best (thousands,
    # not the ~10^6 pairs a full heap holds on a 38 MB corpus), so pops and
    # pushes stay in cache, and most new pairs (small counts) are never pushed.
    h = np.empty((max(1024, 4 * npairs), 3), np.int64)
    size, thresh = _refill(h, pdata, npairs, np.int64(1) << 62, buf, toff, tlen, rank)

    merges = np.empty((num_merges, 2), np.int32)
    # Every pair a merge creates holds the new token t, and is new: (x, t) is
    # found through lnew[x], (t, y) through rnew[y]; both reset after the merge.
    # No global pair hash table is needed at all.
    lnew = np.full(256 + num_merges, -1, np.int64)
    # (pair, word) records of the current merge, placed by _place after it
    tmp = np.empty(2 * 4096, np.int32)
    rnew = np.full(256 + num_merges, -1, np.int64)
    # Decrements of the old pairs around each occurrence, deferred through a
    # ring: the pair's record is prefetched when the decrement is found and
    # written _DEC_LAG decrements later, so the misses on pair records (a
    # tenth of the loop) overlap. Nothing in a merge's word loop reads the
    # count of an old pair, and the ring is emptied before the merge ends.
    dec_p = np.empty(_DEC_MASK + 1, np.int64)
    dec_w = np.empty(_DEC_MASK + 1, np.int64)
    nd = 0  # decrements found in this merge
    na = 0  # and applied
    # the positions of a word's occurrences, then of its new symbols
    longest = 1
    for k in range(nwords):
        longest = max(longest, wd[k, _LEN])
    tpos = np.empty(longest, np.int64)

    # The pairs merge m created are the ids made_at[m] .. made_at[m + 1] - 1.
    # A pair (x, y) is made in the merge that creates the later of x and y (or
    # is two bytes), so a forced merge finds its pair there without a hash table.
    made_at = np.zeros(num_merges + 1, np.int64)
    made_at[0] = npairs
    mcount = np.zeros(num_merges, np.int64)  # each merge's count when chosen

    # ---- phase 3: the merge loop ------------------------------------------
    m = 0
    while m < num_merges:
        if m < forced.shape[0]:
            # a parent model's merge, replayed with training semantics: its
            # pair may be absent here (then it only makes the token)
            a = np.int64(forced[m, 0])
            b = np.int64(forced[m, 1])
            best = _forced_pair(a, b, byte_pair, made_at, pdata)
            if best != -1:
                mcount[m] = pdata[best, _COUNT]
        else:
            grow = _heap_rows(h.shape[0], size, npairs, 0)
            if grow:
                h = _grown_rows(h, size, grow)
            best, size, thresh = _pop_best(h, size, thresh, pdata, npairs, buf, toff, tlen, rank, max_len)
            if best == -1 or pdata[best, _COUNT] < min_count:
                break
            mcount[m] = pdata[best, _COUNT]
            a = pdata[best, _KEY] >> 32
            b = pdata[best, _KEY] & 0xFFFFFFFF
        t = 256 + m
        merges[m, 0] = a
        merges[m, 1] = b
        grow = _buf_size(buf.shape[0], buf_used, tlen[a] + tlen[b])
        if grow:
            buf = _grown(buf, buf_used, grow)
        buf_used = _token_bytes(buf, buf_used, toff, tlen, t, a, b)

        first_new = npairs
        nt = 0
        bvs = pdata[best, _VSTART] if best != -1 else 0
        bvl = pdata[best, _VLEN] if best != -1 else 0
        # Room for every pair this merge can create, made here so that the
        # word loop below only stores: each is (x, t) or (t, y) with x <= t and
        # y < t, and each occurrence (of weight >= 1) makes at most two.
        if best != -1:
            need = npairs + min(2 * t + 1, 2 * pdata[best, _COUNT])
            if need > pdata.shape[0]:
                pdata = _grown_rows(pdata, npairs, max(2 * pdata.shape[0], need))
        # The word loop is the inner one: the room for the merge's (pair,
        # word) records is made out here, when a word might not fit. (An
        # array assigned inside the loop cost a reference-count increment and
        # decrement per word visited.)
        vi = 0
        need = 0
        while vi < bvl:
            if 2 * (nt + need) > tmp.shape[0]:
                tmp = _grown(tmp, 2 * nt, max(2 * tmp.shape[0], 2 * (nt + need)))
            while vi < bvl:
                # The words are known in advance: ask for the records of words
                # 16 ahead, and for the symbols of words 8 ahead (whose records
                # are in cache by now), every cache line of them: the words a
                # merge visits hold 14 symbols (112 bytes) on average on small.
                # Visits are latency-bound without this (first line only, then
                # also the last: -11%, then every line: -7 to -13% more on small
                # at 32,000; farther ahead than 16 / 8 was slower).
                if vi + 16 < bvl:
                    prefetch(wdf, 4 * pool[bvs + vi + 16])
                if vi + 8 < bvl:
                    k8 = pool[bvs + vi + 8]
                    lo8 = 2 * wd[k8, _OFF]
                    hi8 = 2 * (wd[k8, _OFF] + wd[k8, _LEN]) - 1
                    for x8 in range(lo8, hi8, 16):  # 16 int32: one 64-byte line
                        prefetch(ws, x8)
                    prefetch(ws, hi8)
                k = pool[bvs + vi]
                base = wd[k, _OFF]
                n = wd[k, _LEN]
                w = wd[k, _WCOUNT]
                # this word adds at most n - 1 (pair, word) records
                if 2 * (nt + n) > tmp.shape[0]:
                    need = n
                    break
                vi += 1
                # Old pairs around each occurrence, each position once; the
                # merged pair itself is zeroed after the loop. A pair id names
                # one key and a word's pair ids are kept exact, so the
                # occurrences are the positions holding the pair's id (one
                # load each, not two symbols).
                first = -1  # the first occurrence: the symbols before it stay as they are
                nocc = 0  # occurrences, their positions at tpos[:nocc]
                last = -1
                i = 0
                while i < n - 1:
                    if ws[2 * (base + i) + 1] == best:
                        if first < 0:
                            first = i
                        tpos[nocc] = i
                        nocc += 1
                        q0 = max(i - 1, last + 1)
                        q1 = min(i + 1, n - 2)
                        for q in range(q0, q1 + 1):
                            p = ws[2 * (base + q) + 1]
                            if p != best:
                                # deferred: its record is asked for now and
                                # decremented _DEC_LAG decrements later
                                prefetch(pdata, np.int64(p))
                                dec_p[nd & _DEC_MASK] = p
                                dec_w[nd & _DEC_MASK] = w
                                nd += 1
                                if nd - na > _DEC_LAG:
                                    ri = na & _DEC_MASK
                                    pdata[dec_p[ri], _COUNT] -= dec_w[ri]
                                    na += 1
                        last = q1
                        i += 2
                    else:
                        i += 1
                if first < 0:
                    continue  # a stale entry: the pair left this word in an earlier merge
                # rewrite in place from the first occurrence on (the write index
                # never passes the read index), copying the runs between the
                # occurrences found above; tpos[r] becomes the position of the
                # r-th new symbol. Pair ids next to a new symbol are set below.
                # Starting at the first occurrence, not at 0: -8 to -15% on small
                # at 32,000; runs and pair-id matching instead of a second
                # comparing scan: -6 to -15% more.
                j = first
                src = first
                for r in range(nocc):
                    o = tpos[r]
                    for c in range(src, o):
                        ws[2 * (base + j)] = ws[2 * (base + c)]
                        ws[2 * (base + j) + 1] = ws[2 * (base + c) + 1]
                        j += 1
                    ws[2 * (base + j)] = t
                    tpos[r] = j
                    j += 1
                    src = o + 2
                for c in range(src, n):
                    ws[2 * (base + j)] = ws[2 * (base + c)]
                    ws[2 * (base + j) + 1] = ws[2 * (base + c) + 1]
                    j += 1
                n = j
                wd[k, _LEN] = n
                # new pairs around each new symbol, each position once (the
                # symbols' positions are kept by the rewrite: -6% against a scan)
                last = -1
                for ti in range(nocc):
                    jj = tpos[ti]
                    q0 = max(jj - 1, last + 1)
                    q1 = min(jj, n - 2)
                    for q in range(q0, q1 + 1):
                        x = ws[2 * (base + q)]
                        y = ws[2 * (base + q + 1)]
                        if y == t:
                            p = lnew[x]
                            if p == -1:
                                p = npairs
                                _pair_add(pdata, p, (np.int64(x) << 32) | np.int64(y))
                                npairs += 1
                                lnew[x] = p
                        else:
                            p = rnew[y]
                            if p == -1:
                                p = npairs
                                _pair_add(pdata, p, (np.int64(x) << 32) | np.int64(y))
                                npairs += 1
                                rnew[y] = p
                        ws[2 * (base + q) + 1] = p
                        nt = _pair_in_word(pdata, p, w, k, tmp, nt)
                        last = q
        while na < nd:  # the decrements still deferred
            ri = na & _DEC_MASK
            pdata[dec_p[ri], _COUNT] -= dec_w[ri]
            na += 1
        if best != -1:
            garbage += pdata[best, _VLEN]
            pdata[best, _COUNT] = 0
            pdata[best, _VLEN] = 0
        if used + nt > pool.shape[0]:
            pool = _grown(pool, used, used + nt + pool.shape[0] // 2)
        used = _place(pool, used, pdata, first_new, npairs, tmp, nt)
        if 4 * garbage > used and garbage > (1 << 20):
            used = _compact(pool, pdata, npairs)
            garbage = 0
        # the pairs this merge created get one heap entry each
        grow = _heap_rows(h.shape[0], size, npairs, npairs - first_new)
        if grow:
            h = _grown_rows(h, size, grow)
        for p in range(first_new, npairs):
            key = pdata[p, _KEY]
            if (key & 0xFFFFFFFF) == t:
                lnew[key >> 32] = -1
            else:
                rnew[key & 0xFFFFFFFF] = -1
            if pdata[p, _COUNT] >= thresh:
                size = _heap_add(h, size, pdata[p, _COUNT], key, p, buf, toff, tlen, rank)
        made_at[m + 1] = npairs
        m += 1
        progress[0] = m
        if stoppable and progress[1] != 0:
            break
    # tokens the training data encodes to (merges replayed in order = BPE encoding)
    ntokens = np.int64(0)
    for k in range(nwords):
        ntokens += wd[k, _LEN] * wd[k, _WCOUNT]
    return merges[:m].copy(), mcount[:m].copy(), ntokens
