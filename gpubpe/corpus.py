"""The corpus, read and cut: files and standard input in blocks, special-token
bounds, and the cuts where a stream may be split without changing a pre-token.

Every later stage sees the corpus as chunks from :func:`iter_chunks`: each one
ends at a safe cut (:func:`safe_cut`), so chunks are pre-tokenized and counted
independently, in any order, and the counts never depend on the chunk size.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import _validate, config
from ._validate import STDIN
from .patterns import GPT2_PATTERN, is_gpt2, is_line_cut

# ---------------------------------------------------------------------------
# Special tokens
# ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def special_regex(specials: tuple[bytes, ...]):
    # Longest first: at one position the alternation takes the first alternative
    # that matches, so `<|eot|><|eot|>` wins over `<|eot|>` (DESIGN §1.1).
    ordered = sorted(specials, key=len, reverse=True)
    return re.compile(b"|".join(re.escape(s) for s in ordered))



def special_bytes(special_tokens: Sequence[str]) -> tuple[bytes, ...]:
    """The special tokens as UTF-8 bytes, in the order given."""
    return tuple(s.encode("utf-8") for s in special_tokens)



def split_specials(data: bytes, specials: tuple[bytes, ...]) -> list[bytes]:
    """The pieces of ``data`` between special tokens (the specials dropped)."""
    if not specials:
        return [data]
    return special_regex(specials).split(data)



def piece_bounds(data: bytes, specials: tuple[bytes, ...], lo: int = 0, hi: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets (int64) of the non-empty pieces between special
    tokens, of ``data[lo:hi]`` (offsets into ``data``)."""
    hi = len(data) if hi is None else hi
    if not specials:
        return np.array([lo], np.int64), np.array([hi], np.int64)
    cuts = [lo]
    first = {s[:1] for s in specials}
    if len(first) == 1 and b"" not in first and isinstance(data, (bytes, bytearray)):
        # All specials start with one byte (``<|...|>``): memchr to each
        # occurrence of it, then the specials longest first, which is what the
        # alternation of special_regex finds (2.5x faster than its finditer on
        # small.txt: the scan is memchr's, Python only sees the candidates).
        lead = first.pop()
        ordered = sorted(specials, key=len, reverse=True)
        find, starts_with = data.find, data.startswith
        p = find(lead, lo, hi)
        while p >= 0:
            for s in ordered:
                if starts_with(s, p, hi):
                    cuts.append(p)
                    cuts.append(p + len(s))
                    p += len(s) - 1
                    break
            p = find(lead, p + 1, hi)
    else:
        for m in special_regex(specials).finditer(data, lo, hi):
            cuts.append(m.start())
            cuts.append(m.end())
    cuts.append(hi)
    b = np.asarray(cuts, dtype=np.int64).reshape(-1, 2)
    b = b[b[:, 1] > b[:, 0]]
    return np.ascontiguousarray(b[:, 0]), np.ascontiguousarray(b[:, 1])


# ---------------------------------------------------------------------------
# Safe cuts
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _ascii_not_space() -> bytes:
    """The 128 ASCII bytes: 1 where ``regex``'s ``\\s`` does not match.

    Note ``\\x1c``-``\\x1f`` are *not* ``\\s`` for ``regex`` (they are for
    ``str.isspace``)."""
    import regex

    return bytes(int(regex.match(r"\s", chr(b)) is None) for b in range(128))


def safe_cut(data: bytes, specials: tuple[bytes, ...] = (), lo: int = 1, *, pattern: str = GPT2_PATTERN) -> int:
    """The largest ``p`` in ``[lo, len(data))`` where ``data`` may be cut, or -1.

    Cutting at ``p`` means ``data[:p]`` and ``data[p:]`` are pre-tokenized and
    counted separately; the counts add up to those of ``data`` whatever follows
    it, because ``p`` is kept at least ``len(longest special) - 1`` bytes from
    the end (an occurrence not yet complete cannot span it), and never falls
    inside an occurrence of a special token.

    GPT-2 pattern (resynchronisation rule): between a character that is not
    whitespace and a whitespace character there is always a pre-token boundary
    (no alternative matches non-space followed by space), and the pattern looks
    ahead only across whitespace, so the two sides pre-tokenize independently.
    We cut only where the space is ASCII (`` `` or ``\\n``) and the byte
    before it is ASCII and not ``\\s``, so no UTF-8 sequence is split.

    cl100k and o200k: right after a ``\\n`` that is followed by an ASCII letter.
    No alternative of either pattern holds a newline followed by a letter (the
    optional prefix of the letter runs excludes ``\\r\\n``; the whitespace and
    punctuation runs stop before a letter), so no pre-token spans the cut. On
    the left, the whitespace run that ends in that newline is one pre-token
    either way: with the letter after it, ``\\s*[\\r\\n]`` (``\\s*[\\r\\n]+``)
    takes the whole run; at the end of the piece, cl100k's ``\\s++$`` takes the
    same run first. Nothing else looks past the cut.

    Any other pattern: there is no such rule in general (a user regex may look
    anywhere), so we cut only right after a special token: the pieces on
    either side are pre-tokenized separately anyway. A file with no special
    tokens is then one chunk.
    """
    n = len(data)
    tail = max((len(s) for s in specials), default=1) - 1
    hi = n - tail  # p < hi leaves the last `tail` bytes uncut
    lo = max(lo, 1)
    if hi <= lo:
        return -1
    if is_line_cut(pattern):
        return _line_cut(data, specials, lo, hi)
    if not is_gpt2(pattern):
        return _special_cut(data, specials, lo, hi)[0]
    not_space = _ascii_not_space()
    ps = data.rfind(b" ", lo, hi)
    pn = data.rfind(b"\n", lo, hi)
    while True:
        p = max(ps, pn)
        if p < lo:
            return -1
        prev = data[p - 1]
        if prev < 0x80 and not_space[prev] and not _spans_special(data, p, specials):
            return p
        # keep the other candidate; only rescan the one used (no quadratic rescans)
        if p == ps:
            ps = data.rfind(b" ", lo, p)
        else:
            pn = data.rfind(b"\n", lo, p)


def cut_after(data: bytes, specials: tuple[bytes, ...], t: int) -> int:
    """The smallest ``p >= max(t, 1)`` where a whole chunk ``data`` (its end
    already a safe cut) may be cut for the GPT-2 pattern, or -1: the rule of
    :func:`safe_cut`, searched forward. Splits a chunk into tasks for worker
    threads (:func:`gpubpe.pretok.tables.count_numba`)."""
    not_space = _ascii_not_space()
    p = max(t, 1)
    while True:
        ps = data.find(b" ", p)
        pn = data.find(b"\n", p)
        p = min(ps, pn) if ps >= 0 and pn >= 0 else max(ps, pn)
        if p < 0:
            return -1
        prev = data[p - 1]
        if prev < 0x80 and not_space[prev] and not _spans_special(data, p, specials):
            return p
        p += 1


def _line_cut(data: bytes, specials: tuple[bytes, ...], lo: int, hi: int) -> int:
    """The largest ``p`` in ``[lo, hi)`` with ``data[p-1] == '\\n'``, ``data[p]`` an
    ASCII letter, outside special tokens; else the special-token cut, or -1."""
    end = hi - 1  # the newline is at q with p = q + 1 in [lo, hi)
    while end > lo - 1:
        q = data.rfind(b"\n", lo - 1, end)
        if q < 0:
            break
        c = data[q + 1]
        if (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) and not _spans_special(data, q + 1, specials):
            return q + 1
        end = q
    return _special_cut(data, specials, lo, hi)[0]


def _spans_special(data: bytes, p: int, specials: tuple[bytes, ...]) -> bool:
    for s in specials:
        n = len(s)
        if n > 1:
            i = data.find(s, max(0, p - n + 1), p + n - 1)
            if i != -1 and i < p:
                return True
    return False


def _special_cut(data: bytes, specials: tuple[bytes, ...], lo: int, hi: int, start: int = 0) -> tuple[int, int]:
    """``(cut, resume)``: ``cut`` is the end of the last special token matched
    with its start before ``hi`` and its end in ``[lo, len(data))``, or -1;
    ``resume`` is where a later scan of the same (grown) data may start.

    The longest-first scan runs from ``start``, which must be a position the
    scan of the whole stream reaches between matches (``0``: the start of a
    chunk is a cut point). A match that starts at least ``len(longest) - 1``
    bytes before the end (``< hi``) cannot change when more bytes arrive, and
    cutting right after it leaves both sides with the same special tokens.
    """
    best = -1
    resume = max(start, hi)
    if not specials:
        return best, resume
    for m in special_regex(specials).finditer(data, start):
        if m.start() >= hi:
            break
        resume = max(resume, m.end())
        if lo <= m.end() < len(data):
            best = m.end()
    return best, resume


def cut_stream(
    blocks: Iterable[bytes],
    specials: tuple[bytes, ...],
    chunk_size: int,
    on_bytes: Callable[[int], None] | None = None,
    *,
    pattern: str = GPT2_PATTERN,
) -> Iterator[bytes]:
    """Re-cut a stream of byte blocks into chunks of about ``chunk_size``, at safe cuts
    (:func:`safe_cut`, which depends on ``pattern``).

    Linear in the stream's length whatever the block size, chunk size or text:
    blocks are joined only when a cut is looked for, each byte is searched for
    a cut about once (a failed search resumes where it stopped), and while no
    cut is found the chunk grows geometrically, so a long stretch without one
    (a file without special tokens on a special-only pattern, megabytes of
    one letter) is copied O(1) times per byte, not once per block.
    """
    if not is_gpt2(pattern) and not is_line_cut(pattern):
        yield from _cut_stream_at_specials(blocks, specials, chunk_size, on_bytes)
        return
    tail = max((len(s) for s in specials), default=1) - 1
    carry = b""
    pending: list[bytes] = []
    size = 0
    need = chunk_size  # join and look for a cut once this many bytes wait
    searched = 0  # carry[:searched] holds no cut (its last `tail` bytes excepted)
    for block in blocks:
        if on_bytes is not None:
            on_bytes(len(block))
        pending.append(block)
        size += len(block)
        if len(carry) + size < need:
            continue
        carry = b"".join([carry, *pending]) if carry else b"".join(pending)
        pending, size = [], 0
        while len(carry) >= chunk_size:
            lo = max(1, searched - tail - 1, len(carry) - 4 * chunk_size - tail)
            p = safe_cut(carry, specials, lo=lo, pattern=pattern)
            if p <= 0:
                searched = len(carry)
                need = 2 * len(carry)  # no safe cut yet: read on, this chunk grows past chunk_size
                break
            yield carry[:p]
            carry = carry[p:]
            searched, need = 0, chunk_size
    if pending:
        carry = b"".join([carry, *pending])
    if carry:
        yield carry


def _cut_stream_at_specials(blocks, specials, chunk_size, on_bytes) -> Iterator[bytes]:
    """:func:`cut_stream` for patterns cut only after special tokens.

    ``fresh`` is where the special-token scan resumes: every byte is scanned
    about once, however long the stream goes without a special token, and
    blocks are joined only when a scan is due (never, without special tokens:
    the whole stream is one chunk, joined once).
    """
    tail = max((len(s) for s in specials), default=1) - 1
    carry = b""
    pending: list[bytes] = []
    size = 0
    need = chunk_size
    fresh = 0
    for block in blocks:
        if on_bytes is not None:
            on_bytes(len(block))
        pending.append(block)
        size += len(block)
        if not specials or len(carry) + size < need:
            continue
        carry = b"".join([carry, *pending]) if carry else b"".join(pending)
        pending, size = [], 0
        hi = len(carry) - tail
        p, resume = _special_cut(carry, specials, 1, hi, fresh)
        if p > 0:
            yield carry[:p]
            carry = carry[p:]
            fresh, need = 0, chunk_size
        else:
            fresh = resume
            need = 2 * len(carry)
    if pending:
        carry = b"".join([carry, *pending])
    if carry:
        yield carry


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


# Between documents that arrive as records (JSONL lines, Parquet rows, the
# strings of a batch): a byte that no UTF-8 encoding of a str holds, cut like
# a special token and never counted, so no pre-token spans two records.
DOC_SEP = b"\xff"

_COMPRESSED = _validate.COMPRESSED
_JSONL = (".jsonl", ".ndjson", ".json")
_PARQUET = _validate.PARQUET


def _kind(path: Path) -> tuple[str, str]:
    """(``text``, ``jsonl`` or ``parquet``; the compression suffix or '')."""
    suffixes = [x.lower() for x in Path(path).suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSED else ""
    inner = suffixes[-2] if comp and len(suffixes) > 1 else (suffixes[-1] if suffixes and not comp else "")
    if inner in _JSONL:
        return "jsonl", comp
    if inner in _PARQUET:
        return "parquet", comp
    return "text", comp


def is_records(path) -> bool:
    """Whether ``path`` holds records (JSONL, Parquet): one document each."""
    return str(path) != STDIN and _kind(Path(path))[0] != "text"


def open_input(path):
    """``path`` as a binary file object, decompressed by its extension
    (``.gz``, ``.xz``, ``.bz2`` with the standard library; ``.zst`` with
    ``zstandard``); ``-`` is standard input."""
    if str(path) == STDIN:
        return sys.stdin.buffer
    comp = _kind(Path(path))[1]
    if comp == ".gz":
        import gzip

        return gzip.open(path, "rb")
    if comp == ".xz":
        import lzma

        return lzma.open(path, "rb")
    if comp == ".bz2":
        import bz2

        return bz2.open(path, "rb")
    if comp == ".zst":
        try:
            import zstandard
        except ImportError:
            raise ImportError(f"{str(path)!r} is zstd-compressed: pip install zstandard (or 'gpubpe[formats]')") from None
        import io

        # buffered, so that JSONL can be read line by line
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def read_blocks(path, block_size: int) -> Iterator[bytes]:
    """The bytes of ``path`` (decompressed; ``-``: standard input, a pipe works
    too) in blocks; a UTF-16 or UTF-32 byte-order mark at the start is refused."""
    f = open_input(path)
    try:
        first = True
        while block := f.read(block_size):
            if first:
                first = False
                _validate.no_utf16(block[:4], path)
            yield block
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _hashed(blocks: Iterable[bytes], digest) -> Iterator[bytes]:
    """``blocks`` unchanged, each one fed to ``digest`` as it passes."""
    for b in blocks:
        digest.update(b)
        yield b


def _doc_bytes(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{where}: the text is a {type(text).__name__}, not a string")
    b = text.encode("utf-8", "surrogateescape")
    if DOC_SEP in b:
        raise ValueError(f"{where}: the text holds an escaped byte 0xff, which cannot be told from a record boundary")
    return b


def iter_records(path, *, text_field: str = "text", text_column: str = "text") -> Iterator[bytes]:
    """The documents of a JSONL or Parquet file, as UTF-8 bytes, in order.

    A line that is not JSON, a record without the field, a value that is not
    a string, a Parquet file without the column: a ``ValueError`` naming the
    file and the line or row, never a silent skip. Blank JSONL lines are skipped.
    """
    kind = _kind(Path(path))[0]
    if kind == "jsonl":
        import json

        with open_input(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from None
                if not isinstance(rec, dict) or text_field not in rec:
                    raise ValueError(f"{path}:{n}: no field {text_field!r} (give the field that holds the text)")
                yield _doc_bytes(rec[text_field], f"{path}:{n}: field {text_field!r}")
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{str(path)!r} is Parquet: pip install pyarrow (or 'gpubpe[formats]')") from None
    pf = pq.ParquetFile(path)
    if text_column not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_column!r} (it has {', '.join(pf.schema_arrow.names)[:200]})")
    row = 0
    for batch in pf.iter_batches(columns=[text_column], batch_size=config.PARQUET_BATCH_ROWS):
        for value in batch.column(0).to_pylist():
            yield _doc_bytes(value, f"{path}: row {row}, column {text_column!r}")
            row += 1


def _record_blocks(path, block_size: int, **fields) -> Iterator[bytes]:
    """A record file as blocks of documents joined by :data:`DOC_SEP`."""
    pending: list[bytes] = []
    size = 0
    for doc in iter_records(path, **fields):
        pending.append(doc)
        size += len(doc) + 1
        if size >= block_size:
            yield DOC_SEP.join(pending) + DOC_SEP
            pending, size = [], 0
    if pending:
        yield DOC_SEP.join(pending)


def peek_batches(texts: Iterable) -> tuple[Iterator, bool]:
    """``(texts, batches)``: the same items, and whether they are batches
    (``list[str]``, each string a document) rather than one stream of str."""
    import itertools

    it = iter(texts)
    first = next(it, None)
    if first is None:
        return iter(()), False
    return itertools.chain([first], it), isinstance(first, (list, tuple))


def count_specials(specials: tuple[bytes, ...], paths, batches: bool = False) -> tuple[bytes, ...]:
    """The special tokens counting must cut at: the user's, plus
    :data:`DOC_SEP` where documents arrive as records or batches."""
    if batches or (paths is not None and any(is_records(p) for p in paths)):
        return specials + (DOC_SEP,)
    return specials


def iter_chunks(
    paths: Sequence[Path] | None,
    texts: Iterable[str] | None,
    specials: tuple[bytes, ...],
    chunk_size: int,
    on_bytes: Callable[[int], None] | None = None,
    *,
    pattern: str = GPT2_PATTERN,
    text_field: str = "text",
    text_column: str = "text",
    manifest: list | None = None,
) -> Iterator[bytes]:
    """Yield the input as chunks of about ``chunk_size`` bytes, each cut safely for ``pattern``.

    Each file is a document of its own (no pre-token spans two files), so the
    order of files does not matter; so is each record of a JSONL or Parquet
    file (``text_field`` / ``text_column`` hold the text), joined by
    :data:`DOC_SEP`, which the counting must then cut at too
    (:func:`count_specials`). A text iterable is one stream: its strings are
    joined, as the lines of a file are; an iterable of ``list[str]`` (batches)
    makes each string a document. ``manifest``: a list that gets
    ``{"path", "size", "blake2b"}`` of each file: the size and hash of the
    bytes pre-tokenized (decompressed; for a record file, its documents joined
    by :data:`DOC_SEP`), taken as they stream by.
    """

    if paths is not None:
        block_size = min(chunk_size, config.READ_BLOCK)
        for path in paths:
            record = InputRecord(path, on_bytes, manifest)
            if is_records(path):
                blocks = _record_blocks(path, block_size, text_field=text_field, text_column=text_column)
                cut_at = specials + (DOC_SEP,)
            else:
                blocks, cut_at = read_blocks(path, block_size), specials
            if record.digest is not None:
                blocks = _hashed(blocks, record.digest)
            yield from cut_stream(blocks, cut_at, chunk_size, record.add, pattern=pattern)
            record.done()
    else:

        texts, batches = peek_batches(texts)

        def encode():
            pending: list[bytes] = []
            size = 0
            for t in texts:
                if isinstance(t, (list, tuple)) != batches:
                    raise TypeError("text inputs mix str and lists of str: give one stream of str, or batches only")
                if batches:  # each string a document
                    b = DOC_SEP.join(_doc_bytes(x, "a text batch") for x in t) + DOC_SEP
                elif isinstance(t, str):
                    b = t.encode("utf-8", "surrogateescape")
                else:
                    raise TypeError(f"text inputs must be str or lists of str (batches), got {type(t).__name__}")
                pending.append(b)
                size += len(b)
                if size >= chunk_size:
                    yield b"".join(pending)
                    pending, size = [], 0
            if pending:
                yield b"".join(pending)

        yield from cut_stream(encode(), specials, chunk_size, on_bytes, pattern=pattern)


class InputRecord:
    """What is recorded of one input file while it is read: its bytes counted
    (:meth:`add`, which passes them on to ``on_bytes``) and, with a
    ``manifest``, hashed by whoever reads them into :attr:`digest`;
    :meth:`done` appends ``{"path", "size", "blake2b"}`` to the manifest
    (:func:`iter_chunks`' ``manifest``)."""

    def __init__(self, path, on_bytes: Callable[[int], None] | None, manifest: list | None):
        import hashlib

        self.path, self.size = path, 0
        self._on_bytes, self._manifest = on_bytes, manifest
        self.digest = hashlib.blake2b(digest_size=16) if manifest is not None else None

    def add(self, n: int) -> None:
        self.size += n
        if self._on_bytes is not None:
            self._on_bytes(n)

    def done(self) -> None:
        if self._manifest is not None:
            self._manifest.append({"path": str(self.path), "size": self.size, "blake2b": self.digest.hexdigest()})


def is_plain_file(path) -> bool:
    """Whether ``path`` is an uncompressed text file on disk (not ``-``, a pipe,
    a record file): one that :class:`ChunkReader` can read at any offset."""
    if str(path) == STDIN:
        return False
    kind, comp = _kind(Path(path))
    return kind == "text" and not comp and Path(path).is_file()


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes of ``fd`` at ``offset`` into ``view`` (fewer only at
    the end of the file); the number read."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


class ChunkReader:
    """A plain file (:func:`is_plain_file`) as chunks cut safely for ``pattern``
    (:func:`safe_cut`), read straight into reusable buffers: on a device they
    are pinned host memory, and a chunk goes up to the device with no staging copy.

    A reader thread fills each buffer (about ``chunk_size`` bytes) with
    ``os.preadv``, in parts of at least ``config.READ_PART_MIN`` bytes read by
    ``threads`` threads (default: config.DEVICE_READ_THREADS, at most one per core); looks for the last safe cut in the buffer's last
    ``config.READ_CUT_WINDOW`` bytes, then in the whole buffer; hands out the
    buffer up to the cut, and starts the next buffer with the bytes after it.
    A buffer with no safe cut is read on into one twice its size, so a long
    stretch without one is copied O(1) times per byte.

    Iterating yields uint8 arrays (views of the buffers). Each one must be given
    back with :meth:`release` (oldest first) once its bytes are no longer needed:
    the buffer is then filled again. ``alloc(n)`` makes a buffer of ``n`` bytes
    (default: ``np.empty``), ``free(buf)`` takes each one back at :meth:`close`.
    ``on_bytes(n)`` is called as bytes are read, ``digest.update`` with the bytes
    in order (the manifest's hash). A UTF-16/32 byte-order mark is refused, as
    :func:`read_blocks` does. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, path, specials: tuple[bytes, ...], chunk_size: int, *, pattern: str = GPT2_PATTERN,
                 alloc: Callable[[int], np.ndarray] | None = None, free: Callable[[np.ndarray], None] | None = None,
                 buffers: int | None = None, threads: int | None = None,
                 on_bytes: Callable[[int], None] | None = None, digest=None):
        import queue
        import threading

        self.path = path
        self.specials, self.pattern = specials, pattern
        self.chunk_size = int(chunk_size)
        self._alloc = alloc or (lambda n: np.empty(n, np.uint8))
        self._free_fn = free
        # the consumer holds two chunks (one counted, the next one copied ahead); a third is being filled
        self._buffers = max(3, int(buffers or config.DEVICE_READ_BUFFERS))
        # more threads than cores only take turns: each part is a copy from the page cache
        self.threads = max(1, int(threads or min(config.DEVICE_READ_THREADS, os.cpu_count() or 1)))
        if not hasattr(os, "preadv"):
            self.threads = 1
        self._on_bytes, self._digest = on_bytes, digest
        self._free: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self._held: list[np.ndarray] = []  # buffers handed out, oldest first
        self._all: list[np.ndarray] = []  # every buffer made (given to `free` at close)
        self._stop = threading.Event()
        self._thread = None
        self._pool = None
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        import threading

        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpubpe-reader", daemon=True)
            self._thread.start()
        while True:
            item = self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            self._held.append(buf)
            yield buf[:n]

    def release(self) -> None:
        """Give back the oldest chunk handed out: its buffer may be filled again."""
        self._free.put(self._held.pop(0))

    def close(self) -> None:
        """Stop the reader (promptly: it checks between reads) and hand every buffer to ``free``."""
        self._stop.set()
        self._free.put(None)  # wakes a reader waiting for a buffer
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._free_fn is not None:
            for b in self._all:
                self._free_fn(b)
        self._all, self._held = [], []

    # -- the reader thread ------------------------------------------------------
    def _take(self, cap: int) -> np.ndarray | None:
        """A free buffer of at least ``cap`` bytes (a new one while fewer than
        ``buffers`` exist, or in place of one too small), None once stopped."""
        while True:
            if len(self._all) < self._buffers:
                buf = self._alloc(cap)
                self._all.append(buf)
                return buf
            buf = self._free.get()
            if buf is None or self._stop.is_set():
                return None
            if buf.shape[0] >= cap:
                return buf
            self._all = [b for b in self._all if b is not buf]  # too small: replaced
            if self._free_fn is not None:
                self._free_fn(buf)

    def _fill(self, buf: np.ndarray, at: int, want: int, offset: int) -> int:
        """Read ``want`` bytes of the file at ``offset`` into ``buf[at:]``; the number read."""
        view = memoryview(buf)[at : at + want]
        if not hasattr(os, "preadv"):
            os.lseek(self._fd, offset, os.SEEK_SET)
            with open(self._fd, "rb", buffering=0, closefd=False) as f:
                done = 0
                while done < want and (got := f.readinto(view[done:])):
                    done += got
                return done
        parts = min(self.threads, max(1, want // config.READ_PART_MIN))
        if parts == 1:
            return _pread_full(self._fd, view, offset)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gpubpe-read")
        step = -(-want // parts)
        bounds = [(a, min(a + step, want)) for a in range(0, want, step)]
        got = list(self._pool.map(lambda ab: _pread_full(self._fd, view[ab[0] : ab[1]], offset + ab[0]), bounds))
        done = 0
        for (a, b), g in zip(bounds, got):  # a short part (the file shrank): what follows it is not read
            done += g
            if g < b - a:
                break
        return done

    def _cut(self, buf: np.ndarray, n: int) -> int:
        """The last safe cut in ``buf[:n]``, or -1."""
        tail = max((len(s) for s in self.specials), default=1)
        start = max(0, n - config.READ_CUT_WINDOW - tail)
        if start > 0:  # the window, with `tail` bytes before it so special tokens across its start are seen
            p = safe_cut(bytes(buf[start:n]), self.specials, lo=tail, pattern=self.pattern)
            if p > 0:
                return start + p
        return safe_cut(bytes(buf[:n]), self.specials, pattern=self.pattern)

    def _run(self) -> None:
        try:
            size = os.fstat(self._fd).st_size
            offset, carry, first = 0, b"", True
            while not self._stop.is_set():
                m = len(carry)
                # a carry with no cut in it (at most what is left of a buffer) is read on in a buffer twice its size
                cap = max(1, min(max(self.chunk_size, 2 * m), m + size - offset))
                buf = self._take(cap)
                if buf is None:
                    return
                buf[:m] = np.frombuffer(carry, np.uint8)
                want = min(cap - m, size - offset)
                got = self._fill(buf, m, want, offset) if want > 0 else 0
                offset += got
                n = m + got
                if first and n:
                    first = False
                    _validate.no_utf16(bytes(buf[: min(n, 4)]), self.path)
                if got and self._on_bytes is not None:
                    self._on_bytes(got)
                end = got < want or offset >= size
                p = n if end else self._cut(buf, n)
                if p <= 0 and not end:  # no safe cut yet: read on
                    carry = bytes(buf[:n])
                    self._free.put(buf)
                    continue
                carry = bytes(buf[p:n])
                if self._digest is not None:
                    self._digest.update(buf[:p])
                if p:
                    self._out.put((buf, p))
                else:
                    self._free.put(buf)
                if end:
                    break
            self._out.put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            self._out.put(e)


def input_size(paths: Sequence[Path] | None) -> int | None:
    """Total bytes of the inputs, or None where one is a stream (stdin, a pipe)."""
    if paths is None:
        return None
    total = 0
    for p in paths:
        if str(p) == STDIN or not Path(p).is_file():
            return None
        total += os.path.getsize(p)
    return total
