"""Character classes of the GPT-2 pre-tokenization pattern, per code point.

The pattern ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
only ever asks which of four disjoint classes a character is in: letter
(``\\p{L}``), number (``\\p{N}``), whitespace (``\\s``) or other. The table is
generated from the installed ``regex`` package by ``scripts/gen_unicode_tables.py``
and stored as a two-level table (``stage1[cp >> 8]`` picks a 256-entry block of
``stage2``), 132 distinct blocks, under 3 KB on disk.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
CLASS_NAMES = ("other", "letter", "number", "space")

TABLE_PATH = Path(__file__).parent / "data" / "gpt2_classes.npz"


@lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray]:
    """``(stage1 uint16[0x1100], stage2 uint8[nblocks * 256])``, read once."""
    with np.load(TABLE_PATH) as z:
        stage1 = np.ascontiguousarray(z["stage1"], dtype=np.uint16)
        stage2 = np.ascontiguousarray(z["stage2"], dtype=np.uint8)
    if stage1.shape != (0x1100,) or stage1[0] != 0 or stage2.size % 256:
        raise RuntimeError(f"{TABLE_PATH} is malformed: regenerate it with `python scripts/gen_unicode_tables.py`")
    return stage1, stage2


def classify(cp: int) -> int:
    """The class code of code point ``cp`` (OTHER, LETTER, NUMBER or SPACE)."""
    stage1, stage2 = tables()
    return int(stage2[int(stage1[cp >> 8]) * 256 + (cp & 255)])


def all_classes() -> np.ndarray:
    """uint8[0x110000]: the class of every code point, expanded from the table."""
    stage1, stage2 = tables()
    return stage2.reshape(-1, 256)[stage1.astype(np.intp)].reshape(-1)
