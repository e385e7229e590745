"""Generate gpubpe/data/gpt2_classes.npz: the character classes of the GPT-2
pre-tokenization pattern, for every code point, as the installed ``regex``
package sees them.

The fast pre-tokenizer (gpubpe/_pretok_numba.py) needs one answer per code
point: is it ``\\p{L}``, ``\\p{N}``, ``\\s``, or none of these ("other")? The
answers come from ``regex`` itself rather than from ``unicodedata`` because
``regex`` is the oracle, and the two disagree on corners (``\\x1c``-``\\x1f``
are ``\\s`` in ``regex``; the Unicode versions of the two may differ).

Layout: a two-level table. ``stage1[cp >> 8]`` is a block number and
``stage2[block * 256 + (cp & 255)]`` the class. Identical 256-code-point blocks
are stored once (most of the 4352 blocks are unassigned or uniform), so the
file is a few tens of KB. Block 0 (ASCII and Latin-1) is stored first, so the
ASCII classes are ``stage2[0:128]``.

Run it after upgrading ``regex``; tests/test_pretok_tables.py fails until then:

    python scripts/gen_unicode_tables.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import regex

# Class codes, shared with gpubpe/_unicode.py.
OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
NCP = 0x110000
BLOCK = 256


def classify_all() -> np.ndarray:
    """uint8[0x110000]: the class of every code point, surrogates included.

    One string holding every code point in order is scanned once per class, so
    position == code point; matching runs (``\\p{L}+``) keeps it to a few
    thousand matches instead of a million calls.
    """
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
    blocks = classes.reshape(-1, BLOCK)
    index: dict[bytes, int] = {}
    stage1 = np.empty(blocks.shape[0], dtype=np.uint16)
    stage2: list[np.ndarray] = []
    for b, row in enumerate(blocks):
        key = row.tobytes()
        if key not in index:
            index[key] = len(stage2)
            stage2.append(row)
        stage1[b] = index[key]
    return stage1, np.concatenate(stage2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "gpubpe" / "data" / "gpt2_classes.npz"
    ap.add_argument("--out", type=Path, default=default)
    args = ap.parse_args()
    classes = classify_all()
    stage1, stage2 = two_level(classes)
    assert stage1[0] == 0
    np.savez_compressed(
        args.out,
        stage1=stage1,
        stage2=stage2,
        regex_version=np.array(regex.__version__),
    )
    print(f"{args.out}: {stage2.size // BLOCK} distinct blocks, {args.out.stat().st_size} bytes (regex {regex.__version__})")


if __name__ == "__main__":
    main()
