"""A cost model of the CUDA merge loop: what a device would take, while none is lent.

It is a model, not a measurement. It runs the device loop's own schedule --
the real driver (gpubpe/backends/cuda) and kernels (kernels/*.cu) in cuda-sim,
on the real WordTable -- and records, per step, the sizes every launch worked
on (candidates scanned, list entries, occurrences, new pairs, scratch slots,
the longest run walked) and every host event (read-backs, refills, table
recounts, compactions). It then charges each launch with fixed, stated
parameters:

    launch time = node gap + max(dependent chain, bytes / copy bandwidth + hot atomics)

* node gap: one CUDA graph node, GAP_S, charged for every launch of every
  replayed graph (config.CUDA_STEP_BATCH steps of two launches, step_find and
  step_merge; the no-op launches after a halt included), plus a direct launch
  from Python (LIBCALL_S) for each step_select the host runs between batches;
* a launch with a last block: the grid part's chain, then the arrival (a
  fence and an atomic) and the last block's one-block chain (the decision in
  step_find, after the long runs' rounds; the candidate-set appends and the
  next selection in step_merge);
* dependent chain: the round trips on one thread's critical path, each
  RT_HBM_S (a random read of the big per-position arrays) or RT_L2_S (small
  hot arrays: st, sel, the candidate set, the scratch table), plus BARRIER_S
  per __syncthreads stage of the one-block kernels; a grid-stride loop over m
  items on T = config.CUDA_STEP_BLOCKS_PER_SM x SMs x 256 threads (the
  driver's grid) costs ceil(m / T) iterations;
* bytes: what the launch reads and writes, random accesses charged a 32-byte
  sector each (the per-item figures are in BYTES below);
* hot atomics: atomics on one address serialize: HOT_ATOMIC_S each;
* host: a read-back of st per batch (READBACK_S plus a graph launch), library
  calls from Python (LIBCALL_S each), bulk host-to-device copies at H2D_BPS.

GAP_S, RT_HBM_S, RT_L2_S and the copy bandwidths are those the issue fixes;
BARRIER_S, HOT_ATOMIC_S, READBACK_S, LIBCALL_S and H2D_BPS are assumptions [A]
of this model, stated here and in benchmarks/RESULTS.md. None is fitted to a
result. The model must be checked against a device when one is lent
(scripts/gpu_check.sh prints both side by side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SECTOR = 32  # bytes a random access moves
SELECT_UNROLL = 8  # as kernels/common.cuh
RUN_UNROLL = 4  # as kernels/common.cuh


@dataclass(frozen=True)
class Device:
    name: str
    copy_bps: float  # device copy bandwidth, bytes read + written per second
    sms: int
    GAP_S: float = 1.5e-6
    RT_HBM_S: float = 0.6e-6
    RT_L2_S: float = 0.2e-6
    BARRIER_S: float = 0.05e-6      # [A] one __syncthreads stage with shared-memory work
    HOT_ATOMIC_S: float = 1e-9      # [A] one atomic on an address many threads hit
    READBACK_S: float = 10e-6       # [A] a small device-to-host copy and its synchronization
    GRAPH_LAUNCH_S: float = 5e-6    # [A] cudaGraphLaunch from Python
    LIBCALL_S: float = 7.7e-6       # a CuPy call from Python (measured on the host side, gpu-merge-loop-model.md)
    H2D_BPS: float = 25e9           # [A] host-to-device copies
    BLOCK: int = 256

    @property
    def threads(self) -> int:
        from gpubpe import config

        return config.CUDA_STEP_BLOCKS_PER_SM * self.sms * self.BLOCK


H200 = Device("H200", 4.3e12, 132)
A100 = Device("A100", 2.0e12, 108)

# Bytes per item (a random 4-byte read is a 32-byte sector).
BYTES = {
    "step_find": "36 per list entry (pool, sym sector) + 420 per occurrence found (links, neighbours, marks, "
                 "scratch adds) + 8 per slot of a long run scanned + the decision's few hundred",
    "step_merge": "40 per scratch slot cleared + 36 per occurrence found + 920 per accepted occurrence (links, "
                  "neighbours, 5 table updates, the rewrite) + 40 per new slot + 72 per candidate-set entry selected",
}


@dataclass
class Term:
    launches: int = 0
    seconds: float = 0.0
    gap_s: float = 0.0
    latency_bound: int = 0
    bandwidth_bound: int = 0
    bytes: float = 0.0
    chain_rt: float = 0.0  # dependent round trips on the critical path, summed over launches


@dataclass
class Projection:
    device: Device
    terms: dict = field(default_factory=dict)
    steps: int = 0
    merges: int = 0
    readbacks: int = 0
    launches: int = 0
    run_depth_walk: int = 0   # dependent round trips of the runs' serial parts, as scheduled
    run_depth_before: int = 0  # the same if every run were walked by its first member (the earlier design)

    @property
    def total(self) -> float:
        return sum(t.seconds for t in self.terms.values())

    def charge(self, name: str, chain_s: float, nbytes: float, hot: float = 0.0, gap: bool = True,
               rts: float = 0.0) -> None:
        d = self.device
        t = self.terms.setdefault(name, Term())
        bw_s = nbytes / d.copy_bps + hot * d.HOT_ATOMIC_S
        g = d.GAP_S if gap else 0.0
        t.launches += 1
        t.gap_s += g
        t.seconds += g + max(chain_s, bw_s)
        t.bytes += nbytes
        t.chain_rt += rts
        if chain_s >= bw_s:
            t.latency_bound += 1
        else:
            t.bandwidth_bound += 1

    def host(self, name: str, seconds: float, nbytes: float = 0.0) -> None:
        t = self.terms.setdefault(name, Term())
        t.launches += 1
        t.seconds += seconds
        t.bytes += nbytes


def project(trace: list[dict], device: Device, *, symbols: int, words: int, ntok: int) -> Projection:
    """Charge the recorded schedule with ``device``'s parameters."""
    d = device
    p = Projection(d)
    T = d.threads
    B = d.BLOCK
    hbm, l2, bar = d.RT_HBM_S, d.RT_L2_S, d.BARRIER_S
    it = lambda m: math.ceil(m / T)  # noqa: E731
    lg = int(math.log2(B))
    sort_stages = (lambda n: n * (n + 1) // 2)(int(math.log2(B * 4)))

    def select_chain(ncand: int, nsel: int) -> tuple[float, int]:
        # one block scans the candidate set, sorts blockDim * 4 entries, writes sel
        rts = 1 + math.ceil(ncand / (B * SELECT_UNROLL)) * 2 + nsel + 1
        return rts * l2 + (3 + sort_stages + lg) * bar, rts

    arrive = 2 * l2 + bar  # fence, then one atomic on st and its broadcast
    # setup: the upload (bytes + offsets + counts), build_links, buffers cleared
    p.host("setup: upload", symbols / d.H2D_BPS + 16 * words / d.H2D_BPS, symbols + 16 * words)
    p.charge("setup: build_links", math.ceil(math.log2(max(words, 2))) * l2 + hbm, 17 * symbols + 4 * symbols)
    last_tokbytes = 256
    for e in trace:
        kind = e["event"]
        if kind == "batch":
            p.launches += e["launches"]
            t = p.terms.setdefault("graph node gaps (every launch replayed)", Term())
            t.launches += e["launches"]
            t.seconds += e["launches"] * d.GAP_S
            t.gap_s += e["launches"] * d.GAP_S
        elif kind == "select":
            chain, rts = select_chain(e["ncand"], 8)
            p.launches += 1
            p.charge("step_select (host-launched, after a host event)", d.LIBCALL_S + chain, 72 * e["ncand"],
                     gap=False, rts=rts)
        elif kind == "step":
            p.steps += 1
            p.merges += e["nacc"]
            lists, occ, acc = e["lists"], e["occ"], e["acc_occ"]
            # launch A, step_find: grid-stride over the list entries, runs walked up to RUN_WALK members
            rts_h = it(lists) * 2 + it(occ) * 6 + 2 * e["runmax"]  # a member walked: nxt, then its sym
            rts_l = 1 + it(lists) * 3 + it(occ) * 4
            # its last block: the long runs (per round: sym and wrd, then the
            # successor's symbol; a min-reduction and a scan over the block),
            # then the decision (stage sel, thread 0 walks shared memory, the
            # block copies the new bytes one per thread)
            # the trace's rounds are of the block it ran with (cuda-sim: 32 threads):
            # the device's block scans B * RUN_UNROLL slots a round, at least one per run
            rounds = e["runrounds"]
            if rounds:
                rounds = max(min(e["nlong"], rounds), math.ceil(rounds * e.get("block", B) / B))
            nbytes = e["tokbytes"] - last_tokbytes
            last_tokbytes = e["tokbytes"]
            dec_rts = 1 + 2 + 1 + math.ceil(nbytes / B) * 2
            long_s = rounds * (3 * hbm + (3 * lg + 2) * bar) + e["nlong"] * 6 * l2
            chain = rts_h * hbm + rts_l * l2 + arrive + long_s + dec_rts * l2 + 3 * bar
            scanned = rounds * B * RUN_UNROLL
            p.charge("step_find (A: occurrences; last block: long runs, decision)", chain,
                     36 * lists + 420 * occ + 8 * scanned + 256 + 64 * e["nacc"] + 2 * nbytes, hot=occ,
                     gap=False, rts=rts_h + rts_l + 3 * rounds + dec_rts)
            p.run_depth_walk += 2 * e["runmax"] + 3 * rounds
            p.run_depth_before += 2 * max(e["runmax"], e["longmax"])
            # launch B, step_merge: scratch cleared, every found occurrence read,
            # accepted ones update five pairs and rewrite the links
            rts_h = it(occ) * 2 + it(acc) * 5
            rts_l = 1 + it(e["sused"]) + it(acc) * 8
            sel_s, sel_rts = select_chain(e["ncand"], e["next_nsel"]) if e["ncand"] else (0.0, 0)
            app_rts = math.ceil(e["nnew"] / B) * 2 + 1
            chain = rts_h * hbm + rts_l * l2 + arrive + app_rts * l2 + sel_s
            p.charge("step_merge (B: counts, rewrite; last block: candidate set, next selection)", chain,
                     40 * e["sused"] + 36 * occ + 920 * acc + 40 * e["nnew"] + 72 * e["ncand"],
                     hot=acc + 2 * e["nnew"] + e["appended"], gap=False, rts=rts_h + rts_l + app_rts + sel_rts)
        elif kind == "readback":
            p.readbacks += 1
            p.host("host: graph launch + read-back per batch", d.GRAPH_LAUNCH_S + d.READBACK_S)
        elif kind == "refill":
            cap = e["cap"]
            # where, max, nonzero, a copy: library calls over the table, two host syncs
            p.host("refill: candidate set from a table scan",
                   4 * d.LIBCALL_S + 2 * d.READBACK_S + 3 * 16 * cap / d.copy_bps, 48 * cap)
        elif kind == "count_pairs":
            n, cap = e["n"], e["cap"]
            p.host("rebuild: table recount",
                   3 * d.LIBCALL_S + 3 * d.READBACK_S + (16 * cap + n * (12 + 3 * SECTOR)) / d.copy_bps,
                   16 * cap + n * (12 + 3 * SECTOR))
        elif kind == "compact":
            n = e["n"]
            # mark, cumsum, scatter, argsort (radix: ~8 passes of 8-byte keys), searchsorted, copies
            moved = n * (32 + 16 + 60) + n * 8 * 2 * 8 + 16 * ntok
            p.host("compact: positions and pool", 12 * d.LIBCALL_S + 4 * d.READBACK_S + moved / d.copy_bps, moved)
    return p


def report(p: Projection) -> list[str]:
    """Markdown lines: one row per term."""
    rows = ["| term | launches / events | modelled s | node gaps s | latency-bound | bandwidth-bound | GB moved |",
            "|:---|---:|---:|---:|---:|---:|---:|"]
    for name, t in sorted(p.terms.items(), key=lambda kv: -kv[1].seconds):
        rows.append(f"| {name} | {t.launches:,} | {t.seconds:.4f} | {t.gap_s:.4f} | {t.latency_bound:,} | "
                    f"{t.bandwidth_bound:,} | {t.bytes / 1e9:.2f} |")
    rows.append(f"| **total** | | **{p.total:.4f}** | | | | |")
    return rows


def run_depth_line(p: Projection) -> str:
    """The runs' serial part: as scheduled, against every run walked by its first member."""
    d = p.device
    return (f"runs' serial part: {p.run_depth_walk:,} dependent round trips as scheduled "
            f"({p.run_depth_walk * d.RT_HBM_S:.4f} s at {d.RT_HBM_S * 1e6:.1f} us), against "
            f"{p.run_depth_before:,} ({p.run_depth_before * d.RT_HBM_S:.4f} s) with every run walked by its first member")


# ---------------------------------------------------------------------------
# Pre-tokenization and counting on the device (kernels/pretokenize.cu,
# kernels/wordcount.cu, gpubpe/pretok/device.py)
# ---------------------------------------------------------------------------
#
# The trace is DeviceCounter.trace from a cuda-sim run of the real driver:
# per chunk and round, n bytes, edges (pre-token starts + piece ends), the
# occurrences handled, new words and their bytes and occurrences, the most
# occurrences counted at one slot ("hot": same-address atomics serialize),
# the table's slots. DRAM bytes per launch (window re-reads of neighbouring
# bytes hit L1; the class tables, 90 KB, stay in L1/L2; a random table access
# moves a 32-byte sector):
PRETOK_BYTES = {
    "pretok_specials": "n data read + n marks written",
    "specials: flatnonzero (CuPy)": "n marks read + 16 n [A] (its scan of int64 flags)",
    "pretok_classify": "n data read + n info written",
    "pretok_count": "2 n (data, info) + 4 per 64-byte tile",
    "scan (CuPy cumsum)": "36 per tile (int32 read, int64 written, exclusive form)",
    "pretok_spans": "2 n + 8 per tile + 4 per edge",
    "wc_insert": "n token bytes + 12 per edge (pos, occ_slot) + 64 per occurrence (key, words sectors) "
                 "+ 32 per occurrence of a new word (atomicMin, merged per block first); hot: at most one "
                 "atomic per block round on the most frequent new word's slot",
    "wc_verify": "n token bytes + 12 per edge + 160 per occurrence (words, wstart, wlen, scount sectors, "
                 "the stored copy's first sector) + 2 per new-word byte + 64 per new word; hot: at most one "
                 "atomic per block round on the most frequent word's slot (block_add)",
    "wc_commit": "72 per new word",
    "wc_rehash": "96 per word moved + 24 per new slot cleared",
    "wc_extract": "2 per word byte + 64 per word",
}


def project_pretok(trace: list[dict], device: Device, *, total_bytes: int, words: int, word_bytes: int,
                   host_s: float = 0.0) -> Projection:
    """Charge the counting schedule of ``trace`` with ``device``'s parameters.
    Each launch: node gap + max(bytes / copy bandwidth, hot atomics); each
    round reads back two scalars (READBACK_S each) and makes two CuPy calls.
    ``host_s``: the host's own work per corpus (the special tokens'
    candidates resolved), measured where the model runs; it is charged in
    series with the device (the driver waits for each chunk's read-backs).
    Reading the file is not in it: a reader thread fills the pinned buffers
    beside the counting (:func:`pretok_stage`)."""
    d = device
    p = Projection(d)
    p.hot_bound = {}  # launches whose serialized same-address atomics outlast their bytes
    charge = p.charge

    def charge_hot(name, chain_s, nbytes, hot=0):
        if hot * d.HOT_ATOMIC_S > max(chain_s, nbytes / d.copy_bps):
            p.hot_bound[name] = p.hot_bound.get(name, 0) + 1
        charge(name, chain_s, nbytes, hot=hot)

    p.charge = charge_hot
    p.host("H2D: chunks through pinned memory (overlapped with counting)", 0.0, total_bytes)
    last_slots = None
    for e in trace:
        n, edges, occ = e["n"], e["edges"], e["occ"]
        tiles = n // 64 + 1
        if e["round"] == 0:
            if e.get("specials"):
                p.charge("pretok_specials", d.RT_HBM_S, 2 * n)
                p.charge("specials: flatnonzero (CuPy)", d.RT_HBM_S, 17 * n)
                p.host("host: CuPy calls and read-backs per chunk", 2 * d.LIBCALL_S + 2 * d.READBACK_S)
            p.charge("pretok_classify", d.RT_HBM_S, 2 * n)
            p.charge("pretok_count", d.RT_HBM_S, 2 * n + 4 * tiles)
            p.charge("scan (CuPy cumsum)", d.RT_HBM_S, 36 * tiles)
            p.host("host: CuPy calls and read-backs per chunk", 2 * d.LIBCALL_S + d.READBACK_S)
            p.charge("pretok_spans", d.RT_HBM_S, 2 * n + 8 * tiles + 4 * edges)
            if last_slots is not None and e["slots"] != last_slots:
                p.charge("wc_rehash", d.RT_HBM_S, 96 * words + 24 * e["slots"])  # at most all words moved
            last_slots = e["slots"]
        tok_bytes = n if e["round"] == 0 else n * occ / max(edges, 1)
        # counts and elections merge per block in shared memory first (block_add / block_min):
        # the hot slot gets at most one global atomic per block round, each round three barriers
        rounds = math.ceil(occ / d.BLOCK)
        barriers = 3 * math.ceil(occ / d.threads) * d.BARRIER_S
        p.charge("wc_insert", 2 * d.RT_HBM_S + barriers, tok_bytes + 12 * edges + 64 * occ + 32 * e["new_occ"],
                 hot=min(e["hot_new"], rounds))
        p.charge("wc_verify", 3 * d.RT_HBM_S + barriers, tok_bytes + 12 * edges + 160 * occ + 2 * e["new_bytes"]
                 + 64 * e["new_words"], hot=min(e["hot"], rounds))
        p.host("host: read-back per round", d.READBACK_S + 2 * d.LIBCALL_S)
        if e["new_words"]:
            p.charge("wc_commit", d.RT_HBM_S, 72 * e["new_words"])
    p.charge("wc_extract", d.RT_HBM_S, 2 * word_bytes + 64 * words)
    if host_s:
        p.host("host: special tokens' candidates resolved (measured here)", host_s)
    return p


@dataclass
class Stage:
    """The stage as a pipeline of three parts running side by side: the file
    read into pinned buffers (reader threads), the host-to-device copy (copy
    stream), and the counting (kernels, read-backs and the host's share, in
    series); the slowest part bounds it, and the first chunk's read and copy
    come before any counting (the pipeline's fill)."""

    read_s: float
    h2d_s: float
    device_s: float
    host_s: float
    fill_s: float

    @property
    def count_s(self) -> float:
        return self.device_s + self.host_s

    @property
    def seconds(self) -> float:
        return max(self.read_s, self.h2d_s, self.count_s) + self.fill_s

    @property
    def bound(self) -> str:
        parts = {"the file read into pinned memory": self.read_s, "the host-to-device copy": self.h2d_s,
                 "the counting (kernels and per-chunk host work)": self.count_s}
        return max(parts, key=parts.get)


def pretok_stage(p: Projection, *, total_bytes: int, chunk_bytes: int, read_bps: float) -> Stage:
    """The stage of :func:`project_pretok`'s projection ``p``: ``read_bps`` is
    the reader's rate (bytes/s) on the host it models, ``chunk_bytes`` the
    largest chunk (the pipeline's fill)."""
    d = p.device
    device_s = sum(t.seconds for k, t in p.terms.items() if not k.startswith(("H2D", "host")))
    host_s = sum(t.seconds for k, t in p.terms.items() if k.startswith("host"))
    return Stage(read_s=total_bytes / read_bps, h2d_s=total_bytes / d.H2D_BPS, device_s=device_s, host_s=host_s,
                 fill_s=chunk_bytes / read_bps + chunk_bytes / d.H2D_BPS)


def pretok_report(p: Projection, total_bytes: int) -> list[str]:
    """Markdown lines: per term, bytes moved, modelled seconds, corpus GB/s and
    the share of the copy bandwidth it runs at."""
    rows = ["| term | launches | GB moved | bytes per corpus byte | modelled s | corpus GB/s | "
            "of copy bandwidth | hot-atomic-bound |",
            "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    h2d = total_bytes / p.device.H2D_BPS
    for name, t in sorted(p.terms.items(), key=lambda kv: -kv[1].seconds):
        s = h2d if name.startswith("H2D") else t.seconds
        gbs = total_bytes / s / 1e9 if s else float("inf")
        share = f"{t.bytes / s / p.device.copy_bps:.0%}" if s and not name.startswith(("H2D", "host")) else "–"
        hot = p.hot_bound.get(name, 0) if not name.startswith(("H2D", "host")) else "–"
        rows.append(f"| {name} | {t.launches:,} | {t.bytes / 1e9:.2f} | {t.bytes / total_bytes:.2f} | {s:.4f} | "
                    f"{gbs:,.0f} | {share} | {hot} |")
    return rows
