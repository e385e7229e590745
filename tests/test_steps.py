"""The multi-merge step rule (gpubpe.backends.steps) against the oracle: a
trainer that applies whole steps gives exactly the sequential merges, under
the CS336 order and under other strict total orders (count first), on corpora
built to force ties, runs, multibyte and invalid UTF-8 text, and steps of
several merges."""

from __future__ import annotations

from collections import Counter

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpubpe.backends import steps  # noqa: E402

from ._helpers import FIXTURES, max_examples  # noqa: E402
from .reference import reference_merges_from_counts, reference_pretokens  # noqa: E402


def sequential(word_counts, num_merges, rank):
    """The plain loop under an arbitrary rank key (a full recount per merge)."""
    words = {tuple(bytes([b]) for b in w): c for w, c in word_counts.items() if c > 0}
    out = []
    for _ in range(num_merges):
        pairs = steps.pair_counts(words)
        live = [(p, c) for p, c in pairs.items() if c > 0]
        if not live:
            break
        best = max(live, key=lambda pc: rank(*pc))[0]
        out.append(best)
        words = steps._merge_all(words, best)
    return out


def smallest_bytes_rank(pair, count):
    # another strict total order with the count first: ties to the smallest (left, right)
    return (count, tuple(-b for b in pair[0]) + (1,), tuple(-b for b in pair[1]) + (1,))


ALPHABETS = [b"a", b"ab", b"abc ", b"\xe2\x82\xac\xff", b"aab", bytes(range(256))]
corpora = st.sampled_from(ALPHABETS).flatmap(lambda alpha: st.dictionaries(
    st.binary(min_size=1, max_size=14).map(lambda w: bytes(alpha[c % len(alpha)] for c in w)),
    st.integers(1, 50), min_size=1, max_size=14))


@settings(max_examples=max_examples(60), deadline=None)
@given(words=corpora, n=st.integers(0, 40))
def test_steps_give_the_oracle_merges(words, n):
    merges, sizes = steps.train_in_steps(words, n)
    assert merges == reference_merges_from_counts(words, n)
    assert sum(sizes) == len(merges) and all(s >= 1 for s in sizes)


@settings(max_examples=max_examples(40), deadline=None)
@given(words=corpora, n=st.integers(0, 40))
def test_steps_hold_for_another_tie_order(words, n):
    merges, _ = steps.train_in_steps(words, n, rank=smallest_bytes_rank)
    assert merges == sequential(words, n, smallest_bytes_rank)


@settings(max_examples=max_examples(30), deadline=None)
@given(words=corpora, n=st.integers(1, 30), max_len=st.integers(2, 5))
def test_steps_with_a_token_length_cap(words, n, max_len):
    merges, _ = steps.train_in_steps(words, n, max_len=max_len)
    assert merges == reference_merges_from_counts(words, n, max_len)


def test_a_real_corpus_takes_steps_of_several_merges():
    data = (FIXTURES / "corpus.en").read_bytes()
    counts = Counter(reference_pretokens(data, ["<|endoftext|>"]))
    merges, sizes = steps.train_in_steps(counts, 120)
    assert merges == reference_merges_from_counts(counts, 120)
    assert max(sizes) >= 3 and len(sizes) < len(merges) // 2


def test_rule_details():
    words = {(b"a", b"b", b"c", b"d"): 5, (b"x", b"y"): 4}
    # (c,d) ranks first among three 5s; it creates (b,cd) at 5; (b,c) shares c: the step ends there
    assert steps.plan_step(words) == [(b"c", b"d")]
    # token-disjoint, count above the created bound: two accepted
    assert steps.accept_count([((b"x", b"y"), 9), ((b"a", b"b"), 7)], lambda k: 6) == 2
    # equal to the created bound is not enough: a tie with a created pair is not decided by the rule
    assert steps.accept_count([((b"x", b"y"), 9), ((b"a", b"b"), 7)], lambda k: 7) == 1
    # a shared token ends the step even when the count would pass
    assert steps.accept_count([((b"x", b"y"), 9), ((b"y", b"b"), 7), ((b"c", b"d"), 6)], lambda k: 1) == 1
    # a run: (a,a) alone on "aaaaa" creates (aa,aa) and (aa,a)
    assert steps.created_alone({(b"a",) * 5: 2}, (b"a", b"a")) == Counter(
        {(steps.SELF, steps.SELF): 2, (steps.SELF, b"a"): 2})
    # adjacent occurrences of two merges of one step: x a b c d y with (a,b) and (c,d)
    corpus = {b"xabcdy": 10, b"ab": 3, b"cd": 2}
    words = {tuple(bytes([c]) for c in w): n for w, n in corpus.items()}
    assert steps.plan_step(words) == [(b"a", b"b"), (b"c", b"d")]
    merges, sizes = steps.train_in_steps(corpus, 6)
    assert merges == reference_merges_from_counts(corpus, 6) and sizes[0] == 2
