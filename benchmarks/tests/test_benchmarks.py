"""The benchmark harness measures what it says: memory of worker trees, timeouts,
RESULTS.md sections, document splitting for the anchors, and --check's verdicts.

Not part of the product's suite: ``python -m pytest benchmarks/tests``."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import _common as C  # noqa: E402
import bench_pretok as BP  # noqa: E402
import bench_scaling as BS  # noqa: E402
import bench_train as BT  # noqa: E402
import download_corpora as DL  # noqa: E402

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS and fork semantics are Linux's")

MiB = 2**20

# A parent that holds A MiB and forks a worker that holds B MiB more, both alive at once.
FORK_TREE = """
import os, time
a = bytearray({a} * 2**20)            # bytearray(n) is zeroed memory: touched, resident
pid = os.fork()
if pid == 0:
    b = bytearray({b} * 2**20)
    time.sleep(0.8)
    os._exit(0)
os.wait4(pid, 0)
"""


@linux
def test_tree_peak_adds_up_concurrent_workers_and_max_rss_does_not():
    r = C.run_measured([sys.executable, "-c", FORK_TREE.format(a=120, b=150)], interval=0.05)
    assert r.returncode == 0, r.stderr
    # the worker alone peaks at about 120 (inherited, shared) + 150 MiB
    assert 260 * MiB < r.max_rss < 330 * MiB
    # the tree holds 120 (shared, counted once by PSS) + 150 MiB; with RSS the shared part would count twice
    assert r.tree_metric == "pss"
    assert 260 * MiB < r.tree_peak < 340 * MiB


@linux
def test_max_rss_does_not_inherit_the_harness_memory():
    ballast = bytearray(300 * MiB)  # noqa: F841  a harness that is big when it starts a run
    r = C.run_measured(["true"])
    assert r.returncode == 0
    assert r.max_rss < 40 * MiB


def test_timeout_kills_the_process_group():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)"
    r = C.run_measured([sys.executable, "-c", code], timeout=1)
    assert r.returncode == -9
    assert r.wall_s < 10


def test_failure_is_reported_with_its_message():
    r = C.run_measured([sys.executable, "-c", "import sys; sys.exit('no such corpus')"])
    assert r.returncode == 1 and "no such corpus" in r.tail()
    r = C.run_measured(["/nonexistent/tool"])
    assert r.returncode == 127 and "cannot run" in r.stderr


def test_md_table():
    t = C.md_table(["a", "b"], [["x|y", 1]], align="lr")
    assert t.splitlines() == ["| a | b |", "|:---|---:|", "| x\\|y | 1 |"]
    with pytest.raises(ValueError, match="cells"):
        C.md_table(["a", "b"], [[1]])


def test_update_results_replaces_in_place_and_keeps_the_rest(tmp_path):
    path = tmp_path / "RESULTS.md"
    C.update_results("train.tiny", "## one\nfirst\n", path=path)
    C.update_results("kernels", "## two\n", path=path)
    text = path.read_text()
    assert text.startswith(C.RESULTS_HEADER)
    C.update_results("train.tiny", "## one\nsecond\n", path=path)
    new = path.read_text()
    assert "second" in new and "first" not in new
    assert C.results_sections(path) == ["train.tiny", "kernels"]  # order kept
    assert new.replace("second", "first") == text  # nothing else changed
    path.write_text(text.replace("<!-- END kernels -->", ""))
    with pytest.raises(ValueError, match="broken"):
        C.update_results("kernels", "x", path=path)


def test_render_section_has_the_provenance(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"hello")
    info = C.corpus_info(f)
    s = C.render_section(title="T", command="python x.py", body="| a |", corpora=[info],
                         machine=C.machine_info(), notes=["n1"])
    assert "python x.py" in s and info.sha256 in s and "Machine:" in s and "- n1" in s
    assert info.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_iter_documents_splits_at_the_special_token_across_blocks(tmp_path, block):
    text = "a b<|endoftext|>\n<|endoftext|><|endoftext|>c é<|endoftext|>d<|endoftext"
    f = tmp_path / "c.txt"
    f.write_text(text, encoding="utf-8")
    assert list(BT.iter_documents(str(f), block=block)) == [p for p in text.split(C.SPECIAL) if p]


def test_summarize_medians_and_ratio():
    runs = [{"tool": t, "vocab_size": 500, "train_s": s, "process_s": s + 1, "max_rss": 10, "tree_peak": 20,
             "tree_metric": "pss", "vocab": 500, "extra": {}}
            for t, s in [("cpu", 1.0), ("cpu", 3.0), ("cpu", 2.0), ("rustbpe", 4.0), ("rustbpe", 8.0)]]
    runs.append({"tool": "rustbpe", "vocab_size": 500, "error": "exit 1: boom"})
    rows = {r["tool"]: r for r in BT.summarize(runs, ["cpu", "rustbpe"], 500, "cpu")}
    assert rows["cpu"]["train_s"] == 2.0 and rows["cpu"]["ratio"] == 1.0
    assert rows["rustbpe"]["train_s"] == 6.0 and rows["rustbpe"]["ratio"] == 3.0
    assert rows["rustbpe"]["failed"] == 1 and rows["rustbpe"]["runs"] == 2


def test_check_reports_the_first_differing_merge(monkeypatch):
    merges = {"cpu-numba": [["61", "62"], ["6162", "63"]], "cpu-python": [["61", "62"], ["63", "64"]]}

    def fake_run_once(tool, corpus, vocab, threads, *, timeout, merges_out=None):
        Path(merges_out).write_text(json.dumps(merges[tool]))
        return {"tool": tool}

    monkeypatch.setattr(BT, "run_once", fake_run_once)
    v = BT.check_engines("c.txt", 300, 1, ["cpu-numba", "cpu-python"], None)
    assert v["identical"] is False
    assert "at merge 1" in v["differences"][0] and "(b'c', b'd')" in v["differences"][0]
    merges["cpu-python"] = merges["cpu-numba"]
    assert BT.check_engines("c.txt", 300, 1, ["cpu-numba", "cpu-python"], None)["identical"] is True


def test_check_on_a_real_corpus_agrees(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(("low lower lowest newer wider new " * 30 + "<|endoftext|>") * 3)
    v = BT.check_engines(str(f), 300, 1, ["cpu-numba", "cpu-python"], timeout=120)
    assert v["errors"] == {} and v["identical"] is True and v["merges"] > 0


def test_growth_exponents():
    assert BS.exponent(1, 2, 10, 20) == pytest.approx(1.0)
    assert BS.exponent(1, 1, 4, 16) == pytest.approx(2.0)
    assert BS.exponent(1, 1, 1, 5) is None
    assert BS.fit_exponent([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)


def test_make_repeated_writes_whole_copies(tmp_path):
    src = tmp_path / "m.txt"
    src.write_bytes(b"doc one\n<|endoftext|>\n")
    out, copies = BS.make_repeated(src, 100, tmp_path)
    assert copies == 5 and out.read_bytes() == src.read_bytes() * 5


def test_download_checksums_file_replaces_a_line(tmp_path):
    DL.record_checksum(tmp_path, "a.txt", "11", 5)
    DL.record_checksum(tmp_path, "b.txt", "22", 6)
    DL.record_checksum(tmp_path, "a.txt", "33", 7)
    assert (tmp_path / "SHA256SUMS").read_text().splitlines() == ["33  a.txt  # 7 bytes", "22  b.txt  # 6 bytes"]
    assert DL.DATASETS["owt-train"].target == "owt_train.txt"
    assert DL.DATASETS["tinystories-train"].url("https://m.example/").startswith(
        "https://m.example/datasets/roneneldan/TinyStories/resolve/main/")


def test_bench_train_end_to_end(tmp_path):
    """Every installed tool trains the fixture to the asked vocab size; the section lands in RESULTS.md."""
    corpus = ROOT / "tests" / "fixtures" / "corpus.en"
    out, results = tmp_path / "out.json", tmp_path / "RESULTS.md"
    argv = ["--corpus", str(corpus), "--vocab-sizes", "500", "--tools", "cpu,rustbpe,hf,bpeasy,spm",
            "--repeats", "1", "--warmup", "0", "--json", str(out), "--results", str(results)]
    assert BT.main(argv) == 0
    doc = json.loads(out.read_text())
    ran = {r["tool"]: r for r in doc["runs"]}
    assert set(ran) | set(doc["skipped"]) == {"cpu", "rustbpe", "hf", "bpeasy", "spm"}
    for tool, r in ran.items():
        assert "error" not in r, r
        assert r["vocab"] == 500, tool  # each anchor is asked for exactly the same vocabulary
        assert r["max_rss"] > 0 and r["process_s"] >= r["train_s"] > 0
    text = results.read_text()
    assert C.results_sections(results) == ["train.corpus"]
    assert C.corpus_info(corpus).sha256 in text and "--vocab-sizes 500" in text


def test_bench_pretok_fresh_and_warm(tmp_path):
    """Every method runs fresh and warm (regex once), all give the same counts
    (--check), and the table has a row per (method, workers, mode)."""
    corpus = ROOT / "tests" / "fixtures" / "corpus.en"
    out, results = tmp_path / "out.json", tmp_path / "RESULTS.md"
    argv = ["--corpus", str(corpus), "--workers", "2", "--repeats", "1", "--check", "--json", str(out),
            "--results", str(results)]
    assert BP.main(argv) == 0
    doc = json.loads(out.read_text())
    assert set(doc["samples"]) == {"regex:1:fresh"} | {f"{m}:{w}:{mode}" for m in ("count_pretokens", "count_table")
                                                        for w in (1, 2) for mode in ("fresh", "warm")}
    for key, (s,) in doc["samples"].items():
        assert s["call_s"] > 0 and s["process_s"] >= s["call_s"] and s["unique"] > 0, key
        assert ("first_s" in s) == key.endswith(":warm"), key
    assert len({s["digest"] for (s,) in doc["samples"].values()}) == 1
    text = results.read_text()
    assert C.results_sections(results) == ["pretok-corpus.en"]
    assert "| count_table w2 | 2 | warm |" in text and "fresh" in text


@pytest.mark.parametrize("ties", ["cs336", "hf"])
def test_bench_merge_runs_and_engines_agree(tmp_path, ties):
    import bench_merge as BM

    corpus = ROOT / "tests" / "fixtures" / "corpus.en"
    assert BM.main(["--corpus", str(corpus), "--vocab-size", "400", "--engines", "numba,python,numba-steps@1",
                    "--repeats", "1",
                    "--ties", ties, "--cache-dir", str(tmp_path)]) == 0


def test_cost_model_counts_the_two_launch_schedule():
    """The model charges the schedule the driver ran: every replayed graph node
    (two launches a step, STEP_BATCH steps a batch, no-ops after a halt
    included) plus each host-launched selection; and on a test-sized
    pathological run (20,000 equal bytes in one pre-token) the runs' serial
    part as scheduled is a small fraction of walking each run whole."""
    import numpy as np

    import cost_model as M
    from gpubpe.backends import cuda
    from gpubpe.wordtable import WordTable

    table = WordTable.from_counts({b"a" * 20000: 1, b"the cat sat": 5, b"xabcdy": 4, b"ab": 2})
    trace = []
    merges, _, _ = cuda._Loop(cuda._Dev(True), table, 40, trace=trace).run(np.zeros(1, np.int64))
    p = M.project(trace, M.H200, symbols=int(table.symbols.shape[0]), words=table.num_words, ntok=256 + 40)
    batches = [e for e in trace if e["event"] == "batch"]
    selects = [e for e in trace if e["event"] == "select"]
    assert batches and all(e["launches"] == 2 * cuda.STEP_BATCH for e in batches)
    assert p.launches == 2 * cuda.STEP_BATCH * len(batches) + len(selects)
    assert p.terms["graph node gaps (every launch replayed)"].launches == 2 * cuda.STEP_BATCH * len(batches)
    assert p.merges == len(merges) and p.steps == sum(1 for e in trace if e["event"] == "step")
    assert p.run_depth_before >= 2 * 20000 > 10 * p.run_depth_walk
    assert "dependent round trips" in M.run_depth_line(p)


def test_pretok_model_and_device_bench_run_in_the_simulator(tmp_path):
    """bench_kernels.py --model --pretok traces the real driver in cuda-sim and
    projects each launch; --pretok --sim runs the device measurement's code
    (timings meaningless there). Both check the counts against the CPU's."""
    import bench_kernels as BK

    corpus = ROOT / "tests" / "fixtures" / "corpus.en"
    assert BK.main(["--model", "--pretok", "--corpus", str(corpus), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cost_model_pretok.json").read_text())
    assert res["identical"] and res["bytes"] == corpus.stat().st_size
    for dev in ("A100", "H200"):
        terms = res[dev]["terms"]
        assert {"pretok_classify", "pretok_count", "pretok_spans", "wc_insert", "wc_verify"} <= set(terms)
        assert res[dev]["stage_s"] >= max(res[dev]["h2d_s"], res[dev]["device_s"]) > 0
    assert res["H200"]["device_s"] < res["A100"]["device_s"]
    assert BK.main(["--pretok", "--sim", "--pretok-mb", "1", "--corpus", str(corpus), "--out", str(tmp_path)]) == 0
    assert "counts identical to the CPU's count_table: **True**" in (tmp_path / "bench_pretok_device.md").read_text()


def test_pretok_model_charges_hot_atomics():
    """The atomics on the hottest slot are charged at one per block round
    (merged per block first), so 200,000 occurrences of one word cost 977
    serialized atomics, fewer than the launch's bytes: not hot-atomic-bound."""
    import cost_model as M

    e = {"n": 1 << 20, "edges": 250_000, "round": 0, "occ": 250_000, "new_words": 0, "left": 0, "hot": 200_000,
         "hot_new": 0, "new_occ": 0, "new_bytes": 0, "slots": 1 << 20, "specials": False}
    p = M.project_pretok([e], M.H200, total_bytes=1 << 20, words=1, word_bytes=1)
    v = p.terms["wc_verify"]
    assert "wc_verify" not in p.hot_bound and "wc_insert" not in p.hot_bound
    assert v.seconds == pytest.approx(M.H200.GAP_S + max(3 * M.H200.RT_HBM_S + 3 * M.H200.BARRIER_S * 4,
                                                           v.bytes / M.H200.copy_bps + 977 * M.H200.HOT_ATOMIC_S))
