"""The CPU step loop (gpubpe/backends/cpu_steps.py), forced on tables of any
size, against the oracle: every tie rule, max_len, min_count and forced
prefixes, on 1, 2 and 4 Numba threads, with corpora built to take steps of
several merges whose occurrences are adjacent in one word."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numba
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpubpe import backends, config  # noqa: E402
from gpubpe.backends import cpu_steps  # noqa: E402
from gpubpe.ties import byte_rank  # noqa: E402
from gpubpe.wordtable import WordTable  # noqa: E402

from ._helpers import FIXTURES, max_examples  # noqa: E402
from .reference import reference_merges_from_counts, reference_pretokens  # noqa: E402

NO_RANK = np.zeros(0, np.int64)
NONE_FORCED = np.zeros((0, 2), np.int32)


def run_steps(counts, n, *, threads=1, ties="cs336", max_len=0, min_count=0, forced=(), max_cand=None, chunks=None,
              par_words=0):
    """The step loop on ``threads`` Numba threads: (merges as byte pairs, counts, steps).
    ``par_words`` 0: every phase of every step on the pool, however small."""
    table = WordTable.from_counts(counts)
    ids = {bytes([b]): b for b in range(256)}
    fids = []
    for a, b in forced:  # byte pairs -> ids, as a parent model would hand them over
        fids.append((ids[a], ids[b]))
        ids.setdefault(a + b, 256 + len(fids) - 1)
    rank = NO_RANK if ties == "cs336" else byte_rank(ties)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        merges, mcount, _, nsteps = cpu_steps.step_loop(
            table.symbols, table.offsets, table.counts, n, np.zeros(2, np.int64), max_len, rank,
            np.array(fids, np.int32).reshape(-1, 2), min_count, max_cand or config.CPU_STEP_CANDIDATES,
            numba.config.NUMBA_NUM_THREADS, threads, chunks or config.CPU_STEP_CHUNKS_PER_THREAD * threads, par_words)
    finally:
        numba.set_num_threads(before)
    vocab = {i: bytes([i]) for i in range(256)}
    out = []
    for a, b in merges.tolist():
        out.append((vocab[a], vocab[b]))
        vocab[len(vocab)] = vocab[a] + vocab[b]
    return out, mcount.tolist(), nsteps


# the step-rule corpora (tests/test_steps.py): ties, runs, multibyte, invalid UTF-8
ALPHABETS = [b"a", b"ab", b"abc ", b"\xe2\x82\xac\xff", b"aab", b"abcd", bytes(range(256))]
corpora = st.sampled_from(ALPHABETS).flatmap(lambda alpha: st.dictionaries(
    st.binary(min_size=1, max_size=14).map(lambda w: bytes(alpha[c % len(alpha)] for c in w)),
    st.one_of(st.integers(1, 50), st.integers(0, 40).map(lambda e: 1 + int(1.6**e))), min_size=1, max_size=14))
THREADS = [1, 2] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]


@settings(max_examples=max_examples(80), deadline=None)
@given(words=corpora, n=st.integers(0, 50), ties=st.sampled_from(["cs336", "hf", "rustbpe"]),
       max_len=st.sampled_from([0, 0, 2, 3, 5]), min_count=st.sampled_from([0, 0, 2, 9]),
       threads=st.sampled_from(THREADS), max_cand=st.sampled_from([1, 2, 3, 32]), chunks=st.integers(1, 9),
       par_words=st.sampled_from([0, 0, 3, 1 << 40]), data=st.data())
def test_step_loop_gives_the_oracle_merges(words, n, ties, max_len, min_count, threads, max_cand, chunks, par_words,
                                           data):
    want_counts: list = []
    want = reference_merges_from_counts(words, n, max_len, ties, min_count, want_counts)
    forced = want[:data.draw(st.integers(0, len(want)))] if data.draw(st.booleans()) else []
    if forced and data.draw(st.booleans()):
        forced[-1] = (b"q", b"z")  # a parent's merge absent here: it only makes its token
        want_counts = []
        want = reference_merges_from_counts(words, n, max_len, ties, min_count, want_counts, forced=forced)
    got, counts, nsteps = run_steps(words, n, threads=threads, ties=ties, max_len=max_len, min_count=min_count,
                                    forced=forced, max_cand=max_cand, chunks=chunks, par_words=par_words)
    assert got == want
    assert counts == want_counts
    assert nsteps <= len(got) and (nsteps >= 1 or not got)


# Steps of several merges whose occurrences touch inside one word: (a,b) and
# (c,d) in x a b c d y, runs next to another merge, three merges in a row.
ADJACENT = [
    {b"xabcdy": 10, b"ab": 3, b"cd": 2},
    {b"xaabby": 10, b"aa": 1, b"bb": 1},
    {b"aaabbb": 10, b"aaa": 1},
    {b"abcdef": 10, b"ab": 3, b"cd": 2, b"ef": 1},
    {b"abcdabcd": 10, b"ab": 2, b"cd": 1},
    {b"aabbcc": 10, b"aa": 3, b"bb": 2, b"cc": 1},
    {b"xabcdyabcd": 7, b"cdab": 5, b"ab": 4, b"cd": 4},
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("words", ADJACENT, ids=["abcd", "aabb", "aaabbb", "abcdef", "abcdabcd", "aabbcc", "cdab"])
def test_adjacent_merges_of_one_step(words, threads):
    n = 12
    got, counts, nsteps = run_steps(words, n, threads=threads, chunks=3)
    want_counts: list = []
    assert got == reference_merges_from_counts(words, n, counts_out=want_counts)
    assert counts == want_counts
    assert nsteps < len(got)  # some step held several merges


def test_first_step_of_abcd_holds_both_merges():
    got, _, nsteps = run_steps({b"xabcdy": 10, b"ab": 3, b"cd": 2}, 2, threads=2)
    assert got == [(b"a", b"b"), (b"c", b"d")] and nsteps == 1


def test_a_real_corpus_in_steps():
    data = (FIXTURES / "corpus.en").read_bytes()
    counts = Counter(reference_pretokens(data, ["<|endoftext|>"]))
    got, _, nsteps = run_steps(counts, 240, threads=2)
    assert got == reference_merges_from_counts(counts, 240)
    assert nsteps < len(got) // 2


FOUR_THREADS = """
import json, sys
from collections import Counter
import numba
sys.path.insert(0, {root!r})
from tests.test_cpu_steps import ADJACENT, run_steps
from tests.reference import reference_merges_from_counts, reference_pretokens
data = open({corpus!r}, "rb").read()
cases = ADJACENT + [dict(Counter(reference_pretokens(data, ["<|endoftext|>"])))]
out = []
for words in cases:
    got, counts, nsteps = run_steps(words, 120, threads=4, chunks=16)  # every phase on the pool
    out.append([got == reference_merges_from_counts(words, 120), nsteps < len(got)])
print(json.dumps([numba.get_num_threads(), out]))
"""


def test_four_threads_in_a_fresh_process():
    """The thread pool's size is fixed at start-up (NUMBA_NUM_THREADS), so 4
    threads on a smaller machine need a process of their own."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, NUMBA_NUM_THREADS="4", PYTHONPATH=root)
    code = FOUR_THREADS.format(root=root, corpus=str(FIXTURES / "corpus.en"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads, out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert threads == 4
    assert out == [[True, True]] * len(out)


def test_backend_cpu_picks_the_step_loop_by_thread_count(monkeypatch):
    calls = []
    real = cpu_steps.merge_loop_steps

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(cpu_steps, "merge_loop_steps", spy)
    monkeypatch.setattr(config, "SMALL_TABLE_SYMBOLS", -1)
    table = WordTable.from_counts({b"xabcdy": 10, b"ab": 3, b"cd": 2})
    want = backends._cpu("numba")(table, 5, np.zeros(2, np.int64))[0]
    monkeypatch.setattr(config, "CPU_STEP_MIN_THREADS", numba.get_num_threads() + 1)
    assert np.array_equal(backends._cpu()(table, 5, np.zeros(2, np.int64))[0], want) and not calls
    monkeypatch.setattr(config, "CPU_STEP_MIN_THREADS", 0)  # the default: never by itself
    assert np.array_equal(backends._cpu()(table, 5, np.zeros(2, np.int64))[0], want) and not calls
    monkeypatch.setenv("GPUBPE_CPU_STEP_THREADS", "1")
    assert np.array_equal(backends._cpu()(table, 5, np.zeros(2, np.int64))[0], want) and calls
    calls.clear()
    monkeypatch.delenv("GPUBPE_CPU_STEP_THREADS")
    monkeypatch.setattr(config, "CPU_STEP_MIN_THREADS", numba.get_num_threads())
    assert np.array_equal(backends._cpu()(table, 5, np.zeros(2, np.int64))[0], want) and calls
