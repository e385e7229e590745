"""Generate gpubpe/data/gpt2_classes.npz: the character classes of the GPT-2
pre-tokenization pattern, for every code point, as the installed ``regex``
package sees them.

The table and its layout are described in gpubpe/pretok/unicode.py, which also
builds it at run time (and caches it) when the installed ``regex`` differs
from the one the shipped file was made with. Shipping the table for the newest
``regex`` spares most installs that build. Needs only numpy and regex:

    python scripts/gen_unicode_tables.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's gpubpe, installed or not

from gpubpe.pretok import unicode as _unicode  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=_unicode.TABLE_PATH)
    args = ap.parse_args()
    stage1, stage2, version = _unicode.build()
    _unicode.save(args.out, stage1, stage2, version)
    nblocks = stage2.size // _unicode.BLOCK
    print(f"{args.out}: {nblocks} distinct blocks, {args.out.stat().st_size} bytes (regex {version}, table {_unicode._hash(stage1, stage2)})")


if __name__ == "__main__":
    main()
