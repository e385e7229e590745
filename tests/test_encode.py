"""Whole-corpus encoding (gpubpe encode): the array equals Tokenizer.encode of
each file, whatever the workers, chunk size, cache size and engine."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import gpubpe
from gpubpe import Tokenizer, formats
from gpubpe import encode as E
from gpubpe.cli import main as cli_main

from ._helpers import FIXTURES

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
    else:
        assert E._fast_available(tok)  # the GPT-2 pattern always takes the Numba path
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
    assert E._fast_available(tok)
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


# ---------------------------------------------------------------------------
# Long pre-tokens
# ---------------------------------------------------------------------------

LETTERS = bytes(c for c in (FIXTURES / "corpus.en").read_bytes() if c < 128 and chr(c).isalpha())


@pytest.fixture(params=["numba", "regex"])
def engine(request, monkeypatch):
    """Both engines of _ChunkEncoder: GPT-2's Numba path, and the regex path of other patterns."""
    if request.param == "regex":
        monkeypatch.setattr(E, "_fast_available", lambda tok: False)
    return request.param


@pytest.fixture(scope="module")
def letters_2mb(tok, tmp_path_factory):
    n = 2_000_000
    data = (LETTERS * (n // len(LETTERS) + 1))[:n]
    src = tmp_path_factory.mktemp("letters") / "letters.txt"
    src.write_bytes(data)
    return src, np.asarray(tok.encode_bytes(data))


def test_long_pretoken_exact_and_memory_bounded(tok, letters_2mb, tmp_path, engine):
    """2 MB of letters is one pre-token: same ids as Tokenizer.encode, in
    memory proportional to its length (the tokenizer's heap path takes about
    200 bytes per byte, in Python objects)."""
    src, want = letters_2mb
    n = src.stat().st_size
    warm = tmp_path / "warm.txt"  # compile the kernels outside the measurement
    warm.write_bytes(LETTERS[:100_000])
    E.encode_files(warm, tok, tmp_path / "warm.npy", workers=1, progress=False)

    out = tmp_path / "t.npy"
    tracemalloc.start()
    try:
        E.encode_files(src, tok, out, workers=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * n + (8 << 20), f"{peak / n:.1f} bytes per input byte"
    np.testing.assert_array_equal(np.load(out), want)


def _random_merges_tokenizer(seed: int) -> Tokenizer:
    """Merges in random order, many making the same bytes: a merge can create a
    pair that ranks before it (the heap loop must not assume otherwise)."""
    words = [""]
    strings = []
    for _ in range(4):
        words = [w + c for w in words for c in "abc"]
        strings += words
    vocab = {i: bytes([i]) for i in range(256)}
    for s in strings:
        if len(s) > 1:
            vocab[len(vocab)] = s.encode()
    merges = [(s[:k].encode(), s[k:].encode()) for s in strings if len(s) > 1 for k in range(1, len(s))]
    random.Random(seed).shuffle(merges)
    return Tokenizer(vocab, merges, [EOT])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_pretokens_with_any_merge_order(tmp_path, monkeypatch, engine, seed):
    tok = _random_merges_tokenizer(seed)
    monkeypatch.setattr(E, "_LONG_WORD", 40)
    monkeypatch.setattr(E, "_UNCACHED_WORD", 3000)
    rng = random.Random(seed)
    long_word = "".join(rng.choice("abc") for _ in range(5000))
    mid_word = "".join(rng.choice("abc") for _ in range(200))
    parts = [" " + "".join(rng.choice("abc") for _ in range(rng.randint(1, 60))) for _ in range(300)]
    parts += [" " + mid_word] * 5 + [" " + long_word] * 3 + [EOT, long_word[:3000], EOT, "c" * 4000]
    rng.shuffle(parts)
    src = tmp_path / "c.txt"
    src.write_text("".join(parts))
    out = tmp_path / "t.npy"
    E.encode_files(src, tok, out, workers=1, chunk_size=4096, progress=False)
    np.testing.assert_array_equal(np.load(out), tok.encode(src.read_text()))


def test_long_pretokens_of_every_class(tok, tmp_path, monkeypatch, engine):
    """Runs of letters, digits, spaces, punctuation and CJK, cached (repeated) or not."""
    monkeypatch.setattr(E, "_UNCACHED_WORD", 2000)
    runs = [LETTERS[:2500], b"1234567890" * 300, b" " * 2500, b"!?.,;" * 500, "日本語".encode() * 300,
            LETTERS[:1000], LETTERS[5000:5300]]
    data = b"x ".join(runs + runs[::-1]) + EOT.encode() + LETTERS[:3000]
    src = tmp_path / "c.txt"
    src.write_bytes(data)
    out = tmp_path / "t.npy"
    E.encode_files(src, tok, out, workers=1, progress=False)
    np.testing.assert_array_equal(np.load(out), tok.encode_bytes(data))


# ---------------------------------------------------------------------------
# Interrupts, file mode, refused outputs
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "win32", reason="needs POSIX signals and FIFOs")
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_interrupt_stops_workers_and_removes_temp_file(tok, tmp_path, how):
    """The second input is a FIFO that never ends, so the run is still going
    when the signal comes, however fast the machine: the 30 MB before it keep
    two workers busy first."""
    psutil = pytest.importorskip("psutil")
    d = tmp_path / "tok"
    formats.export(tok, d, formats=["hf"])
    corpus = tmp_path / "in" / "corpus.txt"
    corpus.parent.mkdir()
    text = (FIXTURES / "corpus.en").read_bytes()
    corpus.write_bytes(text * (30_000_000 // len(text) + 1))
    fifo = tmp_path / "in" / "more.txt"
    os.mkfifo(fifo)
    hold = os.open(fifo, os.O_RDWR)  # a writer that never writes: the reader never sees the end
    outdir = tmp_path / "out"
    outdir.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "gpubpe", "encode", str(corpus), str(fifo), "--tokenizer", str(d),
           "--out", str(outdir / "t.npy"), "--workers", "2", "-q"]
    # stderr to a file: orphaned workers would hold a pipe open, and reading it would hang
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=err, start_new_session=True)
    children = []
    header = len(E._npy_header(np.dtype(np.uint16), 0))
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120  # a cold Numba cache compiles first
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the encoding never got going"
            children = parent.children(recursive=True)
            tmp = list(outdir.glob(".t.npy.*.tmp"))
            if len(children) >= 2 and tmp and tmp[0].stat().st_size > header:  # ids written: mid-run
                break
            time.sleep(0.02)
        for c in children:  # Ctrl-C is the parent's to handle, once
            status = Path(f"/proc/{c.pid}/status")
            if status.exists():
                ignored = int(status.read_text().split("SigIgn:")[1].split()[0], 16)
                assert ignored >> (signal.SIGINT - 1) & 1, "a worker does not ignore SIGINT"
        t0 = time.monotonic()
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        assert elapsed < 10, f"took {elapsed:.1f} s to exit"
        assert proc.returncode != 0, log.read_text()
        assert os.listdir(outdir) == [], "temporary or partial output left behind"
        time.sleep(0.2)
        assert [c.pid for c in children if _alive(psutil, c)] == [], "workers outlived the run"
    finally:
        os.close(hold)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for c in children:
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass


def _alive(psutil, proc) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_in_process_raises_and_restores_handler(tok, corpus, tmp_path, monkeypatch):
    if not hasattr(signal, "SIGTERM") or sys.platform == "win32":
        pytest.skip("needs POSIX signals")

    class NotOurs(Exception):
        pass

    def guard(signum, frame):  # were SIGTERM left at its default, it would end pytest
        raise NotOurs

    real_encode = E._ChunkEncoder.encode

    def encode_then_sigterm(self, data):
        ids = real_encode(self, data)
        if data:  # not the warm-up's sample
            os.kill(os.getpid(), signal.SIGTERM)
        return ids

    before = signal.signal(signal.SIGTERM, guard)
    try:
        monkeypatch.setattr(E._ChunkEncoder, "warm", lambda self: self)
        monkeypatch.setattr(E._ChunkEncoder, "encode", encode_then_sigterm)
        with pytest.raises(E.Terminated):
            E.encode_files(corpus, tok, tmp_path / "t.npy", workers=1, chunk_size=1000, progress=False)
        assert signal.getsignal(signal.SIGTERM) is guard
    finally:
        signal.signal(signal.SIGTERM, before)
    assert issubclass(E.Terminated, KeyboardInterrupt)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.parametrize("umask,mode", [(0o027, 0o640), (0o002, 0o664)])
def test_output_mode_follows_umask(tok, corpus, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        E.encode_files(corpus, tok, tmp_path / "t.npy", workers=1, progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "t.npy").stat().st_mode & 0o777 == mode


def test_out_equal_to_an_input_is_refused(tok, corpus, tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(CORPUS_A)
    same = [a, tmp_path / "sub" / ".." / "a.txt"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.txt").symlink_to(a)
    os.link(a, tmp_path / "hard.txt")
    same += [tmp_path / "link.txt", tmp_path / "hard.txt"]
    for out in same:
        with pytest.raises(ValueError, match="new file name"):
            E.encode_files([corpus[1], a], tok, out, workers=1, progress=False)
    assert a.read_bytes() == CORPUS_A
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "hard.txt", "link.txt", "sub"]


def test_unwritable_out_dir_is_refused_before_any_work(tok, corpus, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("encoding started")

    monkeypatch.setattr(E, "_ChunkEncoder", no_work)
    real_access = os.access
    monkeypatch.setattr(E.os, "access", lambda p, m, **kw: False if Path(p) == tmp_path else real_access(p, m, **kw))
    with pytest.raises(PermissionError, match="directory you can write to"):
        E.encode_files(corpus, tok, tmp_path / "t.npy", progress=False)
    monkeypatch.setattr(E.os, "access", real_access)

    def mkstemp(*args, **kwargs):  # what root sees on a read-only file system, say
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(E.tempfile, "mkstemp", mkstemp)
    with pytest.raises(PermissionError, match="directory you can write to"):
        E.encode_files(corpus, tok, tmp_path / "t.npy", progress=False)
    assert os.listdir(tmp_path) == []


def test_directories_compressed_text_and_records(tok, corpus, tmp_path):
    import gzip

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_bytes(CORPUS_A)
    (d / "b.txt.gz").write_bytes(gzip.compress(CORPUS_B))
    E.encode_files(d, tok, tmp_path / "x.npy", workers=1, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), expected(tok, corpus))
    (tmp_path / "r.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="holds records"):
        E.encode_files(tmp_path / "r.jsonl", tok, tmp_path / "y.npy", workers=1, progress=False)
