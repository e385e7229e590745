"""Word counts at scale: a corpus counted in one process against the same corpus
as shards on a Dask LocalCluster, and the size of the counts on disk.

Each variant runs `gpubpe count` in a fresh process (wall time and memory of
the whole process tree, the cluster's worker processes included); --check
trains from each variant's counts and from the corpus itself and fails unless
every set of merges is the same.

    python benchmarks/bench_counts.py --corpus medium.txt --shards 16 --dask-workers 2 --check --results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SPECIAL = "<|endoftext|>"


def split_corpus(path: str, shards: int, out: Path) -> list[Path]:
    """``shards`` files of about equal size, cut right after a special token
    (so each shard holds whole documents, and the counts add up exactly)."""
    data = Path(path).read_bytes()
    sep = SPECIAL.encode()
    cuts = [0]
    for k in range(1, shards):
        i = data.find(sep, k * len(data) // shards)
        cuts.append(len(data) if i < 0 else i + len(sep))
    cuts.append(len(data))
    files = []
    for k in range(shards):
        f = out / f"shard-{k:03d}.txt"
        f.write_bytes(data[cuts[k] : cuts[k + 1]])
        files.append(f)
    return files


def dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--dask-workers", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=32000, help="for --check")
    ap.add_argument("--check", action="store_true", help="train from every variant's counts; fail unless merges agree")
    ap.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)

    corpus = C.corpus_info(args.corpus)
    gp = [sys.executable, "-m", "gpubpe"]
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="gpubpe-bench-counts-") as tmp:
        tmp = Path(tmp)
        shard_dir = tmp / "shards"
        shard_dir.mkdir()
        split_corpus(args.corpus, args.shards, shard_dir)
        variants = [
            ("one process, the file", [args.corpus], []),
            (f"one process, {args.shards} shards", [str(shard_dir)], []),
            (f"Dask LocalCluster, {args.dask_workers} workers, {args.shards} shards", [str(shard_dir)],
             ["--dask", f"local:{args.dask_workers}"]),
        ]
        outs = []
        for name, inputs, extra in variants:
            out = tmp / f"counts-{len(outs)}"
            run = C.run_measured([*gp, "count", *inputs, "--special-token", SPECIAL, "--out", str(out), "-q", *extra],
                                 timeout=args.timeout)
            if run.returncode != 0:
                print(f"{name} failed:\n{run.tail(20)}", file=sys.stderr)
                return 1
            meta = json.loads((out / "counts.json").read_text())
            rows.append([name, C.fmt_s(run.wall_s), C.fmt_mib(run.max_rss), C.fmt_mib(run.tree_peak),
                         f"{meta['words']:,}", C.fmt_mib(dir_size(out)), f"{dir_size(out) / corpus.size:.3f}"])
            print(f"  {name}: {run.wall_s:.2f} s, largest process {C.fmt_mib(run.max_rss)}, "
                  f"tree {C.fmt_mib(run.tree_peak)}", file=sys.stderr)
            outs.append(out)
        if args.check:
            merges = []
            for src in [["--counts", str(o)] for o in outs] + [[args.corpus, "--special-token", SPECIAL]]:
                tok = tmp / f"tok-{len(merges)}"
                run = C.run_measured([*gp, "train", *src, "--vocab-size", str(args.vocab_size), "--out", str(tok),
                                      "-q", "--backend", "cpu"], timeout=args.timeout)
                if run.returncode != 0:
                    print(f"training failed:\n{run.tail(20)}", file=sys.stderr)
                    return 1
                merges.append(json.loads((tok / "model.json").read_text())["merges"])
            if any(m != merges[0] for m in merges):
                print("merges differ between the variants", file=sys.stderr)
                return 1
            notes.append(f"--check: training at {args.vocab_size:,} from each variant's counts and from the corpus "
                         "itself gave the same merges")
    headers = ["variant", "wall (s)", "largest process, peak RSS (MiB)", "process tree, peak PSS (MiB)", "unique words",
               "counts on disk (MiB)", "counts / corpus"]
    table = C.md_table(headers, rows)
    notes.insert(0, f"corpus {corpus.markdown()}; one fresh-process run each; {os.cpu_count()} cores; the largest "
                    "process is one Dask worker or the client, whichever peaked higher")
    print(table)
    print("\n".join(notes))
    if args.results:
        section = C.render_section(title=f"Word counts: one process against a Dask cluster ({corpus.name})",
                                   command=C.command_line(), body=table, corpora=[corpus], machine=C.machine_info(),
                                   notes=notes)
        C.update_results(f"counts-{corpus.name}", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
