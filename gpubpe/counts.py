"""Word counts as an artefact: counted anywhere, saved, merged exactly, trained from.

Counts of pre-tokens add up, so a corpus can be counted in shards, on other
processes or machines, and the merge loop still sees exactly the counts of the
whole corpus (DESIGN §2). :class:`WordCounts` is those counts (int64) with what
they were made with: the pattern, the special tokens, the Unicode class table,
gpubpe's version and the inputs' manifest. Counts made otherwise are refused
when merged, with an error that says which.

On disk (``WordCounts.save``), a directory written as one set
(:mod:`gpubpe._files`):

* ``counts.json``: ``{"format": "gpubpe-counts", "version": 1, "pattern",
  "special_tokens", "unicode", "gpubpe", "inputs": [{"path", "size",
  "blake2b"}], "words", "pretokens"}``;
* ``words.npy`` (uint8: every word's bytes, concatenated), ``offsets.npy``
  (int64[words + 1]: word ``k`` is ``words[offsets[k]:offsets[k+1]]``) and
  ``counts.npy`` (int64[words]): plain NumPy arrays, read with
  ``np.load(..., mmap_mode="r")`` to stream;
* ``gpubpe-files.json``: each file's size and SHA-256, checked on load, so a
  truncated or corrupted file is an error, never wrong merges.

Distributed counting (:func:`count` with ``executor=``): one task per input
file counts it; its words are split into ``buckets`` by a stable hash of their
bytes (the same on every machine, unlike Python's salted ``hash``); one reduce
task per bucket merges that bucket of every shard. The buckets hold disjoint
words, so no process ever holds every unique word in one dict.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _validate, config
from ._files import check_set, write_set
from .corpus import special_bytes
from .patterns import resolve_pattern
from .pretok import count_inputs, table_of
from .pretok import unicode as _unicode
from .wordtable import WordTable

FORMAT = "gpubpe-counts"
VERSION = 1
META_FILE = "counts.json"
NAMES = (META_FILE, "words.npy", "offsets.npy", "counts.npy")


class WordCounts:
    """Unique pre-tokens with int64 counts, and what they were made with.

    words:   uint8[total]: every word's bytes, concatenated
    offsets: int64[W + 1]
    counts:  int64[W], every count > 0, each word once
    meta:    ``pattern``, ``special_tokens``, ``unicode``, ``gpubpe``, ``inputs``
    """

    def __init__(self, words: np.ndarray, offsets: np.ndarray, counts: np.ndarray, meta: dict):
        self.words = np.ascontiguousarray(words, dtype=np.uint8)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.counts = np.ascontiguousarray(counts, dtype=np.int64)
        self.meta = dict(meta)
        self.run: dict = {}
        if self.offsets.shape[0] != self.counts.shape[0] + 1 or self.offsets[-1] != self.words.shape[0]:
            raise ValueError("WordCounts: offsets do not match words and counts")

    # --- what they are -------------------------------------------------------

    @property
    def pattern(self) -> str:
        return self.meta["pattern"]

    @property
    def special_tokens(self) -> list[str]:
        return list(self.meta["special_tokens"])

    @property
    def num_words(self) -> int:
        return int(self.counts.shape[0])

    @property
    def pretokens(self) -> int:
        return int(self.counts.sum())

    def __len__(self) -> int:
        return self.num_words

    def __repr__(self) -> str:
        return (f"WordCounts({self.num_words:,} words, {self.pretokens:,} pre-tokens, "
                f"{len(self.meta.get('inputs', []))} input(s))")

    def to_dict(self) -> dict[bytes, int]:
        return self.to_table().to_counts()

    def to_table(self) -> WordTable:
        """The WordTable the merge loop takes (symbols = bytes)."""
        return WordTable(self.words.astype(np.int32), self.offsets.copy(), self.counts.copy())

    @classmethod
    def from_table(cls, table: WordTable, meta: dict) -> "WordCounts":
        return cls(table.symbols.astype(np.uint8), table.offsets, table.counts, meta)

    @classmethod
    def from_dict(cls, counts: dict, *, special_tokens: Sequence[str] = (), pattern: str = "gpt2",
                  inputs=()) -> "WordCounts":
        """Counts made elsewhere (``{bytes: count}``), with what they were made with."""
        return cls.from_table(WordTable.from_counts(counts),
                              _meta(pattern=resolve_pattern(pattern),
                                    special_tokens=list(_validate.special_tokens(special_tokens)),
                                    inputs=list(inputs)))

    # --- merging -------------------------------------------------------------

    def __add__(self, other: "WordCounts") -> "WordCounts":
        if not isinstance(other, WordCounts):
            return NotImplemented
        return WordCounts.merge([self, other])

    @staticmethod
    def merge(parts: Sequence["WordCounts"]) -> "WordCounts":
        """The exact sum of ``parts`` (counts of the same word add up).

        Refused, with the field named, when the parts were made with another
        pattern, other special tokens or another Unicode class table.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("WordCounts.merge needs at least one WordCounts")
        for p in parts:
            if not isinstance(p, WordCounts):
                raise TypeError(f"WordCounts.merge takes WordCounts, got {type(p).__name__}")
        check_compatible(parts)
        meta = dict(parts[0].meta)
        meta["inputs"] = [i for p in parts for i in p.meta.get("inputs", [])]
        if len(parts) == 1:
            return parts[0]
        return _reduce([p.arrays() for p in parts], meta)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.words, self.offsets, self.counts

    # --- on disk ---------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the counts into ``directory`` as one set (see the module doc); returns it."""
        import io

        def npy(a) -> bytes:
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=False)
            return buf.getvalue()

        doc = dict(self.meta, format=FORMAT, version=VERSION, words=self.num_words, pretokens=self.pretokens)
        files = {
            META_FILE: json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"),
            "words.npy": npy(self.words),
            "offsets.npy": npy(self.offsets),
            "counts.npy": npy(self.counts),
        }
        write_set(directory, files, NAMES)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = False) -> "WordCounts":
        """Read counts written by :meth:`save` (or ``gpubpe count --out``).

        Every file is checked against the set's manifest (sizes and SHA-256)
        first, so a truncated or corrupted file is an error; the arrays come
        from the bytes the check read. ``mmap``: map the arrays instead (the
        check still reads them once).
        """
        d = Path(directory)
        meta_path = d / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no {META_FILE} in {str(directory)!r}: point at a directory written by "
                                    "`gpubpe count --out` or WordCounts.save")
        if not (d / "gpubpe-files.json").is_file():
            raise ValueError(f"{d} has no gpubpe-files.json: the counts cannot be checked; count them again")
        data = check_set(d, NAMES)  # every file, checked and read once
        try:
            absent = [n for n in NAMES if n not in data]
            if absent:
                raise ValueError(f"the set does not list {', '.join(absent)}")
            meta = json.loads(data[META_FILE].decode("utf-8"))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
            if mmap:
                arrays = [np.load(d / n, mmap_mode="r", allow_pickle=False) for n in NAMES[1:]]
            else:
                arrays = [np.load(io.BytesIO(data[n]), allow_pickle=False) for n in NAMES[1:]]
            missing = [k for k in ("pattern", "special_tokens", "words") if k not in meta]
            if missing:
                raise KeyError(", ".join(missing))
            out = cls(*arrays, {k: v for k, v in meta.items() if k not in ("format", "version", "words", "pretokens")})
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise ValueError(f"{d} does not hold gpubpe word counts ({type(e).__name__}: {e}); count them again") from None
        if out.num_words != meta["words"] or (out.counts <= 0).any():
            raise ValueError(f"{d}: the counts do not match {META_FILE}; count them again")
        return out


def _meta(*, pattern: str, special_tokens: list[str], inputs: list) -> dict:
    from ._version import __version__

    return {"pattern": pattern, "special_tokens": special_tokens, "unicode": _unicode.table_id(),
            "gpubpe": __version__, "inputs": inputs}


def check_compatible(parts: Sequence[WordCounts]) -> None:
    """Refuse counts made with another pattern, specials or Unicode table."""
    first = parts[0].meta
    for i, p in enumerate(parts[1:], 1):
        m = p.meta
        if m["pattern"] != first["pattern"]:
            raise ValueError(f"counts {i} were made with another pattern ({m['pattern'][:60]!r}, not "
                             f"{first['pattern'][:60]!r}): count every part with the same pattern")
        if list(m["special_tokens"]) != list(first["special_tokens"]):
            raise ValueError(f"counts {i} were made with special tokens {m['special_tokens']}, not "
                             f"{first['special_tokens']}: count every part with the same special tokens")
        a, b = str(m.get("unicode")), str(first.get("unicode"))
        if a.rsplit(":", 1)[-1] != b.rsplit(":", 1)[-1]:
            raise ValueError(f"counts {i} were made with the Unicode table {a}, not {b}: count every part "
                             "with the same regex version")


# ---------------------------------------------------------------------------
# Exact merging: stable-hash buckets, each reduced on its own
# ---------------------------------------------------------------------------


def stable_bucket(words: np.ndarray, offsets: np.ndarray, buckets: int) -> np.ndarray:
    """int64[W]: the bucket of each word, from a hash of its bytes that is the
    same in every process and on every machine (a polynomial over the bytes,
    mod 2^64, then mixed)."""
    n = offsets.shape[0] - 1
    if n == 0 or buckets == 1:
        return np.zeros(n, np.int64)
    lengths = np.diff(offsets)
    pos = np.arange(words.shape[0], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    with np.errstate(over="ignore"):
        weight = _powers(int(lengths.max()))[pos]
        h = np.add.reduceat(words.astype(np.uint64) * weight, offsets[:-1]) if words.size else np.zeros(n, np.uint64)
        h[lengths == 0] = 0
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return (h % np.uint64(buckets)).astype(np.int64)


def _powers(n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.cumprod(np.full(n, np.uint64(1099511628211), np.uint64)) if n else np.zeros(0, np.uint64)


def split_buckets(words, offsets, counts, buckets: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The words in ``buckets`` key-disjoint parts, by :func:`stable_bucket`."""
    b = stable_bucket(words, offsets, buckets)
    out = []
    lengths = np.diff(offsets)
    for k in range(buckets):
        sel = np.flatnonzero(b == k)
        ls = lengths[sel]
        offs = np.zeros(sel.size + 1, np.int64)
        np.cumsum(ls, out=offs[1:])
        idx = np.repeat(offsets[:-1][sel], ls) + (np.arange(offs[-1], dtype=np.int64) - np.repeat(offs[:-1], ls))
        out.append((words[idx], offs, counts[sel]))
    return out


def _reduce(parts, meta: dict) -> WordCounts:
    """One bucket (or one process's counts): the exact sum of ``parts``, each
    ``(words, offsets, counts)``."""
    from collections import Counter

    total: Counter = Counter()
    for words, offsets, counts in parts:
        table = WordTable(np.asarray(words).astype(np.int32), np.asarray(offsets, np.int64), np.asarray(counts, np.int64))
        total.update(table.to_counts())
    return WordCounts.from_table(WordTable.from_counts(total), meta)


def _concat(parts, meta: dict) -> WordCounts:
    """Key-disjoint buckets side by side: no merging needed."""
    words = np.concatenate([p.words for p in parts]) if parts else np.zeros(0, np.uint8)
    counts = np.concatenate([p.counts for p in parts]) if parts else np.zeros(0, np.int64)
    lengths = np.concatenate([np.diff(p.offsets) for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return WordCounts(words, offsets, counts, meta)


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------


def count(
    inputs,
    *,
    special_tokens: Sequence[str] = (),
    pattern: str = "gpt2",
    workers: int | None = None,
    executor=None,
    buckets: int | None = None,
    chunk_size: int = config.CHUNK_SIZE,
    text_field: str = "text",
    text_column: str = "text",
    progress: bool | None = None,
) -> WordCounts:
    """Count the unique pre-tokens of ``inputs`` into :class:`WordCounts`.

    inputs:    what :func:`gpubpe.train` takes (files, ``-``, directories,
               globs, compressed text, JSONL, Parquet, iterables of str or of
               ``list[str]``).
    workers:   threads (GPT-2 pattern) or processes (others) in this process;
               None: all cores.
    executor:  a ``concurrent.futures.Executor`` (a process pool, Dask's
               ``Client.get_executor()``, a wrapper over Ray as in the README)
               or a Dask ``Client``: each input file is counted as one task on it, and the
               results are merged in ``buckets`` key-disjoint reduce tasks
               (default: twice the shards, at most 64). Needs file inputs.
    progress:  a bar on stderr (bytes read here, shards done on an executor);
               default: when stderr is a terminal.
    The counts never depend on ``workers``, ``executor``, ``buckets`` or how the
    corpus is split into files. ``WordCounts.run`` (not saved) holds how the
    run went: ``seconds`` and, on an executor, ``shard_seconds`` per file.
    """
    import time

    from ._progress import bar, want_progress

    show = want_progress(progress)
    t0 = time.perf_counter()
    specials_str = list(_validate.special_tokens(special_tokens))
    pattern = resolve_pattern(pattern)
    chunk_size = _validate.chunk_size(chunk_size)
    paths, texts = _validate.inputs(inputs)
    opts = {"special_tokens": specials_str, "pattern": pattern, "chunk_size": chunk_size,
            "text_field": text_field, "text_column": text_column}
    if executor is None:
        from .corpus import input_size

        read_bar = bar(show, total=input_size(paths), unit="B", unit_scale=True, desc="count")
        try:
            words, offsets, counts, manifest = _count_local(
                paths, texts, workers=_validate.workers(workers), on_bytes=read_bar.update if read_bar else None, **opts)
        finally:
            if read_bar is not None:
                read_bar.close()
        wc = WordCounts(words, offsets, counts, _meta(pattern=pattern, special_tokens=specials_str, inputs=manifest))
        wc.run = {"seconds": time.perf_counter() - t0}
        return wc
    if paths is None or any(str(p) == "-" for p in paths):
        raise ValueError("counting on an executor needs files (each one a task), not standard input or text in memory")
    if buckets is not None and (not _validate.is_int(buckets) or buckets < 1):
        raise ValueError(f"buckets must be a positive int, got {buckets!r}")
    nb = int(buckets) if buckets is not None else min(64, 2 * len(paths))
    meta = _meta(pattern=pattern, special_tokens=specials_str, inputs=[])
    shard_bar = bar(show, total=len(paths), unit="shard", desc="count")
    try:
        if _is_dask_client(executor):
            wc, shard_seconds = _count_dask(executor, [str(p) for p in paths], opts, nb, meta, shard_bar)
        else:
            shards = [executor.submit(_count_shard, str(p), opts, nb) for p in paths]
            results = []
            for f in shards:  # per shard: (buckets, manifest entry, seconds), in input order
                results.append(f.result())
                if shard_bar is not None:
                    shard_bar.update(1)
            reduced = [executor.submit(_reduce_bucket, [r[0][k] for r in results]) for k in range(nb)]
            meta["inputs"] = [r[1] for r in results]
            shard_seconds = [r[2] for r in results]
            wc = _concat([f.result() for f in reduced], meta)
    finally:
        if shard_bar is not None:
            shard_bar.close()
    wc.run = {"seconds": time.perf_counter() - t0, "shard_seconds": shard_seconds}
    return wc


def _count_local(paths, texts, *, workers, special_tokens, pattern, chunk_size, text_field, text_column,
                 on_bytes=None):
    manifest: list = []
    counted = count_inputs(paths, texts, special_bytes(special_tokens), workers=workers, pattern=pattern,
                           chunk_size=chunk_size, on_bytes=on_bytes, text_field=text_field,
                           text_column=text_column, manifest=manifest)
    table = table_of(counted)
    return table.symbols.astype(np.uint8), table.offsets, table.counts, manifest


def _count_shard(path: str, opts: dict, buckets: int):
    """A task: count one file (one worker thread: the executor runs tasks side
    by side) and split its words into ``buckets`` key-disjoint parts."""
    import time

    t = time.perf_counter()
    words, offsets, counts, manifest = _count_local([Path(path)], None, workers=1, **opts)
    return split_buckets(words, offsets, counts, buckets), manifest[0], time.perf_counter() - t


def _reduce_bucket(parts) -> WordCounts:
    return _reduce(parts, {})


def _is_dask_client(obj) -> bool:
    return type(obj).__name__ == "Client" and type(obj).__module__.startswith("distributed")


def _count_dask(client, paths: list[str], opts: dict, nb: int, meta: dict, shard_bar=None):
    """Dask: the shards' buckets stay on the workers; each reduce task gets
    its bucket of every shard worker to worker, never through this process."""
    from dask.distributed import as_completed

    shards = client.map(_count_shard, paths, opts=opts, buckets=nb, pure=False)
    pick = [[client.submit(_bucket_of, s, k, pure=False) for s in shards] for k in range(nb)]
    reduced = [client.submit(_reduce_bucket, parts, pure=False) for parts in pick]
    info = [client.submit(_info_of, s, pure=False) for s in shards]
    for _ in as_completed(info):
        if shard_bar is not None:
            shard_bar.update(1)
    infos = client.gather(info)
    meta["inputs"] = [i[0] for i in infos]
    return _concat(client.gather(reduced), meta), [i[1] for i in infos]


def _bucket_of(shard, k: int):
    return shard[0][k]


def _info_of(shard):
    return shard[1], shard[2]


def dask_client(address: str):
    """A Dask ``Client`` for ``address`` (``tcp://host:8786``), or a new
    ``LocalCluster`` for ``local`` / ``local:N`` (N workers)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("counting on Dask needs dask.distributed: pip install 'gpubpe[dask]'") from None
    if address == "local" or address.startswith("local:"):
        n = int(address.split(":", 1)[1]) if ":" in address else None
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    return Client(address)


def load_all(directories: Sequence[str | os.PathLike]) -> WordCounts:
    """Load and merge several count directories (``gpubpe train --counts A --counts B``)."""
    return WordCounts.merge([WordCounts.load(d) for d in directories])
