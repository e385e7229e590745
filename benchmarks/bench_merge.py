"""The merge loop alone: WordTable in, merges out (no pre-tokenization).

    python benchmarks/bench_merge.py --corpus small.txt --vocab-size 32000 [--engines numba,numba-steps@2] [--repeats 3]

``numba-steps`` is the step loop (gpubpe/backends/cpu_steps.py); ``numba-steps@T`` runs
it on T Numba threads (at most the pool's size, NUMBA_NUM_THREADS).

The WordTable is counted once (and cached beside the output as .npz); each
engine is warmed up (Numba compiles or loads its cache) and then timed
``--repeats`` times; the median is reported, with CPU time beside wall time
because the machine may be shared. Merges of all engines must be identical.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def load_table(corpus: Path, special: str, cache_dir: Path):
    from gpubpe.corpus import iter_chunks, special_bytes
    from gpubpe.patterns import GPT2_PATTERN
    from gpubpe.pretok import count_table
    from gpubpe.wordtable import WordTable

    h = hashlib.sha256(corpus.read_bytes()).hexdigest()[:16]
    cache = cache_dir / f"wordtable-{corpus.stem}-{h}.npz"
    if cache.exists():
        d = np.load(cache)
        return WordTable(d["symbols"], d["offsets"], d["counts"]), h
    specials = special_bytes([special] if special else [])
    table = count_table(iter_chunks([corpus], None, specials, 4 << 20), specials, workers=2, pattern=GPT2_PATTERN)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, symbols=table.symbols, offsets=table.offsets, counts=table.counts)
    return table, h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--special-token", default="<|endoftext|>")
    ap.add_argument("--engines", default="numba")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ties", default="cs336", choices=["cs336", "hf", "rustbpe"], help="the tie rule (gpubpe.ties)")
    ap.add_argument("--cache-dir", type=Path, default=Path(".bench-cache"))
    ap.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--results-key", default=None, help="the RESULTS.md block (default merge.<corpus>.<vocab>)")
    ap.add_argument("--note", action="append", default=[], help="a line added to the block's notes (repeatable)")
    args = ap.parse_args(argv)

    from gpubpe.backends.cpu import merge_loop
    from gpubpe.backends.cpu_python import merge_loop_python

    from gpubpe.ties import byte_rank

    from gpubpe.backends.cpu_steps import merge_loop_steps

    engines = {"numba": merge_loop, "python": merge_loop_python, "numba-steps": merge_loop_steps}
    rules = (0, byte_rank(args.ties), np.zeros((0, 2), np.int32), 0)  # max_len, tie rule, nothing forced, min_count
    wt, h = load_table(args.corpus, args.special_token, args.cache_dir)
    n = args.vocab_size - 256 - (1 if args.special_token else 0)
    n_words, n_symbols = wt.num_words, wt.symbols.shape[0]
    print(f"corpus {args.corpus} (sha256 {h}...): {wt.num_words:,} unique words, "
          f"{wt.symbols.shape[0]:,} symbols; {n:,} merges asked")
    results = {}
    rows = []
    import numba

    for name in args.engines.split(","):
        base, _, threads = name.partition("@")
        fn = engines[base]
        numba.set_num_threads(int(threads) if threads else numba.config.NUMBA_NUM_THREADS)
        fn(wt.symbols, wt.offsets, wt.counts, 1, np.zeros(2, np.int64), *rules)  # warm-up / compile
        walls, cpus = [], []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            merges, _, _ = fn(wt.symbols, wt.offsets, wt.counts, n, np.zeros(2, np.int64), *rules)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        results[name] = merges
        wall = statistics.median(walls)
        rows.append([name, f"{len(merges):,}", f"{wall:.3f}", f"{statistics.median(cpus):.3f}",
                     f"{1e6 * wall / max(len(merges), 1):.1f}"])
        print(f"| {name} | {len(merges):,} merges | wall {wall:.3f} s (median of {args.repeats}) "
              f"| cpu {statistics.median(cpus):.3f} s | {1e6 * wall / max(len(merges), 1):.1f} us/merge |")
    ref = next(iter(results.values()))
    for name, m in results.items():
        if m.shape != ref.shape or not (m == ref).all():
            print(f"MISMATCH: {name} merges differ", file=sys.stderr)
            return 1
    if args.results:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import _common as C

        corpus = C.corpus_info(args.corpus)
        table = C.md_table(["engine", "merges", "wall s (median)", "cpu s (median)", "us / merge"], rows)
        notes = [f"the merge loop alone (WordTable in, merges out), ties={args.ties!r}, on {n_words:,} unique words, "
                 f"{n_symbols:,} symbols; warm (compiled) engines; median of {args.repeats}",
                 "all engines gave identical merges", *args.note]
        section = C.render_section(title=f"Merge loop alone ({corpus.name}, vocab {args.vocab_size:,})",
                                   command=C.command_line(), body=table, corpora=[corpus],
                                   machine=C.machine_info(), notes=notes)
        C.update_results(args.results_key or f"merge.{args.corpus.stem}.{args.vocab_size}", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
