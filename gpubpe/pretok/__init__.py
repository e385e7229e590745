"""Pre-tokenization and exact counting of unique pre-tokens (DESIGN §1.1-1.3).

The input is bytes. It is cut at special tokens (longest first), each piece is
split with the pre-tokenization pattern exactly as the ``regex`` package splits
``piece.decode("utf-8", "surrogateescape")`` (invalid bytes are characters of
their own), and the pieces are counted.

Two engines give the same pre-tokens:

* the GPT-2 pattern (the default) runs as a byte-level state machine in Numba
  (:mod:`.machine`), counted into hash tables keyed by the bytes (:mod:`.tables`),
  in ``workers`` threads (the Numba code releases the GIL);
* any other pattern (``'cl100k'``, ``'o200k'``, a regex string), and inputs
  below ``config.NUMBA_PRETOKENIZE_BYTES``, go through ``regex``, in worker
  processes (:mod:`.regex_engine`);
* with ``backend='cuda'`` (or ``'cuda-sim'``, the same kernels on the CPU) the
  GPT-2 pattern runs as CUDA kernels and counts into a device hash table
  (:mod:`.device`); other patterns keep the CPU engines.

The corpus arrives as chunks cut where the result cannot change
(:mod:`gpubpe.corpus`); memory stays bounded by a few chunks plus the unique
words, and the result does not depend on the chunk size or the number of workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from .. import _validate, config
from ..corpus import count_specials, cut_stream, peek_batches, iter_chunks, piece_bounds, special_bytes, split_specials
from ..patterns import is_gpt2, resolve_pattern
from . import unicode
from .regex_engine import count_regex, findall_piece

__all__ = ["count", "count_inputs", "count_pretokens", "count_table", "pretokenize", "table_of"]


def _backend(backend: str, pattern: str) -> str:
    """'cpu', or the device backend that runs ``pattern`` (the GPT-2 pattern
    only: other patterns stay on the CPU engines)."""
    from ..backends import resolve

    name = resolve(_validate.backend(backend))
    return name if name != "cpu" and is_gpt2(pattern) else "cpu"


def pretokenize(data: bytes, *, special_tokens: Sequence[str] = (), pattern: str = "gpt2",
                backend: str = "cpu") -> list[bytes]:
    """Split ``data`` into pre-tokens, in order.

    Special tokens cut the input and are not returned (they never take part in
    merges). Bytes that are not well-formed UTF-8 are characters of their own.
    ``pattern`` is ``'gpt2'`` (the default), ``'cl100k'``, ``'o200k'`` or a
    regex; pre-tokens that are empty strings (a user regex may match nothing)
    are dropped. ``backend``: ``'cpu'`` (default), ``'cuda'`` or
    ``'cuda-sim'`` (the device kernels, for the GPT-2 pattern), ``'auto'``.

    >>> pretokenize(b"Hello, world<|endoftext|>it's", special_tokens=["<|endoftext|>"])
    [b'Hello', b',', b' world', b'it', b"'s"]
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"pretokenize takes bytes, got {type(data).__name__}: encode it with .encode('utf-8')")
    pattern = resolve_pattern(pattern)
    specials = special_bytes(_validate.special_tokens(special_tokens))
    data = bytes(data)
    name = _backend(backend, pattern)
    if name != "cpu":
        from .device import pretokenize_device

        return pretokenize_device(data, specials, backend=name)
    if is_gpt2(pattern) and len(data) >= config.NUMBA_PRETOKENIZE_BYTES:
        return _pretokenize_numba(data, specials)
    out: list[bytes] = []
    for piece in split_specials(data, specials):
        out.extend(s.encode("utf-8", "surrogateescape") for s in findall_piece(piece, pattern) if s)
    return out


def _pretokenize_numba(data: bytes, specials: tuple[bytes, ...]) -> list[bytes]:
    from .machine import token_spans

    starts, ends = piece_bounds(data, specials)
    s, e = token_spans(np.frombuffer(data, np.uint8), starts, ends, *unicode.scan_tables())
    return [data[a:b] for a, b in zip(s.tolist(), e.tolist())]


def _engine(chunks: Iterator[bytes], pattern: str) -> tuple[str, Iterator[bytes]]:
    """'numba' or 'regex' for this input, and the chunks to count (none lost).

    The GPT-2 pattern runs in Numba unless the whole input is smaller than
    ``config.NUMBA_PRETOKENIZE_BYTES``: chunks are read ahead until that many
    bytes are seen (memory: at most that much more)."""
    if not is_gpt2(pattern):
        return "regex", chunks
    head: deque[bytes] = deque()  # popped from the left: a list would be quadratic with tiny chunks
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
            yield head.popleft()
        yield from chunks

    return "numba", rest()


def count(chunks: Iterator[bytes], specials: tuple[bytes, ...], *, workers: int, pattern: str, backend: str = "cpu"):
    """Count the chunks' pre-tokens: a :class:`~gpubpe.pretok.tables.CountTable`
    (Numba engine), a ``{bytes: count}`` dict (regex engine) or a
    :class:`~gpubpe.pretok.device.DeviceWordTable` (a device backend), whichever
    the engine makes, so that none is converted into another for nothing.
    ``pattern`` is a resolved regex (:func:`~gpubpe.patterns.resolve_pattern`);
    ``backend``: a concrete backend name ('cpu', 'cuda', 'cuda-sim')."""
    if backend != "cpu" and is_gpt2(pattern):
        from .device import count_device

        return count_device(chunks, specials, backend=backend)
    engine, chunks = _engine(iter(chunks), pattern)
    if engine == "regex":
        return count_regex(chunks, specials, workers, pattern)
    from .tables import count_numba

    return count_numba(chunks, specials, workers)


def count_table(chunks: Iterator[bytes], specials: tuple[bytes, ...], *, workers: int, pattern: str):
    """Count the chunks' pre-tokens straight into a :class:`~gpubpe.wordtable.WordTable`."""
    return table_of(count(chunks, specials, workers=workers, pattern=pattern))


def table_of(counted):
    """What :func:`count` made, as a :class:`~gpubpe.wordtable.WordTable`. On the
    Numba path the table's arrays come from the hash tables directly (no dict
    of all words is built): symbols are the byte values (int32), one row per
    unique pre-token, in no particular order. A device table stays on the
    device (:class:`~gpubpe.pretok.device.DeviceWordTable`: the device merge
    loop takes it as it is; ``to_host()`` copies it)."""
    from ..wordtable import WordTable

    if getattr(counted, "on_device", False):
        return counted
    return WordTable.from_counts(counted) if isinstance(counted, dict) else counted.to_wordtable()


def _as_dict(counted) -> dict[bytes, int]:
    if isinstance(counted, dict):
        return counted
    return counted.to_counts() if getattr(counted, "on_device", False) else counted.to_dict()


def default_chunk_size(backend: str, pattern: str) -> int:
    """Bytes per chunk when the caller gives none: config.DEVICE_CHUNK_SIZE where
    the device counts (``backend`` a device, the GPT-2 pattern), else config.CHUNK_SIZE."""
    return config.DEVICE_CHUNK_SIZE if backend != "cpu" and is_gpt2(pattern) else config.CHUNK_SIZE


def count_inputs(paths, texts, specials: tuple[bytes, ...], *, workers: int, pattern: str, chunk_size: int | None,
                 on_bytes=None, text_field: str = "text", text_column: str = "text", manifest: list | None = None,
                 backend: str = "cpu"):
    """Count the inputs that :func:`gpubpe._validate.inputs` split into files or
    a text iterable, as :func:`count` does: the one way from inputs to counts,
    for :func:`count_pretokens`, training and :func:`gpubpe.count`. Record files
    and text batches are cut between documents too (:func:`~gpubpe.corpus.count_specials`);
    ``on_bytes`` and ``manifest`` as in :func:`~gpubpe.corpus.iter_chunks`;
    ``backend`` as in :func:`count`; ``chunk_size`` None: :func:`default_chunk_size`.
    On a device backend (GPT-2 pattern) plain files are read straight into the
    device counter's pinned buffers (:func:`gpubpe.pretok.device.count_device_inputs`)."""
    batches = False
    if texts is not None:
        texts, batches = peek_batches(texts)
    if chunk_size is None:
        chunk_size = default_chunk_size(backend, pattern)
    if backend != "cpu" and is_gpt2(pattern):
        from .device import count_device_inputs

        return count_device_inputs(paths, texts, specials, backend=backend, chunk_size=chunk_size,
                                   on_bytes=on_bytes, manifest=manifest, pattern=pattern, text_field=text_field,
                                   text_column=text_column, batches=batches)
    chunks = iter_chunks(paths, texts, specials, chunk_size, on_bytes, pattern=pattern, text_field=text_field,
                         text_column=text_column, manifest=manifest)
    return count(chunks, count_specials(specials, paths, batches), workers=workers, pattern=pattern, backend=backend)


def count_pretokens(
    source,
    *,
    special_tokens: Sequence[str] = (),
    workers: int | None = None,
    chunk_size: int | None = None,
    pattern: str = "gpt2",
    text_field: str = "text",
    text_column: str = "text",
    backend: str = "cpu",
) -> dict[bytes, int]:
    """Count the unique pre-tokens of ``source``: ``{pre-token bytes: count}``.

    ``source`` is bytes, a path (a file, ``-``, a directory or a glob; text,
    ``.gz``/``.xz``/``.bz2``/``.zst``, JSONL with ``text_field``, Parquet with
    ``text_column``), a list of paths, or an iterable of str (one stream) or
    of ``list[str]`` (each string a document). Special tokens cut the input and are not counted. ``workers``:
    threads (GPT-2 pattern) or processes (other patterns); None is all cores.
    ``chunk_size``: bytes read and counted at a time (default: 4 MiB on the
    CPU, 32 MiB on a device, config.CHUNK_SIZE and DEVICE_CHUNK_SIZE); memory is a few chunks
    plus the unique pre-tokens, and the result does not depend on it (where
    chunks may be cut: :func:`gpubpe.corpus.safe_cut`). ``pattern``: ``'gpt2'`` (default, the fast path),
    ``'cl100k'``, ``'o200k'``, or any regex (through the ``regex`` package).
    ``backend``: ``'cpu'`` (default); ``'cuda'`` pre-tokenizes and counts the
    GPT-2 pattern on the device (``'cuda-sim'``: the same kernels on the CPU,
    for tests), ``'auto'`` on the device where one answers; other patterns
    are counted on the CPU whatever the backend.

    >>> count_pretokens(b"the cat the")
    {b'the': 1, b' cat': 1, b' the': 1}
    """
    specials = special_bytes(_validate.special_tokens(special_tokens))
    nworkers = _validate.workers(workers)
    chunk_size = _validate.chunk_size(chunk_size)
    pattern = resolve_pattern(pattern)
    name = _backend(backend, pattern)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if chunk_size is None:
            chunk_size = default_chunk_size(name, pattern)
        blocks = (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))
        chunks = cut_stream(blocks, specials, chunk_size, pattern=pattern)
    else:
        paths, texts = _validate.inputs(source)
        return _as_dict(count_inputs(paths, texts, specials, workers=nworkers, pattern=pattern, chunk_size=chunk_size,
                                     text_field=text_field, text_column=text_column, backend=name))
    return _as_dict(count(chunks, specials, workers=nworkers, pattern=pattern, backend=name))
