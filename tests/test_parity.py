"""Tie rules, min_frequency, max_token_length, continued training and truncation:
every backend against the oracle, and the parity modes against the anchors
themselves (HF tokenizers, rustbpe, bpeasy) merge for merge."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpubpe
from gpubpe.wordtable import WordTable

from ._helpers import FIXTURES, max_examples, merge_fn
from .reference import gpt2_alphabet_rank, reference_merges_from_counts, reference_pretokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import anchors  # noqa: E402

TIES = ["cs336", "hf", "rustbpe"]


def fixed(n):
    return settings(max_examples=max_examples(n), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def as_bytes(merges):
    vocab = [bytes([i]) for i in range(256)]
    out = []
    for a, b in np.asarray(merges).tolist():
        out.append((vocab[a], vocab[b]))
        vocab.append(vocab[a] + vocab[b])
    return out


def test_hf_byte_order_is_gpt2s_alphabet():
    rank = gpubpe.ties.byte_rank("hf")
    assert sorted(rank.tolist()) == list(range(256))
    assert [int(rank[b]) for b in range(256)] == [gpt2_alphabet_rank(b) for b in range(256)]
    # the documented anchors of the order: '!' first, space last of the remapped low bytes
    assert rank[ord("!")] == 0 and rank[ord(" ")] == 220 and rank[ord("\n")] == 198 and rank[0xAD] == 255


# Words from alphabets where printable and remapped bytes meet, with small
# counts: ties are everywhere, and HF's order differs from the raw one exactly
# when a remapped byte (0..32, 127..160, 173) is compared with a printable one.
TIE_ALPHABETS = [b"a!\x00 ", b"~\x7f\xa1\xad\xff", b"ab\n\t\xa0", bytes(range(30, 40)) + b"\xac\xad\xae"]
tie_tables = st.sampled_from(TIE_ALPHABETS).flatmap(lambda alpha: st.dictionaries(
    st.lists(st.sampled_from(alpha), min_size=1, max_size=10).map(bytes), st.integers(1, 4), min_size=1, max_size=14))


@fixed(50)
@given(counts=tie_tables, n=st.integers(1, 50), ties=st.sampled_from(TIES))
def test_tie_rules_match_oracle(backend_name, counts, n, ties):
    merge = merge_fn(backend_name)
    table = WordTable.from_counts(counts)
    got = merge(table, n, rank=gpubpe.ties.byte_rank(ties))
    assert as_bytes(got) == reference_merges_from_counts(counts, n, ties=ties)


@fixed(40)
@given(counts=tie_tables, n=st.integers(1, 50), ties=st.sampled_from(TIES), m=st.integers(1, 6),
       cap=st.sampled_from([0, 2, 3, 5]))
def test_min_count_and_max_len_match_oracle(backend_name, counts, n, ties, m, cap):
    run = merge_fn(backend_name, full=True)
    table = WordTable.from_counts(counts)
    merges, made_counts, _ = run(table, n, rank=gpubpe.ties.byte_rank(ties), min_count=m, max_len=cap)
    want_counts: list = []
    want = reference_merges_from_counts(counts, n, max_len=cap, ties=ties, min_count=m, counts_out=want_counts)
    assert as_bytes(merges) == want
    assert np.asarray(made_counts).tolist() == want_counts
    if cap:
        assert all(len(a) + len(b) <= cap for a, b in want)


@fixed(30)
@given(counts=tie_tables, n=st.integers(0, 30), extra=st.integers(0, 30), ties=st.sampled_from(TIES))
def test_forced_prefix_then_greedy_is_one_run(backend_name, counts, n, extra, ties):
    """Replaying a run's first n merges and going on gives the run itself."""
    merge = merge_fn(backend_name)
    table = WordTable.from_counts(counts)
    rank = gpubpe.ties.byte_rank(ties)
    whole = merge(table, n + extra, rank=rank)
    head = whole[: min(n, len(whole))]
    assert merge(table, n + extra, rank=rank, forced=np.ascontiguousarray(head, np.int32)).tolist() == whole.tolist()


def test_forced_merges_absent_from_the_corpus_still_make_their_ids(merge):
    table = WordTable.from_counts({b"xyxy": 3, b"zz": 1})
    forced = np.array([[97, 98], [256, 99], [120, 121]], np.int32)  # ab, abc (absent), then xy
    got = merge(table, 5, forced=forced)
    assert got[:3].tolist() == forced.tolist()
    # the greedy part sees the table as the replay left it: xy xy -> (xy, xy)
    assert got[3].tolist() == [258, 258]


# ---------------------------------------------------------------------------
# the anchors themselves
# ---------------------------------------------------------------------------

# Text where the remapped bytes take part in ties: control characters, tabs,
# no-break spaces (UTF-8 C2 A0), soft hyphens (C2 AD), DEL, Latin-1 letters.
PIECES = ["a", "b", "ab", " ", "  ", "\n", "\t", "\x01", "\x7f", "\u00a0", "\u00ad", "é", "~", "!", "1", "12",
          "x y", "'s", "'ll", "ÿ", "¬®"]
documents = st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=30).map("".join),
                     min_size=1, max_size=8)


def _gpubpe(docs, vocab_size, **kw):
    return gpubpe.train([list(docs)], vocab_size=vocab_size, progress=False, **kw)


@pytest.fixture
def cpu_engine(backend_name, train_kwargs):
    if backend_name not in ("cpu-numba", "cpu-python"):
        pytest.skip("the anchors are checked on the CPU engines; every backend equals them through the oracle")
    return train_kwargs


@fixed(40)
@given(docs=documents, vocab=st.integers(257, 330))
def test_hf_mode_is_hf_tokenizers(cpu_engine, docs, vocab):
    pytest.importorskip("tokenizers")
    assert _gpubpe(docs, vocab, ties="hf", **cpu_engine).merges == anchors.hf_merges(docs, vocab)


@fixed(40)
@given(docs=documents, vocab=st.integers(257, 330))
def test_rustbpe_mode_is_rustbpe(cpu_engine, docs, vocab):
    pytest.importorskip("rustbpe")
    assert _gpubpe(docs, vocab, ties="rustbpe", **cpu_engine).merges == anchors.rustbpe_merges(docs, vocab)


@fixed(25)
@given(docs=documents, vocab=st.integers(257, 330), m=st.integers(1, 5))
def test_min_frequency_is_hfs(cpu_engine, docs, vocab, m):
    pytest.importorskip("tokenizers")
    got = _gpubpe(docs, vocab, ties="hf", min_frequency=m, **cpu_engine).merges
    assert got == anchors.hf_merges(docs, vocab, min_frequency=m)


def _real_documents(limit=400_000):
    text = (FIXTURES / "tinystories_sample.txt").read_text(encoding="utf-8") + (FIXTURES / "german.txt").read_text(
        encoding="utf-8")
    return [d for d in text[:limit].split("<|endoftext|>") if d]


@pytest.mark.parametrize("tool", ["hf", "rustbpe", "bpeasy"])
def test_parity_on_real_text(cpu_engine, tool):
    pytest.importorskip({"hf": "tokenizers"}.get(tool, tool))
    docs = _real_documents()
    vocab = 1500
    want = {"hf": anchors.hf_merges, "rustbpe": anchors.rustbpe_merges, "bpeasy": anchors.bpeasy_merges}[tool](
        docs, vocab)
    model = _gpubpe(docs, vocab, ties="rustbpe" if tool == "bpeasy" else tool, **cpu_engine)
    assert model.merges == want
    assert sorted(model.vocab.values()) == sorted({bytes([b]) for b in range(256)} | {a + b for a, b in want})


def test_hf_cap_is_documented_off_by_one(cpu_engine):
    """HF's max_token_length=L lets through tokens of at most max(2, L-1) bytes:
    gpubpe's exact cap L-1 reproduces it."""
    pytest.importorskip("tokenizers")
    docs = _real_documents(100_000)
    for cap in (4, 6):
        want = anchors.hf_merges(docs, 700, max_token_length=cap)
        got = _gpubpe(docs, 700, ties="hf", max_token_length=cap - 1, **cpu_engine).merges
        assert got[: len(want)] == want[: len(got)] and max(len(a + b) for a, b in got) <= cap - 1


# ---------------------------------------------------------------------------
# continued training and truncation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ties", TIES)
def test_continue_equals_training_directly(tmp_path, train_kwargs, ties):
    corpus = FIXTURES / "corpus.en"
    specials = ["<|endoftext|>"]
    direct = gpubpe.train(corpus, vocab_size=700, special_tokens=specials, ties=ties, progress=False, **train_kwargs)
    parent = gpubpe.train(corpus, vocab_size=450, special_tokens=specials, ties=ties, progress=False, **train_kwargs)
    parent.save(tmp_path / "parent")
    child = gpubpe.train(corpus, vocab_size=700, init=gpubpe.load(tmp_path / "parent"), ties=ties, progress=False,
                         **train_kwargs)
    assert child.merges == direct.merges
    # every parent id keeps its meaning; new ids follow the parent's special token
    assert all(child.vocab[i] == t for i, t in parent.vocab.items())
    assert child.special_ids() == parent.special_ids() == {"<|endoftext|>": 449}
    assert child.vocab[450] == direct.vocab[449] and len(child.vocab) == 700
    assert child.record["parent"]["merges_digest"] == parent.record["merges_digest"]
    child.save(tmp_path / "child")
    back = gpubpe.load(tmp_path / "child")
    assert back.vocab == child.vocab and back.special_ids() == child.special_ids()
    # the child encodes with the same ids as the parent wherever the parent's merges decide
    tok = gpubpe.Tokenizer(back.vocab, back.merges, back.special_tokens)
    assert tok.decode(tok.encode("the cat<|endoftext|>")) == "the cat<|endoftext|>"


def test_continue_on_other_text_replays_then_goes_on(tmp_path):
    parent = gpubpe.train(FIXTURES / "corpus.en", vocab_size=400, progress=False)
    child = gpubpe.train(FIXTURES / "german.txt", vocab_size=600, init=parent, progress=False)
    assert child.merges[:144] == parent.merges and len(child.merges) == 344
    words = Counter(reference_pretokens((FIXTURES / "german.txt").read_bytes()))
    # the oracle, with the parent's merges replayed first: run the oracle on the replayed words
    assert child.record["parent"]["vocab_size"] == 400


def test_continue_refuses_a_mismatch(tmp_path):
    parent = gpubpe.train(FIXTURES / "corpus.en", vocab_size=400, special_tokens=["<|endoftext|>"], progress=False)
    with pytest.raises(ValueError, match="parent has special tokens"):
        gpubpe.train(FIXTURES / "corpus.en", vocab_size=500, special_tokens=["<|im_end|>"], init=parent)
    with pytest.raises(ValueError, match="below the parent"):
        gpubpe.train(FIXTURES / "corpus.en", vocab_size=300, init=parent)
    with pytest.raises(ValueError, match="ties='cs336'"):
        gpubpe.train(FIXTURES / "corpus.en", vocab_size=500, init=parent, ties="hf")
    counts = gpubpe.count(FIXTURES / "corpus.en", special_tokens=["<|endoftext|>"], pattern="cl100k")
    with pytest.raises(ValueError, match="another pattern"):
        gpubpe.train(counts, vocab_size=500, init=parent)


@pytest.mark.parametrize("ties", TIES)
def test_truncation_is_training_to_the_smaller_size(ties):
    big = gpubpe.train(FIXTURES / "corpus.en", vocab_size=700, special_tokens=["<|endoftext|>"], ties=ties,
                       progress=False)
    small = gpubpe.train(FIXTURES / "corpus.en", vocab_size=420, special_tokens=["<|endoftext|>"], ties=ties,
                         progress=False)
    cut = big.truncated(420)
    assert cut.vocab == small.vocab and cut.merges == small.merges and cut.merge_counts == small.merge_counts
    assert cut.record["merges_digest"] == small.record["merges_digest"]
    with pytest.raises(ValueError, match="between"):
        big.truncated(800)


def test_record_and_counts(tmp_path):
    corpus = FIXTURES / "corpus.en"
    model = gpubpe.train(corpus, vocab_size=400, special_tokens=["<|endoftext|>"], min_frequency=2, progress=False)
    rec = model.record
    assert rec["gpubpe"] == gpubpe.__version__ and rec["ties"] == "cs336" and rec["pattern"] == model.pattern
    assert rec["unicode"] == model.unicode and rec["special_tokens"] == ["<|endoftext|>"]
    assert rec["options"]["min_frequency"] == 2 and rec["options"]["vocab_size"] == 400
    assert rec["inputs"][0]["path"] == str(corpus) and rec["inputs"][0]["size"] == corpus.stat().st_size
    assert rec["merges_digest"] == gpubpe.model.merges_digest(model.merge_ids())
    words = Counter(reference_pretokens(corpus.read_bytes(), ["<|endoftext|>"]))
    want_counts: list = []
    reference_merges_from_counts(words, len(model.merges), counts_out=want_counts)
    assert model.merge_counts == want_counts
    model.save(tmp_path)
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["merge_counts"] == want_counts and doc["record"] == rec


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gpubpe", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_options_continue_truncate_and_json_progress(tmp_path):
    corpus = str(FIXTURES / "corpus.en")
    r = _cli("train", corpus, "--vocab-size", "450", "--ties", "rustbpe", "--min-frequency", "2",
             "--special-token", "<|endoftext|>", "--out", "parent", "--progress", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    stages = {x["stage"] for x in lines}
    assert {"pre-tokenize", "merges"} <= stages
    done = [x for x in lines if x["stage"] == "merges"][-1]
    assert done["done"] == done["total"] and all(set(x) == {"stage", "done", "total"} for x in lines)
    r = _cli("train", corpus, "--vocab-size", "600", "--init", "parent", "--ties", "rustbpe", "--min-frequency",
             "2", "--out", "child", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    direct = gpubpe.train(corpus, vocab_size=600, special_tokens=["<|endoftext|>"], ties="rustbpe", min_frequency=2,
                          progress=False)
    child = gpubpe.load(tmp_path / "child")
    assert child.merges == direct.merges
    r = _cli("export", "child", "--vocab-size", "500", "--out", "cut", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cut = gpubpe.load(tmp_path / "cut")
    assert cut.merges == direct.merges[:500 - 257]
    r = _cli("train", corpus, "--vocab-size", "500", "--init", "parent", "--special-token", "<|im_end|>",
             "--out", "bad", cwd=tmp_path)
    assert r.returncode != 0 and "parent has special tokens" in r.stderr and "Traceback" not in r.stderr


# A parent whose merges make b"abc" twice: (b, c), (a, bc), then (a, b), (ab, c).
DUP_PARENT = [(98, 99), (97, 256), (97, 98), (258, 99)]
dup_tables = st.dictionaries(st.lists(st.sampled_from(b"abcd"), min_size=1, max_size=10).map(bytes),
                             st.integers(1, 4), min_size=1, max_size=12)


@fixed(40)
@given(counts=dup_tables, n=st.integers(4, 30))
def test_hf_mode_keeps_one_id_per_token_string(counts, n):
    """HF's trainer gives a merge that repeats a token's bytes that token's id,
    so their pairs pool their counts: the oracle, which holds words as bytes,
    does the same."""
    from gpubpe.backends.cpu_python import merge_loop_python

    table = WordTable.from_counts(counts)
    merges, made, _ = merge_loop_python(table.symbols, table.offsets, table.counts, n, np.zeros(2, np.int64), 0,
                                        gpubpe.ties.byte_rank("hf"), np.array(DUP_PARENT, np.int32), 0, reuse=True)
    forced = as_bytes(DUP_PARENT)
    want_counts: list = []
    want = reference_merges_from_counts(counts, len(merges), ties="hf", forced=forced, counts_out=want_counts)
    assert as_bytes(merges) == want and made.tolist() == want_counts
    # one id per string: num_merges counts distinct tokens
    assert len({a + b for a, b in want}) == min(n, len({a + b for a, b in want}))


def test_hf_mode_continues_a_parent_with_a_repeated_token(train_kwargs):
    parent = gpubpe.BPEModel.from_merge_ids(DUP_PARENT, [], ties="hf")
    counts = {b"abcd": 5, b"abab": 3, b"cdcd": 2, b"bcbc": 4}
    docs = [[w.decode() for w, c in counts.items() for _ in range(c)]]
    model = gpubpe.train(docs, vocab_size=256 + 3 + 4, init=parent, ties="hf", progress=False, **train_kwargs)
    # each document is one pre-token
    want = reference_merges_from_counts(counts, len(model.merges), ties="hf", forced=as_bytes(DUP_PARENT))
    assert model.merges == want
    # HF's accounting: vocab_size counts distinct tokens, so the repeat costs one merge more
    assert len(set(model.vocab.values())) == 256 + 3 + 4 and len(model.merges) == 3 + 4 + 1


def test_auto_keeps_small_tables_on_the_cpu(monkeypatch):
    """Where a device answers, 'auto' still runs a table too small to pay for
    the device's start-up on the CPU, and the model records where it ran."""
    from gpubpe import backends

    ran = []
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "_cuda", lambda sim: lambda *a: ran.append("cuda") or backends._cpu()(*a))
    model = gpubpe.train(FIXTURES / "corpus.en", vocab_size=300, progress=False)
    assert ran == [] and model.record["options"]["backend"] == "cpu"
    monkeypatch.setattr(gpubpe.config, "AUTO_CUDA_MIN_SYMBOLS", 0)
    model = gpubpe.train(FIXTURES / "corpus.en", vocab_size=300, progress=False)
    assert ran == ["cuda"] and model.record["options"]["backend"] == "cuda"


def test_a_continued_model_exports_with_its_ids(tmp_path):
    """Special tokens between the merges keep their ids in every export (HF
    gives an added token missing from the model's vocab the next free id)."""
    tokenizers = pytest.importorskip("tokenizers")
    from gpubpe import formats

    parent = gpubpe.train(FIXTURES / "corpus.en", vocab_size=400, special_tokens=["<|endoftext|>"], progress=False)
    child = gpubpe.train(FIXTURES / "corpus.en", vocab_size=600, init=parent, progress=False)
    formats.export(child, tmp_path)
    text = "the cat sat<|endoftext|>hello there"
    ours = gpubpe.Tokenizer.from_model(child).encode(text)
    assert 399 in ours
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text).ids == ours and hf.token_to_id("<|endoftext|>") == 399
    assert hf.decode(ours, skip_special_tokens=False) == text
    pytest.importorskip("tiktoken")
    assert formats.to_tiktoken(child).encode(text, allowed_special="all") == ours
