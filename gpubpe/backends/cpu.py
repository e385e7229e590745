"""The CPU merge loop: NumPy + Numba, incremental.

Input is the WordTable (the backend seam, DESIGN §2); output is the merges as
``(left_id, right_id)`` rows in creation order.

Algorithm (per merge, cost proportional to the words the merge touches, never a
full recount):

* ``pcount[p]``   64-bit weighted count of pair ``p``.
* pair hash table  ``(left << 32 | right) -> p``, open addressing, linear probe.
  A Numba typed ``Dict`` was measured at several times the cost per lookup.
* occurrence lists  per pair a singly linked list of word ids (``head[p]``,
  ``node_next``, ``node_word``). Entries may be stale (the word no longer holds
  the pair); they are checked when walked. A word is appended to a pair's list
  at most once per merge (the head is checked before pushing).
* max-heap with lazy invalidation  entries ``(count, p)``; an entry may hold a
  count above the true one (pairs only lose count when not pushed). When the top
  is stale it is re-pushed with the true count. Pairs whose count grew during a
  merge are pushed once, after the merge. Invariant: every live pair has an
  entry whose count is >= its true count, so a valid top is the exact maximum.
* tie rule (DESIGN §1.4)  equal counts go to the lexicographically greatest
  ``(bytes(left), bytes(right))``; the heap compares token bytes, kept in a
  growing byte buffer with offsets.

Words are rewritten in place (a merge only shortens a word). The pairs removed
and added by a merge are computed locally: old pairs at positions ``i-1, i,
i+1`` around each occurrence, new pairs at ``j-1, j`` around each new symbol,
each position counted once, so runs like ``a a a a`` stay exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EMPTY = np.int64(-1)
_GOLDEN = np.uint64(11400714819323198485)  # 2^64 / phi, Fibonacci hashing


@njit(cache=True, nogil=True, inline="always")
def _slot(key, bits):
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))


@njit(cache=True, nogil=True)
def _rehash(keys, vals, bits):
    nbits = bits + 1
    size = np.int64(1) << nbits
    mask = size - 1
    nkeys = np.full(size, -1, np.int64)
    nvals = np.empty(size, np.int32)
    for i in range(keys.shape[0]):
        k = keys[i]
        if k != -1:
            s = _slot(k, nbits)
            while nkeys[s] != -1:
                s = (s + 1) & mask
            nkeys[s] = k
            nvals[s] = vals[i]
    return nkeys, nvals, nbits


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _above(c1, p1, c2, p2, pl, pr, buf, toff, tlen):
    """True when heap entry (c1, p1) ranks strictly above (c2, p2)."""
    if c1 != c2:
        return c1 > c2
    if p1 == p2:
        return False
    r = _tok_cmp(buf, toff, tlen, pl[p1], pl[p2])
    if r != 0:
        return r > 0
    return _tok_cmp(buf, toff, tlen, pr[p1], pr[p2]) > 0


@njit(cache=True, nogil=True)
def _sift_down(hc, hp, size, i, pl, pr, buf, toff, tlen):
    c = hc[i]
    p = hp[i]
    while True:
        l = 2 * i + 1
        if l >= size:
            break
        best = l
        r = l + 1
        if r < size and _above(hc[r], hp[r], hc[l], hp[l], pl, pr, buf, toff, tlen):
            best = r
        if _above(hc[best], hp[best], c, p, pl, pr, buf, toff, tlen):
            hc[i] = hc[best]
            hp[i] = hp[best]
            i = best
        else:
            break
    hc[i] = c
    hp[i] = p


@njit(cache=True, nogil=True)
def _sift_up(hc, hp, i, pl, pr, buf, toff, tlen):
    c = hc[i]
    p = hp[i]
    while i > 0:
        parent = (i - 1) >> 1
        if _above(c, p, hc[parent], hp[parent], pl, pr, buf, toff, tlen):
            hc[i] = hc[parent]
            hp[i] = hp[parent]
            i = parent
        else:
            break
    hc[i] = c
    hp[i] = p


@njit(cache=True, nogil=True)
def merge_loop(symbols, offsets, counts, num_merges, progress):
    """Run up to ``num_merges`` merges over the WordTable.

    symbols: int32[total] byte values (0..255), CSR by word; not modified.
    offsets: int64[W + 1]; counts: int64[W] (> 0).
    progress: int64[1], set to the number of merges done (read by a progress
    thread; this function releases the GIL).
    Returns ``(merges, ntokens)``: int32[n, 2] with n <= num_merges (fewer when
    no pair is left), and the number of tokens the words now hold, weighted.
    """
    nwords = counts.shape[0]
    sym = symbols.copy()
    wlen = np.empty(nwords, np.int32)
    for k in range(nwords):
        wlen[k] = offsets[k + 1] - offsets[k]
    stamp = np.full(nwords, -1, np.int32)

    # token bytes: ids 0..255 are the bytes themselves
    ntok_max = 256 + num_merges
    toff = np.zeros(ntok_max, np.int64)
    tlen = np.zeros(ntok_max, np.int64)
    buf = np.empty(max(1024, 256 + 16 * num_merges), np.uint8)
    for i in range(256):
        buf[i] = i
        toff[i] = i
        tlen[i] = 1
    buf_used = 256

    # pairs
    bits = 10
    total = symbols.shape[0]
    while (np.int64(1) << bits) < 2 * max(total // 4, 1024):
        bits += 1
    keys = np.full(np.int64(1) << bits, -1, np.int64)
    vals = np.empty(np.int64(1) << bits, np.int32)
    npairs = 0
    cap = 1024
    pl = np.empty(cap, np.int32)
    pr = np.empty(cap, np.int32)
    pcount = np.zeros(cap, np.int64)
    head = np.full(cap, -1, np.int32)
    pstamp = np.full(cap, -1, np.int32)

    ncap = max(total, 1024)
    node_word = np.empty(ncap, np.int32)
    node_next = np.empty(ncap, np.int32)
    nnodes = 0

    # ---- phase 1: initial pair counts and occurrence lists ----------------
    for k in range(nwords):
        base = offsets[k]
        w = counts[k]
        for i in range(wlen[k] - 1):
            key = (np.int64(sym[base + i]) << 32) | np.int64(sym[base + i + 1])
            mask = (np.int64(1) << bits) - 1
            s = _slot(key, bits)
            while keys[s] != -1 and keys[s] != key:
                s = (s + 1) & mask
            if keys[s] == -1:
                if npairs == cap:
                    cap *= 2
                    pl = np.concatenate((pl, np.empty(cap - npairs, np.int32)))
                    pr = np.concatenate((pr, np.empty(cap - npairs, np.int32)))
                    pcount = np.concatenate((pcount, np.zeros(cap - npairs, np.int64)))
                    head = np.concatenate((head, np.full(cap - npairs, -1, np.int32)))
                    pstamp = np.concatenate((pstamp, np.full(cap - npairs, -1, np.int32)))
                keys[s] = key
                vals[s] = npairs
                pl[npairs] = sym[base + i]
                pr[npairs] = sym[base + i + 1]
                npairs += 1
                if 2 * npairs > keys.shape[0]:
                    keys, vals, bits = _rehash(keys, vals, bits)
                    mask = (np.int64(1) << bits) - 1
                    s = _slot(key, bits)
                    while keys[s] != key:
                        s = (s + 1) & mask
            p = vals[s]
            pcount[p] += w
            h = head[p]
            if h == -1 or node_word[h] != k:
                if nnodes == ncap:
                    ncap *= 2
                    node_word = np.concatenate((node_word, np.empty(ncap - nnodes, np.int32)))
                    node_next = np.concatenate((node_next, np.empty(ncap - nnodes, np.int32)))
                node_word[nnodes] = k
                node_next[nnodes] = h
                head[p] = nnodes
                nnodes += 1

    # ---- phase 2: heap of all live pairs ----------------------------------
    hcap = max(2 * npairs, 1024)
    hc = np.empty(hcap, np.int64)
    hp = np.empty(hcap, np.int32)
    size = 0
    for p in range(npairs):
        if pcount[p] > 0:
            hc[size] = pcount[p]
            hp[size] = p
            size += 1
    for i in range(size // 2 - 1, -1, -1):
        _sift_down(hc, hp, size, i, pl, pr, buf, toff, tlen)

    merges = np.empty((num_merges, 2), np.int32)
    touched = np.empty(1024, np.int32)

    # ---- phase 3: the merge loop ------------------------------------------
    m = 0
    while m < num_merges:
        # pop the best valid entry
        best = -1
        while size > 0:
            c = hc[0]
            p = hp[0]
            size -= 1
            if size > 0:
                hc[0] = hc[size]
                hp[0] = hp[size]
                _sift_down(hc, hp, size, 0, pl, pr, buf, toff, tlen)
            cur = pcount[p]
            if cur == c and c > 0:
                best = p
                break
            if cur > 0 and cur < c:
                # stale-high entry: re-insert with the true count
                hc[size] = cur
                hp[size] = p
                size += 1
                _sift_up(hc, hp, size - 1, pl, pr, buf, toff, tlen)
        if best == -1:
            break
        a = pl[best]
        b = pr[best]
        t = 256 + m
        merges[m, 0] = a
        merges[m, 1] = b
        # bytes of the new token
        la = tlen[a]
        lb = tlen[b]
        if buf_used + la + lb > buf.shape[0]:
            buf = np.concatenate((buf, np.empty(buf.shape[0] + la + lb, np.uint8)))
        toff[t] = buf_used
        tlen[t] = la + lb
        for i in range(la):
            buf[buf_used + i] = buf[toff[a] + i]
        for i in range(lb):
            buf[buf_used + la + i] = buf[toff[b] + i]
        buf_used += la + lb

        ntouched = 0
        node = head[best]
        head[best] = -1
        while node != -1:
            k = node_word[node]
            node = node_next[node]
            if stamp[k] == m:
                continue
            stamp[k] = m
            base = offsets[k]
            n = wlen[k]
            w = counts[k]
            # old pairs around each occurrence, each position once
            found = False
            last = -1
            i = 0
            while i < n - 1:
                if sym[base + i] == a and sym[base + i + 1] == b:
                    found = True
                    q0 = max(i - 1, last + 1)
                    q1 = min(i + 1, n - 2)
                    for q in range(q0, q1 + 1):
                        key = (np.int64(sym[base + q]) << 32) | np.int64(sym[base + q + 1])
                        mask = (np.int64(1) << bits) - 1
                        s = _slot(key, bits)
                        while keys[s] != key:
                            s = (s + 1) & mask
                        pcount[vals[s]] -= w
                    last = q1
                    i += 2
                else:
                    i += 1
            if not found:
                continue
            # rewrite in place (the write index never passes the read index)
            j = 0
            i = 0
            while i < n:
                if i < n - 1 and sym[base + i] == a and sym[base + i + 1] == b:
                    sym[base + j] = t
                    i += 2
                else:
                    sym[base + j] = sym[base + i]
                    i += 1
                j += 1
            n = j
            wlen[k] = n
            # new pairs around each new symbol, each position once
            last = -1
            for jj in range(n):
                if sym[base + jj] != t:
                    continue
                q0 = max(jj - 1, last + 1)
                q1 = min(jj, n - 2)
                for q in range(q0, q1 + 1):
                    x = sym[base + q]
                    y = sym[base + q + 1]
                    key = (np.int64(x) << 32) | np.int64(y)
                    mask = (np.int64(1) << bits) - 1
                    s = _slot(key, bits)
                    while keys[s] != -1 and keys[s] != key:
                        s = (s + 1) & mask
                    if keys[s] == -1:
                        if npairs == cap:
                            cap *= 2
                            pl = np.concatenate((pl, np.empty(cap - npairs, np.int32)))
                            pr = np.concatenate((pr, np.empty(cap - npairs, np.int32)))
                            pcount = np.concatenate((pcount, np.zeros(cap - npairs, np.int64)))
                            head = np.concatenate((head, np.full(cap - npairs, -1, np.int32)))
                            pstamp = np.concatenate((pstamp, np.full(cap - npairs, -1, np.int32)))
                        keys[s] = key
                        vals[s] = npairs
                        pl[npairs] = x
                        pr[npairs] = y
                        npairs += 1
                        if 2 * npairs > keys.shape[0]:
                            keys, vals, bits = _rehash(keys, vals, bits)
                            mask = (np.int64(1) << bits) - 1
                            s = _slot(key, bits)
                            while keys[s] != key:
                                s = (s + 1) & mask
                    p = vals[s]
                    pcount[p] += w
                    if pstamp[p] != m:
                        pstamp[p] = m
                        if ntouched == touched.shape[0]:
                            touched = np.concatenate((touched, np.empty(ntouched, np.int32)))
                        touched[ntouched] = p
                        ntouched += 1
                    h = head[p]
                    if h == -1 or node_word[h] != k:
                        if nnodes == ncap:
                            ncap *= 2
                            node_word = np.concatenate((node_word, np.empty(ncap - nnodes, np.int32)))
                            node_next = np.concatenate((node_next, np.empty(ncap - nnodes, np.int32)))
                        node_word[nnodes] = k
                        node_next[nnodes] = h
                        head[p] = nnodes
                        nnodes += 1
                    last = q
        # pairs that grew get one fresh heap entry each
        for ti in range(ntouched):
            p = touched[ti]
            if pcount[p] > 0:
                if size == hc.shape[0]:
                    hc = np.concatenate((hc, np.empty(size, np.int64)))
                    hp = np.concatenate((hp, np.empty(size, np.int32)))
                hc[size] = pcount[p]
                hp[size] = p
                size += 1
                _sift_up(hc, hp, size - 1, pl, pr, buf, toff, tlen)
        m += 1
        progress[0] = m
    # tokens the training data encodes to (merges replayed in order = BPE encoding)
    ntokens = np.int64(0)
    for k in range(nwords):
        ntokens += np.int64(wlen[k]) * counts[k]
    return merges[:m].copy(), ntokens
