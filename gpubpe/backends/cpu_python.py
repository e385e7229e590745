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


def _desc_key(t: bytes) -> tuple[int, ...]:
    """A key whose ascending order is the descending byte order of ``t``.

    Each byte b becomes 255 - b, and 256 ends the key, so a proper prefix
    (the smaller bytes) gets the larger key.
    """
    return tuple(255 - c for c in t) + (256,)


def merge_loop_python(symbols, offsets, counts, num_merges: int, progress, max_len: int = 0):
    stoppable = progress.shape[0] > 1
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

    # heapq is a min-heap: entries are (-count, key(left), key(right), pair)
    # where key() reverses the byte order, so the smallest entry is the
    # highest count, then the lexicographically greatest (left, right).
    keys: list[tuple[int, ...]] = [_desc_key(t) for t in tok]
    heap = [(-c, keys[p[0]], keys[p[1]], p) for p, c in pcount.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []

    for m in range(num_merges):
        best = None
        while heap:
            negc, _, _, p = heapq.heappop(heap)
            cur = pcount.get(p, 0)
            if cur == -negc and cur > 0:
                if max_len and len(tok[p[0]]) + len(tok[p[1]]) > max_len:
                    continue  # never a candidate: lengths are fixed, counts only fall
                best = p
                break
            if 0 < cur < -negc:  # stale-high entry: re-insert with the true count
                heapq.heappush(heap, (-cur, keys[p[0]], keys[p[1]], p))
        if best is None:
            break
        a, b = best
        t = 256 + m
        tok.append(tok[a] + tok[b])
        keys.append(_desc_key(tok[t]))
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
                heapq.heappush(heap, (-pcount[p], keys[p[0]], keys[p[1]], p))
        progress[0] = m + 1
        if stoppable and progress[1]:
            break  # an interrupt, set by the thread that waits for this one

    ntokens = sum(len(w) * c for w, c in zip(words, cnt))
    return np.asarray(merges, dtype=np.int32).reshape(-1, 2), ntokens
