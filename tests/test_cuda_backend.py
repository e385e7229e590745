"""The CUDA backend's driver: batches, halts and rebuilds, compaction, token
buffer growth, limits and errors. It runs as 'cuda-sim' (the driver with the
host-compiled kernels) everywhere, and as 'cuda' on a device (-m gpu). The
oracle property tests over every backend live in test_train.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpubpe import backends
from gpubpe.backends.cuda import kernels as K
from gpubpe.wordtable import WordTable

from ._helpers import FIXTURES, max_examples
from .reference import reference_merges_from_counts, reference_pretokens

BACKEND_NAMES = [pytest.param("cuda-sim", id="cuda-sim"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKEND_NAMES)
def run(request):
    try:
        return backends.get(request.param)
    except backends.BackendUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def cuda_mod():
    from gpubpe.backends import cuda

    return cuda


def cpu_run(table, n):
    merges, _, ntokens = backends._cpu("python")(table, n, np.zeros(1, np.int64))
    return merges, ntokens


def as_bytes(table, merges):
    vocab = [bytes([i]) for i in range(256)]
    out = []
    for a, b in merges.tolist():
        out.append((vocab[a], vocab[b]))
        vocab.append(vocab[a] + vocab[b])
    return out


# Knobs that force every slow path of the driver on tiny inputs: a batch of one
# step (a read-back after each), a table rebuilt after each batch and sized to
# overflow mid-batch, compaction after each batch, a candidate set refilled at
# every step and overflowing, a scratch table too small for a second merge,
# one candidate per step.
STRESS = [
    dict(STEP_BATCH=1, TABLE_SLACK=1, REBUILD_LOAD=0.0, COMPACT_FRACTION=0.0, CAND_FRACTION=1.0, CAND_MIN=1),
    dict(STEP_BATCH=3, TABLE_SLACK=1, MIN_TABLE_BITS=1, TABLE_MAX_LOAD=0.3, COMPACT_FRACTION=0.1, SCRATCH_BITS=2),
    dict(STEP_CANDIDATES=1, STEP_BATCH=2),
    dict(),
]


@pytest.mark.parametrize("knobs", STRESS, ids=["batch1-rebuild-compact-refill", "batch3-overflow-scratch", "one-candidate", "defaults"])
@settings(max_examples=max_examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the knobs are the same for every example
@given(data=st.data())
def test_driver_paths_match_oracle(run, cuda_mod, monkeypatch, knobs, data):
    for k, v in knobs.items():
        monkeypatch.setattr(cuda_mod, k, v)
    alphabet = data.draw(st.sampled_from([b"a", b"ab", b"abc ", b"\xe2\x82\xac\xff", bytes(range(256))]))
    words = data.draw(st.dictionaries(st.binary(min_size=1, max_size=16).map(
        lambda w: bytes(alphabet[c % len(alphabet)] for c in w)), st.integers(1, 2**36), min_size=1, max_size=12))
    n = data.draw(st.integers(0, 60))
    table = WordTable.from_counts(words)
    merges, _, ntokens = run(table, n, np.zeros(1, np.int64))
    assert as_bytes(table, merges) == reference_merges_from_counts(words, n)
    cpu_merges, cpu_tokens = cpu_run(table, n)
    assert merges.tolist() == cpu_merges.tolist()
    assert ntokens == cpu_tokens


def test_long_tokens_grow_the_token_buffer(run):
    # one word of 3000 equal bytes: tokens double in length (2, 4, ..., 2048 bytes),
    # far past the initial 16 bytes per merge
    words = {b"a" * 3000: 1, b"ab": 2}
    table = WordTable.from_counts(words)
    merges, _, ntokens = run(table, 14, np.zeros(1, np.int64))
    assert as_bytes(table, merges) == reference_merges_from_counts(words, 14)
    assert ntokens == cpu_run(table, 14)[1]


def test_progress_counts_merges(run, cuda_mod, monkeypatch):
    monkeypatch.setattr(cuda_mod, "STEP_BATCH", 2)
    table = WordTable.from_counts({b"abcdefghij": 3, b"klmnop": 1})
    progress = np.zeros(1, np.int64)
    merges, _, _ = run(table, 10, progress)
    assert progress[0] == len(merges) == 10


def test_no_pairs_and_zero_merges(run):
    table = WordTable.from_counts({b"a": 5, b"b": 2})
    merges, _, ntokens = run(table, 10, np.zeros(1, np.int64))
    assert merges.shape == (0, 2) and ntokens == 7
    table = WordTable.from_counts({b"ab": 5})
    merges, _, ntokens = run(table, 0, np.zeros(1, np.int64))
    assert merges.shape == (0, 2) and ntokens == 10


def table_of(*paths):
    data = b"".join(p.read_bytes() for p in paths)
    return WordTable.from_counts(Counter(reference_pretokens(data, ["<|endoftext|>"])))


def test_corpus_en_wordtable_matches_cpu(run):
    table = table_of(FIXTURES / "corpus.en")
    merges, _, ntokens = run(table, 400, np.zeros(1, np.int64))
    cpu_merges, cpu_tokens = cpu_run(table, 400)
    assert merges.tolist() == cpu_merges.tolist()
    assert ntokens == cpu_tokens


def test_symbols_past_int32_are_refused(cuda_mod):
    class Huge:
        symbols = np.zeros(0, np.int32)
        num_words = 2**31

    with pytest.raises(ValueError, match="int32"):
        cuda_mod._Loop.__init__(object.__new__(cuda_mod._Loop), None, Huge(), 1)


def test_kernel_dir_from_a_wheel_layout(tmp_path, monkeypatch):
    # a wheel puts the kernels at gpubpe/kernels; GPUBPE_KERNEL_DIR mimics any layout
    (tmp_path / "common.cuh").write_text((K.kernel_dir() / "common.cuh").read_text())
    monkeypatch.setenv("GPUBPE_KERNEL_DIR", str(tmp_path))
    assert K.kernel_dir() == tmp_path
    monkeypatch.setenv("GPUBPE_KERNEL_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="GPUBPE_KERNEL_DIR"):
        K.kernel_dir()


@pytest.mark.gpu
def test_device_matches_cpu_on_a_larger_table():
    """On a device: 2,000 merges on the fixtures together, identical to the CPU backend."""
    if not backends.cuda_available():
        pytest.skip("no CUDA device")
    table = table_of(FIXTURES / "tinystories_sample.txt", FIXTURES / "corpus.en", FIXTURES / "german.txt")
    merges, _, ntokens = backends.get("cuda")(table, 2000, np.zeros(1, np.int64))
    cpu_merges, _, cpu_tokens = backends._cpu("numba")(table, 2000, np.zeros(1, np.int64))
    assert merges.tolist() == cpu_merges.tolist() and ntokens == cpu_tokens


# Corpora whose first step merges several pairs whose occurrences touch: the
# neighbour rules of kernels/step.cu for "any merge of this step".
FORCED_STEPS = [
    {b"xabcdy": 10, b"ab": 3, b"cd": 2},             # x a b c d y: (a,b) and (c,d) side by side
    {b"xaabby": 9, b"aa": 4, b"bb": 3, b"xy": 1},     # two runs: (a,a) and (b,b) side by side
    {b"aaabbb": 7, b"aabb": 5, b"pqaa": 2},           # odd runs next to each other
    {b"abcdef": 9, b"ab": 5, b"cd": 4, b"ef": 3, b"abcdefabcdef": 1},  # three merges in a row
    {b"xabcdabcdy": 7, b"ab": 2, b"cd": 1, b"xy": 1},  # t u t u: each occurrence's both neighbours merge
    {b"aaaabbbbcc": 6, b"aa": 2, b"bb": 1, b"cc": 1},  # three runs side by side, even lengths
]


def _sim_steps_match_oracle(cuda_mod, words, n):
    """Run cuda-sim's loop on ``words``, check its merges against the oracle and
    its token count against the CPU's; the device, the merges and the steps' trace."""
    table = WordTable.from_counts(words)
    trace = []
    dev = cuda_mod._Dev(True)
    merges, _, ntokens = cuda_mod._Loop(dev, table, n, trace=trace).run(np.zeros(1, np.int64))
    assert as_bytes(table, merges) == reference_merges_from_counts(words, n)
    assert ntokens == cpu_run(table, n)[1]
    return dev, merges, [e for e in trace if e["event"] == "step"]


@pytest.mark.parametrize("words", FORCED_STEPS, ids=["abcd", "aabb", "aaabbb", "abcdef", "abcdabcd", "aabbcc"])
def test_multi_merge_steps_match_oracle(cuda_mod, words):
    dev, merges, steps = _sim_steps_match_oracle(cuda_mod, words, 20)
    assert steps[0]["nacc"] >= 2 and sum(e["nacc"] for e in steps) == len(merges)


def test_steps_on_corpus_en_match_the_pure_rule(cuda_mod):
    """The device's steps are the steps of gpubpe.backends.steps (same order,
    same candidates: the device selects at most STEP_CANDIDATES per step)."""
    from gpubpe.backends import steps as S

    table = table_of(FIXTURES / "corpus.en")
    trace = []
    merges, _, _ = cuda_mod._Loop(cuda_mod._Dev(True), table, 150, trace=trace).run(np.zeros(1, np.int64))
    sizes = [e["nacc"] for e in trace if e["event"] == "step"]
    counts = Counter(reference_pretokens((FIXTURES / "corpus.en").read_bytes(), ["<|endoftext|>"]))
    ref, ref_sizes = S.train_in_steps(counts, 150)
    assert as_bytes(table, merges) == ref
    assert len(sizes) < len(merges) // 2 and max(sizes) >= 3


def test_a_step_is_two_launches(cuda_mod, monkeypatch):
    """Every launch through the launcher, counted: a batch is STEP_BATCH x
    (step_find, step_merge) and nothing else; step_select runs alone only
    before the first batch and after the host changed something."""
    monkeypatch.setattr(cuda_mod, "STEP_BATCH", 4)
    words = {b"xabcdy": 10, b"ab": 3, b"cd": 2, b"the cat sat": 5, b"a" * 40: 2, b"abababab": 3}
    table = WordTable.from_counts(words)
    dev = cuda_mod._Dev(True)
    seq = []
    inner = dev.launcher.launch
    monkeypatch.setattr(dev.launcher, "launch", lambda sig, *a: (seq.append(sig.name), inner(sig, *a))[1])
    loop = cuda_mod._Loop(dev, table, 30, trace=[])
    real_batch = loop._launch_batch
    monkeypatch.setattr(loop, "_launch_batch", lambda: (seq.append("|batch"), real_batch(), seq.append("batch|")))
    merges, _, _ = loop.run(np.zeros(1, np.int64))
    assert as_bytes(table, merges) == reference_merges_from_counts(words, 30)
    batches, outside, i = [], [], 0
    while i < len(seq):
        if seq[i] == "|batch":
            j = seq.index("batch|", i)
            batches.append(seq[i + 1: j])
            i = j + 1
        else:
            outside.append(seq[i])
            i += 1
    assert batches and all(b == ["step_find", "step_merge"] * 4 for b in batches)
    steps = [e for e in loop.trace if e["event"] == "step"]
    assert sum(e["nacc"] for e in steps) == len(merges) and len(steps) <= 4 * len(batches)
    assert max(e["nacc"] for e in steps) >= 2
    # outside the batches: the host's own kernels and one selection per host intervention
    assert set(outside) <= {"build_links", "count_pairs", "compact_mark", "compact_scatter", "step_select"}
    assert outside.count("step_select") == sum(1 for e in loop.trace if e["event"] == "select") >= 1
    assert outside.count("step_select") <= len(batches)


# Runs long enough for step_find's last block (RUN_WALK members walked, the
# rest scanned block-wide), few enough records that the others are walked.
RUN_KNOBS = [dict(RUN_WALK=0), dict(RUN_WALK=2, LONG_RUNS=1), dict(RUN_WALK=4, LONG_RUNS=2, STEP_BATCH=3),
             dict(RUN_WALK=0, COMPACT_FRACTION=0.0, STEP_BATCH=1)]


@pytest.mark.parametrize("knobs", RUN_KNOBS, ids=["all-scanned", "one-record", "two-records", "compact-each-batch"])
@settings(max_examples=max_examples(20), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_long_runs_match_oracle(cuda_mod, monkeypatch, knobs, data):
    """Runs of equal symbols of every length and parity, next to each other and
    to other merges (a a a b b b, x a a a y), and runs of merged tokens (a^n
    after (a, a) then (aa, aa)): only even offsets from a run start merge."""
    for k, v in knobs.items():
        monkeypatch.setattr(cuda_mod, k, v)
    unit = st.tuples(st.sampled_from(b"aabxy"), st.integers(1, 300)).map(lambda t: bytes([t[0]]) * t[1])
    words = data.draw(st.dictionaries(st.lists(unit, min_size=1, max_size=4).map(b"".join), st.integers(1, 9),
                                      min_size=1, max_size=6))
    n = data.draw(st.integers(1, 40))
    table = WordTable.from_counts(words)
    trace = []
    merges, _, ntokens = cuda_mod._Loop(cuda_mod._Dev(True), table, n, trace=trace).run(np.zeros(1, np.int64))
    assert as_bytes(table, merges) == reference_merges_from_counts(words, n)
    assert ntokens == cpu_run(table, n)[1]
    if any(e.get("nlong") for e in trace):
        event("a run scanned by step_find's last block")


def test_a_long_run_is_scanned_not_walked(cuda_mod, monkeypatch):
    """One pre-token of 20,000 equal bytes (a test-sized 10^6): the oracle's
    merges, and per step a serial part of at most RUN_WALK walked members plus
    the block's rounds (block x RUN_UNROLL slots each), not the run's length."""
    monkeypatch.setattr(cuda_mod, "RUN_WALK", 16)
    words = {b"a" * 20000: 1, b"ab": 3, b"b" * 301: 2}
    dev, merges, steps = _sim_steps_match_oracle(cuda_mod, words, 20)
    per_round = dev.block * K.RUN_UNROLL
    assert max(e["longmax"] for e in steps) == 20000  # the whole run was handled by the scan in the first step
    for e in steps:
        assert e["runmax"] <= 16 + 2
        assert e["runrounds"] <= sum(-(-L // per_round) + 1 for L in (20000, 301))
    assert sum(e["runrounds"] for e in steps) < 20000 // 8


@settings(max_examples=max_examples(30), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the module fixture holds no state
@given(words=st.dictionaries(st.lists(st.sampled_from([b"ab", b"cd", b"ef", b"gg", b"x", b"bc", b"aa"]), min_size=1,
                                      max_size=8).map(b"".join), st.integers(1, 60), min_size=1, max_size=8),
       n=st.integers(1, 30))
def test_adjacent_merges_of_one_step_match_oracle(cuda_mod, words, n):
    """Words built of units of disjoint pairs (x ab cd ef y, gg, aa): occurrences
    of different merges of one step sit side by side."""
    table = WordTable.from_counts(words)
    trace = []
    merges, _, ntokens = cuda_mod._Loop(cuda_mod._Dev(True), table, n, trace=trace).run(np.zeros(1, np.int64))
    assert as_bytes(table, merges) == reference_merges_from_counts(words, n)
    assert ntokens == cpu_run(table, n)[1]
    event(f"largest step: {min(max((e['nacc'] for e in trace if e['event'] == 'step'), default=0), 4)}")
