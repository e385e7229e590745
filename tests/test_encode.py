"""Whole-corpus encoding (gpubpe encode): the array equals Tokenizer.encode of
each file, whatever the workers, chunk size, cache size and engine."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpubpe
from gpubpe import Tokenizer, formats
from gpubpe import encode as E
from gpubpe.cli import main as cli_main

from .conftest import FIXTURES

EOT = "<|endoftext|>"

DOC = (
    "Once upon a time, a little girl named Lily found a needle in her room.\n\n"
    "Größe Straße naïve café — ünïcödé. 日本語のテキスト、中文文本。Ελληνικά Русский العربية हिन्दी "
    "😀👍🏽👨‍👩‍👧 🙃🙃🙃  \t\t\n   1234567890 3.14 it's we'll they've\n"
).encode()
CORPUS_A = (DOC + EOT.encode()) * 30 + b"bad \xff\xfe utf-8 \xc3( \xe2\x82" + b" aaaa" * 400 + b"a" * 5000
CORPUS_B = (
    b" " * 3000 + b"x" + b"\n" * 200 + (FIXTURES / "tinystories_sample.txt").read_bytes() + EOT.encode() * 3
    + "日本語".encode() * 400 + b"9" * 1000 + b"<|endoftext" + b"|>"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    model = gpubpe.train(
        iter([(CORPUS_A + CORPUS_B).decode("utf-8", "surrogateescape")]),
        vocab_size=700,
        special_tokens=[EOT],
        backend="cpu",
        progress=False,
    )
    return Tokenizer.from_model(model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    a, b = d / "a.txt", d / "b.txt"
    a.write_bytes(CORPUS_A)
    b.write_bytes(CORPUS_B)
    return [a, b]


def expected(tok, paths) -> np.ndarray:
    return np.concatenate([np.asarray(tok.encode_bytes(p.read_bytes()), np.int64) for p in paths])


@pytest.mark.parametrize("fast", [True, False], ids=["numba", "regex"])
@pytest.mark.parametrize("workers,chunk_size", [(1, 1 << 20), (1, 700), (2, 1000)])
def test_array_equals_tokenizer_encode(tok, corpus, tmp_path, monkeypatch, fast, workers, chunk_size):
    if not fast:
        monkeypatch.setattr(E, "_fast_available", lambda tok: False)
    elif not E._fast_available(tok):
        pytest.skip("the Numba pre-tokenizer is not available")
    monkeypatch.setattr(E.config, "MIN_PARALLEL_BYTES", 0)  # use the pool even on small input
    out = tmp_path / "tokens.npy"
    stats = E.encode_files(corpus, tok, out, workers=workers, chunk_size=chunk_size, progress=False)
    arr = np.load(out)
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, expected(tok, corpus))
    assert stats.tokens == arr.shape[0]
    assert stats.input_bytes == sum(p.stat().st_size for p in corpus)
    assert tok.decode_bytes(arr.tolist()) == CORPUS_A + CORPUS_B


def test_small_cache_and_short_long_word_limit(tok, corpus, tmp_path, monkeypatch):
    """Cache resets and the long-word path change nothing."""
    if not E._fast_available(tok):
        pytest.skip("the Numba pre-tokenizer is not available")
    monkeypatch.setattr(E, "_CACHE_WORDS", 50)
    monkeypatch.setattr(E, "_LONG_WORD", 4)
    out = tmp_path / "tokens.npy"
    E.encode_files(corpus, tok, out, workers=1, chunk_size=2000, progress=False)
    np.testing.assert_array_equal(np.load(out), expected(tok, corpus))


def test_uint32_when_vocab_is_large(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[70_000] = b"zz"  # a loaded vocab may have holes
    tok = Tokenizer(vocab, [], [EOT])
    assert tok.special_ids[EOT] == 70_001
    src = tmp_path / "c.txt"
    src.write_bytes(b"ab" + EOT.encode() + b"c")
    out = tmp_path / "t.npy"
    E.encode_files(src, tok, out, workers=1, progress=False)
    arr = np.load(out)
    assert arr.dtype == np.uint32
    assert arr.tolist() == [97, 98, 70_001, 99]


def test_npy_header_keeps_its_size():
    for dt in (np.dtype(np.uint16), np.dtype(np.uint32)):
        h = E._npy_header(dt, 0)
        assert len(h) % 64 == 0
        assert len(E._npy_header(dt, 10**19, len(h))) == len(h)


def test_failure_leaves_no_output(tok, tmp_path):
    out = tmp_path / "t.npy"
    with pytest.raises(OSError):
        E.encode_files(tmp_path / "missing.txt", tok, out, workers=1, progress=False)
    assert os.listdir(tmp_path) == []


def test_empty_file_gives_empty_array(tok, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    E.encode_files(src, tok, tmp_path / "t.npy", progress=False)
    arr = np.load(tmp_path / "t.npy")
    assert arr.shape == (0,) and arr.dtype == np.uint16


def test_errors_name_the_fix(tok, corpus, tmp_path):
    with pytest.raises(IsADirectoryError, match="tokens.npy"):
        E.encode_files(corpus, tok, tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="create it first"):
        E.encode_files(corpus, tok, tmp_path / "no" / "t.npy", progress=False)
    with pytest.raises(TypeError, match="Tokenizer.load"):
        E.encode_files(corpus, "tok/", tmp_path / "t.npy", progress=False)
    with pytest.raises(TypeError, match="encode_iterable"):
        E.encode_files(iter(["text"]), tok, tmp_path / "t.npy", progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        E.encode_files(tmp_path / "nope.txt", tok, tmp_path / "t.npy", progress=False)


def test_cli_encode(tok, corpus, tmp_path):
    d = tmp_path / "tok"
    formats.export(tok, d, formats=["hf"])
    out = tmp_path / "tokens.npy"
    assert cli_main(["encode", *map(str, corpus), "--tokenizer", str(d), "--out", str(out), "-q"]) == 0
    np.testing.assert_array_equal(np.load(out), expected(tok, corpus))


def test_other_pattern_cuts_safely(tmp_path):
    """cl100k: "!\\n" is one pre-token, so the GPT-2 cut between "!" and "\\n" must not be used."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b"!\n"
    tok = Tokenizer(vocab, [(b"!", b"\n")], [EOT], pattern="cl100k")
    src = tmp_path / "c.txt"
    src.write_bytes((b"a!\nb!\n\n" * 200 + EOT.encode()) * 3)
    out = tmp_path / "t.npy"
    E.encode_files(src, tok, out, workers=1, chunk_size=64, progress=False)
    np.testing.assert_array_equal(np.load(out), tok.encode_bytes(src.read_bytes()))
