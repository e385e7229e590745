"""Exact multi-merge steps (DESIGN §1.4 "Steps"): the backend-independent rule.

A step applies several merges at once when that is provably what the
sequential loop would do. Candidates are taken in rank order (count first,
then the tie rule; any strict total order whose first key is the count):

1. the first candidate is always accepted (it is the next merge);
2. each further candidate is accepted while it is token-disjoint from every
   pair accepted so far in the step *and* its count is strictly above every
   pair that the accepted merges would create, each created count computed as
   if that merge alone were applied to the step's start state;
3. the step ends at the first candidate that fails (a skipped pair that shares
   a token could still be the next merge, so nothing after it is safe).

Why it is exact. Token-disjoint merges never touch each other's occurrences,
so merging them in any order gives the same words; an old pair only loses
count when a merge is applied, so the accepted candidate still ranks above
every old pair below it; and a pair created in sequence is a part of an
"alone" created pair (a neighbour that became another merge's token splits
that pair's count), so its count is at most the alone count, which the
candidate beats strictly -- the tie rule never has to decide between a
candidate and a created pair. Hence each accepted pair is the next merge of
the sequential run.

This module is the rule in plain Python, written against an abstract rank (a
key function, higher ranks above), so the CUDA kernels (kernels/step.cu,
``decide`` in ``step_find``) and any CPU loop can be checked against it, and a tie mode
only changes the key. :func:`train_in_steps` is a slow full-recount trainer
built on it, for tests.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable, Sequence

Pair = tuple  # (left, right): token ids or byte strings, as the caller names tokens
RankKey = Callable[[Pair, int], Hashable]

# A created pair whose other side is the merge's own new token ((t, t) in "x a b a b y").
SELF = "<self>"


def cs336_rank(pair: Pair, count: int):
    """CS336 order for pairs named by their byte strings: count, then the greatest
    (bytes(left), bytes(right))."""
    return (count, pair[0], pair[1])


def accept_count(candidates: Sequence[tuple[Pair, int]], created_max: Callable[[int], int]) -> int:
    """How many leading ``candidates`` one step accepts.

    ``candidates``: (pair, count) in rank order, best first, counts > 0;
    ``created_max(k)``: the largest count among the pairs that merging
    candidate ``k`` alone would create (0 if none); it is asked only for
    accepted candidates. Only the order matters here, so the rank itself is
    the caller's."""
    used: set = set()
    bound = 0
    n = 0
    for k, (pair, count) in enumerate(candidates):
        if n and (count <= bound or used.intersection(pair)):
            break
        used.update(pair)
        bound = max(bound, created_max(k))
        n += 1
    return n


def merge_word(word: tuple, pair: Pair, new) -> tuple:
    """Left to right, non-overlapping (DESIGN §1.5)."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def created_alone(words: dict[tuple, int], pair: Pair) -> Counter:
    """The counts of the pairs that merging ``pair`` alone creates: pairs
    holding the new token, keyed ``(x, SELF)``, ``(SELF, y)`` or ``(SELF, SELF)``."""
    out: Counter = Counter()
    for w, c in words.items():
        m = merge_word(w, pair, SELF)
        if len(m) == len(w):
            continue
        for x, y in zip(m, m[1:]):
            if x is SELF or y is SELF:
                out[(x, y)] += c
    return out


def pair_counts(words: dict[tuple, int], eligible: Callable[[Pair], bool] | None = None) -> Counter:
    pairs: Counter = Counter()
    for w, c in words.items():
        for x, y in zip(w, w[1:]):
            if eligible is None or eligible((x, y)):
                pairs[(x, y)] += c
    return pairs


def plan_step(words: dict[tuple, int], rank: RankKey = cs336_rank, limit: int | None = None,
              eligible: Callable[[Pair], bool] | None = None) -> list[Pair]:
    """The merges of one step from the state ``words`` (a full recount)."""
    pairs = pair_counts(words, eligible)
    ranked = sorted(((p, c) for p, c in pairs.items() if c > 0), key=lambda pc: rank(*pc), reverse=True)
    if limit is not None:
        ranked = ranked[:limit]
    n = accept_count(ranked, lambda k: max(created_alone(words, ranked[k][0]).values(), default=0))
    return [p for p, _ in ranked[:n]]


def train_in_steps(word_counts: dict[bytes, int], num_merges: int, rank: RankKey = cs336_rank,
                   max_len: int = 0) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """A slow trainer that applies whole steps: (merges as byte pairs, merges per step).

    Tokens are named by their bytes, so ``rank`` sees byte strings."""
    words = {tuple(bytes([b]) for b in w): c for w, c in word_counts.items() if c > 0}
    eligible = (lambda p: len(p[0]) + len(p[1]) <= max_len) if max_len else None
    merges: list = []
    sizes: list[int] = []
    while len(merges) < num_merges:
        step = plan_step(words, rank, num_merges - len(merges), eligible)
        if not step:
            break
        for p in step:  # token-disjoint: any order gives the same words
            words = _merge_all(words, p)
        merges += step
        sizes.append(len(step))
    return merges, sizes


def _merge_all(words: dict[tuple, int], pair: Pair) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for w, c in words.items():
        m = merge_word(w, pair, pair[0] + pair[1])
        out[m] = out.get(m, 0) + c
    return out

