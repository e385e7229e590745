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
  where each token was created (merge.cu), so a merge scans only list(a).
* token bytes  ``tb``, ``toff``, ``tlen`` for the tie rule (argmax.cu).
* ``st`` int64[16]  the run status (kernels/common.cuh).

Per merge, six launches: argmax_partial, argmax_final (commits the merge on the
device), mark_occurrences, remove_old_pairs, apply_merges, add_new_pairs. The
host never reads anything per merge: it launches a batch of merges (captured
once as a CUDA graph on a device) and reads ``st`` back after the batch. The
kernels are no-ops once ``st[HALT]`` is set, so a batch may overrun the end
(no pair left) or a full table or token buffer; the host then rebuilds or
grows that buffer and goes on. Between batches it also rebuilds the pair table
(dropping dead pairs) and compacts the positions when enough died.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ... import config
from .. import BackendUnavailable
from . import kernels as K

MERGE_BATCH = config.CUDA_MERGE_BATCH
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
            self.merge_grid = 2 * self.launcher.sm_count
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
    def __init__(self, dev: _Dev, table, num_merges: int, max_len: int = 0):
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
        self.graph = None
        sym, nxt, prv, wrd = _initial_links(table)
        self.n = n
        self.sym = dev.to_device(sym)
        self.nxt = dev.to_device(nxt)
        self.prv = dev.to_device(prv)
        self.wrd = dev.to_device(wrd)
        self.counts = dev.to_device(table.counts, np.int64)
        self.mk = dev.full(max(n, 1), -1, np.int32)
        st = np.zeros(K.ST_SIZE, np.int64)
        st[K.ST_PENDING] = -1
        st[K.ST_TOKBYTES] = 256
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
        self.tb_cap = 256 + 16 * max(num_merges, 1)
        tb = np.zeros(self.tb_cap, np.uint8)
        tb[:256] = np.arange(256, dtype=np.uint8)
        self.tb = dev.to_device(tb)
        self.merges = dev.full(2 * max(num_merges, 1), -1, np.int32)
        self.list_start = dev.full(ntok, 0, np.int64)
        self.list_len = dev.full(ntok, 0, np.int64)
        self.part = dev.full(dev.max_parts, -1, np.int64)
        self.bits = 0
        self._compact()
        self._rebuild_table(min(self.n, 65536))  # initial pairs are byte pairs

    # -- status -------------------------------------------------------------
    def _status(self) -> np.ndarray:
        return self.dev.to_host(self.st)

    def _set_status(self, **fields) -> None:
        st = self._status()
        for name, v in fields.items():
            st[getattr(K, "ST_" + name)] = v
        self.dev.write(self.st, st)

    # -- rebuilds (between batches) ------------------------------------------
    def _compact(self) -> None:
        """Squeeze removed symbols and one-symbol words out; rebuild the pool."""
        dev, k, xp = self.dev, self.k, self.dev.xp
        n = self.n
        self.graph = None
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
            self.mk = dev.full(max(n2, 1), -1, np.int32)
        # the pool: positions grouped by token; then room for one entry per
        # symbol that can still be removed
        n = self.n
        order = xp.argsort(self.sym[:n]) if n else xp.zeros(0, np.int64)
        sorted_sym = self.sym[:n][order]
        ids = xp.arange(self.ntok, dtype=sorted_sym.dtype)
        lo = xp.searchsorted(sorted_sym, ids, side="left")
        hi = xp.searchsorted(sorted_sym, ids, side="right")
        self.pool_cap = 2 * n + 16
        self.pool = dev.empty(self.pool_cap, np.int32)
        self.pool[:n] = order.astype(np.int32)
        self.list_start = dev.to_device(lo, np.int64)
        self.list_len = dev.to_device(hi - lo, np.int64)
        self._set_status(POOL_USED=n, OCC_START=n, NOCC=0, DEAD=0, PENDING=-1)

    def _rebuild_table(self, live_pairs: int) -> None:
        """Recount every live pair into a fresh table sized for ``live_pairs``.

        The estimate may be off either way: a table that overflows is doubled
        and recounted, and one far larger than the pairs it got (the argmax
        scans every slot, every merge) is recounted once at the right size."""
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
            self._set_status(USED=0, HALT=0)
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
        self.nparts = K.Kernels.grid_over(cap, dev.block, dev.max_parts)

    @staticmethod
    def _bits_for(pairs: int) -> int:
        return max(MIN_TABLE_BITS, math.ceil(math.log2(TABLE_SLACK * max(pairs, 1))))

    def _grow_token_bytes(self) -> None:
        self.graph = None
        old = self.tb
        self.tb_cap *= 2
        self.tb = self.dev.empty(self.tb_cap, np.uint8)
        self.tb[: old.shape[0]] = old
        self._set_status(HALT=0)

    # -- the loop -------------------------------------------------------------
    def merge_steps(self):
        """The launches of one merge, in order, as (kernel name, thunk)."""
        dev, k = self.dev, self.k
        blk, g = dev.block, dev.merge_grid
        return [
            ("argmax_partial", lambda: k.argmax_partial(
                grid=self.nparts, block=blk, keys=self.keys, cnt=self.cnt, bits=self.bits, tb=self.tb,
                toff=self.toff, tlen=self.tlen, max_len=self.max_len, part=self.part, st=self.st)),
            ("argmax_final", lambda: k.argmax_final(
                block=blk, keys=self.keys, cnt=self.cnt, tb=self.tb, toff=self.toff, tlen=self.tlen,
                tb_cap=self.tb_cap, part=self.part, nparts=self.nparts, merges=self.merges,
                list_start=self.list_start, list_len=self.list_len, st=self.st)),
            ("mark_occurrences", lambda: k.mark_occurrences(
                grid=g, block=blk, sym=self.sym, nxt=self.nxt, prv=self.prv, mk=self.mk, pool=self.pool,
                list_start=self.list_start, list_len=self.list_len, pool_cap=self.pool_cap, st=self.st)),
            ("remove_old_pairs", lambda: k.remove_old_pairs(
                grid=g, block=blk, sym=self.sym, nxt=self.nxt, prv=self.prv, mk=self.mk, wrd=self.wrd,
                counts=self.counts, pool=self.pool, keys=self.keys, cnt=self.cnt, bits=self.bits, st=self.st)),
            ("apply_merges", lambda: k.apply_merges(
                grid=g, block=blk, sym=self.sym, nxt=self.nxt, prv=self.prv, pool=self.pool, st=self.st)),
            ("add_new_pairs", lambda: k.add_new_pairs(
                grid=g, block=blk, sym=self.sym, nxt=self.nxt, prv=self.prv, mk=self.mk, wrd=self.wrd,
                counts=self.counts, pool=self.pool, keys=self.keys, cnt=self.cnt, bits=self.bits,
                used_limit=self.used_limit, st=self.st)),
        ]

    def _launch_merge(self) -> None:
        for _, launch in self.merge_steps():
            launch()

    def _launch_batch(self, nmerges: int) -> None:
        if self.dev.sim or nmerges != MERGE_BATCH:
            for _ in range(nmerges):
                self._launch_merge()
            return
        # On a device, a full batch is captured once as a CUDA graph and
        # replayed until a rebuild reallocates a buffer (graph = None): one
        # launch instead of 6 * MERGE_BATCH from Python (~10 us each).
        stream = self.dev.stream
        if self.graph is None:
            stream.begin_capture()
            for _ in range(nmerges):
                self._launch_merge()
            self.graph = stream.end_capture()
        self.graph.launch(stream=stream)

    def run(self, progress) -> tuple[np.ndarray, int]:
        done = 0
        while done < self.num_merges:
            self._launch_batch(min(MERGE_BATCH, self.num_merges - done))
            st = self._status()
            done = int(st[K.ST_DONE])
            progress[0] = done
            if progress.shape[0] > 1 and progress[1]:
                break  # an interrupt: stop between batches
            halt = int(st[K.ST_HALT])
            if halt == K.HALT_NO_PAIR:
                break
            if halt == K.HALT_INTERNAL:
                raise RuntimeError(f"cuda backend: internal invariant broken (code {int(st[K.ST_ERR])}) "
                                   f"at merge {done}; please report with the corpus")
            if halt == K.HALT_TOKBUF:
                self._grow_token_bytes()
                continue
            if done >= self.num_merges:
                break
            dead = int(st[K.ST_DEAD] + st[K.ST_NOCC])
            if dead > COMPACT_FRACTION * self.n:
                self._compact()
            if halt == K.HALT_TABLE or st[K.ST_USED] > REBUILD_LOAD * (1 << self.bits):
                live = int(self.dev.xp.count_nonzero(self.cnt > 0))
                self._rebuild_table(live)
        merges = self.dev.to_host(self.merges)[: 2 * done].reshape(done, 2).copy()
        return merges, self._ntokens()

    def _ntokens(self) -> int:
        """Tokens the training words now encode to, weighted (the dropped words included)."""
        n = self.n
        sym = self.sym[:n]
        live = self.wrd[:n][sym >= 0]
        total = int(self.counts[live].sum()) if live.size else 0
        return total + int(self._status()[K.ST_DROPPED])


def _initial_links(table):
    """Host arrays: symbols, next/previous links inside each word, word index."""
    off = np.asarray(table.offsets, np.int64)
    n = int(table.symbols.shape[0])
    lengths = np.diff(off)
    w = table.num_words
    wrd = np.repeat(np.arange(w, dtype=np.int32), lengths)
    nxt = np.arange(1, n + 1, dtype=np.int32)
    prv = np.arange(-1, n - 1, dtype=np.int32)
    nonempty = lengths > 0
    nxt[(off[1:] - 1)[nonempty]] = -1
    prv[off[:-1][nonempty]] = -1
    return np.ascontiguousarray(table.symbols, np.int32), nxt, prv, wrd


def make_backend(*, sim: bool):
    """The merge loop of backend 'cuda' (``sim=False``) or 'cuda-sim' (``sim=True``):
    ``run(table, num_merges, progress) -> (merges int32[n, 2], ntokens)``."""
    if sim:
        from . import sim as _sim

        try:
            _sim.library()
        except _sim.CompilerUnavailable as e:
            raise BackendUnavailable(str(e)) from e
    # backend='cuda' comes here only after backends.cuda_available() imported CuPy

    def run(table, num_merges, progress, *, max_token_length=None):
        num_merges = int(num_merges)
        if num_merges <= 0:
            return np.zeros((0, 2), np.int32), int((np.diff(table.offsets) * table.counts).sum())
        dev = _Dev(sim)
        with dev.on_stream():
            return _Loop(dev, table, num_merges, max_token_length or 0).run(progress)

    return run
