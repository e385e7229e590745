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
    """Fail before any work if the output directory cannot be written."""
    from ._files import check_writable

    check_writable(out, "--out directory")


def _warn_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gpubpe: warning: {_flag_names(message)}", file=sys.stderr)


def cmd_train(args) -> int:
    from .trainer import train_with_stats

    out = Path(args.out)
    _check_out_dir(out)
    specials = args.special_token
    if args.counts:
        if args.inputs:
            raise _Fail("give either input files or --counts, not both")
        from .counts import load_all

        inputs = load_all(args.counts)
    elif args.inputs:
        inputs = args.inputs
    else:
        inputs = default_corpus_text()
        if not specials:
            specials = [DEFAULT_SPECIAL]
        if not args.quiet:
            print(f"gpubpe: no input given: training on the shipped corpus (two Gutenberg books), "
                  f"special token {DEFAULT_SPECIAL}", file=sys.stderr)
    model, stats = train_with_stats(
        inputs,
        vocab_size=args.vocab_size,
        special_tokens=specials or (),
        backend=args.backend,
        workers=args.workers,
        pattern=args.pattern,
        progress=False if args.quiet else ("json" if args.progress == "json" else None),
        max_token_length=args.max_token_length,
        ties=args.ties,
        min_frequency=args.min_frequency,
        init=_load_parent(args.init) if args.init else None,
        text_field=args.text_field,
        text_column=args.text_column,
    )
    written = save_all(model, out)
    if not args.quiet:
        print(stats.summary(), file=sys.stderr)
        print("wrote          " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def _load_parent(path: str):
    """The model ``--init`` continues: a gpubpe model (model.json keeps its ids)."""
    from .model import load

    try:
        return load(path)
    except (ValueError, OSError) as e:
        raise _Fail(f"cannot continue from {path!r}: {e}") from None


def save_all(model, out: Path) -> list[Path]:
    """Every format a trained tokenizer is written in: model.json (native),
    tokenizer.json (HF), vocab.json + merges.txt (GPT-2), tokenizer.tiktoken."""
    from .formats import export

    return export(model, out)


def _load_model(path: str, special_tokens):
    """The model in ``path`` (any format), checked by building its tokenizer."""
    from .formats import load_any
    from .tokenizer import Tokenizer

    try:
        model = load_any(Path(path), special_tokens=special_tokens or None)
        return model, Tokenizer.from_model(model)
    except (ValueError, TypeError, OSError) as e:
        raise _Fail(f"cannot load tokenizer {path!r}: {e}") from None


def cmd_export(args) -> int:
    from .formats import FORMATS, export

    out = Path(args.out)
    _check_out_dir(out)
    model, _ = _load_model(args.source, args.special_token)  # model.json keeps duplicate ids
    formats = args.format or list(FORMATS)
    if not args.format and not model.is_native():
        # e.g. GPT-2's own files (bytes not at ids 0..255): every format but model.json
        formats.remove("native")
        if not args.quiet:
            print("gpubpe: ids not in the trainer's layout: model.json skipped", file=sys.stderr)
    if args.vocab_size is not None:
        try:
            model = model.truncated(args.vocab_size)
        except ValueError as e:
            raise _Fail(f"--vocab-size: {e}") from None
    written = export(model, out, formats=formats)
    if not args.quiet:
        print("wrote          " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def cmd_count(args) -> int:
    import time

    from .counts import count, dask_client

    out = Path(args.out)
    _check_out_dir(out)
    client = dask_client(args.dask) if args.dask else None
    t = time.perf_counter()
    try:
        wc = count(args.inputs, special_tokens=args.special_token, pattern=args.pattern, workers=args.workers,
                   executor=client, buckets=args.buckets, text_field=args.text_field, text_column=args.text_column,
                   progress=False if args.quiet else None)
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and args.dask.startswith("local"):
                cluster.close()
    seconds = time.perf_counter() - t
    wc.save(out)
    if not args.quiet:
        nbytes = sum(int(i.get("size", 0)) for i in wc.meta["inputs"])
        where = f"on Dask ({args.dask})" if args.dask else "in this process"
        print(f"inputs         {len(wc.meta['inputs']):,} file(s), {nbytes:,} bytes, counted {where}", file=sys.stderr)
        print(f"pre-tokens     {wc.pretokens:,} ({wc.num_words:,} unique)", file=sys.stderr)
        print(f"time           {seconds:.2f} s ({nbytes / max(seconds, 1e-9) / 1e6:.1f} MB/s)", file=sys.stderr)
        shard_s = wc.run.get("shard_seconds")
        if shard_s:
            rates = sorted(int(i["size"]) / max(sec, 1e-9) / 1e6 for i, sec in zip(wc.meta["inputs"], shard_s))
            print(f"per worker     {rates[len(rates) // 2]:.1f} MB/s per shard (median of {len(rates)}), "
                  f"{sum(shard_s):.2f} s of shard time", file=sys.stderr)
        print(f"wrote          {out}", file=sys.stderr)
    return 0


def cmd_encode(args) -> int:
    from .encode import encode_files

    _, tok = _load_model(args.tokenizer, args.special_token)
    stats = encode_files(args.inputs, tok, args.out, workers=args.workers, progress=False if args.quiet else None)
    if not args.quiet:
        print(stats.summary(), file=sys.stderr)
    return 0


def _record_options(p) -> None:
    p.add_argument("--text-field", default="text", metavar="FIELD", help="the JSONL field holding the text (default text)")
    p.add_argument("--text-column", default="text", metavar="COLUMN",
                   help="the Parquet column holding the text (default text)")


class _Fail(Exception):
    """An error already worded for the command line."""


def build_parser() -> argparse.ArgumentParser:
    from ._validate import BACKENDS
    from .formats import FORMATS

    p = argparse.ArgumentParser(prog="gpubpe", description="Exact byte-level BPE tokenizer training, on a GPU or a CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tokenizer", description="Train a byte-level BPE tokenizer (CS336 rules, exact).")
    t.add_argument("inputs", nargs="*", help="text files (UTF-8; invalid bytes are kept as bytes); - reads standard "
                                             "input. None: the shipped corpus.")
    t.add_argument("--vocab-size", type=int, default=10000, help="256 bytes + merges + special tokens (default 10000)")
    t.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="a special token; repeat for several (longest match wins)")
    t.add_argument("--out", default="tokenizer", help="output directory (default ./tokenizer)")
    t.add_argument("--backend", default="auto", choices=BACKENDS)
    t.add_argument("--workers", type=int, default=None, help="pre-tokenization workers (default: all cores)")
    t.add_argument("--pattern", default=None, metavar="NAME_OR_REGEX",
                   help="pre-tokenization: gpt2 (default, the fast path; with --init the parent's), cl100k, o200k, "
                        "or a regex")
    t.add_argument("--ties", default=None, choices=["cs336", "hf", "rustbpe"],
                   help="equal counts: cs336 (default; with --init the parent's), hf (HF tokenizers' BpeTrainer, bit for bit) or rustbpe "
                        "(rustbpe and bpeasy)")
    t.add_argument("--min-frequency", type=int, default=None, metavar="N",
                   help="stop at the first best pair that occurs fewer than N times (HF's min_frequency)")
    t.add_argument("--init", default=None, metavar="DIR",
                   help="continue training a model saved by `gpubpe train --out DIR`: its merges are replayed, "
                        "its ids kept, and the new ones follow")
    t.add_argument("--progress", choices=["bar", "json"], default="bar",
                   help="bar (default, on a terminal) or json: one {stage, done, total} object a line on stderr")
    t.add_argument("--counts", action="append", default=[], metavar="DIR",
                   help="train from word counts written by `gpubpe count --out DIR`; repeat to merge several")
    _record_options(t)
    t.add_argument("--max-token-length", type=int, default=None, metavar="BYTES",
                   help="never merge a pair whose token would exceed BYTES (default: no cap, exact)")
    t.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars, no summary (warnings, such as an early stop, still print)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="convert a saved tokenizer to other formats",
                       description="Write a saved tokenizer (a directory from `gpubpe train --out`, or one file) "
                                   "as HF tokenizer.json, GPT-2 vocab.json + merges.txt, tokenizer.tiktoken "
                                   "and the native model.json.")
    e.add_argument("source", help="a directory written by `gpubpe train --out`, or a tokenizer file")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--format", action="append", choices=FORMATS,
                   help="a format to write; repeat for several (default: all)")
    e.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="special tokens, for a .tiktoken source (which holds none)")
    e.add_argument("--vocab-size", type=int, default=None,
                   help="export the model's first merges only, to this many ids: exactly the model training to "
                        "this size makes (greedy BPE is a prefix process)")
    e.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    e.set_defaults(func=cmd_export)

    n = sub.add_parser("count", help="count pre-tokens into a word-counts directory",
                       description="Count the unique pre-tokens of a corpus (exact int64 counts) into a directory "
                                   "that `gpubpe train --counts` trains from; counts of several parts add up.")
    n.add_argument("inputs", nargs="+", help="files, directories, glob patterns or - (as for train)")
    n.add_argument("--out", required=True, help="output directory")
    n.add_argument("--special-token", action="append", default=[], metavar="TOKEN", help="a special token; repeat")
    n.add_argument("--pattern", default="gpt2", metavar="NAME_OR_REGEX", help="as for train")
    n.add_argument("--workers", type=int, default=None, help="threads or processes here (default: all cores)")
    n.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="count on a Dask cluster: tcp://scheduler:8786, or local / local:N for a LocalCluster")
    n.add_argument("--buckets", type=int, default=None, help="reduce tasks on Dask (default: 2 per file, at most 64)")
    _record_options(n)
    n.add_argument("-q", "--quiet", action="store_true", help="no summary")
    n.set_defaults(func=cmd_count)

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
    """Run one command. Every failure ends in one line on stderr, never a
    traceback: 1 for an error, 130 for an interrupt (Ctrl-C or, in
    ``encode``, SIGTERM), as shells expect."""
    args = build_parser().parse_args(argv)
    from . import backends

    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _warn_line
        warnings.simplefilter("default")
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("gpubpe: interrupted: nothing more was written (files saved before are intact)", file=sys.stderr)
            return 130
        # already worded: ours, a missing device, an optional dependency (the install command)
        except (_Fail, backends.BackendUnavailable, ImportError) as e:
            print(f"gpubpe: {e}", file=sys.stderr)
        except MemoryError:
            print("gpubpe: out of memory: use fewer --workers, a smaller --vocab-size or a machine with more memory",
                  file=sys.stderr)
        except (ValueError, TypeError, OSError) as e:
            print(f"gpubpe: {_flag_names(e)}", file=sys.stderr)
    return 1


_FLAGS = {"vocab_size": "--vocab-size", "special_tokens": "--special-token", "max_token_length": "--max-token-length",
          "workers": "--workers", "pattern": "--pattern", "backend": "--backend", "chunk_size": "chunk size",
          "ties": "--ties", "min_frequency": "--min-frequency", "init": "--init"}


def _flag_names(e: BaseException) -> str:
    """The library's message with its keyword names as the command line spells them."""
    import re

    text = str(e)
    return re.sub(r"(?<![-\w])(" + "|".join(_FLAGS) + r")(?==|\b)", lambda m: _FLAGS[m.group(1)], text)


if __name__ == "__main__":
    sys.exit(main())
