"""The CPU merge loop for small WordTables, in plain Python.

Same algorithm and the same results as ``cpu.merge_loop`` (pair counts, an
index from pair to words, a lazy max-heap), with Python dicts and ``heapq``.
It exists because Numba's first compilation of ``merge_loop`` takes several
seconds, which dwarfs training on a small table (the CS336 speed bar is 1.5 s
for ``corpus.en`` in a fresh process, compilation included). Above
``config.SMALL_TABLE_SYMBOLS`` the compiled loop wins.
"""

from __future__ import annotations

import heapq

import numpy as np


def merge_loop_small(symbols, offsets, counts, num_merges: int, progress):
    raw = symbols.tolist()
    off = offsets.tolist()
    cnt = counts.tolist()
    words = [raw[off[k] : off[k + 1]] for k in range(len(cnt))]
    tok: list[bytes] = [bytes([i]) for i in range(256)]

    pcount: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for k, w in enumerate(words):
        c = cnt[k]
        for p in zip(w, w[1:]):
            pcount[p] = pcount.get(p, 0) + c
            where.setdefault(p, set()).add(k)

    # min-heap on -count; ties are settled by comparing bytes among the
    # entries of the top count (heapq cannot order bytes descending with
    # the prefix rule in one key).
    heap = [(-c, p) for p, c in pcount.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []

    for m in range(num_merges):
        best = None
        while heap:
            negc, p = heap[0]
            cur = pcount.get(p, 0)
            if cur == -negc and cur > 0:
                break
            heapq.heappop(heap)
            if 0 < cur < -negc:
                heapq.heappush(heap, (-cur, p))
        if not heap:
            break
        top = heap[0][0]
        cands = set()
        while heap and heap[0][0] == top:
            negc, p = heapq.heappop(heap)
            cur = pcount.get(p, 0)
            if cur == -negc:
                cands.add(p)
            elif 0 < cur < -negc:
                heapq.heappush(heap, (-cur, p))
        best = max(cands, key=lambda p: (tok[p[0]], tok[p[1]]))
        for p in cands:
            if p != best:
                heapq.heappush(heap, (top, p))

        a, b = best
        t = 256 + m
        tok.append(tok[a] + tok[b])
        merges.append(best)
        grown = set()
        for k in where.pop(best, ()):
            w = words[k]
            c = cnt[k]
            if len(w) < 2:
                continue
            for p in zip(w, w[1:]):
                pcount[p] -= c
            out = []
            i = 0
            n = len(w)
            while i < n:
                if i + 1 < n and w[i] == a and w[i + 1] == b:
                    out.append(t)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
            for p in zip(out, out[1:]):
                pcount[p] = pcount.get(p, 0) + c
                where.setdefault(p, set()).add(k)
                grown.add(p)
        # pairs that lost all their count leave the table; grown ones get an entry
        for p in grown:
            if pcount[p] > 0:
                heapq.heappush(heap, (-pcount[p], p))
        progress[0] = m + 1

    ntokens = sum(len(w) * c for w, c in zip(words, cnt))
    return np.asarray(merges, dtype=np.int32).reshape(-1, 2), ntokens
