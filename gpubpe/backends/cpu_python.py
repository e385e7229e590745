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


def merge_loop_python(symbols, offsets, counts, num_merges: int, progress, max_len: int = 0, rank=None,
                      forced=None, min_count: int = 0, reuse: bool = False):
    """The arguments and results of ``cpu.merge_loop``; ``rank`` None is the
    CS336 tie rule. ``reuse``: a merge whose bytes an earlier token already
    holds puts that token's id into the words instead of its own (HF's
    trainer keeps one id per distinct string, so its pairs with that token
    pool their counts), and ``num_merges`` then counts distinct new tokens.
    """
    stoppable = progress.shape[0] > 1
    raw = symbols.tolist()
    off = offsets.tolist()
    cnt = counts.tolist()
    words = [raw[off[k] : off[k + 1]] for k in range(len(cnt))]
    tok: list[bytes] = [bytes([i]) for i in range(256)]
    first_id: dict[bytes, int] = {t: i for i, t in enumerate(tok)}
    forced = [] if forced is None else [(int(a), int(b)) for a, b in np.asarray(forced).tolist()]
    ranks = None if rank is None or len(rank) == 0 else [int(r) for r in rank]

    pcount: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for k, w in enumerate(words):
        c = cnt[k]
        for p in zip(w, w[1:]):
            pcount[p] = pcount.get(p, 0) + c
            where.setdefault(p, set()).add(k)

    # heapq is a min-heap: entries are (-count, tie key, pair), the smallest
    # entry the best. CS336: the keys reverse the byte order, so the smallest
    # is the lexicographically greatest (left, right); id order: the ranks.
    keys: list = [_desc_key(t) for t in tok] if ranks is None else list(ranks)

    def entry(c, p):
        return (-c, keys[p[0]], keys[p[1]], p)

    heap = [entry(c, p) for p, c in pcount.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    mcounts: list[int] = []
    distinct = 0

    m = 0
    while distinct < num_merges if reuse else m < num_merges:
        best = None
        if m < len(forced):
            best = forced[m]
        else:
            while heap:
                negc, _, _, p = heapq.heappop(heap)
                cur = pcount.get(p, 0)
                if cur == -negc and cur > 0:
                    if max_len and len(tok[p[0]]) + len(tok[p[1]]) > max_len:
                        continue  # never a candidate: lengths are fixed, counts only fall
                    best = p
                    break
                if 0 < cur < -negc:  # stale-high entry: re-insert with the true count
                    heapq.heappush(heap, entry(cur, p))
            if best is None or pcount[best] < min_count:
                break
        a, b = best
        new = tok[a] + tok[b]
        t = first_id[new] if reuse and new in first_id else 256 + m
        distinct += t == 256 + m
        first_id.setdefault(new, 256 + m)
        tok.append(new)
        keys.append(_desc_key(new) if ranks is None else 256 + m)
        merges.append(best)
        mcounts.append(pcount.get(best, 0))
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
                heapq.heappush(heap, entry(pcount[p], p))
        m += 1
        progress[0] = m
        if stoppable and progress[1]:
            break  # an interrupt, set by the thread that waits for this one

    ntokens = sum(len(w) * c for w, c in zip(words, cnt))
    return (np.asarray(merges, dtype=np.int32).reshape(-1, 2), np.asarray(mcounts, dtype=np.int64), ntokens)
