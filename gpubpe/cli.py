"""The command line: ``gpubpe train``, also as ``python -m gpubpe``."""

from __future__ import annotations

import argparse
import io
import lzma
import sys
from importlib import resources
from pathlib import Path

DEFAULT_CORPUS = "default_corpus.txt.xz"
DEFAULT_SPECIAL = "<|endoftext|>"


def default_corpus_text():
    """The shipped corpus (two Gutenberg books, see gpubpe/data/README.md), as lines of text."""
    raw = resources.files("gpubpe").joinpath("data", DEFAULT_CORPUS).read_bytes()
    return io.TextIOWrapper(lzma.LZMAFile(io.BytesIO(raw)), encoding="utf-8", newline="")


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SystemExit(f"gpubpe: --out {str(out)!r} is a file: give a directory")
    parent = out if out.exists() else out.parent
    if not parent.exists():
        # mkdir -p semantics are fine, but only below a directory that exists
        ancestor = parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise SystemExit(f"gpubpe: cannot create --out {str(out)!r}: {str(ancestor)!r} is not a directory")


def cmd_train(args) -> int:
    from ._api import train_with_stats

    out = Path(args.out)
    _check_out_dir(out)
    specials = args.special_token
    if args.inputs:
        inputs = args.inputs
    else:
        inputs = default_corpus_text()
        if not specials:
            specials = [DEFAULT_SPECIAL]
        if not args.quiet:
            print(f"gpubpe: no input given: training on the shipped corpus (two Gutenberg books), "
                  f"special token {DEFAULT_SPECIAL}", file=sys.stderr)
    try:
        model, stats = train_with_stats(
            inputs,
            vocab_size=args.vocab_size,
            special_tokens=specials or (),
            backend=args.backend,
            workers=args.workers,
            progress=False if args.quiet else None,
        )
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"gpubpe: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    written = save_all(model, out)
    if not args.quiet:
        print(stats.summary(), file=sys.stderr)
        if stats.num_merges < args.vocab_size - 256 - len(model.special_tokens):
            print(f"note           stopped after {stats.num_merges:,} merges: no pair left to merge", file=sys.stderr)
        print("wrote          " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def save_all(model, out: Path) -> list[Path]:
    """Every format a trained tokenizer is written in."""
    return [model.save(out)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpubpe", description="Exact byte-level BPE tokenizer training, on a GPU or a CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tokenizer", description="Train a byte-level BPE tokenizer (CS336 rules, exact).")
    t.add_argument("inputs", nargs="*", help="text files (UTF-8; invalid bytes are kept as bytes). None: the shipped corpus.")
    t.add_argument("--vocab-size", type=int, default=10000, help="256 bytes + merges + special tokens (default 10000)")
    t.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="a special token; repeat for several (longest match wins)")
    t.add_argument("--out", default="tokenizer", help="output directory (default ./tokenizer)")
    t.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "cuda-sim"])
    t.add_argument("--workers", type=int, default=None, help="pre-tokenization processes (default: all cores)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no summary")
    t.set_defaults(func=cmd_train)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
