"""The command line: ``gpubpe train``, ``gpubpe export``, ``gpubpe encode``; also as ``python -m gpubpe``."""

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
            pattern=args.pattern,
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
    """Every format a trained tokenizer is written in: model.json (native),
    tokenizer.json (HF), vocab.json + merges.txt (GPT-2), tokenizer.tiktoken."""
    from .formats import export

    return export(model, out)


def _load_tokenizer(path: str, special_tokens):
    from .tokenizer import Tokenizer

    try:
        return Tokenizer.load(path, special_tokens=special_tokens or None)
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"gpubpe: cannot load tokenizer {path!r}: {e}") from None


def cmd_export(args) -> int:
    from .formats import FORMATS, export, native_layout

    tok = _load_tokenizer(args.source, args.special_token)
    src = Path(args.source)
    obj = tok
    if (src / "model.json").exists() or src.name == "model.json":
        from .model import load

        obj = load(src)  # keeps duplicate ids, which the other formats cannot hold
    formats = args.format or list(FORMATS)
    if not args.format and not native_layout(obj):
        # e.g. GPT-2's own files (bytes not at ids 0..255): every format but model.json
        formats.remove("native")
        if not args.quiet:
            print("gpubpe: ids not in the trainer's layout: model.json skipped", file=sys.stderr)
    out = Path(args.out)
    _check_out_dir(out)
    try:
        written = export(obj, out, formats=formats)
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"gpubpe: {e}") from None
    if not args.quiet:
        print("wrote          " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def cmd_encode(args) -> int:
    from .encode import encode_files

    tok = _load_tokenizer(args.tokenizer, args.special_token)
    try:
        stats = encode_files(
            args.inputs, tok, args.out, workers=args.workers, progress=False if args.quiet else None
        )
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"gpubpe: {e}") from None
    if not args.quiet:
        print(stats.summary(), file=sys.stderr)
    return 0


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
    t.add_argument("--workers", type=int, default=None, help="pre-tokenization workers (default: all cores)")
    t.add_argument("--pattern", default="gpt2", metavar="NAME_OR_REGEX",
                   help="pre-tokenization: gpt2 (default, the fast path), cl100k, o200k, or a regex")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no summary")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="convert a saved tokenizer to other formats",
                       description="Write a saved tokenizer (a directory from `gpubpe train --out`, or one file) "
                                   "as HF tokenizer.json, GPT-2 vocab.json + merges.txt, tokenizer.tiktoken "
                                   "and the native model.json.")
    e.add_argument("source", help="a directory written by `gpubpe train --out`, or a tokenizer file")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--format", action="append", choices=["native", "hf", "gpt2", "tiktoken"],
                   help="a format to write; repeat for several (default: all)")
    e.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="special tokens, for a .tiktoken source (which holds none)")
    e.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("encode", help="encode a corpus to a token array (.npy)",
                       description="Encode text files to one token array: uint16 when the vocab fits, else "
                                   "uint32. Special tokens in the text become their ids.")
    c.add_argument("inputs", nargs="+", help="text files, encoded one after the other")
    c.add_argument("--tokenizer", required=True, help="a directory written by `gpubpe train --out` or `gpubpe export`")
    c.add_argument("--out", required=True, help="output .npy file")
    c.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    c.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="special tokens, for a tokenizer given only as a .tiktoken file")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    c.set_defaults(func=cmd_encode)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
