"""Pre-tokenization and exact counting of unique pre-tokens (DESIGN §1.1-1.3).

The input is bytes. It is cut at special tokens (longest first), each piece is
split with the GPT-2 pattern exactly as the ``regex`` package splits
``piece.decode("utf-8", "surrogateescape")`` (invalid bytes are characters of
their own), and the pieces are counted.

Large inputs are streamed in chunks that are cut only where the result cannot
change (:func:`safe_cut`), counted in worker processes, and the counts merged
exactly; the result does not depend on the chunk size or the number of workers.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from . import _validate, config

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# ASCII bytes that regex's \s matches; all other ASCII bytes are not \s.
_ASCII_SPACE = frozenset(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")


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
    return tuple(s.encode("utf-8") for s in special_tokens)


def split_specials(data: bytes, specials: tuple[bytes, ...]) -> list[bytes]:
    """The pieces of ``data`` between special tokens (the specials dropped)."""
    if not specials:
        return [data]
    return _special_regex(specials).split(data)


def _pieces_regex(piece: bytes, pattern: str) -> list[str]:
    return _compiled(pattern).findall(piece.decode("utf-8", "surrogateescape"))


def pretokenize(data: bytes, *, special_tokens: Sequence[str] = (), pattern: str = GPT2_PATTERN) -> list[bytes]:
    """Split ``data`` into pre-tokens, in order.

    Special tokens cut the input and are not returned (they never take part in
    merges). Bytes that are not well-formed UTF-8 are characters of their own.

    >>> pretokenize(b"Hello, world<|endoftext|>it's", special_tokens=["<|endoftext|>"])
    [b'Hello', b',', b' world', b'it', b"'s"]
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"pretokenize takes bytes, got {type(data).__name__}: encode it with .encode('utf-8')")
    specials = encode_specials(_validate.special_tokens(special_tokens))
    out: list[bytes] = []
    for piece in split_specials(bytes(data), specials):
        out.extend(s.encode("utf-8", "surrogateescape") for s in _pieces_regex(piece, pattern))
    return out


def count_chunk(data: bytes, specials: tuple[bytes, ...], pattern: str = GPT2_PATTERN) -> dict[bytes, int]:
    """Unique pre-tokens of one chunk with their counts. Runs in worker processes."""
    counts: Counter[str] = Counter()
    for piece in split_specials(data, specials):
        if piece:
            counts.update(_pieces_regex(piece, pattern))
    return {k.encode("utf-8", "surrogateescape"): v for k, v in counts.items()}


# ---------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------


def _spans_special(data: bytes, p: int, specials: tuple[bytes, ...]) -> bool:
    for s in specials:
        n = len(s)
        if n > 1:
            i = data.find(s, max(0, p - n + 1), p + n - 1)
            if i != -1 and i < p:
                return True
    return False


def safe_cut(data: bytes, specials: tuple[bytes, ...] = (), lo: int = 1) -> int:
    """The largest ``p`` in ``[lo, len(data))`` where ``data`` may be cut, or -1.

    Resynchronisation rule: between a character that is not whitespace and a
    whitespace character there is always a pre-token boundary (no GPT-2
    alternative matches non-space followed by space), and the pattern looks
    ahead only across whitespace, so the pieces on both sides pre-tokenize
    independently. We cut only where the space is ASCII (`` `` or ``\\n``) and
    the byte before it is ASCII and not whitespace, so no UTF-8 sequence is
    split, and never inside an occurrence of a special token.
    """
    p = len(data)
    lo = max(lo, 1)
    while True:
        p = max(data.rfind(b" ", lo, p), data.rfind(b"\n", lo, p))
        if p < lo:
            return -1
        prev = data[p - 1]
        if prev < 0x80 and prev not in _ASCII_SPACE and not _spans_special(data, p, specials):
            return p


def cut_stream(
    blocks: Iterable[bytes],
    specials: tuple[bytes, ...],
    chunk_size: int,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Re-cut a stream of byte blocks into chunks of about ``chunk_size``, at safe cuts."""
    carry = b""
    for block in blocks:
        if on_bytes is not None:
            on_bytes(len(block))
        carry = carry + block if carry else block
        while len(carry) >= chunk_size:
            p = safe_cut(carry, specials, lo=max(1, len(carry) - 4 * chunk_size))
            if p <= 0:
                break  # no safe cut yet: read on (this chunk grows past chunk_size)
            yield carry[:p]
            carry = carry[p:]
    if carry:
        yield carry


def iter_chunks(
    paths: Sequence[Path] | None,
    texts: Iterable[str] | None,
    specials: tuple[bytes, ...],
    chunk_size: int,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Yield the input as chunks of about ``chunk_size`` bytes, each cut safely.

    Each file is a document of its own (no pre-token spans two files), so the
    order of files does not matter. A text iterable is one stream: its strings
    are joined, as the lines of a file are.
    """

    if paths is not None:
        for path in paths:

            def read(path=path):
                with open(path, "rb") as f:
                    while block := f.read(chunk_size):
                        yield block

            yield from cut_stream(read(), specials, chunk_size, on_bytes)
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

        yield from cut_stream(encode(), specials, chunk_size, on_bytes)


# ---------------------------------------------------------------------------
# Counting, in worker processes
# ---------------------------------------------------------------------------


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # fork starts in milliseconds; spawn re-imports everything per worker.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def count_stream(
    chunks: Iterator[bytes],
    specials: tuple[bytes, ...],
    *,
    workers: int,
    pattern: str = GPT2_PATTERN,
) -> dict[bytes, int]:
    """Count the pre-tokens of every chunk, in ``workers`` processes, merged exactly."""
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


def count_table(
    chunks: Iterator[bytes],
    specials: tuple[bytes, ...],
    *,
    workers: int,
    pattern: str = GPT2_PATTERN,
):
    """Count the chunks' pre-tokens straight into a :class:`~gpubpe.wordtable.WordTable`.

    This is what training uses; the fast pre-tokenizer may build the table's
    arrays without going through a dict.
    """
    from .wordtable import WordTable

    return WordTable.from_counts(count_stream(chunks, specials, workers=workers, pattern=pattern))


def count_pretokens(
    source,
    *,
    special_tokens: Sequence[str] = (),
    workers: int | None = 1,
    chunk_size: int = config.CHUNK_SIZE,
    pattern: str = GPT2_PATTERN,
) -> dict[bytes, int]:
    """Count the unique pre-tokens of ``source``: ``{pre-token bytes: count}``.

    ``source`` is bytes, a path, a list of paths, or an iterable of str.
    Special tokens cut the input and are not counted.

    >>> count_pretokens(b"the cat the")
    {b'the': 1, b' cat': 1, b' the': 1}
    """
    specials = encode_specials(_validate.special_tokens(special_tokens))
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        blocks = (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))
        chunks = cut_stream(blocks, specials, chunk_size)
    else:
        paths, texts = _validate.inputs(source)
        chunks = iter_chunks(paths, texts, specials, chunk_size)
    return count_stream(chunks, specials, workers=nworkers, pattern=pattern)


def input_size(paths: Sequence[Path] | None) -> int | None:
    return None if paths is None else sum(os.path.getsize(p) for p in paths)
