"""Pre-tokenization and exact counting of unique pre-tokens (DESIGN §1.1-1.3).

The input is bytes. It is cut at special tokens (longest first), each piece is
split with the pre-tokenization pattern exactly as the ``regex`` package splits
``piece.decode("utf-8", "surrogateescape")`` (invalid bytes are characters of
their own), and the pieces are counted.

Two engines give the same pre-tokens:

* the GPT-2 pattern (the default) runs as a byte-level state machine in Numba
  (:mod:`gpubpe._pretok_numba`), counted into hash tables keyed by the bytes,
  in ``workers`` threads (the Numba code releases the GIL);
* any other pattern (``'cl100k'``, ``'o200k'``, a regex string), and inputs
  below ``config.NUMBA_PRETOKENIZE_BYTES``, go through ``regex``, in worker
  processes.

Large inputs are streamed in chunks cut only where the result cannot change
(:func:`safe_cut`); memory stays bounded by a few chunks plus the unique words,
and the result does not depend on the chunk size or the number of workers.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import _validate, config

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# tiktoken's cl100k_base and o200k_base patterns, verbatim.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "o200k": O200K_PATTERN}


def resolve_pattern(pattern) -> str:
    """The regex text for ``pattern``: a name in :data:`PATTERNS` or a regex string.

    Refused, each with a message that says what to write instead:

    * a bare word that is not a known name (``GPT2``, ``gpt-2``, ``cl100k_base``):
      as a regex it would match only that literal word and train on nothing;
    * a regex with capture groups: ``findall`` would return the groups, not
      the pre-tokens;
    * a regex that can match the empty string (``\\w*``): its empty matches
      carry no text, so a tokenizer built on it drops every character it
      does not cover;

    A regex that leaves characters of ordinary text unmatched (``\\w+``) is
    taken, with a warning: what it does not match is neither trained on nor
    encoded.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str (a name or a regex), got {type(pattern).__name__}")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if pattern in PATTERNS.values():
        return pattern
    if pattern == "":
        raise ValueError("pattern must not be empty: use 'gpt2' (the default), 'cl100k', 'o200k' or a regex")
    names = ", ".join(map(repr, PATTERNS))
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", pattern):
        key = re.sub(r"[^a-z0-9]", "", pattern.lower()).removesuffix("base")
        near = [n for n in PATTERNS if n == key]
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(
            f"unknown pattern name {pattern!r}: {hint}use one of {names} or a regex "
            f"(to match the literal word, write '(?:{pattern})')"
        )
    try:
        rx = _compiled(pattern)
    except Exception as e:  # regex.error, with the position of the mistake
        raise ValueError(f"pattern is not a valid regex for the `regex` package: {e}") from None
    if rx.groups:
        raise ValueError(
            f"pattern {pattern[:80]!r} has {rx.groups} capture group(s): findall would return the groups, "
            "not the pre-tokens; write each group as (?:...)"
        )
    for probe in _PATTERN_PROBES:
        for m in rx.finditer(probe):
            if m.start() == m.end():
                raise ValueError(
                    f"pattern {pattern[:80]!r} can match the empty string (at {m.start()} in {probe!r}): an "
                    "empty match holds no text; use + instead of * (e.g. \\w+ not \\w*) or add an alternative"
                )
        if "".join(rx.findall(probe)) != probe:
            warnings.warn(
                f"pattern {pattern[:80]!r} leaves characters of {probe!r} unmatched: they are neither trained "
                "on nor encoded (the tokenizer drops them); add a catch-all alternative such as |\\s+|[^\\s]",
                stacklevel=3,
            )
    return pattern


# Ordinary text every pattern must cover whole, without empty matches.
_PATTERN_PROBES = ("", "Hello, world! It's 2024.\n\tx  y\u00e9\u4e2d\u0661 \u00a0z")


def _is_gpt2(pattern: str) -> bool:
    return pattern == GPT2_PATTERN or pattern == "gpt2"


@lru_cache(maxsize=8)
def _compiled(pattern: str):
    import regex

    return regex.compile(pattern)


@lru_cache(maxsize=64)
def _special_regex(specials: tuple[bytes, ...]):
    # Longest first: at one position the alternation takes the first alternative
    # that matches, so `<|eot|><|eot|>` wins over `<|eot|>` (DESIGN §1.1).
    ordered = sorted(specials, key=len, reverse=True)
    return re.compile(b"|".join(re.escape(s) for s in ordered))


def encode_specials(special_tokens: Sequence[str]) -> tuple[bytes, ...]:
    """The special tokens as UTF-8 bytes, in the order given."""
    return tuple(s.encode("utf-8") for s in special_tokens)


def split_specials(data: bytes, specials: tuple[bytes, ...]) -> list[bytes]:
    """The pieces of ``data`` between special tokens (the specials dropped)."""
    if not specials:
        return [data]
    return _special_regex(specials).split(data)


def _piece_bounds(data: bytes, specials: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets (int64) of the non-empty pieces between special tokens."""
    if not specials:
        return np.array([0], np.int64), np.array([len(data)], np.int64)
    cuts = [0]
    for m in _special_regex(specials).finditer(data):
        cuts.append(m.start())
        cuts.append(m.end())
    cuts.append(len(data))
    b = np.asarray(cuts, dtype=np.int64).reshape(-1, 2)
    b = b[b[:, 1] > b[:, 0]]
    return np.ascontiguousarray(b[:, 0]), np.ascontiguousarray(b[:, 1])


def _pieces_regex(piece: bytes, pattern: str) -> list[str]:
    return _compiled(pattern).findall(piece.decode("utf-8", "surrogateescape"))


def _numba_tables():
    from . import _unicode

    return _unicode.tables()


def pretokenize(data: bytes, *, special_tokens: Sequence[str] = (), pattern: str = "gpt2") -> list[bytes]:
    """Split ``data`` into pre-tokens, in order.

    Special tokens cut the input and are not returned (they never take part in
    merges). Bytes that are not well-formed UTF-8 are characters of their own.
    ``pattern`` is ``'gpt2'`` (the default), ``'cl100k'``, ``'o200k'`` or a
    regex; pre-tokens that are empty strings (a user regex may match nothing)
    are dropped.

    >>> pretokenize(b"Hello, world<|endoftext|>it's", special_tokens=["<|endoftext|>"])
    [b'Hello', b',', b' world', b'it', b"'s"]
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"pretokenize takes bytes, got {type(data).__name__}: encode it with .encode('utf-8')")
    pattern = resolve_pattern(pattern)
    specials = encode_specials(_validate.special_tokens(special_tokens))
    data = bytes(data)
    if _is_gpt2(pattern) and len(data) >= config.NUMBA_PRETOKENIZE_BYTES:
        return _pretokenize_numba(data, specials)
    out: list[bytes] = []
    for piece in split_specials(data, specials):
        out.extend(s.encode("utf-8", "surrogateescape") for s in _pieces_regex(piece, pattern) if s)
    return out


def _pretokenize_numba(data: bytes, specials: tuple[bytes, ...]) -> list[bytes]:
    from ._pretok_numba import token_spans

    starts, ends = _piece_bounds(data, specials)
    stage1, stage2 = _numba_tables()
    s, e = token_spans(np.frombuffer(data, np.uint8), starts, ends, stage1, stage2)
    return [data[a:b] for a, b in zip(s.tolist(), e.tolist())]


def count_chunk(data: bytes, specials: tuple[bytes, ...], pattern: str = GPT2_PATTERN) -> dict[bytes, int]:
    """Unique pre-tokens of one chunk with their counts, through ``regex``.
    Runs in worker processes."""
    counts: Counter[str] = Counter()
    for piece in split_specials(data, specials):
        if piece:
            counts.update(_pieces_regex(piece, pattern))
    counts.pop("", None)
    return {k.encode("utf-8", "surrogateescape"): v for k, v in counts.items()}


# ---------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _ascii_not_space() -> bytes:
    """The 128 ASCII bytes: 1 where ``regex``'s ``\\s`` does not match (from the class table).

    Note ``\\x1c``-``\\x1f`` are *not* ``\\s`` for ``regex`` (they are for
    ``str.isspace``)."""
    from . import _unicode

    stage2 = _unicode.tables()[1]
    return bytes(int(stage2[b] != _unicode.SPACE) for b in range(128))


def _line_cut_pattern(pattern: str) -> bool:
    """Patterns that never join a newline to a following letter (cl100k, o200k)."""
    return pattern == CL100K_PATTERN or pattern == O200K_PATTERN


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
    if _line_cut_pattern(pattern):
        return _line_cut(data, specials, lo, hi)
    if not _is_gpt2(pattern):
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
    for m in _special_regex(specials).finditer(data, start):
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
    if not _is_gpt2(pattern) and not _line_cut_pattern(pattern):
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


def iter_chunks(
    paths: Sequence[Path] | None,
    texts: Iterable[str] | None,
    specials: tuple[bytes, ...],
    chunk_size: int,
    on_bytes: Callable[[int], None] | None = None,
    *,
    pattern: str = GPT2_PATTERN,
) -> Iterator[bytes]:
    """Yield the input as chunks of about ``chunk_size`` bytes, each cut safely for ``pattern``.

    Each file is a document of its own (no pre-token spans two files), so the
    order of files does not matter. A text iterable is one stream: its strings
    are joined, as the lines of a file are.
    """

    if paths is not None:
        block_size = min(chunk_size, config.READ_BLOCK)
        for path in paths:
            yield from cut_stream(_read_blocks(path, block_size), specials, chunk_size, on_bytes, pattern=pattern)
    else:

        def encode():
            pending: list[bytes] = []
            size = 0
            for t in texts:
                if not isinstance(t, str):
                    raise TypeError(f"text inputs must be str, got {type(t).__name__}")
                b = t.encode("utf-8", "surrogateescape")
                pending.append(b)
                size += len(b)
                if size >= chunk_size:
                    yield b"".join(pending)
                    pending, size = [], 0
            if pending:
                yield b"".join(pending)

        yield from cut_stream(encode(), specials, chunk_size, on_bytes, pattern=pattern)


STDIN = "-"


def _read_blocks(path, block_size: int) -> Iterator[bytes]:
    """The bytes of ``path`` (``-``: standard input, a pipe works too) in blocks;
    a UTF-16 or UTF-32 byte-order mark at the start is refused."""
    f = sys.stdin.buffer if str(path) == STDIN else open(path, "rb")
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


# ---------------------------------------------------------------------------
# Counting: Numba hash tables in threads (GPT-2), regex in processes (others)
# ---------------------------------------------------------------------------


class _Table:
    """A Numba counting table: short words keyed by their packed bytes, longer
    ones by hash with full comparison (layouts in :mod:`gpubpe._pretok_numba`)."""

    _FIELDS = ("short", "mid", "slots", "hashes", "offs", "arena", "counts")

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
        return int(self.n[0] + self.n[2] + self.n[3])

    def _set(self, arrays) -> None:
        for name, a in zip(self._FIELDS, arrays):
            setattr(self, name, a)

    def _arrays(self):
        return [getattr(self, name) for name in self._FIELDS]

    def add_chunk(self, chunk: bytes, specials: tuple[bytes, ...], stage1, stage2) -> None:
        from ._pretok_numba import count_pieces

        starts, ends = _piece_bounds(chunk, specials)
        data = np.frombuffer(chunk, dtype=np.uint8)
        self._set(count_pieces(data, starts, ends, stage1, stage2, *self._arrays(), self.n))

    def merge(self, other: _Table) -> None:
        from ._pretok_numba import merge_tables

        self._set(
            merge_tables(
                *self._arrays(), self.n,
                other.short, other.mid, other.hashes, other.offs, other.arena, other.counts, other.n,
            )
        )  # fmt: skip

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(symbols int32, offsets int64, counts int64) of every word."""
        from ._pretok_numba import flatten

        return flatten(self.short, self.mid, self.offs, self.arena, self.counts, self.n)

    def to_wordtable(self):
        from .wordtable import WordTable

        symbols, offsets, counts = self.arrays()
        return WordTable(symbols, offsets, counts)

    def to_dict(self) -> dict[bytes, int]:
        return self.to_wordtable().to_counts()


def _count_numba(chunks: Iterable[bytes], specials: tuple[bytes, ...], workers: int) -> _Table:
    """Count every chunk into Numba tables, one per worker thread, then merge them.

    Threads, not processes: the counting function is ``nogil``, so threads run
    in parallel without forking, without pickling chunks or tables, and
    without a second copy of the interpreter's memory. Read-ahead is bounded
    (a queue of ``workers`` chunks), so at most ``2 * workers + 1`` chunks are
    alive at once.
    """
    stage1, stage2 = _numba_tables()
    # One worker runs in a thread too: compiled code called from the main
    # thread would hold Ctrl-C until it returns (and then fail in Numba's
    # dispatcher); here the main thread only feeds the queue and stays
    # interruptible.
    tables = [_Table() for _ in range(workers)]
    todo: queue.Queue = queue.Queue(maxsize=workers)
    errors: list[BaseException] = []

    def work(table: _Table) -> None:
        while (c := todo.get()) is not None:
            if errors:
                continue  # drain: the main thread stops feeding and sends the sentinels
            try:
                table.add_chunk(c, specials, stage1, stage2)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in tables]
    for t in threads:
        t.start()
    try:
        for c in chunks:
            if errors:
                break
            todo.put(c)
    finally:
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    # merge the smaller tables into the largest one, freeing each when merged
    tables.sort(key=lambda t: t.nwords, reverse=True)
    total = tables.pop(0)
    while tables:
        total.merge(tables.pop(0))
    return total


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # fork starts in milliseconds; spawn re-imports everything per worker.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group: the parent handles it (and
    # shuts the pool down); a worker that raised too would print a traceback.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _count_regex(chunks: Iterator[bytes], specials: tuple[bytes, ...], workers: int, pattern: str) -> dict[bytes, int]:
    """Count through ``regex``, in ``workers`` processes, merged exactly."""
    total: Counter[bytes] = Counter()
    first = next(chunks, None)
    if first is None:
        return {}
    second = next(chunks, None)
    if second is None or workers == 1:
        total.update(count_chunk(first, specials, pattern))
        if second is not None:
            total.update(count_chunk(second, specials, pattern))
            for c in chunks:
                total.update(count_chunk(c, specials, pattern))
        return dict(total)

    def all_chunks():
        yield first
        yield second
        yield from chunks

    # Bounded in flight: at most 2 chunks per worker are read ahead.
    with _pool(workers) as pool:
        pending = []
        for c in all_chunks():
            pending.append(pool.submit(count_chunk, c, specials, pattern))
            if len(pending) >= 2 * workers:
                total.update(pending.pop(0).result())
        for f in pending:
            total.update(f.result())
    return dict(total)


def _engine(chunks: Iterator[bytes], pattern: str) -> tuple[str, Iterator[bytes]]:
    """'numba' or 'regex' for this input, and the chunks to count (none lost).

    The GPT-2 pattern runs in Numba unless the whole input is smaller than
    ``config.NUMBA_PRETOKENIZE_BYTES``: chunks are read ahead until that many
    bytes are seen (memory: at most that much more)."""
    if not _is_gpt2(pattern):
        return "regex", chunks
    head: list[bytes] = []
    size = 0
    for c in chunks:
        head.append(c)
        size += len(c)
        if size >= config.NUMBA_PRETOKENIZE_BYTES:
            break
    else:
        return "regex", iter(head)

    def rest():
        while head:
            yield head.pop(0)
        yield from chunks

    return "numba", rest()


def count_stream(
    chunks: Iterator[bytes],
    specials: tuple[bytes, ...],
    *,
    workers: int,
    pattern: str = GPT2_PATTERN,
) -> dict[bytes, int]:
    """Count the pre-tokens of every chunk, in ``workers`` workers, merged exactly:
    ``{pre-token bytes: count}``."""
    pattern = resolve_pattern(pattern)
    engine, chunks = _engine(iter(chunks), pattern)
    if engine == "regex":
        return _count_regex(chunks, specials, workers, pattern)
    return _count_numba(chunks, specials, workers).to_dict()


def count_table(
    chunks: Iterator[bytes],
    specials: tuple[bytes, ...],
    *,
    workers: int,
    pattern: str = GPT2_PATTERN,
):
    """Count the chunks' pre-tokens straight into a :class:`~gpubpe.wordtable.WordTable`.

    This is what training uses. On the Numba path the table's arrays come from
    the hash tables directly (no dict of all words is built): symbols are the
    byte values (int32), one row per unique pre-token, in no particular order.
    """
    from .wordtable import WordTable

    pattern = resolve_pattern(pattern)
    engine, chunks = _engine(iter(chunks), pattern)
    if engine == "regex":
        return WordTable.from_counts(_count_regex(chunks, specials, workers, pattern))
    return _count_numba(chunks, specials, workers).to_wordtable()


def count_pretokens(
    source,
    *,
    special_tokens: Sequence[str] = (),
    workers: int | None = None,
    chunk_size: int = config.CHUNK_SIZE,
    pattern: str = "gpt2",
) -> dict[bytes, int]:
    """Count the unique pre-tokens of ``source``: ``{pre-token bytes: count}``.

    ``source`` is bytes, a path, a list of paths, or an iterable of str (one
    stream). Special tokens cut the input and are not counted. ``workers``:
    threads (GPT-2 pattern) or processes (other patterns); None is all cores.
    ``chunk_size``: bytes read and counted at a time; memory is a few chunks
    plus the unique pre-tokens, and the result does not depend on it. With a
    pattern other than GPT-2, chunks are cut only after special tokens (see
    :func:`safe_cut`). ``pattern``: ``'gpt2'`` (default, the fast path),
    ``'cl100k'``, ``'o200k'``, or any regex (through the ``regex`` package).

    >>> count_pretokens(b"the cat the")
    {b'the': 1, b' cat': 1, b' the': 1}
    """
    specials = encode_specials(_validate.special_tokens(special_tokens))
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    pattern = resolve_pattern(pattern)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        blocks = (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))
        chunks = cut_stream(blocks, specials, chunk_size, pattern=pattern)
    else:
        paths, texts = _validate.inputs(source)
        chunks = iter_chunks(paths, texts, specials, chunk_size, pattern=pattern)
    return count_stream(chunks, specials, workers=nworkers, pattern=pattern)


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
