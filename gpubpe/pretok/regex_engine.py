"""The regex engine: any pattern, through the ``regex`` package, in worker processes.

Exactly ``regex.findall(pattern, piece.decode("utf-8", "surrogateescape"))`` per
piece between special tokens, counted per chunk in a worker and merged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ..corpus import split_specials
from ..patterns import GPT2_PATTERN, compiled


def findall_piece(piece: bytes, pattern: str) -> list[str]:
    return compiled(pattern).findall(piece.decode("utf-8", "surrogateescape"))


def count_chunk(data: bytes, specials: tuple[bytes, ...], pattern: str = GPT2_PATTERN) -> dict[bytes, int]:
    """Unique pre-tokens of one chunk with their counts, through ``regex``.
    Runs in worker processes."""
    counts: Counter[str] = Counter()
    for piece in split_specials(data, specials):
        if piece:
            counts.update(findall_piece(piece, pattern))
    counts.pop("", None)
    return {k.encode("utf-8", "surrogateescape"): v for k, v in counts.items()}


def count_regex(chunks: Iterator[bytes], specials: tuple[bytes, ...], workers: int, pattern: str) -> dict[bytes, int]:
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

    # imported here: concurrent.futures.process and multiprocessing are 0.016 s
    # of `import gpubpe`, for inputs too small to fork for they are not needed
    from .._pool import process_pool

    # Bounded in flight: at most 2 chunks per worker are read ahead.
    with process_pool(workers) as pool:
        pending = []
        for c in all_chunks():
            pending.append(pool.submit(count_chunk, c, specials, pattern))
            if len(pending) >= 2 * workers:
                total.update(pending.pop(0).result())
        for f in pending:
            total.update(f.result())
    return dict(total)
