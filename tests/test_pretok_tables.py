"""The character-class table against the installed `regex`, all of Unicode, and
how the table is found: shipped, cached, or built for the installed `regex`."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import regex

from gpubpe import config
from gpubpe.pretok import unicode as _unicode


def test_table_matches_installed_regex_for_every_code_point():
    # One string of every code point, scanned once per class: position == code point.
    text = "".join(map(chr, range(0x110000)))
    stored = _unicode.all_classes()
    assert stored.shape == (0x110000,)
    for code, prop in ((_unicode.LETTER, r"\p{L}"), (_unicode.NUMBER, r"\p{N}"), (_unicode.SPACE, r"\s")):
        expected = np.zeros(0x110000, dtype=bool)
        for m in regex.finditer(prop + "+", text):
            expected[m.start() : m.end()] = True
        got = stored == code
        diff = np.flatnonzero(got != expected)
        assert diff.size == 0, (
            f"class {_unicode.CLASS_NAMES[code]} differs from regex {regex.__version__} at "
            f"{[hex(int(c)) for c in diff[:10]]} (table {_unicode.table_id()})"
        )


def test_corners():
    c = _unicode.classify
    assert [c(x) for x in (0x1C, 0x1D, 0x1E, 0x1F)] == [_unicode.OTHER] * 4  # not \s for regex
    assert c(0x85) == c(0x2028) == c(0x3000) == c(0xA0) == _unicode.SPACE
    assert c(0x0661) == c(0x0966) == c(0xFF10) == c(0x1D7CE) == _unicode.NUMBER  # Arabic-Indic, Devanagari, fullwidth, math digits
    assert c(0x2167) == _unicode.NUMBER  # Roman numeral (Nl)
    assert c(0x0301) == c(0x200D) == _unicode.OTHER  # combining acute, ZWJ
    assert c(0xDC80) == _unicode.OTHER  # a surrogate: how an invalid byte decodes
    assert c(ord("ß")) == c(0x10400) == _unicode.LETTER


def test_table_is_small():
    assert _unicode.TABLE_PATH.stat().st_size < 16_000


def test_table_is_canonical():
    # the hash names the classes only if equal classes always give equal arrays
    stage1, stage2 = _unicode.tables()
    again1, again2 = _unicode.two_level(_unicode.all_classes())
    assert np.array_equal(stage1, again1) and np.array_equal(stage2, again2)
    assert stage1.dtype == np.uint16 and stage1.shape == (0x1100,) and stage2.dtype == np.uint8
    assert stage1.flags.c_contiguous and stage2.flags.c_contiguous


def test_table_id_and_hash():
    tid, h = _unicode.table_id(), _unicode.table_hash()
    assert re.fullmatch(r"regex-.+:[0-9a-f]{16}", tid), tid
    assert tid.endswith(":" + h)
    assert tid.startswith(f"regex-{regex.__version__}:")  # whichever way the table was found


def test_shipped_table_records_its_version_and_hash():
    stage1, stage2, version = _unicode._read(_unicode.TABLE_PATH)
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    with np.load(_unicode.TABLE_PATH) as z:
        assert str(z["table_hash"]) == _unicode._hash(stage1, stage2)


# ---------------------------------------------------------------------------
# Finding the table: shipped, cached, built
# ---------------------------------------------------------------------------

FAKE = "0.0.0+test"  # an installed regex version the shipped table was not made with


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """Empty cache in tmp_path, fresh lru_cache; returns the list of builds done.

    The real classes of the installed regex are computed once up front, so a
    rebuilt table can be checked against them."""
    real = _unicode.tables()
    real_hash = _unicode.table_hash()
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    classify_all = _unicode.classify_all

    def counting():
        calls.append(1)
        return classify_all()

    monkeypatch.setattr(_unicode, "classify_all", counting)
    _unicode.tables.cache_clear()
    yield calls, real, real_hash
    _unicode.tables.cache_clear()  # later tests load the real table again


def _installed_is(monkeypatch, version):
    monkeypatch.setattr(_unicode, "regex_version", lambda: version)
    _unicode.tables.cache_clear()


def _same(a, b):
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_shipped_table_is_used_when_versions_match(builds, monkeypatch, tmp_path):
    calls, _, _ = builds
    _, _, shipped = _unicode._read(_unicode.TABLE_PATH)
    _installed_is(monkeypatch, shipped)
    stage1, stage2 = _unicode.tables()
    assert calls == []
    assert not (tmp_path / "cache").exists()  # nothing cached
    assert _unicode.table_id() == f"regex-{shipped}:{_unicode._hash(stage1, stage2)}"


def test_version_mismatch_builds_caches_and_rereads(builds, monkeypatch):
    calls, real, real_hash = builds
    _installed_is(monkeypatch, FAKE)
    got = _unicode.tables()
    assert calls == [1]
    assert _same(got, real)  # built from the installed regex
    assert _unicode.table_id() == f"regex-{FAKE}:{real_hash}"
    path = _unicode.cache_path(FAKE)
    assert path.parent == Path(config.CACHE_DIR)
    assert path.name == f"unicode-classes-regex-{FAKE}.npz"
    assert path.is_file()
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    _unicode.tables.cache_clear()  # a new process, in effect
    again = _unicode.tables()
    assert calls == [1]  # read from the cache, not rebuilt
    assert _same(again, real)
    assert _unicode.table_id() == f"regex-{FAKE}:{real_hash}"


def test_each_regex_version_has_its_own_cache_entry(builds, monkeypatch):
    calls, _, real_hash = builds
    for v in (FAKE, FAKE + ".1"):
        _installed_is(monkeypatch, v)
        assert _unicode.table_hash() == real_hash
    assert len(calls) == 2
    assert sorted(os.listdir(config.CACHE_DIR)) == sorted(_unicode.cache_path(v).name for v in (FAKE, FAKE + ".1"))
    # same classes, different versions: the ids differ, the hash part does not
    ids = []
    for v in (FAKE, FAKE + ".1"):
        _installed_is(monkeypatch, v)
        ids.append(_unicode.table_id())
    assert len(calls) == 2
    assert ids[0] != ids[1] and ids[0].split(":")[1] == ids[1].split(":")[1] == real_hash


def test_unwritable_cache_falls_back_to_memory(builds, monkeypatch, tmp_path):
    calls, real, _ = builds
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setattr(config, "CACHE_DIR", str(blocker / "cache"))  # mkdir fails, even as root
    _installed_is(monkeypatch, FAKE)
    assert _same(_unicode.tables(), real)
    _unicode.tables.cache_clear()
    assert _same(_unicode.tables(), real)
    assert calls == [1, 1]  # nothing was saved, so it is built again
    assert blocker.read_bytes() == b""


def test_failed_save_leaves_no_temporary_file(builds, monkeypatch):
    calls, real, _ = builds

    def refuse(src, dst):
        raise PermissionError(13, "read-only", str(dst))

    monkeypatch.setattr(_unicode.os, "replace", refuse)
    _installed_is(monkeypatch, FAKE)
    assert _same(_unicode.tables(), real)
    assert calls == [1]
    assert os.listdir(config.CACHE_DIR) == []


def _corrupt(kind: str, path, real):
    if kind == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif kind == "wrong-version":
        _unicode.save(path, real[0], real[1], "1.2.3")
    elif kind == "bad-hash":
        stage2 = real[1].copy()
        stage2[ord("a")] = _unicode.NUMBER
        with open(path, "wb") as f:
            np.savez_compressed(f, stage1=real[0], stage2=stage2, regex_version=np.array(FAKE), table_hash=np.array(_unicode._hash(*real)))
    elif kind == "out-of-range":
        stage1 = real[0].copy()
        stage1[5] = 60000
        _unicode.save(path, stage1, real[1], FAKE)
    elif kind == "wrong-shape":
        _unicode.save(path, real[0][:100], real[1], FAKE)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "wrong-version", "bad-hash", "out-of-range", "wrong-shape"])
def test_corrupted_cache_file_is_rebuilt(builds, monkeypatch, kind):
    calls, real, real_hash = builds
    _installed_is(monkeypatch, FAKE)
    _unicode.tables()  # writes the cache
    path = _unicode.cache_path(FAKE)
    _corrupt(kind, path, real)
    _unicode.tables.cache_clear()
    assert _same(_unicode.tables(), real)
    assert _unicode.table_hash() == real_hash
    assert calls == [1, 1]
    assert _same(_unicode._read(path)[:2], real)  # the rebuilt table replaced the bad file
    _unicode.tables.cache_clear()
    _unicode.tables()
    assert calls == [1, 1]


def _bad_shipped(path, kind):
    if kind == "garbage":
        path.write_bytes(b"garbage")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "short-stage1":
        np.savez_compressed(path, stage1=np.zeros(16, np.uint16), stage2=np.zeros(256, np.uint8), regex_version=np.array("1.0.0"))
    elif kind == "no-stage2":
        np.savez_compressed(path, stage1=np.zeros(0x1100, np.uint16), regex_version=np.array("1.0.0"))


@pytest.mark.parametrize("kind", ["garbage", "empty", "short-stage1", "no-stage2"])
def test_malformed_shipped_table_is_an_error(builds, monkeypatch, tmp_path, kind):
    bad = tmp_path / "gpt2_classes.npz"
    _bad_shipped(bad, kind)
    monkeypatch.setattr(_unicode, "TABLE_PATH", bad)
    _unicode.tables.cache_clear()
    with pytest.raises(RuntimeError, match="malformed"):
        _unicode.tables()
