"""Character classes of the GPT-2 pre-tokenization pattern, per code point.

The pattern ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
only ever asks which of four disjoint classes a character is in: letter
(``\\p{L}``), number (``\\p{N}``), whitespace (``\\s``) or other. The Numba
pre-tokenizer reads these classes from a two-level table: ``stage1[cp >> 8]``
is a block number and ``stage2[block * 256 + (cp & 255)]`` the class.
Identical 256-code-point blocks are stored once, so the table is a few tens of
KB in memory and a few KB compressed. Block 0 (ASCII and Latin-1) comes first,
so the ASCII classes are ``stage2[0:128]``.

The classes come from ``regex`` itself rather than from ``unicodedata``
because ``regex`` is the oracle (it pre-tokenizes small inputs and user
patterns), and the two disagree on corners: ``\\x1c``-``\\x1f`` are not ``\\s``
for ``regex``, and their Unicode versions may differ. ``regex`` releases move
to new Unicode versions, so a table is only right for the ``regex`` version it
was built from. :func:`tables` therefore picks, in order:

1. the table shipped in ``gpubpe/data/gpt2_classes.npz``, when it was built
   with the installed ``regex`` version;
2. a table built earlier for the installed version and cached in
   ``config.CACHE_DIR`` (``unicode-classes-regex-<version>.npz``);
3. a table built now from the installed ``regex`` (0.2 to 0.3 s),
   then saved to that cache. An unwritable or corrupted cache is not an
   error: a corrupted file is rebuilt, and where nothing can be written the
   table lives in memory for this process.

``scripts/gen_unicode_tables.py`` regenerates the shipped table with
:func:`build` and :func:`save`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .._files import umask

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
CLASS_NAMES = ("other", "letter", "number", "space")

NCP = 0x110000
BLOCK = 256
NBLOCKS = NCP // BLOCK

TABLE_PATH = Path(__file__).parent.parent / "data" / "gpt2_classes.npz"

# The regex version of the table that tables() returned last: set together
# with the lru_cache entry, so clearing tables()' cache resets it too.
_in_use_version: str | None = None


# ---------------------------------------------------------------------------
# Building a table from the installed regex
# ---------------------------------------------------------------------------


def regex_version() -> str:
    """The version of the installed ``regex`` package."""
    import regex

    return regex.__version__


def classify_all() -> np.ndarray:
    """uint8[0x110000]: the class of every code point for the installed ``regex``,
    surrogates included (they are what invalid UTF-8 bytes decode to).

    One string holding every code point in order is scanned once per class, so
    position == code point; matching runs (``\\p{L}+``) keeps it to a few
    thousand matches instead of a million calls.
    """
    import regex

    text = "".join(map(chr, range(NCP)))
    out = np.zeros(NCP, dtype=np.uint8)
    for code, prop in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for m in regex.finditer(prop, text):
            seg = out[m.start() : m.end()]
            if seg.any():
                raise RuntimeError(f"code points {m.start():#x}..{m.end():#x} are in two classes; the pattern assumes disjoint classes")
            seg[:] = code
    return out


def two_level(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(stage1 uint16[0x1100], stage2 uint8[n * 256])`` for ``classes`` (uint8[0x110000]).

    Blocks are numbered in order of first appearance, so the result depends
    only on the classes: equal classes give byte-identical tables (and hashes).
    """
    blocks = np.ascontiguousarray(classes, dtype=np.uint8).reshape(NBLOCKS, BLOCK)
    index: dict[bytes, int] = {}
    stage1 = np.empty(NBLOCKS, dtype=np.uint16)
    stage2: list[np.ndarray] = []
    for b, row in enumerate(blocks):
        key = row.tobytes()
        if key not in index:
            index[key] = len(stage2)
            stage2.append(row)
        stage1[b] = index[key]
    return stage1, np.concatenate(stage2)


def build() -> tuple[np.ndarray, np.ndarray, str]:
    """``(stage1, stage2, regex_version)`` built from the installed ``regex``."""
    version = regex_version()
    stage1, stage2 = two_level(classify_all())
    return stage1, stage2, version


def save(path: str | os.PathLike, stage1: np.ndarray, stage2: np.ndarray, version: str) -> None:
    """Write a table to ``path`` as a compressed npz, with its regex version and hash."""
    with open(path, "wb") as f:
        _write(f, stage1, stage2, version)


def _write(f, stage1: np.ndarray, stage2: np.ndarray, version: str) -> None:
    np.savez_compressed(
        f,
        stage1=stage1,
        stage2=stage2,
        regex_version=np.array(version),
        table_hash=np.array(_hash(stage1, stage2)),
    )


# ---------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------


def _hash(stage1: np.ndarray, stage2: np.ndarray) -> str:
    # little-endian whatever the machine, so the hash names the table, not the host
    data = np.asarray(stage1, dtype="<u2").tobytes() + np.asarray(stage2, dtype=np.uint8).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """``(stage1, stage2, regex_version)`` from an npz; ValueError when malformed."""
    with np.load(path, allow_pickle=False) as z:
        stage1 = np.ascontiguousarray(z["stage1"])
        stage2 = np.ascontiguousarray(z["stage2"])
        version = str(z["regex_version"]) if "regex_version" in z.files else ""
        stored_hash = str(z["table_hash"]) if "table_hash" in z.files else None
    if stage1.dtype != np.uint16 or stage2.dtype != np.uint8:
        raise ValueError(f"dtypes {stage1.dtype}, {stage2.dtype}; expected uint16, uint8")
    if stage1.shape != (NBLOCKS,) or stage2.ndim != 1 or stage2.size == 0 or stage2.size % BLOCK:
        raise ValueError(f"shapes {stage1.shape}, {stage2.shape}")
    # block 0 first: the ASCII fast paths read stage2[0:128] directly
    if stage1[0] != 0 or int(stage1.max()) >= stage2.size // BLOCK or int(stage2.max()) > SPACE:
        raise ValueError("block numbers or class codes out of range")
    if stored_hash is not None and stored_hash != _hash(stage1, stage2):
        raise ValueError("contents do not match the stored hash")
    return stage1, stage2, version


def cache_path(version: str) -> Path:
    """Where the table for ``regex`` version ``version`` is cached."""
    from .. import config

    return Path(config.CACHE_DIR) / f"unicode-classes-regex-{version}.npz"


def _read_cached(path: Path, version: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached table at ``path`` if it is a valid one for ``version``, else None."""
    try:
        stage1, stage2, stored = _read(path)
    except Exception:  # missing, or truncated or overwritten: zipfile, zlib, KeyError, ValueError...
        return None
    if stored != version:
        return None
    return stage1, stage2


def _store_cached(path: Path, stage1: np.ndarray, stage2: np.ndarray, version: str) -> bool:
    """Save atomically (a temporary file in the same folder, then ``os.replace``),
    so concurrent processes only ever see a complete file. False on OSError."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            _write(f, stage1, stage2, version)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; a cache shared by a group should get
        # the mode any other new file would
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


@lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray]:
    """``(stage1 uint16[0x1100], stage2 uint8[nblocks * 256])`` for the installed
    ``regex``: shipped, cached or built (see the module docstring); found once
    per process.

    Raises RuntimeError when the shipped table is malformed.
    """
    global _in_use_version
    try:
        stage1, stage2, shipped = _read(TABLE_PATH)
    except FileNotFoundError:
        raise
    except Exception as e:  # not an npz, a broken zip, missing arrays, bad contents
        raise RuntimeError(f"{TABLE_PATH} is malformed ({e}): regenerate it with `python scripts/gen_unicode_tables.py`") from e
    version = regex_version()
    if shipped != version:
        path = cache_path(version)
        cached = _read_cached(path, version)
        if cached is not None:
            stage1, stage2 = cached
        else:
            stage1, stage2, version = build()
            _store_cached(path, stage1, stage2, version)  # when it cannot, the table lives in memory only
    _in_use_version = version
    return stage1, stage2


_scan: tuple | None = None  # scan_tables() of the tables() object it was made from


def scan_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(cls uint8[256], bmp uint8[0x10000], stage1, stage2)``: the tables the
    scanner reads (:func:`gpubpe.pretok.machine.scan_count`). ``cls`` is the
    class of each ASCII byte and 4 (decode the sequence) for bytes >= 0x80;
    ``bmp`` the class of every code point below U+10000, flat, so a 2- or
    3-byte character costs one load instead of two dependent ones. Made from
    :func:`tables` (and remade when its cache is cleared), 64 KiB."""
    global _scan
    stage1, stage2 = tables()
    if _scan is None or _scan[2] is not stage1 or _scan[3] is not stage2:
        cp = np.arange(0x10000, dtype=np.int64)
        bmp = np.ascontiguousarray(stage2[stage1[cp >> 8].astype(np.int64) * BLOCK + (cp & (BLOCK - 1))], dtype=np.uint8)
        cls = np.full(256, 4, dtype=np.uint8)
        cls[:128] = stage2[:128]
        _scan = (cls, bmp, stage1, stage2)
    return _scan


def table_hash() -> str:
    """16 hex digits of SHA-256 over the table in use (``stage1`` as little-endian
    uint16, then ``stage2``).

    Equal hashes mean equal classes for every code point, whichever ``regex``
    versions the tables came from (tables are canonical, see :func:`two_level`),
    so compare tables by this, not by :func:`table_id`.
    """
    return _hash(*tables())


def table_id() -> str:
    """``"regex-<version>:<table_hash()>"``: the table in use, readable.

    The version says where the table came from; two ``regex`` versions with
    the same classes give different ids but the same hash part, so checks of
    whether two tables agree should compare :func:`table_hash`.
    """
    stage1, stage2 = tables()
    return f"regex-{_in_use_version}:{_hash(stage1, stage2)}"


def classify(cp: int) -> int:
    """The class code of code point ``cp`` (OTHER, LETTER, NUMBER or SPACE)."""
    stage1, stage2 = tables()
    return int(stage2[int(stage1[cp >> 8]) * 256 + (cp & 255)])


def all_classes() -> np.ndarray:
    """uint8[0x110000]: the class of every code point, expanded from the table."""
    stage1, stage2 = tables()
    return stage2.reshape(-1, 256)[stage1.astype(np.intp)].reshape(-1)
