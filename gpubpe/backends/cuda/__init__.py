"""The CUDA backend: the merge loop on the device, custom kernels (kernels/*.cu).

``make_backend(sim=False)`` runs on a CUDA device through CuPy.
``make_backend(sim=True)`` is the ``cuda-sim`` backend: this same driver, with
NumPy arrays in place of CuPy ones and the kernels compiled by the host C++
compiler (gpubpe.backends.cuda.sim). It exists to test the kernels and the driver without
a GPU and to debug a kernel on a laptop; it is far slower than ``cpu``.

Device state (positions are int32; a WordTable over 2^31 - 1 symbols is refused):

* ``sym, nxt, prv, wrd``  per position: token id (-1 removed), next/previous
  live position in the word (-1 at the ends), word index; ``counts`` per word.
* the pair table  ``keys`` u64 / ``cnt`` int64, open addressing (pair_table.cu).
* the position pool  ``pool`` int32 with ``list_start`` / ``list_len`` per token:
  where each token was created (the decision in step_find), so a merge scans only list(a).
* token bytes  ``tb``, ``toff``, ``tlen`` for the CS336 tie rule; ``rank``
  for the id-order rules (gpubpe.ties); ``forced``, the merges replayed first.
* the candidate set ``cand``: the pair-table slots at or above ``st[THRESH]``.
* ``st`` int64[32]  the run status (kernels/common.cuh).

One exact multi-merge step (DESIGN §1.4, gpubpe/backends/steps.py) is two
launches (kernels/step.cu): step_find (occurrences; its last block decides the
step and commits its merges on the device) and step_merge (pair counts and
the rewrite; its last block updates the candidate set and selects the next
step). The host never reads anything per step: it launches a batch of steps
(captured once as a CUDA graph on a device) and reads ``st`` back after the
batch. The kernels are no-ops once ``st[HALT]`` is set, so a batch may overrun
the end (no pair left, the merge limit, min_count) or a full table, candidate
set or token buffer; the host then rebuilds, refills or grows that buffer and
goes on. Between batches it also compacts the positions when enough died.
After anything the host changed, the selection step_merge made is stale: the
host launches step_select (one block) once before the next batch.

Runs of equal symbols: a run's first member walks it (dependent steps) up to
config.CUDA_RUN_WALK members and hands the rest to step_find's last block,
which scans it a block-wide round at a time; a pre-token of 10^6 equal bytes
is ~1,000 rounds per step that touches it, not 10^6 dependent loads.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ... import config
from .. import BackendUnavailable, MergeOptions
from . import kernels as K

STEP_BATCH = config.CUDA_STEP_BATCH
STEP_CANDIDATES = config.CUDA_STEP_CANDIDATES
STEP_FIRST_WANT = config.CUDA_STEP_FIRST_WANT
RUN_WALK = config.CUDA_RUN_WALK
LONG_RUNS = config.CUDA_LONG_RUNS
SCRATCH_BITS = config.CUDA_SCRATCH_BITS
SCRATCH_MAX_LOAD = config.CUDA_SCRATCH_MAX_LOAD
CAND_FRACTION = config.CUDA_CAND_FRACTION
CAND_MIN = config.CUDA_CAND_MIN
TABLE_MAX_LOAD = config.CUDA_TABLE_MAX_LOAD
REBUILD_LOAD = config.CUDA_REBUILD_LOAD
TABLE_SLACK = config.CUDA_TABLE_SLACK
MIN_TABLE_BITS = config.CUDA_MIN_TABLE_BITS
COMPACT_FRACTION = config.CUDA_COMPACT_FRACTION


class _Dev:
    """Array allocation and host transfers: CuPy on a device, simulator-owned
    NumPy arrays in cuda-sim. ``xp`` is the module for library primitives."""

    def __init__(self, sim: bool):
        self.sim = sim
        self.stream = None
        if sim:
            from . import sim as _sim

            self._sim = _sim
            self.launcher = _sim.SimLauncher()
            self.xp = np
            self.block = 32  # fibers are cheap, not free: small blocks keep the simulator quick
            self.merge_grid = 2
            self.max_parts = 4
        else:
            import cupy

            self.cp = cupy
            # one stream for everything the loop does (non-blocking, as CUDA
            # graph capture wants): kernels, library calls and copies stay in order
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.launcher = K.DeviceLauncher()
            self.launcher.load_all()
            self.xp = cupy
            self.block = 256
            self.merge_grid = config.CUDA_STEP_BLOCKS_PER_SM * self.launcher.sm_count
            self.max_parts = 4 * self.launcher.sm_count
        self.k = K.Kernels(self.launcher)

    def on_stream(self):
        """Context in which every device operation goes to the loop's stream."""
        return contextlib.nullcontext() if self.sim else self.stream

    def empty(self, n, dtype):
        return self._sim.empty((n,), dtype) if self.sim else self.cp.empty((n,), dtype)

    def full(self, n, value, dtype):
        a = self.empty(n, dtype)
        a.fill(value)
        return a

    def to_device(self, a, dtype=None):
        """A contiguous device copy of ``a`` (a host array, or an xp result)."""
        if self.sim:
            return self._sim.asarray(a, dtype)
        return self.cp.ascontiguousarray(self.cp.asarray(a, dtype=dtype))

    def to_host(self, a) -> np.ndarray:
        return np.array(a, copy=True) if self.sim else self.cp.asnumpy(a)

    def write(self, dst, host) -> None:
        if self.sim:
            dst[...] = host
        else:
            dst.set(np.ascontiguousarray(host, dtype=dst.dtype))


class _Loop:
    def __init__(self, dev: _Dev, table, num_merges: int, max_len: int = 0, trace=None, *, rank=None, forced=None,
                 min_count: int = 0):
        n = int(table.symbols.shape[0])
        if n > 2**31 - 2 or table.num_words > 2**31 - 2:
            raise ValueError(
                f"the cuda backend indexes symbols with int32 and this WordTable has {n:,} symbols "
                f"in {table.num_words:,} words: use backend='cpu', or count on a smaller corpus sample"
            )
        self.dev = dev
        self.k = dev.k
        self.num_merges = num_merges
        self.max_len = int(max_len)  # 0: no cap on merged token length
        # the tie rule (gpubpe.ties.byte_rank: empty for cs336), the merges
        # replayed first (a parent model's) and HF's min_frequency
        rank = np.zeros(0, np.int64) if rank is None else np.asarray(rank, np.int64)
        self.id_order = int(rank.shape[0] != 0)
        self.rank = dev.to_device(rank if self.id_order else np.zeros(256, np.int64))
        forced = np.zeros((0, 2), np.int32) if forced is None else np.asarray(forced, np.int32).reshape(-1, 2)
        self.nforced = int(forced.shape[0])
        self.forced = dev.to_device(np.ascontiguousarray(forced.reshape(-1)) if self.nforced else np.zeros(2, np.int32))
        self.min_count = int(min_count)
        self.trace = trace  # a list: one dict per step and per host event (the cost model), or None
        self.graph = None
        self.kmax = min(STEP_CANDIDATES, dev.block * K.SELECT_LOCAL)
        self.n = n
        k = dev.k
        # the upload: symbols as bytes (every initial symbol is one), offsets and
        # counts; the links are built on the device. A table counted on the
        # device (gpubpe.pretok.device.DeviceWordTable) is there already, in
        # that form: nothing crosses the bus.
        if getattr(table, "on_device", False):
            bytes_, off = table.symbols, table.offsets
        else:
            symbols = np.asarray(table.symbols)
            if n and int(symbols.max()) > 255:
                raise ValueError("a WordTable's initial symbols are bytes (0..255)")
            bytes_ = dev.to_device(symbols, np.uint8)
            off = dev.to_device(np.ascontiguousarray(table.offsets, np.int64))
        self.sym, self.nxt, self.prv, self.wrd = (dev.empty(max(n, 1), np.int32) for _ in range(4))
        if n:
            k.build_links(block=dev.block, bytes_=bytes_, off=off,
                          nwords=int(table.num_words), n=n, sym=self.sym, nxt=self.nxt, prv=self.prv, wrd=self.wrd)
        self.counts = dev.to_device(table.counts, np.int64)
        st = np.zeros(K.ST_SIZE, np.int64)
        st[K.ST_TOKBYTES] = 256
        st[K.ST_LIMIT] = num_merges
        st[K.ST_WANT] = min(self.kmax, STEP_FIRST_WANT)
        self.st = dev.to_device(st)
        ntok = 256 + max(num_merges, 1)
        self.ntok = ntok
        toff = np.zeros(ntok, np.int64)
        tlen = np.zeros(ntok, np.int32)
        toff[:256] = np.arange(256)
        tlen[:256] = 1
        self.toff = dev.to_device(toff)
        self.tlen = dev.to_device(tlen)
        # room for tokens of 16 bytes on average; HALT_TOKBUF grows it
        tb = np.zeros(256 + 16 * max(num_merges, 1), np.uint8)
        tb[:256] = np.arange(256, dtype=np.uint8)
        self.tb = dev.to_device(tb)
        self.merges = dev.full(2 * max(num_merges, 1), -1, np.int32)
        self.mcount = dev.full(max(num_merges, 1), 0, np.int64)
        self.sel = dev.full(K.SEL_FIELDS * self.kmax, 0, np.int64)
        self.lrun = dev.full(K.LRUN_FIELDS * max(1, LONG_RUNS), 0, np.int64)
        scap = 1 << SCRATCH_BITS
        self.sbits = SCRATCH_BITS
        self.skeys = dev.full(scap, K.EMPTY_KEY, np.uint64)
        self.scnt = dev.full(scap, 0, np.int64)
        self.sused = dev.empty(max(1, int(scap * SCRATCH_MAX_LOAD)), np.int64)
        self.cand = dev.empty(CAND_MIN, np.int64)
        self.bits = 0
        self._compact()
        self._rebuild_table(min(self.n, 65536))  # initial pairs are byte pairs
        self.has_pairs = self._refill()

    # -- status -------------------------------------------------------------
    def _status(self) -> np.ndarray:
        return self.dev.to_host(self.st)

    def _set_status(self, **fields) -> None:
        st = self._status()
        for name, v in fields.items():
            st[getattr(K, "ST_" + name)] = v
        self.dev.write(self.st, st)

    def _event(self, kind: str, **sizes) -> None:
        if self.trace is not None:
            self.trace.append({"event": kind, **sizes})

    # -- rebuilds (between batches) ------------------------------------------
    def _compact(self) -> None:
        """Squeeze removed symbols and one-symbol words out; rebuild the pool."""
        dev, k, xp = self.dev, self.k, self.dev.xp
        n = self.n
        self.graph = None
        self._event("compact", n=n)
        if n > 0:
            keep = dev.empty(n, np.int32)
            k.compact_mark(block=dev.block, sym=self.sym, nxt=self.nxt, prv=self.prv, wrd=self.wrd,
                           counts=self.counts, n=n, keep=keep, st=self.st)
            incl = xp.cumsum(keep, dtype=np.int64)
            n2 = int(incl[-1])
            newpos = dev.to_device(incl - keep)
            out = [dev.empty(max(n2, 1), np.int32) for _ in range(4)]
            k.compact_scatter(block=dev.block, sym=self.sym, nxt=self.nxt, prv=self.prv, wrd=self.wrd,
                              keep=keep, newpos=newpos, n=n, out_sym=out[0], out_nxt=out[1], out_prv=out[2],
                              out_wrd=out[3])
            self.sym, self.nxt, self.prv, self.wrd = out
            self.n = n2
        n = self.n
        self.mk = dev.full(max(n, 1), -1, np.int32)
        self.mkr = dev.full(max(n, 1), -1, np.int32)
        self.occ = dev.empty(max(n, 1), np.int32)  # each position starts at most one selected pair
        # the pool: positions grouped by token; then room for one entry per
        # symbol that can still be removed
        order = xp.argsort(self.sym[:n]) if n else xp.zeros(0, np.int64)
        sorted_sym = self.sym[:n][order]
        ids = xp.arange(self.ntok, dtype=sorted_sym.dtype)
        lo = xp.searchsorted(sorted_sym, ids, side="left")
        hi = xp.searchsorted(sorted_sym, ids, side="right")
        self.pool = dev.empty(2 * n + 16, np.int32)
        self.pool[:n] = order.astype(np.int32)
        self.list_start = dev.to_device(lo, np.int64)
        self.list_len = dev.to_device(hi - lo, np.int64)
        self._set_status(POOL_USED=n, DEAD=0)

    def _rebuild_table(self, live_pairs: int) -> None:
        """Recount every live pair into a fresh table sized for ``live_pairs``.

        The estimate may be off either way: a table that overflows is doubled
        and recounted, and one far larger than the pairs it got (each refill
        scans every slot) is recounted once at the right size."""
        dev, k = self.dev, self.k
        self.graph = None
        bits = self._bits_for(live_pairs)
        resized = False
        while True:
            cap = 1 << bits
            self.keys = dev.full(cap, K.EMPTY_KEY, np.uint64)
            self.cnt = dev.full(cap, 0, np.int64)
            self.bits = bits
            self.used_limit = int(cap * TABLE_MAX_LOAD)
            self._set_status(USED=0, HALT=0, TFULL=0)
            self._event("count_pairs", n=self.n, cap=cap)
            if self.n:
                k.count_pairs(block=dev.block, sym=self.sym, nxt=self.nxt,
                              wrd=self.wrd, counts=self.counts, n=self.n, keys=self.keys, cnt=self.cnt,
                              bits=bits, used_limit=self.used_limit, st=self.st)
            st = self._status()
            if st[K.ST_HALT] != 0:
                bits += 1
                continue
            right = self._bits_for(int(st[K.ST_USED]))
            if not resized and right < bits - 1:
                bits, resized = right, True
                continue
            break
        self.newslots = dev.empty(cap, np.int64)

    @staticmethod
    def _bits_for(pairs: int) -> int:
        return max(MIN_TABLE_BITS, math.ceil(math.log2(TABLE_SLACK * max(pairs, 1))))

    def _refill(self) -> bool:
        """Rebuild the candidate set from a scan of the table: the threshold is
        CAND_FRACTION of the best eligible count. False when no pair is left."""
        xp = self.dev.xp
        c, keys = self.cnt, self.keys
        elig = c > 0
        if self.max_len:
            full = keys != K.EMPTY_KEY
            left = xp.where(full, keys >> np.uint64(32), np.uint64(0)).astype(np.int64)
            right = xp.where(full, keys & np.uint64(0xFFFFFFFF), np.uint64(0)).astype(np.int64)
            elig &= (self.tlen[left] + self.tlen[right]) <= self.max_len
        cap = int(c.shape[0])
        best = int(xp.max(xp.where(elig, c, 0))) if cap else 0
        if best <= 0:
            self._event("refill", cap=cap, cand=0)
            return False
        thresh = max(1, int(best * CAND_FRACTION))
        slots = xp.nonzero(elig & (c >= thresh))[0].astype(np.int64)
        m = int(slots.shape[0])
        if self.cand.shape[0] < 2 * m + CAND_MIN:
            self.cand = self.dev.empty(4 * m + CAND_MIN, np.int64)
            self.graph = None
        self.cand[:m] = slots
        self._event("refill", cap=cap, cand=m)
        self._set_status(THRESH=thresh, NCAND=m, CFULL=0, HALT=0)
        return True

    def _grow_token_bytes(self) -> None:
        self.graph = None
        old = self.tb
        self.tb = self.dev.empty(2 * old.shape[0], np.uint8)
        self.tb[: old.shape[0]] = old
        self._set_status(HALT=0)

    # -- the loop -------------------------------------------------------------
    def step_launches(self):
        """The launches of one step, in order, as (kernel name, thunk)."""
        dev, k = self.dev, self.k
        blk, g, km = dev.block, dev.merge_grid, self.kmax
        return [
            ("step_find", lambda: k.step_find(
                grid=g, block=blk, sym=self.sym, nxt=self.nxt, prv=self.prv, wrd=self.wrd, counts=self.counts,
                mk=self.mk, mkr=self.mkr, pool=self.pool, occ=self.occ, sel=self.sel, kmax=km, skeys=self.skeys,
                scnt=self.scnt, sbits=self.sbits, sused=self.sused, lrun=self.lrun, run_walk=RUN_WALK, tb=self.tb,
                toff=self.toff, tlen=self.tlen, merges=self.merges, mcount=self.mcount, min_count=self.min_count,
                nforced=self.nforced, list_start=self.list_start, list_len=self.list_len, st=self.st)),
            ("step_merge", lambda: k.step_merge(
                grid=g, block=blk, sym=self.sym, nxt=self.nxt, prv=self.prv, mk=self.mk, mkr=self.mkr, wrd=self.wrd,
                counts=self.counts, occ=self.occ, pool=self.pool, sel=self.sel, kmax=km, keys=self.keys,
                cnt=self.cnt, bits=self.bits, used_limit=self.used_limit, newslots=self.newslots, skeys=self.skeys,
                scnt=self.scnt, sused=self.sused, tb=self.tb, toff=self.toff, tlen=self.tlen, rank=self.rank,
                id_order=self.id_order, forced=self.forced, nforced=self.nforced, max_len=self.max_len,
                cand=self.cand, list_start=self.list_start, list_len=self.list_len, st=self.st)),
        ]

    def _select(self) -> None:
        """The next step's selection, alone (one block): before the first batch
        and after the host changed anything it depends on."""
        k = self.k
        self._event("select", ncand=int(self._status()[K.ST_NCAND]) if self.trace is not None else 0)
        k.step_select(block=self.dev.block, keys=self.keys, cnt=self.cnt, bits=self.bits, tb=self.tb,
                      toff=self.toff, tlen=self.tlen, rank=self.rank, id_order=self.id_order, forced=self.forced,
                      nforced=self.nforced, max_len=self.max_len, cand=self.cand, list_start=self.list_start,
                      list_len=self.list_len, sel=self.sel, kmax=self.kmax, st=self.st)

    def _launch_batch(self) -> None:
        self._event("batch", launches=2 * STEP_BATCH)
        if self.dev.sim:
            for _ in range(STEP_BATCH):
                find, merge = (launch for _, launch in self.step_launches())
                find()
                mid = self._status() if self.trace is not None else None
                merge()
                if mid is not None:
                    self._trace_step(mid)
            return
        # On a device, a batch of steps is captured once as a CUDA graph and
        # replayed until a rebuild reallocates a buffer (graph = None): every
        # size a kernel needs is read from st on the device, so one graph
        # serves every batch of the run, the last one included (the device
        # stops at ST_LIMIT).
        stream = self.dev.stream
        if self.graph is None:
            stream.begin_capture()
            try:
                for _ in range(STEP_BATCH):
                    for _, launch in self.step_launches():
                        launch()
            finally:
                graph = stream.end_capture()  # a failed capture must not leave the stream capturing
            self.graph = graph
        self.graph.launch(stream=stream)

    def _trace_step(self, mid: np.ndarray) -> None:
        """cuda-sim only: the sizes one step worked on, read back between and
        after its launches (the device reads st only per batch; the model
        counts that, not this). ``mid``: st after step_find."""
        st = self._status()
        steps = int(mid[K.ST_STEPS])
        if steps == getattr(self, "_traced_steps", 0):
            return  # no step committed: the launches were no-ops (halted), charged as node gaps only
        self._traced_steps = steps
        nacc = int(mid[K.ST_NACC])
        selected = int(st[K.ST_HALT]) not in (K.HALT_TABLE, K.HALT_CAND, K.HALT_LIMIT)
        self.trace.append({"event": "step", "nsel": int(mid[K.ST_NSEL]), "nacc": nacc,
                           "lists": int(mid[K.ST_LISTS]), "occ": int(mid[K.ST_OCC]),
                           "acc_occ": int(self._acc_occ(mid, nacc)), "sused": int(mid[K.ST_SUSED]),
                           "runmax": int(mid[K.ST_RUNMAX]), "runrounds": int(mid[K.ST_RUNROUNDS]),
                           "longmax": int(mid[K.ST_LONGMAX]), "nlong": int(mid[K.ST_NLONG]),
                           "tokbytes": int(mid[K.ST_TOKBYTES]), "nnew": int(st[K.ST_USED] - mid[K.ST_USED]),
                           "appended": int(st[K.ST_NCAND] - mid[K.ST_NCAND]),
                           "ncand": int(st[K.ST_NCAND]) if selected else 0,
                           "next_nsel": int(st[K.ST_NSEL]) if selected else 0, "cap": 1 << self.bits,
                           "block": self.dev.block})

    def _acc_occ(self, mid, nacc: int) -> int:
        """Occurrences the step merged: the new tokens' list lengths."""
        done = int(mid[K.ST_DONE])
        ll = self.dev.to_host(self.list_len)
        return int(ll[256 + done - nacc: 256 + done].sum())

    def run(self, progress) -> tuple[np.ndarray, np.ndarray, int]:
        if self.has_pairs or self.nforced:
            self._loop(progress)
        st = self._status()
        done = int(st[K.ST_DONE])
        progress[0] = done
        merges = self.dev.to_host(self.merges)[: 2 * done].reshape(done, 2).copy()
        return merges, self.dev.to_host(self.mcount)[:done].copy(), self._ntokens()

    def _loop(self, progress) -> None:
        self._select()
        while True:
            self._launch_batch()
            st = self._status()
            self._event("readback")
            progress[0] = int(st[K.ST_DONE])
            if progress.shape[0] > 1 and progress[1]:
                return  # an interrupt: stop between batches
            halt = int(st[K.ST_HALT])
            if halt in (K.HALT_LIMIT, K.HALT_MIN_COUNT):
                return
            if halt == K.HALT_INTERNAL:
                raise RuntimeError(f"cuda backend: internal invariant broken (code {int(st[K.ST_ERR])}) "
                                   f"at merge {int(st[K.ST_DONE])}; please report with the corpus")
            if halt == K.HALT_TOKBUF:
                self._grow_token_bytes()
                self._select()
                continue
            stale = halt != 0  # the selection made in the batch's last launch still holds unless the host acts
            if int(st[K.ST_DEAD]) > COMPACT_FRACTION * self.n:
                self._compact()
                stale = True
            if halt == K.HALT_TABLE or st[K.ST_USED] > REBUILD_LOAD * (1 << self.bits):
                live = int(self.dev.xp.count_nonzero(self.cnt > 0))
                self._rebuild_table(live)
                if not self._refill():
                    return
                stale = True
            elif halt in (K.HALT_REFILL, K.HALT_CAND):
                if not self._refill():
                    return
            elif halt != 0:
                raise RuntimeError(f"cuda backend: unexpected halt code {halt}")
            if stale:
                self._select()

    def _ntokens(self) -> int:
        """Tokens the training words now encode to, weighted (the dropped words included)."""
        n = self.n
        sym = self.sym[:n]
        live = self.wrd[:n][sym >= 0]
        total = int(self.counts[live].sum()) if live.size else 0
        return total + int(self._status()[K.ST_DROPPED])


def make_backend(*, sim: bool):
    """The merge loop of backend 'cuda' (``sim=False``) or 'cuda-sim' (``sim=True``):
    ``run(table, num_merges, progress, options) -> (merges int32[n, 2], counts int64[n], ntokens)``
    (:mod:`gpubpe.backends`)."""
    if sim:
        from . import sim as _sim

        try:
            _sim.library()
        except _sim.CompilerUnavailable as e:
            raise BackendUnavailable(str(e)) from e
    # backend='cuda' comes here only after backends.cuda_available() imported CuPy

    def run(table, num_merges, progress, options=MergeOptions()):
        num_merges = int(num_merges)
        if num_merges <= 0:
            return (np.zeros((0, 2), np.int32), np.zeros(0, np.int64),
                    int(((table.offsets[1:] - table.offsets[:-1]) * table.counts).sum()))
        dev = _Dev(sim)
        with dev.on_stream():
            return _Loop(dev, table, num_merges, options.max_len, rank=options.rank, forced=options.forced,
                         min_count=options.min_count).run(progress)

    return run
