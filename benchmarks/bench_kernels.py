"""The CUDA merge loop against the Numba one, and each kernel's bandwidth.

On a CUDA device (the figures that count):

    python benchmarks/bench_kernels.py --corpus /path/to/corpus.txt --vocab 32000 --out results/
    python benchmarks/bench_kernels.py --corpus auto:64 --vocab 32000   # 64 MB of this Python's .py files

1. One WordTable from the corpus (gpubpe's pre-tokenizer and counter).
2. The merge loop on it: Numba (``backends/cpu.py``, compiled before timing)
   and CUDA (kernels compiled by a warm-up run before timing), same table, same
   number of merges; the merges must be identical. Reported: total seconds,
   average time per merge, and the ratio.
3. The device's copy bandwidth (device-to-device copy of 512 MiB, read + write
   counted, CUDA events, median of 10 after a warm-up), then each kernel's
   achieved bandwidth over the first merges of the same table: the bytes each
   launch must move (a model stated in ``BYTES`` below, from the sizes the
   launch worked on) over its event-timed duration, median over launches.
   Per-merge kernels on small occurrence lists are latency-bound; their
   microseconds matter more than their GB/s, and both are reported.

``--model`` (no device needed) runs the device loop's own schedule in
cuda-sim on the same WordTable, counts the work of every launch and host
event, and projects the device time with fixed, stated parameters
(``benchmarks/cost_model.py``); the Numba loop is timed beside it. It is a
model: check it against a device when one is lent. Its last line:
``projected device loop S s, numba N s, ratio R (H200 parameters)``.

``--model --pretok`` does the same for pre-tokenization and counting on the
device (gpubpe/pretok/device.py): the real driver in cuda-sim over the
corpus, each launch charged with the same parameters, beside the CPU engine
(count_table) and the host's per-chunk work measured here; ``--results``
writes it to RESULTS.md as ``model.pretok``. Its last line:
``projected device pre-tokenization + counting S s (G GB/s), CPU count_table ...``.

``--pretok`` on a device: count_pretokens(backend='cuda')'s path on the first
``--pretok-mb`` MB of the corpus (written to a file: read by ChunkReader into
pinned buffers, as training reads it) against the CPU's counts (exact), the
end-to-end GB/s, the reader alone, and each kernel's time (events around
every launch) and GB/s (bytes from the model's per-launch figures).

``--sim`` runs the same steps on the simulator (cuda-sim) to check the script
without a GPU; its timings mean nothing.

Output: a markdown report on stdout and in ``OUT/bench_kernels.md`` plus
``OUT/bench_kernels.json``; ``--results`` also writes the section into
``benchmarks/RESULTS.md`` (only from a device run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from gpubpe.backends.cuda import kernels as K  # noqa: E402
from gpubpe.backends import cuda as C  # noqa: E402
from gpubpe.wordtable import WordTable  # noqa: E402

# Bytes each launch must read or write, from what it worked on (n positions,
# C candidate-set entries, L list entries, o occurrences found, a accepted
# occurrences, p pair positions). Table updates count 24 bytes (key read,
# count read-modify-write).
BYTES = {
    "count_pairs": "24 n + 24 p",
    "step_find": "12 L + 60 o",
    "step_merge": "8 o + 186 a",
    "compact_mark": "28 n",
    "compact_scatter": "12 n + 48 kept",
}


def auto_corpus(megabytes: int) -> Path:
    """``megabytes`` MB of the .py files of this Python installation (sorted
    paths, so the same installation gives the same corpus)."""
    roots = sorted({Path(p) for p in (sys.prefix, sys.base_prefix)})
    out = Path(tempfile.gettempdir()) / f"gpubpe_pycorpus_{megabytes}MB.txt"
    if out.exists() and out.stat().st_size > 0:
        return out
    limit = megabytes << 20
    done = 0
    with open(out, "wb") as f:
        for root in roots:
            for p in sorted(root.rglob("*.py")):
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                f.write(data + b"\n<|endoftext|>\n")
                done += len(data) + 15
                if done >= limit:
                    return out
    return out


def build_table(corpus: Path) -> WordTable:
    import gpubpe

    counts = gpubpe.count_pretokens(corpus, special_tokens=[_common.SPECIAL], workers=None)
    return WordTable.from_counts(counts)


class Timer:
    """CUDA events on a device, perf_counter in the simulator."""

    def __init__(self, dev):
        self.dev = dev

    def __call__(self, fn) -> float:
        if self.dev.sim:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        cp = self.dev.cp
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        return cp.cuda.get_elapsed_time(a, b) / 1e3


def copy_bandwidth(dev) -> float:
    """Device-to-device copy, bytes read + written per second."""
    if dev.sim:
        return float("nan")
    cp = dev.cp
    n = 512 << 20
    a = cp.ones(n, np.uint8)
    b = cp.empty_like(a)
    timer = Timer(dev)
    timer(lambda: b.data.copy_from_device(a.data, n))
    times = [timer(lambda: b.data.copy_from_device(a.data, n)) for _ in range(10)]
    return 2 * n / statistics.median(times)


def merge_loop_numba(table, merges):
    from gpubpe.backends.cpu import merge_loop

    tiny = WordTable.from_counts({b"abcab": 2, b"bca": 1})
    none = (np.zeros(0, np.int64), np.zeros((0, 2), np.int32), 0)  # CS336 ties, nothing forced, no min_count
    merge_loop(tiny.symbols, tiny.offsets, tiny.counts, 3, np.zeros(2, np.int64), 0, *none)  # compile
    t = time.perf_counter()
    m, _, ntok = merge_loop(table.symbols, table.offsets, table.counts, merges, np.zeros(2, np.int64), 0, *none)
    return time.perf_counter() - t, m, ntok


def merge_loop_cuda(table, merges, sim):
    run = C.make_backend(sim=sim)
    run(WordTable.from_counts({b"abcab": 2, b"bca": 1}), 3, np.zeros(1, np.int64))  # NVRTC, module loads
    t = time.perf_counter()
    m, _, ntok = run(table, merges, np.zeros(1, np.int64))
    return time.perf_counter() - t, m, ntok


def kernel_bandwidth(table, nmerges: int, sim: bool) -> dict:
    """Per kernel: median seconds per launch and bytes per launch (BYTES model)."""
    dev = C._Dev(sim)
    timer = Timer(dev)
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in BYTES}
    with dev.on_stream():
        loop = C._Loop(dev, table, nmerges)
        k = dev.k
        n = loop.n
        pairs = int((dev.to_host(loop.nxt)[:n] >= 0).sum())
        for _ in range(3):  # the full count, on a cleared table
            loop.keys.fill(K.EMPTY_KEY)
            loop.cnt.fill(0)
            loop._set_status(USED=0, HALT=0)
            sec = timer(lambda: k.count_pairs(block=dev.block, sym=loop.sym,
                                              nxt=loop.nxt, wrd=loop.wrd, counts=loop.counts, n=n, keys=loop.keys,
                                              cnt=loop.cnt, bits=loop.bits, used_limit=loop.used_limit,
                                              st=loop.st))
            rows["count_pairs"].append((sec, 24 * n + 24 * pairs))
        steps = 0
        loop._select()
        while steps < nmerges:
            st = loop._status()
            if st[K.ST_HALT]:
                break
            steps += 1
            pool0 = int(st[K.ST_POOL_USED])
            (_, find), (_, merge) = loop.step_launches()
            sec = timer(find)
            st = loop._status()
            o = int(st[K.ST_OCC])
            acc = int(st[K.ST_POOL_USED]) - pool0  # the decision put the merged occurrences' lists in the pool
            rows["step_find"].append((sec, 12 * int(st[K.ST_LISTS]) + 60 * o))
            rows["step_merge"].append((timer(merge), 8 * o + 186 * acc))
        n = loop.n
        keep = dev.empty(n, np.int32)
        sec = timer(lambda: k.compact_mark(block=dev.block, sym=loop.sym, nxt=loop.nxt,
                                           prv=loop.prv, wrd=loop.wrd, counts=loop.counts, n=n, keep=keep,
                                           st=loop.st))
        rows["compact_mark"].append((sec, 28 * n))
        kept = int(dev.to_host(keep).sum())
        newpos = dev.to_device(dev.xp.cumsum(keep, dtype=np.int64) - keep)
        outs = [dev.empty(max(kept, 1), np.int32) for _ in range(4)]
        sec = timer(lambda: k.compact_scatter(block=dev.block, sym=loop.sym,
                                              nxt=loop.nxt, prv=loop.prv, wrd=loop.wrd, keep=keep, newpos=newpos,
                                              n=n, out_sym=outs[0], out_nxt=outs[1], out_prv=outs[2],
                                              out_wrd=outs[3]))
        rows["compact_scatter"].append((sec, 12 * n + 48 * kept))
    out = {}
    for name, r in rows.items():
        if r:
            secs = statistics.median(s for s, _ in r)
            gbs = statistics.median(b / s for s, b in r if s > 0) / 1e9
            out[name] = {"launches": len(r), "median_us": secs * 1e6, "median_GBps": gbs}
    return out


def cached_table(corpus: Path) -> WordTable:
    """The WordTable of ``corpus``, cached in the temp folder (keyed by path, size, mtime)."""
    import hashlib

    stat = corpus.stat()
    tag = hashlib.sha256(f"{corpus.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"gpubpe_wordtable_{tag}.npz"
    if path.exists():
        z = np.load(path)
        return WordTable(z["symbols"], z["offsets"], z["counts"])
    table = build_table(corpus)
    np.savez(path, symbols=table.symbols, offsets=table.offsets, counts=table.counts)
    return table


def run_model(args, corpus: Path) -> int:
    """The cost model: the real schedule in cuda-sim, charged with fixed parameters."""
    import cost_model as M

    t = time.perf_counter()
    table = cached_table(corpus)
    merges = args.vocab - 256 - 1
    print(f"table: {table.num_words:,} words, {table.symbols.shape[0]:,} symbols ({time.perf_counter() - t:.1f} s)",
          flush=True)
    trace: list = []
    t = time.perf_counter()
    dev = C._Dev(True)
    m_sim, _, tok_sim = C._Loop(dev, table, merges, trace=trace).run(np.zeros(1, np.int64))
    t_sim = time.perf_counter() - t
    print(f"cuda-sim run of the device schedule: {len(m_sim)} merges ({t_sim:.0f} s on the host, not a timing)",
          flush=True)
    t_numba, m_numba, tok_numba = merge_loop_numba(table, merges)
    same = m_numba.shape == m_sim.shape and bool((m_numba == m_sim).all()) and tok_numba == tok_sim
    steps = [e for e in trace if e["event"] == "step"]
    sizes = [e["nacc"] for e in steps]
    out = [f"# Cost model of the CUDA merge loop (a model, not a measurement)", "",
           f"Command: `{_common.command_line()}`", "",
           f"Corpus {corpus} ({corpus.stat().st_size:,} bytes): {table.num_words:,} words, "
           f"{table.symbols.shape[0]:,} symbols; {len(m_sim):,} merges in **{len(steps):,} steps** "
           f"(largest {max(sizes, default=0)}, mean {len(m_sim) / max(len(steps), 1):.1f} merges per step); "
           f"merges identical to the Numba loop: **{same}**.", "",
           f"Work: {sum(e['lists'] for e in steps):,} list entries scanned, "
           f"{sum(e['occ'] for e in steps):,} occurrences found, {sum(e['acc_occ'] for e in steps):,} merged, "
           f"{sum(e['ncand'] for e in steps):,} candidate-set entries read, "
           f"{sum(1 for e in trace if e['event'] == 'refill')} refills, "
           f"{sum(1 for e in trace if e['event'] == 'count_pairs')} table counts, "
           f"{sum(1 for e in trace if e['event'] == 'compact')} compactions, "
           f"{sum(1 for e in trace if e['event'] == 'readback')} read-backs, "
           f"{sum(e['launches'] for e in trace if e['event'] == 'batch'):,} graph launches "
           f"({2 * C.STEP_BATCH} per batch of {C.STEP_BATCH} steps) and "
           f"{sum(1 for e in trace if e['event'] == 'select')} host-launched selections; "
           f"most run members walked by one thread {max((e['runmax'] for e in steps), default=0)}, "
           f"longest run scanned by a last block {max((e['longmax'] for e in steps), default=0):,} "
           f"({sum(e['runrounds'] for e in steps):,} block rounds in all).", ""]
    res = {"corpus": str(corpus), "merges": int(len(m_sim)), "steps": len(steps), "identical": same,
           "numba_s": t_numba}
    for dev_params in (M.A100, M.H200):
        p = M.project(trace, dev_params, symbols=int(table.symbols.shape[0]), words=table.num_words,
                      ntok=256 + merges)
        out += [f"## {dev_params.name} parameters: projected {p.total:.3f} s, ratio {t_numba / p.total:.1f}x", "",
                *M.report(p), "", M.run_depth_line(p), ""]
        res[dev_params.name] = {"projected_s": p.total, "ratio": t_numba / p.total,
                                "terms": {k: v.seconds for k, v in p.terms.items()}, "launches": p.launches,
                                "run_depth": p.run_depth_walk, "run_depth_walked_whole": p.run_depth_before}
    out.append(f"Numba loop on this machine, same WordTable: {t_numba:.2f} s.")
    out.append("")
    h = res["H200"]
    line = f"projected device loop {h['projected_s']:.3f} s, numba {t_numba:.2f} s, ratio {h['ratio']:.1f} (H200 parameters)"
    out.append(line)
    text = "\n".join(out)
    print(text, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cost_model.md").write_text(text + "\n")
        (args.out / "cost_model.json").write_text(json.dumps(res, indent=2, default=str))

    if args.trace:  # the schedule itself, to charge it again with other parameters (cost_model.project)
        args.trace.write_text(json.dumps({"symbols": int(table.symbols.shape[0]), "words": table.num_words,
                                          "ntok": 256 + merges, "numba_s": t_numba, "trace": trace}))
    return 0 if same else 1


def _read_chunks(path: Path, specials, chunk_size: int):
    """The chunks ChunkReader cuts ``path`` into, as bytes."""
    from gpubpe.corpus import ChunkReader

    with ChunkReader(path, specials, chunk_size) as reader:
        for c in reader:
            yield bytes(c)
            reader.release()


def time_reader(corpus: Path, specials, chunk_size: int, threads: int | None) -> tuple[float, int]:
    """(seconds, chunks) for ChunkReader to read ``corpus`` into reused buffers
    (each chunk given back at once: the reader's own rate, nothing downstream)."""
    from gpubpe.corpus import ChunkReader

    t = time.perf_counter()
    n = 0
    with ChunkReader(corpus, specials, chunk_size, threads=threads) as reader:
        for _ in reader:
            n += 1
            reader.release()
    return time.perf_counter() - t, n


def run_pretok_model(args, corpus: Path) -> int:
    """The cost model of device pre-tokenization and counting: the real driver
    (gpubpe.pretok.device) in cuda-sim over the corpus, read by ChunkReader
    in chunks of config.DEVICE_CHUNK_SIZE as count_pretokens(backend='cuda')
    reads it, its schedule charged with fixed parameters; beside it the CPU
    engine (count_table), the reader and the host's own per-chunk work,
    measured here."""
    import cost_model as M

    from gpubpe import config
    from gpubpe.corpus import ChunkReader, iter_chunks, special_bytes
    from gpubpe.patterns import GPT2_PATTERN
    from gpubpe.pretok import count_table
    from gpubpe.pretok import device as D

    specials = special_bytes([_common.SPECIAL])
    total = corpus.stat().st_size
    # the CPU engine, warm (its compiled code loaded by a first call on one chunk), as training reads the file
    chunks = iter_chunks([corpus], None, specials, config.CHUNK_SIZE)
    count_table(iter([next(chunks)]), specials, workers=_common.usable_cores(), pattern=GPT2_PATTERN)
    t = time.perf_counter()
    cpu = count_table(iter_chunks([corpus], None, specials, config.CHUNK_SIZE), specials,
                      workers=_common.usable_cores(), pattern=GPT2_PATTERN)
    t_cpu = time.perf_counter() - t
    print(f"CPU count_table: {t_cpu:.2f} s, {total / t_cpu / 1e6:.0f} MB/s, {cpu.num_words:,} words", flush=True)
    # the reader alone: one thread, and one per core of this machine
    time_reader(corpus, specials, config.DEVICE_CHUNK_SIZE, 1)  # the file into the page cache
    reads = {}
    for threads in sorted({1, _common.usable_cores()}):
        reads[threads] = min(time_reader(corpus, specials, config.DEVICE_CHUNK_SIZE, threads)[0] for _ in range(3))
        print(f"ChunkReader, {threads} thread(s): {total / reads[threads] / 1e9:.2f} GB/s", flush=True)
    # the schedule: the real driver in cuda-sim, traced, fed as count_device_inputs feeds it
    t = time.perf_counter()
    counter = D.DeviceCounter(D.device("cuda-sim"))
    counter.trace = []
    sizes = []
    with ChunkReader(corpus, specials, config.DEVICE_CHUNK_SIZE, alloc=counter.host_buffer,
                     free=counter.give_buffer) as reader:
        def fed():
            for c in reader:
                sizes.append(len(c))
                yield c

        counter.add_chunks(fed(), specials, release=reader.release)
    table = counter.table()
    t_sim = time.perf_counter() - t
    same = table.to_counts() == cpu.to_counts()
    print(f"cuda-sim run of the device schedule: {t_sim:.0f} s on the host (not a timing); "
          f"counts identical to the CPU's: {same}", flush=True)
    trace = counter.trace
    edges = sum(e["edges"] for e in trace if e["round"] == 0)
    word_bytes = int(table.offsets[-1])
    r1 = total / reads[1]
    read_bps = config.DEVICE_READ_THREADS * r1  # [A] the reader's parts scale with threads on a GPU host's cores
    out = [f"Corpus {corpus.name} ({total:,} bytes) read by ChunkReader in {len(sizes)} chunks of at most "
           f"config.DEVICE_CHUNK_SIZE = {config.DEVICE_CHUNK_SIZE:,} (the largest {max(sizes):,}): {edges:,} edges "
           f"(pre-token starts and piece ends), {table.num_words:,} unique words; "
           f"{sum(1 for e in trace if e['round'] > 0)} later rounds, {counter.host_fallbacks} occurrences counted "
           f"on the host; the device counts equal the CPU's: **{same}**.", "",
           "Measured here: " + ", ".join(f"ChunkReader on {k} thread(s) {total / v / 1e9:.2f} GB/s"
                                         for k, v in reads.items())
           + f" (this machine has {_common.usable_cores()} cores); the special tokens' candidates resolved in "
           f"{counter.resolve_s * 1e3:.1f} ms. The model's host reads at config.DEVICE_READ_THREADS = "
           f"{config.DEVICE_READ_THREADS} times the one-thread rate, {read_bps / 1e9:.1f} GB/s [A].", ""]
    res = {"corpus": str(corpus), "bytes": total, "identical": same, "cpu_s": t_cpu, "chunks": len(sizes),
           "read_s": reads, "resolve_s": counter.resolve_s}
    for dp in (M.A100, M.H200):
        p = M.project_pretok(trace, dp, total_bytes=total, words=table.num_words, word_bytes=word_bytes,
                             host_s=counter.resolve_s)
        st = M.pretok_stage(p, total_bytes=total, chunk_bytes=max(sizes), read_bps=read_bps)
        out += [f"### {dp.name} parameters (copy {dp.copy_bps / 1e12:.1f} TB/s, H2D {dp.H2D_BPS / 1e9:.0f} GB/s)",
                "", *M.pretok_report(p, total), "",
                f"Device kernels {st.device_s:.4f} s ({total / st.device_s / 1e9:.1f} GB/s of corpus) and host work "
                f"per chunk {st.host_s:.4f} s: counting {st.count_s:.4f} s ({total / st.count_s / 1e9:.1f} GB/s); "
                f"host-to-device copy {st.h2d_s:.4f} s ({dp.H2D_BPS / 1e9:.0f} GB/s); file read {st.read_s:.4f} s "
                f"({read_bps / 1e9:.1f} GB/s); pipeline fill {st.fill_s:.4f} s. Stage: **{st.seconds:.3f} s = "
                f"{total / st.seconds / 1e9:.2f} GB/s**, bound by {st.bound}; CPU engine here {t_cpu:.2f} s "
                f"({total / t_cpu / 1e6:.0f} MB/s, {_common.usable_cores()} cores): {t_cpu / st.seconds:.0f}x.", ""]
        res[dp.name] = {"device_s": st.device_s, "h2d_s": st.h2d_s, "host_s": st.host_s, "read_s": st.read_s,
                        "fill_s": st.fill_s, "stage_s": st.seconds, "bound": st.bound,
                        "terms": {k: v.seconds for k, v in p.terms.items()}}
    out += ["Bytes per launch (DRAM; a random table access is a 32-byte sector):", ""]
    out += [f"- {k}: {v}" for k, v in M.PRETOK_BYTES.items()]
    h = res["H200"]
    line = (f"projected device pre-tokenization + counting {h['stage_s']:.3f} s "
            f"({total / h['stage_s'] / 1e9:.2f} GB/s, bound by {h['bound']}), CPU count_table {t_cpu:.2f} s "
            f"({total / t_cpu / 1e6:.0f} MB/s) (H200 parameters)")
    out += ["", line]
    text = "\n".join(out)
    print(text, flush=True)
    section = _common.render_section(
        title=f"Device pre-tokenization and counting: a model ({corpus.name})", command=_common.command_line(),
        body=text, corpora=[_common.corpus_info(corpus)], machine=_common.machine_info(),
        notes=["A MODEL, not a measurement: the kernels' schedule recorded in cuda-sim, charged with the fixed "
               "parameters of benchmarks/cost_model.py (the merge loop's); bandwidth-bound launches are assumed "
               "to run at the copy bandwidth, so 'of copy bandwidth' shows whether atomics or latency bound a "
               "launch, not an achieved efficiency. scripts/gpu_check.sh measures the real figures.",
               "hot-atomic-bound: launches where the atomics on one slot (the most frequent word's count) "
               "outlast the launch's bytes at HOT_ATOMIC_S each.",
               "the stage is a pipeline: ChunkReader's threads read the file into pinned buffers, the copy "
               "stream copies a chunk up while the previous one is counted, and the counting (kernels, then "
               "the read-backs and host work of each chunk, in series) runs on the compute stream; the slowest "
               "of the three bounds it, plus the first chunk's read and copy.",
               "the reader's rate on a GPU host is modelled as config.DEVICE_READ_THREADS times the one-thread "
               "rate measured here (a file in the page cache; [A]: memory bandwidth allows it); the special "
               "tokens' resolution and the CPU engine are measured on this machine.",
               "the cuda-sim run took minutes on the host: it is the schedule, not a timing."])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cost_model_pretok.md").write_text(section)
        (args.out / "cost_model_pretok.json").write_text(json.dumps(res, indent=2, default=str))
    if args.results:
        _common.update_results("model.pretok", section)
    return 0 if same else 1


def run_pretok_device(args, corpus: Path) -> int:
    """On a CUDA device: count_pretokens(backend='cuda')'s path on the corpus
    (its first ``--pretok-mb`` MB) against the CPU's counts (exact), the end-to-end
    throughput, and each kernel's time (CUDA events around every launch of an
    instrumented run) with its bytes from the cost model's per-launch figures."""
    import cost_model as M

    from gpubpe import config
    from gpubpe.corpus import special_bytes
    from gpubpe.patterns import GPT2_PATTERN
    from gpubpe.pretok import count_table
    from gpubpe.pretok import device as D

    import tempfile

    backend = "cuda-sim" if args.sim else "cuda"
    specials = special_bytes([_common.SPECIAL])
    with open(corpus, "rb") as f:
        data = f.read(args.pretok_mb << 20)
    total = len(data)
    tmp = tempfile.TemporaryDirectory()
    head = Path(tmp.name) / f"{corpus.stem}.head.txt"
    head.write_bytes(data)
    del data
    size = config.DEVICE_CHUNK_SIZE
    chunks = list(_read_chunks(head, specials, size))

    def on_device():  # count_pretokens(backend='cuda')'s path: the file through ChunkReader into pinned buffers
        return D.count_device_inputs([head], None, specials, backend=backend, chunk_size=size, pattern=GPT2_PATTERN)

    D.count_device(iter([chunks[0][:100_000]]), specials, backend=backend)  # NVRTC and module loads
    on_device()  # and the pinned buffers' first allocation
    t = time.perf_counter()
    table = on_device()
    t_e2e = time.perf_counter() - t
    t_read = min(time_reader(head, specials, size, None)[0] for _ in range(3))
    count_table(iter(chunks[:1]), specials, workers=_common.usable_cores(), pattern=GPT2_PATTERN)  # warm
    t = time.perf_counter()
    cpu = count_table(iter(chunks), specials, workers=_common.usable_cores(), pattern=GPT2_PATTERN)
    t_cpu = time.perf_counter() - t
    same = table.to_counts() == cpu.to_counts()
    # the instrumented run: events around every launch, and the trace for the bytes
    counter = D.DeviceCounter(D.device(backend))
    counter.trace = []
    timer = Timer(counter.dev)
    launch = counter.k._launch
    per: dict[str, float] = {}

    def timed(name, grid, block, kwargs):
        per[name] = per.get(name, 0.0) + timer(lambda: launch(name, grid, block, kwargs))

    counter.k._launch = timed
    counter.add_chunks(chunks, specials)
    t2 = counter.table()
    same = same and t2.to_counts() == cpu.to_counts()
    p = M.project_pretok(counter.trace, M.H200, total_bytes=total, words=t2.num_words,
                         word_bytes=int(t2.offsets[-1]))
    rows = []
    for name, sec in sorted(per.items(), key=lambda kv: -kv[1]):
        nbytes = p.terms[name].bytes if name in p.terms else float("nan")
        rows.append([name, f"{sec * 1e3:.2f}", f"{total / sec / 1e9:.1f}", f"{nbytes / sec / 1e9:.0f}",
                     f"{nbytes / total:.2f}"])
    body = [f"First {total:,} bytes of {corpus.name}, {len(chunks)} chunks; counts identical to the CPU's "
            f"count_table: **{same}** ({table.num_words:,} words).", "",
            f"End to end (the file read into pinned buffers and counted, count_device_inputs, warm): "
            f"{t_e2e:.3f} s = **{total / t_e2e / 1e9:.2f} GB/s**; ChunkReader alone "
            f"(config.DEVICE_READ_THREADS = {config.DEVICE_READ_THREADS}, at most one per core): "
            f"{total / t_read / 1e9:.2f} GB/s; "
            f"CPU count_table ({_common.usable_cores()} cores): {t_cpu:.3f} s = {total / t_cpu / 1e9:.2f} GB/s.", "",
            _common.md_table(["kernel", "ms (all launches)", "corpus GB/s", "GB/s (model bytes)",
                              "model bytes per corpus byte"], rows)]
    text = "\n".join(body)
    print(text)
    print(f"device pre-tokenization + counting {total / t_e2e / 1e9:.2f} GB/s end to end, "
          f"CPU {total / t_cpu / 1e9:.2f} GB/s, counts identical: {same}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_pretok_device.md").write_text(text + "\n")
    return 0 if same else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="auto:64", help="a text file, or auto:MB (this Python's .py files)")
    ap.add_argument("--vocab", "--vocab-size", dest="vocab", type=int, default=32000)
    ap.add_argument("--model", action="store_true",
                    help="project the device time with the cost model (cuda-sim schedule; no device needed)")
    ap.add_argument("--kernel-merges", type=int, default=300, help="merges timed kernel by kernel")
    ap.add_argument("--out", type=Path, default=None, help="folder for bench_kernels.md / .json")
    ap.add_argument("--trace", type=Path, default=None, help="with --model: write the recorded schedule (JSON) here")
    ap.add_argument("--sim", action="store_true", help="run on the simulator (checks the script, no timings)")
    ap.add_argument("--skip-numba", action="store_true")
    ap.add_argument("--results", action="store_true", help="write the section into benchmarks/RESULTS.md")
    ap.add_argument("--pretok", action="store_true",
                    help="pre-tokenization and counting on the device instead of the merge loop (with --model: "
                         "its cost model)")
    ap.add_argument("--pretok-mb", type=int, default=64, help="--pretok on a device: MB of the corpus counted")
    args = ap.parse_args(argv)

    corpus = auto_corpus(int(args.corpus.split(":")[1])) if args.corpus.startswith("auto:") else Path(args.corpus)
    if args.model:
        import os

        os.environ.setdefault("GPUBPE_SIM_ASAN", "0")  # the model needs the schedule, not the memory checks
        return run_pretok_model(args, corpus) if args.pretok else run_model(args, corpus)
    if args.pretok:
        return run_pretok_device(args, corpus)
    C.make_backend(sim=args.sim)  # fail before the corpus work when there is no device
    t = time.perf_counter()
    table = build_table(corpus)
    t_count = time.perf_counter() - t
    merges = args.vocab - 256 - 1
    print(f"table: {table.num_words:,} words, {table.symbols.shape[0]:,} symbols ({t_count:.1f} s)", flush=True)

    t_cuda, m_cuda, tok_cuda = merge_loop_cuda(table, merges, args.sim)
    print(f"cuda loop: {t_cuda:.2f} s for {len(m_cuda)} merges", flush=True)
    res = {"corpus": str(corpus), "corpus_bytes": corpus.stat().st_size, "words": table.num_words,
           "symbols": int(table.symbols.shape[0]), "merges": int(len(m_cuda)), "sim": args.sim,
           "cuda_s": t_cuda, "cuda_ms_per_merge": 1e3 * t_cuda / max(len(m_cuda), 1)}
    if not args.skip_numba:
        t_numba, m_numba, tok_numba = merge_loop_numba(table, merges)
        print(f"numba loop: {t_numba:.2f} s", flush=True)
        same = m_numba.shape == m_cuda.shape and bool((m_numba == m_cuda).all()) and tok_numba == tok_cuda
        res.update(numba_s=t_numba, numba_ms_per_merge=1e3 * t_numba / max(len(m_numba), 1),
                   speedup=t_numba / t_cuda, identical=same)
        if not same:
            print("MERGES DIFFER between the cuda and numba loops", flush=True)

    dev = C._Dev(args.sim)
    res["copy_GBps"] = copy_bandwidth(dev) / 1e9
    res["kernels"] = kernel_bandwidth(table, min(args.kernel_merges, merges), args.sim)

    rows = [[name, f"{r['launches']}", f"{r['median_us']:.1f}", f"{r['median_GBps']:.1f}",
             f"{100 * r['median_GBps'] / res['copy_GBps']:.0f}%" if res["copy_GBps"] == res["copy_GBps"] else "-",
             BYTES[name]] for name, r in res["kernels"].items()]
    body = [
        f"WordTable: {res['words']:,} words, {res['symbols']:,} symbols; {res['merges']:,} merges "
        f"(vocab {args.vocab:,} with one special token).",
        "",
        _common.md_table(["loop", "seconds", "ms per merge"],
                         [["cuda", f"{t_cuda:.2f}", f"{res['cuda_ms_per_merge']:.3f}"]]
                         + ([["numba", f"{res['numba_s']:.2f}", f"{res['numba_ms_per_merge']:.3f}"]]
                            if "numba_s" in res else [])),
        "",
    ]
    if "speedup" in res:
        body.append(f"cuda / numba: **{res['speedup']:.1f}x**; merges identical: **{res['identical']}**.")
        body.append("")
    body.append(f"Device copy bandwidth (D2D, read + write): {res['copy_GBps']:.0f} GB/s.")
    body.append("")
    body.append(_common.md_table(["kernel", "launches", "median us", "GB/s", "of copy", "bytes model"], rows))
    machine = _common.machine_info()
    section = _common.render_section(
        title="CUDA merge loop and kernels" + (" (simulator: timings meaningless)" if args.sim else ""),
        command=_common.command_line(), body="\n".join(body), corpora=[_common.corpus_info(corpus)], machine=machine)
    print(section)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_kernels.md").write_text(section)
        (args.out / "bench_kernels.json").write_text(json.dumps({**res, "machine": machine}, indent=2, default=str))
    if args.results and not args.sim:
        _common.update_results("cuda-kernels", section)
    return 0 if res.get("identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
