"""GPT-2 pre-tokenization and exact counting on a CUDA device, or in cuda-sim.

The same pre-tokens as :mod:`.machine` (its docstring states the semantics;
``kernels/pretokenize.cu`` the local boundary rule the kernels use), counted
exactly into a device hash table keyed by the bytes (``kernels/wordcount.cu``).

Per chunk (cut at special tokens or safe cuts, :mod:`gpubpe.corpus`):

    pretok_specials  per byte: which special token (longest first) starts there;
                     the few candidates come back and the host keeps the
                     leftmost non-overlapping ones, as the regex alternation
                     of :func:`gpubpe.corpus.special_regex` does
    pretok_classify  per byte: character start, class, piece membership
    pretok_count     per tile of 64 positions: the edges (pre-token starts, piece ends)
    (scan)           the tiles' exclusive prefix sum: CuPy's cumsum (NumPy's in cuda-sim)
    pretok_spans     the edges in order: the pre-tokens' spans
    wc_insert / wc_verify / wc_commit, per round (usually one)

and the host reads back the candidates and the edge count per chunk, and the
status per round. The table persists across chunks and grows between them
(wc_rehash). At the end the unique words come
out as a :class:`DeviceWordTable` (wc_extract), which the device merge loop
takes as it is (:mod:`gpubpe.backends.cuda`) and :meth:`DeviceWordTable.to_host`
copies to a :class:`~gpubpe.wordtable.WordTable` when the host needs it.

On a device, chunks go up from pinned host memory on a copy stream: chunk
k + 1 is copied while chunk k is counted on the compute stream. A plain file
is read straight into pinned buffers by :class:`gpubpe.corpus.ChunkReader`'s
threads (:func:`count_device_inputs`), so its bytes are copied once, by the
device; other inputs (compressed files, records, text, standard input) pass
through two pinned staging buffers. In cuda-sim the same code runs with
synchronous copies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np

from .. import config
from ..backends import BackendUnavailable, cuda_available
from ..backends.cuda import _Dev
from ..backends.cuda import kernels as K
from ..corpus import ChunkReader, InputRecord, count_specials, is_plain_file, iter_chunks, special_regex
from ..wordtable import WordTable
from . import unicode

DEVICE_BACKENDS = ("cuda", "cuda-sim")


def device(backend: str) -> _Dev:
    """The device of ``backend`` ('cuda' or 'cuda-sim'), or BackendUnavailable."""
    if backend == "cuda":
        if not cuda_available():
            raise BackendUnavailable("backend='cuda' needs CuPy and a CUDA device, and none answered: "
                                     "use backend='cpu' (or 'auto', which falls back to it)")
        return _Dev(False)
    if backend != "cuda-sim":
        raise ValueError(f"not a device backend: {backend!r} (use 'cuda' or 'cuda-sim')")
    from ..backends.cuda import sim

    try:
        sim.library()
    except sim.CompilerUnavailable as e:
        raise BackendUnavailable(str(e)) from e
    return _Dev(True)


def special_spans(data: bytes, specials: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64 of the special tokens in ``data``, longest first at
    each position (:func:`gpubpe.corpus.special_regex`), in order."""
    if not specials:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    spans = [m.span() for m in special_regex(specials).finditer(data)]
    a = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return np.ascontiguousarray(a[:, 0]), np.ascontiguousarray(a[:, 1])


class DeviceWordTable:
    """A WordTable whose arrays are device arrays (CuPy, or cuda-sim's):
    ``symbols`` uint8 (byte values: the merge loop's upload form), ``offsets``
    int64[W + 1], ``counts`` int64[W]. :meth:`to_host` gives the
    :class:`~gpubpe.wordtable.WordTable` (symbols int32)."""

    on_device = True

    def __init__(self, dev: _Dev, symbols, offsets, counts):
        self.dev = dev
        self.symbols, self.offsets, self.counts = symbols, offsets, counts

    @property
    def num_words(self) -> int:
        return int(self.counts.shape[0])

    def max_merges(self) -> int:
        """As :meth:`WordTable.max_merges`, computed on the device."""
        xp = self.dev.xp
        return int(xp.maximum(xp.diff(self.offsets) - 1, 0).sum()) if self.num_words else 0

    def to_host(self) -> WordTable:
        d = self.dev
        return WordTable(d.to_host(self.symbols).astype(np.int32), d.to_host(self.offsets), d.to_host(self.counts))

    def to_counts(self) -> dict[bytes, int]:
        return self.to_host().to_counts()


class DeviceCounter:
    """The device word table, fed chunk by chunk (:meth:`add_chunk`).

    ``hmask`` masks the 64-bit keys: all ones in use; the tests pass a few bits
    so that distinct words share keys and the exact paths (later rounds, the
    host fallback) really run. ``rounds``: config.DEVICE_COUNT_ROUNDS."""

    def __init__(self, dev: _Dev, *, hmask: int = -1, rounds: int | None = None):
        with dev.on_stream():  # on a device every allocation and fill goes to the compute stream too
            self._init(dev, hmask, rounds)

    def _init(self, dev: _Dev, hmask: int, rounds: int | None) -> None:
        self.dev = dev
        self.k = dev.k
        cls, bmp, stage1, stage2 = unicode.scan_tables()
        self.tabs = dict(cls=dev.to_device(cls), bmp=dev.to_device(bmp),
                         stage1=dev.to_device(stage1.astype(np.int32)), stage2=dev.to_device(stage2))
        self.hmask = int(hmask)
        self.rounds = int(rounds or config.DEVICE_COUNT_ROUNDS)
        self.wst = dev.to_device(np.zeros(K.WC_SIZE, np.int64))
        self.bits = 0
        self.used = 0
        self._table(config.DEVICE_COUNT_MIN_BITS)
        self.nwords = 0
        self.abytes = 0
        self.wstart = dev.empty(1024, np.int64)
        self.wlen = dev.empty(1024, np.int32)
        self.wslot = dev.empty(1024, np.int32)
        self.wkey = dev.empty(1024, np.uint64)
        self.arena = dev.empty(1 << 16, np.uint8)
        self.host: dict[bytes, int] = {}  # occurrences no round placed (exact, counted here)
        self.host_fallbacks = 0
        self.resolve_s = 0.0  # seconds the host spent resolving special-token candidates (the cost model)
        self.trace: list | None = None  # a list: per chunk and round, the sizes worked on (the cost model)
        self._stream = None
        self._spare: list[np.ndarray] = []  # host buffers given back (host_buffer reuses them)
        if not dev.sim:
            cp = dev.cp
            self._stream = cp.cuda.Stream(non_blocking=True)
            self._pinned = [None, None]
            self._dbuf = [None, None]
            self._events = [None, None]
            self._slot = 1

    # -- the table ------------------------------------------------------------
    def _table(self, bits: int) -> None:
        d = self.dev
        cap = 1 << bits
        self.keys = d.full(cap, K.EMPTY_KEY, np.uint64)
        self.words = d.full(cap, -1, np.int32)
        self.reps = d.full(cap, K.WC_NO_REP, np.int64)
        self.scount = d.full(cap, 0, np.int64)
        self.bits = bits

    def _grow(self, a, cap: int):
        b = self.dev.empty(cap, a.dtype)
        b[: a.shape[0]] = a
        return b

    def _reserve(self, keys: int, nbytes: int) -> None:
        """Room for ``keys`` more keys and words and ``nbytes`` more arena bytes."""
        bits = self.bits
        while self.used + keys > config.DEVICE_COUNT_MAX_LOAD * (1 << bits):
            bits += 1
        if bits != self.bits:
            old = (self.words, self.scount)
            self._table(bits)
            self.wst[K.WC_USED] = 0
            if self.nwords:
                self.k.wc_rehash(block=self.dev.block, nwords=self.nwords, wkey=self.wkey, wslot=self.wslot,
                                 scount=old[1], new_keys=self.keys, new_words=self.words, new_scount=self.scount,
                                 new_bits=bits, wst=self.wst)
            self.used = self.nwords
        wcap = self.wstart.shape[0]
        if self.nwords + keys > wcap:
            while self.nwords + keys > wcap:
                wcap *= 2
            self.wstart, self.wlen, self.wslot, self.wkey = (self._grow(a, wcap) for a in
                                                             (self.wstart, self.wlen, self.wslot, self.wkey))
        acap = self.arena.shape[0]
        if self.abytes + nbytes > acap:
            while self.abytes + nbytes > acap:
                acap *= 2
            self.arena = self._grow(self.arena, acap)

    # -- host buffers -----------------------------------------------------------
    def host_buffer(self, n: int) -> np.ndarray:
        """A uint8 host buffer of at least ``n`` bytes that chunks may be read
        into (:class:`~gpubpe.corpus.ChunkReader`'s ``alloc``): pinned memory on
        a device, so that :meth:`add_chunks` (``pinned=True``) copies it up with
        no staging copy; one given back (:meth:`give_buffer`) if large enough."""
        for i, b in enumerate(self._spare):
            if b.shape[0] >= n:
                return self._spare.pop(i)
        if self.dev.sim:
            return np.empty(max(n, 1), np.uint8)
        mem = self.dev.cp.cuda.alloc_pinned_memory(max(n, 1))
        return np.frombuffer(mem, np.uint8, max(n, 1))

    def give_buffer(self, buf: np.ndarray) -> None:
        """Take back a buffer of :meth:`host_buffer` (another file reuses it)."""
        self._spare.append(buf)

    # -- one chunk --------------------------------------------------------------
    def _upload(self, chunk, pinned: bool = False):
        """``chunk`` (bytes, or a uint8 array) as a device uint8 array. On a
        device: copied on the copy stream, from the chunk itself if it is in
        pinned memory (``pinned``: the caller keeps it unchanged until the
        chunk is counted), else through a pinned staging buffer; the compute
        stream waits for the copy."""
        d = self.dev
        host = np.frombuffer(chunk, np.uint8) if isinstance(chunk, (bytes, bytearray, memoryview)) else chunk
        if d.sim:
            return d.to_device(host)
        cp = d.cp
        n = len(chunk)
        self._slot ^= 1
        s = self._slot
        if self._events[s] is not None:
            self._events[s].synchronize()  # the copy that last read this slot's buffers is done
        if self._dbuf[s] is None or self._dbuf[s].shape[0] < n:
            self._dbuf[s] = cp.empty(max(n, 1), np.uint8)
        if not pinned:
            if self._pinned[s] is None or self._pinned[s].shape[0] < n:
                mem = cp.cuda.alloc_pinned_memory(max(n, 1))
                self._pinned[s] = np.frombuffer(mem, np.uint8, max(n, 1))
            self._pinned[s][:n] = host
            host = self._pinned[s][:n]
        buf = self._dbuf[s][:n]
        buf.set(host, stream=self._stream)
        self._events[s] = self._stream.record()
        d.stream.wait_event(self._events[s])
        return buf

    def special_spans(self, data, n: int, specials: tuple[bytes, ...], chunk: bytes):
        """(starts, ends) of the special tokens, as :func:`special_spans` finds
        them: candidates marked on the device (pretok_specials), the few found
        resolved here, left to right, longest first, never overlapping; beyond
        config.DEVICE_SPECIALS_MAX tokens, the host's regex."""
        self._specials_on_device = bool(specials) and len(specials) <= config.DEVICE_SPECIALS_MAX
        if not self._specials_on_device:
            return special_spans(bytes(chunk), specials)
        d, xp = self.dev, self.dev.xp
        if getattr(self, "_specials", None) != specials:
            ordered = sorted(specials, key=len, reverse=True)  # as gpubpe.corpus.special_regex
            self._sp_len = np.array([len(s) for s in ordered], np.int64)
            self._sp_dev = (d.to_device(np.frombuffer(b"".join(ordered), np.uint8)),
                            d.to_device(np.concatenate([[0], np.cumsum(self._sp_len)]).astype(np.int64)))
            self._specials = specials
        mark = d.empty(n, np.uint8)
        self.k.pretok_specials(block=d.block, data=data, n=n, sp_bytes=self._sp_dev[0], sp_off=self._sp_dev[1],
                               mark=mark)
        where = xp.flatnonzero(mark)
        at = d.to_host(where)
        which = d.to_host(mark[where]) if at.size else np.zeros(0, np.uint8)
        t0 = time.perf_counter()
        ends = at + self._sp_len[which.astype(np.int64) - 1] if at.size else at
        if at.size < 2 or bool((at[1:] >= ends[:-1]).all()):
            self.resolve_s += time.perf_counter() - t0
            return at.astype(np.int64), ends.astype(np.int64)  # no two candidates overlap: every one is kept
        starts, kept, free = [], [], 0
        for p, e in zip(at.tolist(), ends.tolist()):  # leftmost first, longest first at each position
            if p >= free:
                free = e
                starts.append(p)
                kept.append(e)
        self.resolve_s += time.perf_counter() - t0
        return np.asarray(starts, np.int64), np.asarray(kept, np.int64)

    def spans(self, data, n: int, specials: tuple[bytes, ...], chunk: bytes):
        """(pos int32 device array, edges): the pre-tokens of the chunk whose
        bytes ``data`` are on the device (:func:`pretok_spans`' layout)."""
        d, k = self.dev, self.k
        a, b = self.special_spans(data, n, specials, chunk)
        info = d.empty(max(n, 1), np.uint8)
        k.pretok_classify(block=d.block, data=data, n=n, sp_start=d.to_device(a), sp_end=d.to_device(b),
                          info=info, **self.tabs)
        ntiles = K.pretok_tiles(n)
        tcount = d.empty(ntiles, np.int32)
        k.pretok_count(block=d.block, data=data, info=info, n=n, tcount=tcount)
        incl = d.xp.cumsum(tcount, dtype=np.int64)
        nedges = int(incl[-1])
        toff = d.to_device(incl - tcount)
        pos = d.empty(max(nedges, 1), np.int32)
        k.pretok_spans(block=d.block, data=data, info=info, n=n, toff=toff, pos=pos)
        return pos, nedges

    def add_chunk(self, chunk, specials: tuple[bytes, ...], data=None) -> None:
        """Count the pre-tokens of ``chunk`` (bytes, or a uint8 array; ``data``:
        its bytes already on the device)."""
        n = len(chunk)
        if n == 0:
            return
        if n > 2**31 - 2:
            raise ValueError(f"a chunk of {n:,} bytes: the device path indexes chunks with int32; "
                             "lower chunk_size (a stretch with no safe cut that long needs backend='cpu')")
        d, k = self.dev, self.k
        data = self._upload(chunk) if data is None else data
        pos, nedges = self.spans(data, n, specials, chunk)
        if nedges == 0:
            return
        occ = d.empty(nedges, np.int32)
        todo, ntodo = pos, 0  # round 0 takes every edge (todo unused)
        before = None
        for rnd in range(self.rounds):
            live = nedges if rnd == 0 else ntodo
            self._reserve(live, n)
            if self.trace is not None and (before is None or before.shape != self.scount.shape):
                before = d.to_host(self.scount)  # the counts before this chunk, in this table's layout
            nxt = d.empty(live, np.int32)
            self.wst[K.WC_NEXT] = 0
            k.wc_insert(block=d.block, data=data, pos=pos, nedges=nedges, todo=todo, ntodo=ntodo, rnd=rnd,
                        hmask=self.hmask, keys=self.keys, words=self.words, reps=self.reps, bits=self.bits,
                        occ_slot=occ, wst=self.wst)
            k.wc_verify(block=d.block, data=data, pos=pos, nedges=nedges, todo=todo, ntodo=ntodo, rnd=rnd,
                        keys=self.keys, words=self.words, reps=self.reps, scount=self.scount, occ_slot=occ,
                        arena=self.arena, wstart=self.wstart, wlen=self.wlen, wslot=self.wslot, wkey=self.wkey,
                        nxt=nxt, wst=self.wst)
            st = d.to_host(self.wst)
            if st[K.WC_ERR]:
                raise RuntimeError("device word count: an internal invariant broke (no room reserved for a "
                                   "new word); please report with the corpus")
            first, self.nwords = self.nwords, int(st[K.WC_NWORDS])
            self.abytes, self.used = int(st[K.WC_ABYTES]), int(st[K.WC_USED])
            if self.nwords > first:
                k.wc_commit(block=d.block, first=first, last=self.nwords, wslot=self.wslot, words=self.words,
                            reps=self.reps)
            if self.trace is not None:
                self.trace.append(self._traced(n, nedges, rnd, live, first, int(st[K.WC_NEXT]), before))
            todo, ntodo = nxt, int(st[K.WC_NEXT])
            if ntodo == 0:
                return
        # what no round placed: counted on the host, exactly (never stored on the device, see wordcount.cu)
        self.host_fallbacks += ntodo
        p = d.to_host(pos)
        for e in d.to_host(todo)[:ntodo].tolist():
            b = int(p[e + 1])
            w = bytes(chunk[int(p[e]) : (b if b >= 0 else ~b)])
            self.host[w] = self.host.get(w, 0) + 1

    def _traced(self, n, nedges, rnd, live, first, left, before) -> dict:
        """The sizes a round worked on, for the cost model (benchmarks/cost_model.py):
        read back from the table, so only when tracing. ``hot``: the most
        occurrences counted at one slot (same-address atomics serialize);
        ``new_occ``: occurrences of the words new in this round (they reach
        the representative election's atomicMin), ``hot_new`` the most at one
        of their slots; ``new_bytes`` the new words' bytes."""
        d = self.dev
        sc = d.to_host(self.scount)
        delta = sc - before
        slots = d.to_host(self.wslot)[first : self.nwords]
        lens = d.to_host(self.wlen)[first : self.nwords]
        return {"n": n, "edges": nedges, "round": rnd, "occ": live, "new_words": self.nwords - first, "left": left,
                "hot": int(delta.max()) if delta.size else 0, "new_occ": int(delta[slots].sum()),
                "hot_new": int(delta[slots].max()) if slots.size else 0, "specials": self._specials_on_device,
                "new_bytes": int(lens.sum()), "slots": int(sc.shape[0])}

    def add_chunks(self, chunks: Iterable, specials: tuple[bytes, ...], *, release=None,
                   pinned: bool = False) -> None:
        """Count every chunk; on a device the next chunk's copy overlaps this
        one's counting. ``release()``, if given, is called once a chunk is
        counted (its host bytes are no longer read: a reader may refill them);
        ``pinned``: the chunks are arrays in pinned memory (:meth:`host_buffer`)."""
        with self.dev.on_stream():
            it: Iterator = iter(chunks)
            ahead = not self.dev.sim  # in cuda-sim add_chunk copies each chunk itself
            nxt = next(it, None)
            up = self._upload(nxt, pinned) if ahead and nxt is not None and len(nxt) else None
            while nxt is not None:
                cur, cur_up = nxt, up
                nxt = next(it, None)
                # copied while cur is counted
                up = self._upload(nxt, pinned) if ahead and nxt is not None and len(nxt) else None
                self.add_chunk(cur, specials, data=cur_up)
                if release is not None:
                    release()  # add_chunk read back from the compute stream: cur's copy is done

    # -- the result ---------------------------------------------------------------
    def table(self) -> DeviceWordTable:
        """The unique words and their counts, on the device (the host fallback's words appended)."""
        d, k, xp = self.dev, self.k, self.dev.xp
        with d.on_stream():
            nw = self.nwords
            off = np.zeros(1, np.int64) if nw == 0 else None
            if nw:
                lens = self.wlen[:nw].astype(np.int64)
                off = xp.concatenate([xp.zeros(1, np.int64), xp.cumsum(lens)])
            off = d.to_device(off)
            total = int(off[-1])
            symbols = d.empty(max(total, 1), np.uint8)
            counts = d.empty(max(nw, 1), np.int64)
            if nw:
                k.wc_extract(block=d.block, nwords=nw, arena=self.arena, wstart=self.wstart, wlen=self.wlen,
                             wslot=self.wslot, scount=self.scount, off=off, symbols=symbols, counts=counts)
            symbols, counts = symbols[:total], counts[:nw]
            if self.host:
                words = list(self.host)
                extra = np.frombuffer(b"".join(words), np.uint8)
                lens = np.fromiter(map(len, words), np.int64, len(words))
                symbols = d.to_device(xp.concatenate([symbols, d.to_device(extra)]))
                off = d.to_device(xp.concatenate([off, total + d.to_device(np.cumsum(lens))]))
                counts = d.to_device(xp.concatenate([counts, d.to_device(np.fromiter(self.host.values(), np.int64))]))
            if not d.sim:
                d.stream.synchronize()
        return DeviceWordTable(d, symbols, off, counts)


def count_device(chunks: Iterable[bytes], specials: tuple[bytes, ...], *, backend: str, hmask: int = -1,
                 rounds: int | None = None) -> DeviceWordTable:
    """Count the chunks' GPT-2 pre-tokens on ``backend`` ('cuda' or 'cuda-sim')."""
    counter = DeviceCounter(device(backend), hmask=hmask, rounds=rounds)
    counter.add_chunks(chunks, specials)
    return counter.table()


def count_device_inputs(paths, texts, specials: tuple[bytes, ...], *, backend: str, chunk_size: int,
                        on_bytes=None, manifest: list | None = None, pattern: str, text_field: str = "text",
                        text_column: str = "text", batches: bool = False) -> DeviceWordTable:
    """Count the inputs (as :func:`gpubpe.pretok.count_inputs`) on ``backend``.
    A plain file is read by a :class:`~gpubpe.corpus.ChunkReader` straight into
    the counter's (pinned) host buffers; other inputs come from
    :func:`~gpubpe.corpus.iter_chunks`. ``manifest`` gets the same entries as
    :func:`~gpubpe.corpus.iter_chunks` gives."""
    counter = DeviceCounter(device(backend))
    counted_at = count_specials(specials, paths, batches)
    if paths is None:
        counter.add_chunks(iter_chunks(None, texts, specials, chunk_size, on_bytes, pattern=pattern), counted_at)
        return counter.table()
    for path in paths:
        if not is_plain_file(path):
            counter.add_chunks(iter_chunks([path], None, specials, chunk_size, on_bytes, pattern=pattern,
                                           text_field=text_field, text_column=text_column, manifest=manifest),
                               counted_at)
            continue
        record = InputRecord(path, on_bytes, manifest)
        with ChunkReader(path, specials, chunk_size, pattern=pattern, alloc=counter.host_buffer,
                         free=counter.give_buffer, on_bytes=record.add, digest=record.digest) as reader:
            counter.add_chunks(reader, counted_at, release=reader.release, pinned=not counter.dev.sim)
        record.done()
    return counter.table()


def pretokenize_device(data: bytes, specials: tuple[bytes, ...], *, backend: str) -> list[bytes]:
    """The GPT-2 pre-tokens of ``data``, in order, found on ``backend``."""
    if not data:
        return []
    counter = DeviceCounter(device(backend))
    d = counter.dev
    with d.on_stream():
        pos, nedges = counter.spans(counter._upload(data), len(data), specials, data)
        p = d.to_host(pos)[:nedges].tolist()
    out = []
    for a, b in zip(p, p[1:]):
        if a >= 0:
            out.append(data[a : (b if b >= 0 else ~b)])
    return out
