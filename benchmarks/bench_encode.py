"""Corpus encoding throughput: ``gpubpe encode`` against tiktoken's
``encode_ordinary_batch``, same tokenizer, same number of threads, identical ids.

    python benchmarks/bench_encode.py --corpus /work/corpora/small.txt \\
        [--tokenizer DIR | --vocab-size 32000] --threads 2 --repeats 3 [--json out.json]

How it measures:

- The tokenizer is DIR, or one gpubpe trains on the corpus (``--vocab-size``,
  ``<|endoftext|>`` special). tiktoken loads the same ranks from the exported
  ``tokenizer.tiktoken``.
- Every run is a fresh process, and the runs alternate (gpubpe, tiktoken,
  gpubpe, ...) after one warm-up round that also fills Numba's disk cache, so
  drift of a shared machine lands on both. Medians over the repeats.
- The timed span is what a user waits for, from the file on disk to the ids
  in a NumPy array:
  gpubpe: ``encode_files`` (read, worker start, pre-tokenize, encode, write
  the ``.npy``); tiktoken: read and decode the file, split it at
  ``<|endoftext|>`` into documents, ``encode_ordinary_batch(docs,
  num_threads=T)``, join the documents' ids with the special token's id into
  one array. Loading the tokenizer is outside the span for both.
  The median of tiktoken's ``encode_ordinary_batch`` call alone is printed too.
- The two arrays must be identical, or the script fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EOT = "<|endoftext|>"


def child_gpubpe(corpus: str, tokdir: str, threads: int, out: str) -> tuple[float, float]:
    from gpubpe import Tokenizer
    from gpubpe.encode import encode_files

    tok = Tokenizer.load(tokdir)
    t0 = time.perf_counter()
    encode_files(corpus, tok, out, workers=threads, progress=False)
    elapsed = time.perf_counter() - t0
    return elapsed, elapsed  # no separate encode-only span: reading, encoding and writing overlap


def child_tiktoken(corpus: str, tokdir: str, threads: int, out: str) -> tuple[float, float]:
    import numpy as np
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from gpubpe import Tokenizer

    specials = Tokenizer.load(tokdir).special_ids
    ranks = load_tiktoken_bpe(str(Path(tokdir) / "tokenizer.tiktoken"))
    pattern = Tokenizer.load(tokdir).pattern
    enc = tiktoken.Encoding("bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    eot = specials[EOT]
    t0 = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        docs = f.read().split(EOT)
    t1 = time.perf_counter()
    ids = enc.encode_ordinary_batch(docs, num_threads=threads)
    t2 = time.perf_counter()
    dtype = np.uint16 if max(max(ranks.values()), eot) < 1 << 16 else np.uint32
    parts = []
    for k, doc_ids in enumerate(ids):
        if k:
            parts.append(np.array([eot], dtype))
        parts.append(np.array(doc_ids, dtype))
    arr = np.concatenate(parts)
    elapsed = time.perf_counter() - t0
    np.save(out, arr)
    return elapsed, t2 - t1


CHILDREN = {"gpubpe": child_gpubpe, "tiktoken": child_tiktoken}


def run_child(tool: str, corpus: str, tokdir: str, threads: int, out: str) -> tuple[float, float]:
    """(timed span, the encode call alone) in seconds, from a fresh process."""
    r = subprocess.run(
        [sys.executable, __file__, "--_child", tool, corpus, tokdir, str(threads), out],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"{tool} run failed:\n{r.stderr}")
    total, core = r.stdout.strip().splitlines()[-1].split()
    return float(total), float(core)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="a text file (required)")
    p.add_argument("--tokenizer", help="a gpubpe tokenizer directory (default: train one on the corpus)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--threads", default=str(os.cpu_count()), help="comma list, e.g. 1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write every sample here")
    p.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    p.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        tool, corpus, tokdir, threads, out = args._child
        print(*CHILDREN[tool](corpus, tokdir, int(threads), out))
        return 0
    if not args.corpus:
        p.error("--corpus is required")

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="gpubpe-bench-encode-"))
    tokdir = args.tokenizer
    if tokdir is None:
        import gpubpe
        from gpubpe.formats import export

        t0 = time.perf_counter()
        model = gpubpe.train(args.corpus, vocab_size=args.vocab_size, special_tokens=[EOT], progress=False)
        tokdir = str(work / "tok")
        export(model, tokdir)
        print(f"trained vocab {len(model.vocab)} on {args.corpus} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not (Path(tokdir) / "tokenizer.tiktoken").exists():
        raise SystemExit(f"{tokdir} has no tokenizer.tiktoken: run `gpubpe export {tokdir} --out {tokdir}`")

    size = os.path.getsize(args.corpus)
    results = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        outs = {tool: str(work / f"{tool}-{threads}.npy") for tool in CHILDREN}
        for tool in CHILDREN:  # warm-up round (fills Numba's cache, the page cache)
            run_child(tool, args.corpus, tokdir, threads, outs[tool])
        a, b = np.load(outs["gpubpe"]), np.load(outs["tiktoken"])
        same = a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
        if not same:
            raise SystemExit(f"ids differ at {threads} threads: gpubpe {a.shape} {a.dtype}, tiktoken {b.shape} {b.dtype}")
        samples = {tool: [] for tool in CHILDREN}
        cores = {tool: [] for tool in CHILDREN}
        for _ in range(args.repeats):
            for tool in CHILDREN:
                total, core = run_child(tool, args.corpus, tokdir, threads, outs[tool])
                samples[tool].append(total)
                cores[tool].append(core)
        med = {tool: statistics.median(s) for tool, s in samples.items()}
        results[threads] = {"samples": samples, "encode_call_s": cores, "median_s": med,
                            "tokens": int(a.shape[0]), "identical_ids": same}
        print(f"threads {threads}: {a.shape[0]:,} tokens, identical ids: {same}")
        for tool in CHILDREN:
            print(f"  {tool:9s} {med[tool]:7.2f} s  {size / med[tool] / 1e6:6.1f} MB/s  "
                  f"samples {', '.join(f'{x:.2f}' for x in samples[tool])}")
        print(f"  (tiktoken's encode_ordinary_batch call alone: median {statistics.median(cores['tiktoken']):.2f} s)")
        print(f"  gpubpe / tiktoken time: {med['gpubpe'] / med['tiktoken']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"corpus": args.corpus, "bytes": size, "tokenizer": tokdir,
                                               "results": results}, indent=1))
    if args.results:
        _write_results(args, size, results)
    return 0


def _write_results(args, size: int, results: dict) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as C

    corpus = C.corpus_info(args.corpus)
    rows = []
    for threads, r in results.items():
        med = r["median_s"]
        for tool in CHILDREN:
            rows.append([tool, str(threads), f"{med[tool]:.2f}", f"{size / med[tool] / 1e6:.1f}",
                         f"{med[tool] / med['gpubpe']:.2f}x", f"{r['tokens']:,}", "yes" if r["identical_ids"] else "NO"])
    table = C.md_table(["tool", "threads", "s (median)", "MB/s", "time / gpubpe", "tokens", "identical ids"], rows)
    notes = [f"median of {args.repeats} fresh-process runs after a warm-up round; the whole corpus to one "
             "token array (gpubpe encode vs tiktoken encode_ordinary_batch), reading the file included",
             f"tokenizer: vocab {args.vocab_size} trained by gpubpe on the same corpus"]
    section = C.render_section(title=f"Corpus encoding ({corpus.name})", command=C.command_line(), body=table,
                               corpora=[corpus], machine=C.machine_info(), notes=notes)
    C.update_results(f"encode.{Path(args.corpus).stem}", section)


if __name__ == "__main__":
    sys.exit(main())
