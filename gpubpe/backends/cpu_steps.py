"""The CPU step loop: the multi-merge step rule (gpubpe.backends.steps) on the
Numba loop's data structures, each step's merges applied in parallel by word.

Chosen by backend='cpu' only when Numba has at least
``config.CPU_STEP_MIN_THREADS`` threads (``merge_loop`` in cpu.py stays the
loop everywhere else, unchanged); the engine 'steps' forces it.

A step, from the start state (pair records, word vectors, heap and threshold
exactly as in cpu.py, whose header holds the invariants):

1. candidates  pop the heap in rank order (``_pop_best``: exact order, the
   tie rule and ``max_len`` as in the serial loop) while each popped pair is
   token-disjoint from the ones before it, its count is >= ``min_count``, and
   fewer than ``config.CPU_STEP_CANDIDATES`` (and the merges left) are taken;
   the first pair that fails is pushed back. A forced merge (a parent model
   replayed) is a step of one.
2. decide (``_created_one``; ``_created_par`` runs several side by side)
   the largest count among the pairs that merging a candidate *alone* would
   create in the start state (per-thread dense counters indexed by the
   neighbour token, reset by stamps); accept the leading candidates while
   each count is strictly above the largest created count of the ones before
   it (``steps.accept_count``). The maxima are computed in rounds, only for
   candidates that can still be accepted: first one per thread, then every
   candidate whose count beats the bound so far; the last candidate's is
   never needed. The rejected tail goes back into the heap.
3. apply (``_apply_chunk``; ``_apply_par`` over chunks of words)  the union of the
   accepted pairs' word vectors, sorted and deduplicated, is cut into
   contiguous chunks; each word is rewritten by the thread of its chunk,
   applying all accepted merges left to right in one scan (the pair id beside
   each symbol says whether the pair at that position is accepted, so a run
   ``a a a a`` of an accepted ``(a, a)`` merges at even offsets from the run
   start, as in the serial loop). Neighbour rules, generalised to "any merge
   of this step" (``x a b c d y`` with ``(a, b)`` and ``(c, d)``): the old
   pairs at positions i-1, i, i+1 around every occurrence lose the word's
   count, each position once, except accepted pairs (zeroed after the step),
   so ``(b, c)`` loses it once; the new pairs are those at positions j-1, j
   around every new symbol, each position once, so ``(ab, cd)`` is one new
   pair. Accepted merges are token-disjoint, so their occurrences never
   overlap and one left-to-right scan equals applying them one by one.
   Numba has no CPU atomics, so a thread writes only its own words and its
   chunk's slice of two record buffers (decrements ``(pair, count)``, new
   pairs ``(key, word, position, count)``), each slice sized by the chunk's
   symbols (a word of n symbols yields at most n - 1 of each). Example, one
   step of (a, b) -> t1 and (c, d) -> t2 on ``x a b c d y`` (weight w):
   decrements (x, a), (b, c), (d, y) by w; the word becomes ``x t1 t2 y``;
   new pairs (x, t1), (t1, t2), (t2, y) with w each.
   A phase that visits fewer than ``config.CPU_STEP_PARALLEL_WORDS`` words
   runs on the calling thread (a fork and join costs more). Both passes
   prefetch word records and symbols ahead, as the serial loop does.
4. reduce (serial, in word order)  decrements into the pair records; new
   pairs named through per-step dense tables (every new pair holds a token of
   this step: ``(x, t)`` through ``lnew[t - first, x]``, ``(t, y)`` through
   ``rnew[t - first, y]``, ids plus 1), their ids written beside the
   symbols, their word vectors placed by ``_place`` and their heap rows
   pushed, as in the serial loop. Chunks are contiguous ranges of the sorted word list and reduced in
   order, so the result does not depend on the thread count.

Every option of the serial loop is honoured (tie rules through ``rank``,
``max_len``, ``min_count``, forced prefixes); tests/test_cpu_steps.py checks
each against the oracle on 1, 2 and 4 threads.

Why it can pay only on many cores: phase 3 is the serial loop's word visits
(memory latency) shared by the threads, while phases 2 and 4 add work (a
second, read-only pass over the accepted candidates' words, and a serial pass
over the records): on one thread it costs about 1.4x the serial loop. On 2
shared cores it was not faster; more cores were not measured
(benchmarks/RESULTS.md, merge.steps).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .cpu import (_COUNT, _KEY, _LEN, _OFF, _VCAP, _VLEN, _VSTART, _WCOUNT, _buf_size, _compact, _forced_pair,
                  _grown, _grown_rows, _heap_add, _heap_rows, _pair_add, _pair_in_word, _place, _pop_best, _refill, _setup,
                  _token_bytes, prefetch)

_SELF = -2  # the merge's own new token while its created pairs are counted


@njit(cache=True, nogil=True)
def _created_one(k, tid, ws, wd, pool, pdata, cand, lcnt, lst, rcnt, rst, stamp0, out):
    """``out[k]``: the largest count among the pairs that merging candidate
    ``cand[k]`` alone would create in the current state (0 if none): ``(x,
    t)``, ``(t, y)`` and ``(t, t)`` where t is its new token.
    ``lcnt/rcnt[tid, x]`` count ``(x, t)`` and ``(t, x)``; an entry is valid
    only while ``lst/rst`` holds this candidate's stamp (``stamp0 + k``), so
    nothing is cleared between candidates."""
    p = cand[k]
    st = stamp0 + k
    mx = np.int64(0)
    ss = np.int64(0)
    vs = pdata[p, _VSTART]
    vl = pdata[p, _VLEN]
    wdf = wd.reshape(-1)
    for vi in range(vl):
        # as in cpu.py's loop: records 16 words ahead, symbols 8 ahead
        if vi + 16 < vl:
            prefetch(wdf, 4 * pool[vs + vi + 16])
        if vi + 8 < vl:
            prefetch(ws, 2 * wd[pool[vs + vi + 8], _OFF])
        wk = pool[vs + vi]
        base = wd[wk, _OFF]
        n = wd[wk, _LEN]
        w = wd[wk, _WCOUNT]
        prev = np.int64(-1)
        i = 0
        while i < n:
            if i < n - 1 and ws[2 * (base + i) + 1] == p:
                cur = np.int64(_SELF)
                i += 2
            else:
                cur = np.int64(ws[2 * (base + i)])
                i += 1
            if prev == _SELF:
                if cur == _SELF:
                    ss += w
                    c = ss
                else:
                    if rst[tid, cur] != st:
                        rst[tid, cur] = st
                        rcnt[tid, cur] = 0
                    rcnt[tid, cur] += w
                    c = rcnt[tid, cur]
                mx = max(mx, c)
            elif cur == _SELF and prev != -1:
                if lst[tid, prev] != st:
                    lst[tid, prev] = st
                    lcnt[tid, prev] = 0
                lcnt[tid, prev] += w
                mx = max(mx, lcnt[tid, prev])
            prev = cur
    out[k] = mx


@njit(cache=True, nogil=True, parallel=True)
def _created_par(k0, k1, ws, wd, pool, pdata, cand, lcnt, lst, rcnt, rst, stamp0, out):
    for k in prange(k0, k1):
        _created_one(k, numba.get_thread_id(), ws, wd, pool, pdata, cand, lcnt, lst, rcnt, rst, stamp0, out)


@njit(cache=True, nogil=True, parallel=True)
def _chunk_sizes(wd, words, lo, nchunks, sizes):
    """sizes[c]: an upper bound of the records chunk c writes (sum of n - 1)."""
    for c in prange(nchunks):
        s = np.int64(0)
        for i in range(lo[c], lo[c + 1]):
            s += max(wd[words[i], _LEN] - 1, 0)
        sizes[c] = s


@njit(cache=True, nogil=True)
def _apply_chunk(c, ws, wd, words, lo, acc, first, roff, dec, ndec, new, nnew):
    """Rewrite the words of chunk c with all accepted merges (``acc[p] >=
    first``: pair p is accepted, ``acc[p]`` its new token) and record, from
    ``roff[c]`` on, the decrements ``dec[2 r:2 r + 2] = (pair, count)`` and the
    new pairs ``new[4 r:4 r + 4] = (key, word, symbol index, count)``;
    ``ndec[c]``, ``nnew[c]``: how many."""
    d = roff[c]
    r = roff[c]
    wdf = wd.reshape(-1)
    for wi in range(lo[c], lo[c + 1]):
        if wi + 16 < lo[c + 1]:
            prefetch(wdf, 4 * words[wi + 16])
        if wi + 8 < lo[c + 1]:
            prefetch(ws, 2 * wd[words[wi + 8], _OFF])
        k = words[wi]
        base = wd[k, _OFF]
        n = wd[k, _LEN]
        w = wd[k, _WCOUNT]
        found = False
        last = -1
        i = 0
        while i < n - 1:
            if acc[ws[2 * (base + i) + 1]] >= first:
                found = True
                q0 = max(i - 1, last + 1)
                q1 = min(i + 1, n - 2)
                for q in range(q0, q1 + 1):
                    pq = ws[2 * (base + q) + 1]
                    if acc[pq] < first:
                        dec[2 * d] = pq
                        dec[2 * d + 1] = w
                        d += 1
                last = q1
                i += 2
            else:
                i += 1
        if not found:
            continue  # a stale entry of a word vector
        # in place: the write index never passes the read index
        j = 0
        i = 0
        while i < n:
            if i < n - 1 and acc[ws[2 * (base + i) + 1]] >= first:
                ws[2 * (base + j)] = acc[ws[2 * (base + i) + 1]]
                i += 2
            else:
                ws[2 * (base + j)] = ws[2 * (base + i)]
                ws[2 * (base + j) + 1] = ws[2 * (base + i) + 1]
                i += 1
            j += 1
        n = j
        wd[k, _LEN] = n
        last = -1
        for jj in range(n):
            if ws[2 * (base + jj)] < first:
                continue
            q0 = max(jj - 1, last + 1)
            q1 = min(jj, n - 2)
            for q in range(q0, q1 + 1):
                new[4 * r] = (np.int64(ws[2 * (base + q)]) << 32) | np.int64(ws[2 * (base + q + 1)])
                new[4 * r + 1] = k
                new[4 * r + 2] = base + q
                new[4 * r + 3] = w
                r += 1
                last = q
    ndec[c] = d - roff[c]
    nnew[c] = r - roff[c]


@njit(cache=True, nogil=True, parallel=True)
def _apply_par(nchunks, ws, wd, words, lo, acc, first, roff, dec, ndec, new, nnew):
    for c in prange(nchunks):
        _apply_chunk(c, ws, wd, words, lo, acc, first, roff, dec, ndec, new, nnew)


@njit(cache=True, nogil=True)
def step_loop(symbols, offsets, counts, num_merges, progress, max_len, rank, forced, min_count, max_cand,
              nthreads, threads, chunks, par_words):
    """``merge_loop``'s contract (see cpu.py), in steps; returns ``(merges,
    counts, ntokens, steps)``. ``max_cand``: the most candidates a step takes
    (>= 1); ``nthreads``: Numba's thread pool size (rows of the per-thread
    counters); ``threads``: the threads in use (Numba's get_num_threads);
    ``chunks``: word chunks per parallel rewrite (a multiple of the threads
    balances uneven words); ``par_words``: a phase runs in parallel only when
    it visits at least this many words. The merges depend on none of them."""
    nwords = counts.shape[0]
    stoppable = progress.shape[0] > 1
    wd, ws, pdata, npairs, pool, used, byte_pair, lastw, toff, tlen, buf, buf_used = _setup(
        symbols, offsets, counts, num_merges)
    garbage = 0
    h = np.empty((max(1024, 4 * npairs), 3), np.int64)
    size, thresh = _refill(h, pdata, npairs, np.int64(1) << 62, buf, toff, tlen, rank)

    ntok = 256 + num_merges
    merges = np.empty((num_merges, 2), np.int32)
    mcount = np.zeros(num_merges, np.int64)
    made_at = np.zeros(num_merges + 1, np.int64)  # read only while forced merges (steps of one) run
    made_at[0] = npairs
    acc = np.full(pdata.shape[0], -1, np.int64)  # pair id -> its new token once accepted
    used_tok = np.full(ntok, -1, np.int64)  # token -> the step (first merge index) whose candidate holds it
    # Zero-filled on purpose: pages never touched are never resident (the
    # tables are threads or candidates times the vocabulary), so a stamp of 0
    # and an id of 0 mean "none" (stamps start at 1, ids are stored plus 1).
    lcnt = np.zeros((nthreads, ntok), np.int64)
    rcnt = np.zeros((nthreads, ntok), np.int64)
    lst = np.zeros((nthreads, ntok), np.int64)
    rst = np.zeros((nthreads, ntok), np.int64)
    stamp = np.int64(1)
    lnew = np.zeros((max_cand, ntok), np.int64)
    rnew = np.zeros((max_cand, ntok), np.int64)
    cand = np.empty(max_cand, np.int64)
    ccount = np.empty(max_cand, np.int64)
    cmax = np.zeros(max_cand, np.int64)
    tmp = np.empty(2 * 4096, np.int32)
    lo = np.empty(chunks + 1, np.int64)
    sizes = np.empty(chunks, np.int64)
    roff = np.empty(chunks, np.int64)
    ndec = np.empty(chunks, np.int64)
    nnew = np.empty(chunks, np.int64)
    dec = np.empty(2 * 4096, np.int64)
    new = np.empty(4 * 4096, np.int64)

    m = 0
    nsteps = 0
    while m < num_merges:
        # ---- 1. candidates -------------------------------------------------
        nc = 0
        if m < forced.shape[0]:
            a = np.int64(forced[m, 0])
            b = np.int64(forced[m, 1])
            best = _forced_pair(a, b, byte_pair, made_at, pdata)
            cand[0] = best
            ccount[0] = pdata[best, _COUNT] if best != -1 else 0
            merges[m, 0] = a
            merges[m, 1] = b
            nacc = 1
        else:
            limit = min(max_cand, num_merges - m)
            # pops make room, and the one push in this loop follows a pop
            grow = _heap_rows(h.shape[0], size, npairs, 0)
            if grow:
                h = _grown_rows(h, size, grow)
            while nc < limit:
                p, size, thresh = _pop_best(h, size, thresh, pdata, npairs, buf, toff, tlen, rank, max_len)
                if p == -1:
                    break
                key = pdata[p, _KEY]
                a = key >> 32
                b = key & 0xFFFFFFFF
                if pdata[p, _COUNT] < min_count or used_tok[a] == m or used_tok[b] == m:
                    size = _heap_add(h, size, pdata[p, _COUNT], key, p, buf, toff, tlen, rank)
                    break
                used_tok[a] = m
                used_tok[b] = m
                cand[nc] = p
                ccount[nc] = pdata[p, _COUNT]
                nc += 1
            if nc == 0:
                break  # no pair left, or the best one is below min_count
            # ---- 2. decide -------------------------------------------------
            # Created maxima are computed in rounds, only for candidates that
            # can still be accepted: first one per thread (they run side by
            # side), then every candidate whose count beats the bound so far.
            nacc = 1
            done = 0
            bound = np.int64(0)
            while nacc < nc:
                if done < nacc:
                    hi = min(max(nacc, threads), nc - 1)
                    if done > 0:
                        while hi < nc - 1 and ccount[hi] > bound:
                            hi += 1
                    work = 0
                    for k in range(done, hi):
                        work += pdata[cand[k], _VLEN]
                    if threads > 1 and hi - done > 1 and work >= par_words:
                        _created_par(done, hi, ws, wd, pool, pdata, cand, lcnt, lst, rcnt, rst, stamp, cmax)
                    else:
                        for k in range(done, hi):
                            _created_one(k, 0, ws, wd, pool, pdata, cand, lcnt, lst, rcnt, rst, stamp, cmax)
                    done = hi
                bound = max(bound, cmax[nacc - 1])
                if ccount[nacc] <= bound:
                    break
                nacc += 1
            stamp += nc
            # the rejected tail goes back (a refill between the pops may have
            # filled the heap since they were popped)
            grow = _heap_rows(h.shape[0], size, npairs, nc - nacc)
            if grow:
                h = _grown_rows(h, size, grow)
            for k in range(nacc, nc):
                p = cand[k]
                size = _heap_add(h, size, pdata[p, _COUNT], pdata[p, _KEY], p, buf, toff, tlen, rank)
            for k in range(nacc):
                merges[m + k, 0] = pdata[cand[k], _KEY] >> 32
                merges[m + k, 1] = pdata[cand[k], _KEY] & 0xFFFFFFFF
        first = np.int64(256 + m)
        for k in range(nacc):
            t = 256 + m + k
            a = np.int64(merges[m + k, 0])
            b = np.int64(merges[m + k, 1])
            mcount[m + k] = ccount[k]
            grow = _buf_size(buf.shape[0], buf_used, tlen[a] + tlen[b])
            if grow:
                buf = _grown(buf, buf_used, grow)
            buf_used = _token_bytes(buf, buf_used, toff, tlen, t, a, b)
            if cand[k] != -1:
                acc[cand[k]] = t

        # ---- 3. apply, by word ---------------------------------------------
        nw = 0
        for k in range(nacc):
            if cand[k] != -1:
                nw += pdata[cand[k], _VLEN]
        words = np.empty(nw, np.int64)
        nw = 0
        for k in range(nacc):
            p = cand[k]
            if p != -1:
                vs = pdata[p, _VSTART]
                for vi in range(pdata[p, _VLEN]):
                    words[nw] = pool[vs + vi]
                    nw += 1
        if nacc > 1:
            words.sort()
            u = 0
            for i in range(nw):
                if u == 0 or words[i] != words[u - 1]:
                    words[u] = words[i]
                    u += 1
            nw = u
        # one chunk on the calling thread when the step is small: a parallel
        # region costs a fork and a join, more than a few hundred word visits
        par = threads > 1 and nw >= par_words
        nch = max(1, min(chunks, nw)) if par else 1
        for c in range(nch + 1):
            lo[c] = c * nw // nch
        if par:
            _chunk_sizes(wd, words, lo, nch, sizes)
        else:
            sizes[0] = 0
            for i in range(nw):
                sizes[0] += max(wd[words[i], _LEN] - 1, 0)
        total = 0
        for c in range(nch):
            roff[c] = total
            total += sizes[c]
        if 2 * total > dec.shape[0]:
            dec = np.empty(2 * total + dec.shape[0], np.int64)
        if 4 * total > new.shape[0]:
            new = np.empty(4 * total + new.shape[0], np.int64)
        if par:
            _apply_par(nch, ws, wd, words, lo, acc, first, roff, dec, ndec, new, nnew)
        else:
            _apply_chunk(0, ws, wd, words, lo, acc, first, roff, dec, ndec, new, nnew)

        # ---- 4. reduce, in word order ----------------------------------------
        for c in range(nch):
            for r in range(roff[c], roff[c] + ndec[c]):
                pdata[dec[2 * r], _COUNT] -= dec[2 * r + 1]
        first_new = npairs
        nt = 0
        # each new-pair record makes at most one pair and one (pair, word)
        # record: room for all of them first, so the loop below only stores
        nrec = 0
        for c in range(nch):
            nrec += nnew[c]
        if npairs + nrec > pdata.shape[0]:
            pdata = _grown_rows(pdata, npairs, max(2 * pdata.shape[0], npairs + nrec))
        if 2 * nrec > tmp.shape[0]:
            tmp = _grown(tmp, 0, max(2 * tmp.shape[0], 2 * nrec))
        for c in range(nch):
            for r in range(roff[c], roff[c] + nnew[c]):
                key = new[4 * r]
                x = key >> 32
                y = key & 0xFFFFFFFF
                k = new[4 * r + 1]
                if y >= first:
                    p = lnew[y - first, x] - 1
                else:
                    p = rnew[x - first, y] - 1
                if p == -1:
                    p = npairs
                    _pair_add(pdata, p, key)
                    npairs += 1
                    if y >= first:
                        lnew[y - first, x] = p + 1
                    else:
                        rnew[x - first, y] = p + 1
                ws[2 * new[4 * r + 2] + 1] = p
                nt = _pair_in_word(pdata, p, new[4 * r + 3], k, tmp, nt)
        if npairs > acc.shape[0]:
            grown = np.full(2 * npairs, -1, np.int64)
            grown[: acc.shape[0]] = acc
            acc = grown
        for k in range(nacc):
            p = cand[k]
            if p != -1:
                garbage += pdata[p, _VLEN]
                pdata[p, _COUNT] = 0
                pdata[p, _VLEN] = 0
        if used + nt > pool.shape[0]:
            pool = _grown(pool, used, used + nt + pool.shape[0] // 2)
        used = _place(pool, used, pdata, first_new, npairs, tmp, nt)
        if 4 * garbage > used and garbage > (1 << 20):
            used = _compact(pool, pdata, npairs)
            garbage = 0
        grow = _heap_rows(h.shape[0], size, npairs, npairs - first_new)
        if grow:
            h = _grown_rows(h, size, grow)
        for p in range(first_new, npairs):
            key = pdata[p, _KEY]
            x = key >> 32
            y = key & 0xFFFFFFFF
            if y >= first:
                lnew[y - first, x] = 0
            else:
                rnew[x - first, y] = 0
            if pdata[p, _COUNT] >= thresh:
                size = _heap_add(h, size, pdata[p, _COUNT], key, p, buf, toff, tlen, rank)
        # the pairs a step creates, for a later forced merge's lookup (forced
        # merges come first and are steps of one, so only those entries are read)
        for k in range(nacc):
            made_at[m + k + 1] = npairs
        m += nacc
        nsteps += 1
        progress[0] = m
        if stoppable and progress[1] != 0:
            break
    ntokens = np.int64(0)
    for k in range(nwords):
        ntokens += wd[k, _LEN] * wd[k, _WCOUNT]
    return merges[:m].copy(), mcount[:m].copy(), ntokens, nsteps


def merge_loop_steps(symbols, offsets, counts, num_merges, progress, max_len, rank, forced, min_count):
    """``merge_loop``'s signature and result, run in steps on Numba's threads."""
    from .. import config

    threads = numba.get_num_threads()
    merges, mcount, ntokens, _ = step_loop(
        symbols, offsets, counts, num_merges, progress, max_len, rank, forced, min_count,
        config.CPU_STEP_CANDIDATES, numba.config.NUMBA_NUM_THREADS, threads,
        config.CPU_STEP_CHUNKS_PER_THREAD * threads, config.CPU_STEP_PARALLEL_WORDS)
    return merges, mcount, ntokens
