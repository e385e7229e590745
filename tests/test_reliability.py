"""Nothing lost, nothing garbled: interrupts, saves, bounded resources, errors
as messages, and the inputs a user tries first. One test (or a few) per
defect of a hostile-user pass; each failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter

import numpy as np
import psutil
import pytest

import gpubpe
from gpubpe import _files, backends, config, formats
from gpubpe.wordtable import WordTable
from gpubpe import LongTokenWarning, TrainingStoppedEarly
from gpubpe.cli import main as cli_main
from gpubpe.model import UnicodeTableWarning

from .reference import reference_merges_from_counts, reference_pretokens

from gpubpe import corpus as C  # noqa: E402
from gpubpe.pretok import regex_engine as RE  # noqa: E402
EOT = "<|endoftext|>"


def _cli(*args, cwd=None, stdin=None, input=None):
    return subprocess.run([sys.executable, "-m", "gpubpe", *args], capture_output=True, cwd=cwd,
                          stdin=stdin, input=input)


def _text(n_words: int, seed: int = 3) -> bytes:
    """Words of random letters: many distinct pairs, so many merges are possible."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    lens = rng.integers(3, 12, n_words)
    body = rng.choice(letters, int(lens.sum()))
    out, o = [], 0
    for n in lens.tolist():
        out.append(body[o : o + n].tobytes())
        o += n
    return b" ".join(out)


def _model(tmp_path, data=b"the cat sat on the mat " * 50, vocab_size=300, name="c.txt", **kw):
    path = tmp_path / name
    path.write_bytes(data)
    return gpubpe.train(path, vocab_size=vocab_size, backend="cpu", progress=False, **kw)


# ---------------------------------------------------------------------------
# D1: Ctrl-C stops the merge loop within a second, with or without a bar
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["numba", "python"])
def test_interrupt_stops_the_merge_loop_without_a_progress_bar(tmp_path, monkeypatch, engine):
    monkeypatch.setattr(config, "SMALL_TABLE_SYMBOLS", -1 if engine == "numba" else 1 << 62)
    path = tmp_path / "words.txt"
    path.write_bytes(_text(60_000 if engine == "numba" else 20_000))
    real = backends._cpu()
    started = threading.Event()
    seen = {}

    def run(table, num_merges, progress, *options):
        seen["progress"] = progress
        started.set()
        return real(table, num_merges, progress, *options)

    monkeypatch.setattr(backends, "get", lambda name: run)
    if engine == "numba":  # compile outside the measurement
        gpubpe.train(iter(["ab ab abc"]), vocab_size=260, backend="cpu", progress=False)
        started.clear()  # the measured run's loop, not this one, starts the clock

    def interrupt():
        # once the loop has made a merge (a fixed sleep is not enough on a
        # loaded machine, where the Python loop's set-up alone can take longer)
        started.wait(30)
        deadline = time.perf_counter() + 30
        while seen["progress"][0] == 0 and time.perf_counter() < deadline:
            time.sleep(0.01)
        seen["t"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        gpubpe.train(path, vocab_size=200_000, backend="cpu", progress=False)
    assert time.perf_counter() - seen["t"] < 1.0
    assert seen["progress"][1] == 1 and 0 < seen["progress"][0] < 199_000


def test_cli_interrupt_is_a_message_and_exit_130(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes(_text(300_000))
    proc = subprocess.Popen([sys.executable, "-m", "gpubpe", "train", str(path), "--vocab-size", "300000",
                             "--out", str(tmp_path / "tok"), "-q"], stderr=subprocess.PIPE)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    t = time.perf_counter()
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - t < 2.0
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err and b"SystemError" not in err
    assert not (tmp_path / "tok").exists()


# ---------------------------------------------------------------------------
# D2, D3, D5: saves checked up front, written as a set, with the umask's modes
# ---------------------------------------------------------------------------


def test_unwritable_out_is_refused_before_training(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "c.txt").write_bytes(b"the cat " * 20)
    import gpubpe.trainer as api

    def no_training(*a, **k):
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(api, "train_with_stats", no_training)
    assert cli_main(["train", str(tmp_path / "c.txt"), "--out", str(blocker / "tok")]) == 1
    err = capsys.readouterr().err
    assert "--out directory" in err and "not a directory" in err


def test_full_disk_leaves_the_old_set_whole(tmp_path, monkeypatch):
    old = _model(tmp_path, vocab_size=280)
    out = tmp_path / "tok"
    formats.export(old, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    new = _model(tmp_path, data=b"other words here " * 40, vocab_size=290, name="d.txt")
    real_fsync = os.fsync
    calls = [0]

    def full(fd):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        formats.export(new, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert gpubpe.load(out) == old


def test_export_into_another_models_directory_replaces_the_set(tmp_path):
    a = _model(tmp_path, vocab_size=280)
    b = _model(tmp_path, data=b"other words here " * 40, vocab_size=290, name="d.txt")
    out = tmp_path / "tok"
    formats.export(a, out)
    formats.export(b, out, formats=["hf"])
    assert sorted(p.name for p in out.iterdir()) == ["gpubpe-files.json", "tokenizer.json"]
    assert gpubpe.Tokenizer.load(out).merges == b.merges


def test_interrupted_write_in_place_is_refused_not_mixed(tmp_path, monkeypatch):
    # a directory with other files is written in place; an interruption
    # between the renames leaves a manifest that loaders refuse
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    a = _model(tmp_path, vocab_size=280)
    formats.export(a, out)
    assert gpubpe.load(out) == a and (out / "notes.txt").read_text() == "mine"
    b = _model(tmp_path, data=b"other words here " * 40, vocab_size=290, name="d.txt")
    real = os.replace
    n = [0]

    def killed(src, dst):
        n[0] += 1
        if n[0] == 3:  # the writing manifest and one file are in place
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        formats.export(b, out)
    monkeypatch.setattr(os, "replace", real)
    with pytest.raises(ValueError, match="being written"):
        gpubpe.Tokenizer.load(out)
    with pytest.raises(ValueError, match="being written"):
        gpubpe.load(out)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    formats.export(b, out)
    assert gpubpe.load(out) == b


def test_a_file_changed_behind_the_manifest_is_refused(tmp_path):
    out = tmp_path / "tok"
    formats.export(_model(tmp_path), out)
    other = _model(tmp_path, data=b"other words here " * 40, vocab_size=290, name="d.txt")
    (out / "model.json").write_bytes(other.to_json())  # copied over by hand
    with pytest.raises(ValueError, match="another model"):
        gpubpe.load(out)


def test_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        assert _files.umask() == 0o022
        out = tmp_path / "tok"
        formats.export(_model(tmp_path), out)
    finally:
        os.umask(old)
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


# ---------------------------------------------------------------------------
# D4, D7, D14 and workers: bounded resources
# ---------------------------------------------------------------------------


def test_huge_vocab_size_allocates_for_the_merges_that_can_happen(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SMALL_TABLE_SYMBOLS", -1)  # the Numba loop, which sizes arrays by num_merges
    data = _text(3_000)
    rss = psutil.Process().memory_info().rss
    with pytest.warns(TrainingStoppedEarly, match="no pair is left"):
        m = _model(tmp_path, data=data, vocab_size=10**9)
    assert psutil.Process().memory_info().rss - rss < 400 << 20
    counts = Counter(reference_pretokens(data))
    table = WordTable.from_counts(counts)
    assert len(m.merges) <= table.max_merges()
    # every word is one token at the end
    tok = gpubpe.Tokenizer.from_model(m)
    assert all(len(tok.encode(w.decode())) == 1 for w in counts)


def test_max_token_length_is_exact(tmp_path, train_kwargs):
    # every backend: cpu-numba, cpu-python, cuda-sim (and cuda on a device)
    data = b"aaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbb aaab abab " * 30 + _text(200)
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    for cap in (2, 3, 5, 8):
        m = gpubpe.train(path, vocab_size=600, max_token_length=cap, progress=False, **train_kwargs)
        assert max(len(a) + len(b) for a, b in m.merges) <= cap
        want = reference_merges_from_counts(Counter(reference_pretokens(data)), 600 - 256, max_len=cap)
        assert m.merges == want, cap


def test_long_runs_warn_and_the_cap_keeps_exports_small(tmp_path):
    data = b"a" * (3 << 20)
    with pytest.warns(LongTokenWarning, match="max_token_length"):
        _model(tmp_path, data=data, vocab_size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LongTokenWarning)
        m = _model(tmp_path, data=data, vocab_size=400, max_token_length=16)
    out = tmp_path / "tok"
    formats.export(m, out)
    assert sum(p.stat().st_size for p in out.iterdir()) < 1 << 20


def test_max_token_length_validated(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        _model(tmp_path, max_token_length=1)
    with pytest.raises(TypeError, match="max_token_length"):
        _model(tmp_path, max_token_length="16")
    with pytest.raises(ValueError, match="does not fit"):
        _model(tmp_path, max_token_length=2**40)


def test_chunk_size_one_with_a_special_token_is_linear(monkeypatch):
    data = (b"hello world " * 8 + EOT.encode()) * 300
    scanned = [0]
    real = C.safe_cut

    def counting(buf, specials=(), lo=1, **kw):
        scanned[0] += len(buf) - lo
        return real(buf, specials, lo, **kw)

    monkeypatch.setattr(C, "safe_cut", counting)
    got = gpubpe.count_pretokens(data, special_tokens=[EOT], chunk_size=1, workers=1)
    assert got == dict(Counter(reference_pretokens(data, [EOT])))
    assert scanned[0] < 40 * len(data)  # quadratic was about len(data)^2 / 2


@pytest.mark.parametrize("size", [10**12, 2**63])
def test_chunk_size_too_large_is_a_message(size):
    with pytest.raises(ValueError, match="chunk_size must be between"):
        gpubpe.count_pretokens(b"x y", chunk_size=size)


def test_workers_above_the_cores_are_capped_with_a_warning():
    from gpubpe import _validate

    with pytest.warns(UserWarning, match="more than the"):
        assert _validate.workers(_validate.cores() + 5) == _validate.cores()
    assert _validate.workers(np.int64(1)) == 1  # numpy ints are ints
    with pytest.raises(TypeError):
        _validate.workers(1.5)


# ---------------------------------------------------------------------------
# D9: cl100k and o200k stream without special tokens
# ---------------------------------------------------------------------------


def test_cl100k_without_specials_is_streamed(monkeypatch):
    data = b"Line of text here, with words.\n" * 100_000  # 3 MB, no special token
    sizes = []
    real = RE.count_chunk

    def spy(chunk, specials, pattern):
        sizes.append(len(chunk))
        return real(chunk, specials, pattern)

    monkeypatch.setattr(RE, "count_chunk", spy)
    got = gpubpe.count_pretokens(data, pattern="cl100k", chunk_size=1 << 16, workers=1)
    assert got == {b"Line": 100_000, b" of": 100_000, b" text": 100_000, b" here": 100_000, b",": 100_000,
                   b" with": 100_000, b" words": 100_000, b".\n": 100_000}
    assert len(sizes) > 20 and max(sizes) <= 2 << 16


# ---------------------------------------------------------------------------
# D10, D12, D13: errors are messages, never tracebacks
# ---------------------------------------------------------------------------


def test_cli_cuda_without_a_device_is_a_message(tmp_path):
    if backends.cuda_available():
        pytest.skip("a CUDA device answers here")
    (tmp_path / "c.txt").write_bytes(b"the cat " * 20)
    r = _cli("train", str(tmp_path / "c.txt"), "--backend", "cuda", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and b"Traceback" not in r.stderr and b"backend='cpu'" in r.stderr


@pytest.mark.parametrize("edit", [
    lambda d: d.pop("merges"),
    lambda d: d["merges"].__setitem__(0, [97, 99999]),
    lambda d: d.__setitem__("merges", None),
    lambda d: d.__setitem__("special_tokens", [5]),
    lambda d: d.__setitem__("special_tokens", "<|endoftext|>"),
    lambda d: d.__setitem__("pattern", None),
    lambda d: d["merges"].__setitem__(0, "ab"),
    lambda d: d.clear(),
])
def test_malformed_model_json_is_a_message(tmp_path, edit):
    out = tmp_path / "tok"
    _model(tmp_path).save(out)
    doc = json.loads((out / "model.json").read_text())
    edit(doc)
    (out / "model.json").write_text(json.dumps(doc))
    (out / "gpubpe-files.json").unlink()  # edited by hand: no manifest to check
    with pytest.raises(ValueError, match="malformed|not a gpubpe model"):
        gpubpe.load(out)
    (tmp_path / "t.txt").write_text("the end")
    r = _cli("encode", str(tmp_path / "t.txt"), "--tokenizer", str(out), "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and b"Traceback" not in r.stderr and b"gpubpe:" in r.stderr, r.stderr


@pytest.mark.parametrize("doc", ["[]", "null", '{"model": []}', '{"model": {"type": "BPE", "vocab": [], "merges": []}}'])
def test_malformed_tokenizer_json_is_a_message(tmp_path, doc):
    (tmp_path / "tokenizer.json").write_text(doc)
    with pytest.raises(ValueError):
        gpubpe.Tokenizer.load(tmp_path)
    r = _cli("export", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and b"Traceback" not in r.stderr


def test_cli_memory_error_and_interrupt_are_messages(tmp_path, monkeypatch, capsys):
    import gpubpe.trainer as api

    (tmp_path / "c.txt").write_bytes(b"the cat " * 20)
    for exc, code, words in ((MemoryError(), 1, "out of memory"), (KeyboardInterrupt(), 130, "interrupted")):
        def boom(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(api, "train_with_stats", boom)
        assert cli_main(["train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "o")]) == code
        assert words in capsys.readouterr().err


@pytest.mark.parametrize("pattern,words", [
    (r"\w*", "empty string"),
    (r"(?:x)*|\s+", "empty string"),
    (r"(\w+)|(\s+)", "capture group"),
    ("GPT2", "did you mean 'gpt2'"),
    ("gpt-2", "did you mean 'gpt2'"),
    ("cl100k_base", "did you mean 'cl100k'"),
])
def test_bad_patterns_are_refused(tmp_path, pattern, words):
    with pytest.raises(ValueError, match=words):
        _model(tmp_path, pattern=pattern)
    with pytest.raises(ValueError, match=words):
        gpubpe.Tokenizer({i: bytes([i]) for i in range(256)}, [], pattern=pattern)
    r = _cli("train", str(tmp_path / "c.txt"), "--pattern", pattern, "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and b"Traceback" not in r.stderr


def test_tokenizer_special_tokens_as_a_str_is_a_type_error():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(TypeError, match=r"write special_tokens=\['<\|endoftext\|>'\]"):
        gpubpe.Tokenizer(vocab, [], "<|endoftext|>")
    with pytest.raises(ValueError, match="empty"):
        gpubpe.Tokenizer(vocab, [], [""])


# ---------------------------------------------------------------------------
# D11 and the inputs a user tries first
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_stdin_and_pipes_are_inputs(tmp_path, name):
    data = b"the cat sat on the mat\n" * 200
    (tmp_path / "c.txt").write_bytes(data)
    r = _cli("train", "--vocab-size", "270", "--out", str(tmp_path / "a"), "-q", str(tmp_path / "c.txt"))
    assert r.returncode == 0, r.stderr
    r = _cli("train", name, "--vocab-size", "270", "--out", str(tmp_path / "b"), "-q", input=data)
    assert r.returncode == 0, r.stderr
    assert gpubpe.load(tmp_path / "a").merges == gpubpe.load(tmp_path / "b").merges
    r = _cli("train", name, "--out", str(tmp_path / "c"), input=b"")
    assert r.returncode == 1 and b"empty" in r.stderr


def test_a_path_given_twice_is_refused(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"the cat " * 20)
    with pytest.raises(ValueError, match="given twice"):
        gpubpe.train([p, tmp_path / "." / "c.txt"], vocab_size=300)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_input_is_refused_with_the_fix(tmp_path, encoding):
    p = tmp_path / "c.txt"
    text = "the cat sat " * 20
    p.write_bytes(text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode(encoding))
    with pytest.raises(ValueError, match="convert it first"):
        gpubpe.train(p, vocab_size=300)
    r = _cli("train", "-", "--out", str(tmp_path / "o"), input=p.read_bytes())
    assert r.returncode == 1 and b"convert it first" in r.stderr


def test_early_stop_is_said_even_with_quiet(tmp_path):
    (tmp_path / "s.txt").write_text(EOT * 50)
    with pytest.warns(TrainingStoppedEarly, match="only special tokens"):
        gpubpe.train(tmp_path / "s.txt", vocab_size=300, special_tokens=[EOT], progress=False)
    r = _cli("train", str(tmp_path / "s.txt"), "--special-token", EOT, "--out", str(tmp_path / "o"), "-q")
    assert r.returncode == 0 and b"only special tokens" in r.stderr
    (tmp_path / "c.txt").write_bytes(b"ab ab ab")
    r = _cli("train", str(tmp_path / "c.txt"), "--vocab-size", "1000", "--out", str(tmp_path / "p"), "-q")
    assert r.returncode == 0 and b"training stopped after 2 of 744 merges" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# The Unicode table the model was trained with
# ---------------------------------------------------------------------------


def test_model_records_the_unicode_table_and_warns_on_another(tmp_path):
    from gpubpe.pretok import unicode as _unicode

    out = tmp_path / "tok"
    m = _model(tmp_path)
    assert m.unicode == _unicode.table_id()
    m.save(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnicodeTableWarning)
        assert gpubpe.load(out).unicode == m.unicode
    doc = json.loads((out / "model.json").read_text())
    doc["unicode"] = "regex-2001.1.1:0123456789abcdef"
    (out / "model.json").write_text(json.dumps(doc))
    (out / "gpubpe-files.json").unlink()
    with pytest.warns(UnicodeTableWarning, match="regex-2001.1.1"):
        gpubpe.load(out)


def test_cli_names_flags_once():
    from gpubpe.cli import _flag_names

    assert _flag_names(ValueError("vocab_size=10 is too small; the same --pattern")) == \
        "--vocab-size=10 is too small; the same --pattern"
