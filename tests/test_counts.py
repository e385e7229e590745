"""Word counts as an artefact, the corpus formats people train from, and
counting spread over processes and a Dask cluster: the merges never change."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import gpubpe
from gpubpe import WordCounts
from gpubpe.cli import main as cli_main
from gpubpe.counts import split_buckets, stable_bucket

from ._helpers import FIXTURES

EOT = "<|endoftext|>"
VOCAB = 700

# A real slice: the fixture's lines, ten to a document.
_LINES = (FIXTURES / "corpus.en").read_text(encoding="utf-8").splitlines(keepends=True)
DOCS = ["".join(_LINES[i : i + 10]) for i in range(0, len(_LINES), 10)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    path = d / "corpus.txt"
    path.write_text(EOT.join(DOCS), encoding="utf-8")
    return gpubpe.train(path, vocab_size=VOCAB, special_tokens=[EOT], backend="cpu", progress=False).merges


def _train(inputs, **kw):
    return gpubpe.train(inputs, vocab_size=VOCAB, special_tokens=[EOT], backend="cpu", progress=False, **kw).merges


def _jsonl(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def test_every_input_form_gives_the_same_merges(tmp_path, reference):
    text = EOT.join(DOCS).encode()
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text))
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(text))
    (tmp_path / "c.txt.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "c.jsonl").write_bytes(_jsonl(DOCS))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS)))
    for name in ("c.txt.gz", "c.txt.xz", "c.txt.bz2", "c.jsonl", "c.jsonl.gz"):
        assert _train(tmp_path / name) == reference, name
    assert _train(tmp_path / "c.jsonl", text_field="text") == reference
    # batches, as datasets users pass them: each string a document
    batches = [DOCS[i : i + 7] for i in range(0, len(DOCS), 7)]
    assert _train(iter(batches)) == reference


def test_zstd_and_parquet(tmp_path, reference):
    zstd = pytest.importorskip("zstandard")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "c.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(_jsonl(DOCS)))
    (tmp_path / "c.txt.zst").write_bytes(zstd.ZstdCompressor().compress(EOT.join(DOCS).encode()))
    pq.write_table(pa.table({"id": list(range(len(DOCS))), "body": DOCS}), tmp_path / "c.parquet", row_group_size=9)
    assert _train(tmp_path / "c.jsonl.zst") == reference
    assert _train(tmp_path / "c.txt.zst") == reference
    assert _train(tmp_path / "c.parquet", text_column="body") == reference


@pytest.mark.parametrize("nshards", [1, 3, 7])
def test_counts_per_shard_merged_and_on_an_executor(tmp_path, reference, nshards):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(nshards):  # documents dealt out round-robin: each file its own set
        (shards / f"{i:02d}.jsonl").write_bytes(_jsonl(DOCS[i::nshards]))
    whole = gpubpe.count(shards, special_tokens=[EOT])
    parts = [gpubpe.count(p, special_tokens=[EOT]) for p in sorted(shards.iterdir())]
    merged = WordCounts.merge(parts)
    assert merged.to_dict() == whole.to_dict()
    assert sum(parts[1:], parts[0]).to_dict() == whole.to_dict()
    assert _train(merged) == reference and _train(parts) == reference
    with ProcessPoolExecutor(2) as ex:
        for buckets in (1, 4):
            dist = gpubpe.count(shards, special_tokens=[EOT], executor=ex, buckets=buckets)
            assert dist.to_dict() == whole.to_dict()
    assert [i["path"] for i in dist.meta["inputs"]] == [str(p) for p in sorted(shards.iterdir())]


def test_dask_local_cluster(tmp_path, reference):
    distributed = pytest.importorskip("distributed")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(4):
        (shards / f"{i}.txt").write_text(EOT.join(DOCS[i::4]), encoding="utf-8")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            native = gpubpe.count(shards, special_tokens=[EOT], executor=client, buckets=3)
            via_executor = gpubpe.count(shards, special_tokens=[EOT], executor=client.get_executor(), buckets=5)
    local = gpubpe.count(shards, special_tokens=[EOT])
    assert native.to_dict() == via_executor.to_dict() == local.to_dict()
    assert _train(native) == reference


def test_stable_buckets_are_disjoint_and_stable():
    wc = gpubpe.count(iter(DOCS[:20]))
    b = stable_bucket(*wc.arrays()[:2], 8)
    # the same words land in the same buckets in another table order
    d = wc.to_dict()
    again = WordCounts.from_dict(dict(reversed(list(d.items()))))
    b2 = dict(zip(again.to_dict(), stable_bucket(*again.arrays()[:2], 8).tolist()))
    assert dict(zip(d, b.tolist())) == b2
    seen = set()
    for words, offs, counts in split_buckets(*wc.arrays(), 8):
        ws = {words[offs[k]:offs[k + 1]].tobytes() for k in range(len(counts))}
        assert not ws & seen
        seen |= ws
    assert seen == set(d)
    # the hash is fixed: a change would split old and new counts differently
    probe = WordCounts.from_dict({b"the": 1, b" cat": 2, b"\xff": 3})
    assert stable_bucket(*probe.arrays()[:2], 1000).tolist() == _PROBE_BUCKETS


# Written down once: counts saved by one version are split like this by every later one.
_PROBE_BUCKETS = [52, 541, 139]


def test_save_load_and_refusals(tmp_path):
    a = gpubpe.count(iter(DOCS[:30]), special_tokens=[EOT])
    a.save(tmp_path / "a")
    back = WordCounts.load(tmp_path / "a")
    assert back.to_dict() == a.to_dict() and back.meta == a.meta
    assert WordCounts.load(tmp_path / "a", mmap=True).to_dict() == a.to_dict()
    with pytest.raises(ValueError, match="another pattern"):
        a + gpubpe.count(iter(DOCS[:30]), special_tokens=[EOT], pattern="cl100k")
    with pytest.raises(ValueError, match="special tokens"):
        a + gpubpe.count(iter(DOCS[:30]))
    other = WordCounts(*a.arrays(), dict(a.meta, unicode="regex-2001.1.1:0123456789abcdef"))
    with pytest.raises(ValueError, match="Unicode table"):
        WordCounts.merge([a, other])
    with pytest.raises(ValueError, match="special tokens"):
        gpubpe.train(a, vocab_size=400, special_tokens=["<pad>"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop"])
def test_damaged_counts_are_an_error(tmp_path, damage):
    gpubpe.count(iter(DOCS[:30])).save(tmp_path / "c")
    f = tmp_path / "c" / "counts.npy"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        f.write_bytes(data[:-8] + (int.from_bytes(data[-8:], "little") + 1).to_bytes(8, "little"))
    else:
        f.unlink()
    with pytest.raises(ValueError):
        WordCounts.load(tmp_path / "c")


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    wc = gpubpe.count(iter(DOCS[:30]))

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        wc.save(tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,words", [
    (b'{"text": "ok"}\nnot json\n', r"c\.jsonl:2: not JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', r"c\.jsonl:2: no field 'text'"),
    (b'{"text": 5}\n', r"c\.jsonl:1: field 'text': the text is a int"),
    (b'["a list"]\n', r"c\.jsonl:1: no field"),
])
def test_bad_records_name_the_file_and_line(tmp_path, content, words):
    (tmp_path / "c.jsonl").write_bytes(content)
    with pytest.raises((ValueError, TypeError), match=words):
        gpubpe.count(tmp_path / "c.jsonl")
    assert cli_main(["count", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"), "-q"]) == 1
    assert not (tmp_path / "o").exists()


def test_parquet_without_the_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a b"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="no column 'text'"):
        gpubpe.count(tmp_path / "c.parquet")


def test_cli_count_then_train_from_several_counts(tmp_path, reference, capsys):
    for i in range(2):
        (tmp_path / f"p{i}.jsonl").write_bytes(_jsonl(DOCS[i::2]))
        assert cli_main(["count", str(tmp_path / f"p{i}.jsonl"), "--special-token", EOT,
                         "--out", str(tmp_path / f"c{i}"), "-q"]) == 0
    assert cli_main(["train", "--counts", str(tmp_path / "c0"), "--counts", str(tmp_path / "c1"),
                     "--vocab-size", str(VOCAB), "--out", str(tmp_path / "tok"), "-q", "--backend", "cpu"]) == 0
    assert gpubpe.load(tmp_path / "tok").merges == reference
    assert cli_main(["train", str(tmp_path / "p0.jsonl"), "--counts", str(tmp_path / "c0"),
                     "--out", str(tmp_path / "x")]) == 1
    assert "not both" in capsys.readouterr().err


def test_directories_and_globs_are_sorted(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"{name} words here")
    wc = gpubpe.count(tmp_path)
    assert [os.path.relpath(i["path"], tmp_path) for i in wc.meta["inputs"]] == ["a.txt", "b.txt", "sub/c.txt"]
    wc2 = gpubpe.count(str(tmp_path / "*.txt"))
    assert [os.path.basename(i["path"]) for i in wc2.meta["inputs"]] == ["a.txt", "b.txt"]
    assert all(len(i["blake2b"]) == 32 and i["size"] > 0 for i in wc.meta["inputs"])


def test_from_dict_and_arrays():
    wc = WordCounts.from_dict({b"ab": 2, b"c": 1})
    assert wc.to_dict() == {b"ab": 2, b"c": 1} and len(wc) == 2 and wc.pretokens == 3
    with pytest.raises(ValueError, match="offsets"):
        WordCounts(np.zeros(3, np.uint8), np.array([0, 1]), np.array([1]), {})


def test_dask_without_the_extra_fails_at_once(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if not installed
    (tmp_path / "c.txt").write_text("the cat")
    assert cli_main(["count", str(tmp_path / "c.txt"), "--dask", "local:2", "--out", str(tmp_path / "o")]) == 1
    assert "pip install 'gpubpe[dask]'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs files"):
        gpubpe.count(iter(["the cat"]), executor=ProcessPoolExecutor(1))
