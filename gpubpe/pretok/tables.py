"""Exact counting with the Numba state machine: per-thread hash tables keyed by
the pre-tokens' bytes, merged into one, handed on as a WordTable."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable

import numpy as np

from .. import config
from ..corpus import cut_after, piece_bounds
from . import unicode


class CountTable:
    """A Numba counting table: short words keyed by their packed bytes, longer
    ones by hash with full comparison (layouts in :mod:`gpubpe._pretok_numba`)."""

    _FIELDS = ("short", "mid", "slots", "hashes", "offs", "arena", "counts")

    # A second table whose words this one stands for too, not yet merged in:
    # to_wordtable() and to_dict() read both in two threads (machine.emit_pair),
    # anything else merges it first (_settle).
    deferred: "CountTable | None" = None

    def __init__(self, words: int = 1 << 10, arena: int = 1 << 14):
        self.short = np.zeros(2 * 4 * words, dtype=np.uint64)
        self.mid = np.zeros(3 * 4 * words, dtype=np.uint64)
        self.slots = np.zeros(4 * words, dtype=np.int64)
        self.hashes = np.empty(words, dtype=np.uint64)
        self.offs = np.zeros(words + 1, dtype=np.int64)
        self.arena = np.empty(arena, dtype=np.uint8)
        self.counts = np.empty(words, dtype=np.int64)
        self.n = np.zeros(4, dtype=np.int64)  # long words, arena bytes used, short words, mid words

    @property
    def nwords(self) -> int:
        """Words in this table (a deferred one not counted)."""
        return int(self.n[0] + self.n[2] + self.n[3])

    def _settle(self) -> None:
        if self.deferred is not None:
            other, self.deferred = self.deferred, None
            self.merge(other)

    def _set(self, arrays) -> None:
        for name, a in zip(self._FIELDS, arrays):
            setattr(self, name, a)

    def _arrays(self):
        return [getattr(self, name) for name in self._FIELDS]

    def add_chunk(self, chunk: bytes, specials: tuple[bytes, ...], scan_tables, lo: int = 0, hi: int | None = None
                  ) -> None:
        """Count the pre-tokens of ``chunk[lo:hi]`` (``scan_tables``: :func:`gpubpe.pretok.unicode.scan_tables`)."""
        from .machine import count_pieces

        starts, ends = piece_bounds(chunk, specials, lo, hi)
        data = np.frombuffer(chunk, dtype=np.uint8)
        self._set(count_pieces(data, starts, ends, *scan_tables, config.PRETOK_BATCH, *self._arrays(), self.n))

    def merge(self, other: CountTable) -> None:
        from .machine import merge_tables

        self._settle()
        other._settle()
        self._set(
            merge_tables(
                *self._arrays(), self.n,
                other.short, other.mid, other.hashes, other.offs, other.arena, other.counts, other.n,
            )
        )  # fmt: skip

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(symbols int32, offsets int64, counts int64) of every word."""
        from .machine import flatten

        if self.deferred is not None:
            return self._pair_arrays()
        symbols, offsets, counts, _ = flatten(self.short, self.mid, self.offs, self.arena, self.counts, self.n, False,
                                              np.empty(0, np.int32))
        return symbols, offsets, counts

    def _pair_arrays(self, g: int = 0, dtype=np.int32):
        """:meth:`arrays` of this table and the deferred one, written in two
        threads (one per table) into the same arrays. They are sized for both
        tables' words and returned as views of that: the slack is the bytes
        of the words both tables hold (8.5% of the symbols on small.txt with
        2 workers, 2 MB), cheaper to keep than to copy the arrays to trim it.

        ``g`` 1: the bytes (``dtype`` uint8) laid out with a gap after each
        word, as :func:`~gpubpe.pretok.machine.flatten` with ``gaps`` does,
        gaps not yet filled; a fourth value is then the byte values written
        (``seen``, 256 entries)."""
        from .machine import emit_pair, table_bytes

        a, b = self, self.deferred
        wa, ba = table_bytes(a.short, a.mid, a.n)
        wb, bb = table_bytes(b.short, b.mid, b.n)
        symbols = np.empty(ba + bb + g * (wa + wb), dtype)
        offsets = np.empty(wa + wb + 1, np.int64)
        counts = np.empty(wa + wb, np.int64)
        offsets[0], offsets[wa] = 0, ba
        rows = [0, 0]
        seen = [np.zeros(256 if g else 0, np.uint8) for _ in range(2)]

        def emit(k: int, t: CountTable, o: CountTable, w0: int, pos0: int) -> None:
            rows[k] = emit_pair(t.short, t.mid, t.hashes, t.offs, t.arena, t.counts, t.n, o.short, o.mid, o.slots,
                                o.offs, o.arena, o.counts, k == 0, symbols, offsets, counts, w0, pos0, g, seen[k])

        _in_threads(emit, [(0, a, b, 0, 0), (1, b, a, wa, ba + g * wa)])
        total = rows[0] + rows[1]
        out = symbols[: offsets[total] + g * max(total - 1, 0)], offsets[: total + 1], counts[:total]
        return (*out, seen[0] | seen[1]) if g else out

    def to_wordtable(self):
        from ..wordtable import WordTable

        symbols, offsets, counts = self.arrays()
        return WordTable(symbols, offsets, counts)

    def to_dict(self) -> dict[bytes, int]:
        """``{word bytes: count}``. The words come out of the tables joined
        around a byte that none of them holds, and ``bytes.split`` cuts them in
        C. What is left is the dict itself: on small.txt (399,355 words, 2-core
        VM) the flat copy takes 0.02 s, the split into bytes objects 0.018 s,
        the counts' ``tolist`` 0.003 s and ``dict(zip(...))`` 0.055-0.065 s,
        which is CPython inserting 400,000 keys (hashing them first, or
        turning the GC off, changes nothing measurable): about 0.1 s that only
        a table without Python objects (:meth:`to_wordtable`) avoids.

        A deferred table is not merged first: both are read in two threads
        (as :meth:`to_wordtable` does), which skips the last merge, a chain
        of insertions in one thread (0.03-0.06 s on small.txt, 2 workers)."""
        from .machine import flatten

        if self.deferred is not None:
            raw, offsets, counts, seen = self._pair_arrays(1, np.uint8)
            free = np.flatnonzero(seen == 0)
            sep = int(free[-1]) if free.shape[0] else -1
            if sep >= 0 and offsets.shape[0] > 2:
                raw[offsets[1:-1] + np.arange(offsets.shape[0] - 2)] = sep  # the gaps: after each word but the last
        else:
            raw, offsets, counts, sep = flatten(self.short, self.mid, self.offs, self.arena, self.counts, self.n,
                                                True, np.empty(0, np.uint8))
        return _words_dict(raw, offsets, counts, sep)


def _words_dict(raw: np.ndarray, offsets: np.ndarray, counts: np.ndarray, sep: int) -> dict[bytes, int]:
    """``{word: count}`` of words laid out with one gap byte after each but
    the last (word ``k`` at ``raw[offsets[k] + k: offsets[k + 1] + k]``),
    the gaps set to ``sep``, a byte no word holds (-1: every byte value
    occurs, and the words are sliced instead of split)."""
    if offsets.shape[0] == 1:
        return {}
    data = raw.tobytes()
    if sep >= 0:
        words = data.split(bytes([sep]))
    else:  # every byte value occurs in some word: slice (word k starts k gap bytes later)
        k = np.arange(offsets.shape[0] - 1, dtype=np.int64)
        starts, ends = (offsets[:-1] + k).tolist(), (offsets[1:] + k).tolist()
        words = map(data.__getitem__, map(slice, starts, ends))
    return dict(zip(words, counts.tolist()))


def _tasks(chunk: bytes, specials: tuple[bytes, ...], parts: int):
    """``(chunk, lo, hi)`` ranges that cover ``chunk``, about ``len(chunk) /
    parts`` bytes each, cut where the counts cannot change (:func:`cut_after`)."""
    lo = 0
    step = -(-len(chunk) // parts)
    while lo < len(chunk):
        hi = cut_after(chunk, specials, lo + step) if lo + step < len(chunk) else -1
        if hi < 0:
            hi = len(chunk)
        yield chunk, lo, hi
        lo = hi


def count_numba(chunks: Iterable[bytes], specials: tuple[bytes, ...], workers: int) -> CountTable:
    """Count every chunk into Numba tables, one per worker thread, then merge them.

    Threads, not processes: the counting function is ``nogil``, so threads run
    in parallel without forking, without pickling chunks or tables, and
    without a second copy of the interpreter's memory. With several workers a
    chunk is handed out as tasks of about ``config.PRETOK_TASK_BYTES`` (cut
    where the counts cannot change), so that 16 threads stay busy on a corpus
    of a few chunks. Read-ahead is bounded (a queue of ``workers`` tasks), so
    at most ``2 * workers + 1`` chunks are alive at once. The tables are
    merged in rounds of pairs down to two (:func:`merge_all`), which the
    WordTable is then read from in two threads.
    """
    tabs = unicode.scan_tables()
    # One worker runs in a thread too: compiled code called from the main
    # thread would hold Ctrl-C until it returns (and then fail in Numba's
    # dispatcher); here the main thread only feeds the queue and stays
    # interruptible.
    tables = [CountTable() for _ in range(workers)]
    todo: queue.Queue = queue.Queue(maxsize=workers)
    errors: list[BaseException] = []

    def work(table: CountTable) -> None:
        while (task := todo.get()) is not None:
            if errors:
                continue  # drain: the main thread stops feeding and sends the sentinels
            try:
                c, lo, hi = task
                table.add_chunk(c, specials, tabs, lo, hi)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in tables]
    for t in threads:
        t.start()
    try:
        for c in chunks:
            parts = min(workers, -(-len(c) // config.PRETOK_TASK_BYTES)) if workers > 1 else 1
            for task in _tasks(c, specials, parts) if parts > 1 else [(c, 0, len(c))]:
                if errors:
                    break
                todo.put(task)
            if errors:
                break
    finally:
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    # an empty table is skipped (its merge would load compiled code for nothing)
    tables = [t for t in tables if t.nwords] or tables[:1]
    return merge_all(tables)


def _in_threads(fn, arglists) -> None:
    """``fn(*args)`` for each of ``arglists``, each in a thread of its own
    (the compiled work releases the GIL); the first exception a thread
    raised is raised again here, in the caller's thread."""
    errors: list[BaseException] = []

    def run(args) -> None:
        try:
            fn(*args)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(args,), daemon=True) for args in arglists]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def merge_all(tables: list[CountTable]) -> CountTable:
    """One table standing for the words of all ``tables`` (which it consumes);
    of the last two, one is deferred into the other rather than merged.

    Merged in rounds, pairs at once in threads (the merge is ``nogil``): the
    largest table of a round takes the smallest, the second the second
    smallest, and so on, so that 16 tables merge in 4 rounds, the longest
    chain of merges being 4 instead of 15 in a row."""
    tables = sorted(tables, key=lambda t: t.nwords, reverse=True)
    while len(tables) > 2:
        half = len(tables) // 2
        pairs = [(tables[i], tables[len(tables) - 1 - i]) for i in range(half)]
        if len(pairs) == 1:
            pairs[0][0].merge(pairs[0][1])
        else:
            _in_threads(CountTable.merge, pairs)
        rest = tables[half : len(tables) - half]  # the middle one of an odd round waits for the next
        tables = sorted([a for a, _ in pairs] + rest, key=lambda t: t.nwords, reverse=True)
    if len(tables) == 2:  # the last merge is left to the reader: to_wordtable() needs none (see CountTable)
        tables[0].deferred = tables[1]
    return tables[0]
