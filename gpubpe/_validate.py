"""Argument checks at the boundary: before any heavy work, with errors that name the fix."""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path
from typing import Iterable

BACKENDS = ("auto", "cpu", "cuda", "cuda-sim")


def special_tokens(tokens) -> tuple[str, ...]:
    if tokens is None:
        return ()
    if isinstance(tokens, (str, bytes)):
        raise TypeError(
            f"special_tokens must be a list of strings, not a single {type(tokens).__name__}: "
            f"write special_tokens=[{tokens!r}]"
        )
    out = tuple(tokens)
    seen = set()
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"special tokens must be str, got {type(t).__name__} ({t!r})")
        if t == "":
            raise ValueError("special tokens must not be empty strings: remove '' from special_tokens")
        if t in seen:
            raise ValueError(f"special token {t!r} is given twice: list each special token once")
        seen.add(t)
    return out


def vocab_size(size, n_special: int) -> int:
    if not is_int(size):
        raise TypeError(f"vocab_size must be an int, got {type(size).__name__} ({size!r})")
    floor = 256 + n_special
    if size < floor:
        raise ValueError(
            f"vocab_size={size} is too small: the 256 byte tokens and {n_special} special token(s) "
            f"alone need {floor}; use vocab_size >= {floor}"
        )
    return int(size)


def backend(name) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: use one of {', '.join(map(repr, BACKENDS))}")
    return name


def cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def is_int(n) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def workers(n) -> int:
    """``n`` workers, capped (with a warning) at the cores this process may use:
    more threads or processes than cores only add tables and memory."""
    if n is None:
        return cores()
    if not is_int(n):
        raise TypeError(f"workers must be an int or None (all cores), got {type(n).__name__} ({n!r})")
    if n < 1:
        raise ValueError(f"workers must be a positive int or None (all cores), got {n!r}")
    n, have = int(n), cores()
    if n > have:
        warnings.warn(f"workers={n} is more than the {have} cores this process may use: using {have}", stacklevel=3)
        return have
    return n


def chunk_size(n) -> int | None:
    """``n`` as an int, or None (the default: chosen where the backend is known)."""
    from . import config

    if n is None:
        return None
    if not is_int(n):
        raise TypeError(f"chunk_size must be an int (bytes), got {type(n).__name__} ({n!r})")
    if not 1 <= n <= config.MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {config.MAX_CHUNK_SIZE:,} bytes, got {n!r}")
    return int(n)


def max_token_length(n) -> int | None:
    if n is None:
        return None
    if not is_int(n):
        raise TypeError(f"max_token_length must be an int (bytes) or None, got {type(n).__name__} ({n!r})")
    if n < 2:
        raise ValueError(f"max_token_length must be at least 2 bytes (a merge makes 2 bytes or more), got {n!r}")
    if n > 2**31 - 1:  # the CUDA kernels take it as an int
        raise ValueError(f"max_token_length={n} does not fit the kernels' int: use at most 2**31 - 1")
    return int(n)


def min_frequency(n) -> int:
    if n is None:
        return 0
    if not is_int(n):
        raise TypeError(f"min_frequency must be an int or None, got {type(n).__name__} ({n!r})")
    if n < 0:
        raise ValueError(f"min_frequency must be >= 0 (a count), got {n!r}")
    return int(n)


STDIN = "-"

# Suffixes read through a decompressor (gpubpe.corpus.open_input), and Parquet:
# their first bytes say nothing about the text's encoding.
COMPRESSED = (".gz", ".xz", ".bz2", ".zst")
PARQUET = (".parquet",)

_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32-LE"), (b"\x00\x00\xfe\xff", "UTF-32-BE"),
         (b"\xff\xfe", "UTF-16-LE"), (b"\xfe\xff", "UTF-16-BE"))


def no_utf16(head: bytes, path) -> None:
    """Refuse text that starts with a UTF-16 or UTF-32 byte-order mark: read as
    bytes it would train on every other byte being NUL."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise ValueError(
                f"{str(path)!r} is {name[:6]} text (it starts with a byte-order mark), not UTF-8: convert it first, "
                f"e.g. iconv -f {name} -t UTF-8 {path} > {Path(str(path)).stem}.utf8.txt"
            )


def expand_inputs(items) -> list[Path]:
    """Paths for ``items``: files as given, ``-`` for standard input, every
    file under a directory, and the matches of a glob pattern, each sorted by
    name so that runs are deterministic. A pattern that matches nothing, or an
    empty directory, is an error that names it."""
    import glob

    out: list[Path] = []
    for item in items:
        s = str(item)
        if s == STDIN:
            out.append(Path(STDIN))
        elif Path(s).is_dir():
            files = sorted(p for p in Path(s).rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(s).parts))
            if not files:
                raise FileNotFoundError(f"directory {s!r} holds no files")
            out.extend(files)
        elif not Path(s).exists() and any(c in s for c in "*?["):
            files = sorted(Path(p) for p in glob.glob(s, recursive=True) if Path(p).is_file())
            if not files:
                raise FileNotFoundError(f"the pattern {s!r} matches no file")
            out.extend(files)
        else:
            out.append(Path(s))
    return out


def input_path(p) -> Path:
    if str(p) == STDIN:
        return Path(STDIN)  # standard input: read as a stream, checked as it is read
    path = Path(p)
    if not path.exists():
        hint = ""
        if ("\n" in str(p) or " " in str(p)) and len(str(p)) > 40:
            hint = " (to train on text in memory, pass an iterator of str, e.g. iter([text]))"
        raise FileNotFoundError(f"input file not found: {str(p)[:200]!r}{hint}")
    compressed = path.suffix.lower() in COMPRESSED + PARQUET
    if path.is_file() and not compressed:  # compressed text is checked once decompressed
        try:
            with open(path, "rb") as f:
                no_utf16(f.read(4), p)
        except PermissionError:
            raise PermissionError(f"input {str(p)!r} cannot be read: check its permissions") from None
    return path


def inputs(src) -> tuple[list[Path] | None, Iterable[str] | None]:
    """Split the ``inputs`` argument into (paths, text iterable); exactly one is set.

    A path is ``str`` or ``os.PathLike``: a file, ``-`` (standard input), a
    directory (every file under it) or a glob pattern, each expanded sorted
    (:func:`expand_inputs`); a list or tuple of those is several; any other
    iterable yields text. Every file is checked here, before any reading.
    """
    if isinstance(src, (str, os.PathLike)):
        paths = [input_path(p) for p in expand_inputs([src])]
    elif isinstance(src, (list, tuple)) and all(isinstance(x, (str, os.PathLike)) for x in src):
        if not src:
            raise ValueError("inputs is an empty list: give at least one file")
        paths = [input_path(x) for x in expand_inputs(src)]
    elif isinstance(src, bytes):
        raise TypeError("inputs must be a path, a list of paths, or an iterable of str, not bytes: decode it, or write it to a file")
    elif hasattr(src, "__iter__"):
        return None, src
    else:
        raise TypeError(f"inputs must be a path, a list of paths, or an iterable of str, got {type(src).__name__}")
    seen: dict = {}
    for p in paths:
        if str(p) == STDIN:
            key = STDIN
        else:
            st = p.stat()
            key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ValueError(f"input {str(p)!r} is given twice (also as {str(seen[key])!r}): list each file once")
        seen[key] = p
    # Only regular files have a size to check here; standard input and pipes
    # (/dev/stdin) are streams, found empty only once read.
    regular = [p for p in paths if str(p) != STDIN and p.is_file()]
    if len(regular) == len(paths) and sum(p.stat().st_size for p in regular) == 0:
        raise ValueError(f"the input is empty ({', '.join(map(str, paths))}): give files that hold text")
    return paths, None
