"""Pre-tokenization and counting speed: gpubpe's byte-level GPT-2 machine against `regex`.

    python benchmarks/bench_pretok.py --corpus /work/corpora/small.txt \\
        [--workers 2] [--repeats 3] [--modes fresh,warm] [--check] [--json out.json] [--results]

What runs (each in a fresh process, interleaved A B C A B C ... so drift of
the machine spreads over all of them):

- ``regex``: the baseline users write: ``collections.Counter`` over
  ``regex.finditer(GPT-2 pattern, piece)`` for every piece of the decoded
  corpus between ``<|endoftext|>`` tokens, in one process. It has nothing to
  load or warm, so it runs once per round and is the baseline of both modes.
- ``count_pretokens wN``: ``gpubpe.count_pretokens(path, workers=N)``, the
  public call (it builds a dict of the unique pre-tokens at the end).
- ``count_table wN``: the training path, ``count_table(iter_chunks(...))``,
  which returns the WordTable arrays without a dict.

Each gpubpe method runs in two modes (``--modes``):

- ``fresh``: the call is the first thing the process does after ``import
  gpubpe``: importing Numba and loading its cached machine code are inside
  ``call s``, as for a user's first call (``gpubpe train``, a script);
- ``warm``: the call runs once on the whole corpus before the timed call, in
  the same process: the speed of the machine itself.

``call s`` is timed in the child around the call only (the file is read
inside it); ``process s`` is the whole child process, interpreter start
included. ``cpu s`` is the child's user + system time during the call, all
threads: on a shared machine ``MB/s per cpu-s`` is the steadier speed figure,
``MB/s per core`` is size / call s / workers. Peak memory is the child's
ru_maxrss (see ``_common.ChildRun``). ``--check`` fails unless every method
gives the same counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def _digest(items) -> str:
    """An order-independent digest of ``{bytes: count}`` pairs."""
    h = hashlib.sha256()
    for k, v in sorted(items):
        h.update(len(k).to_bytes(4, "little") + k + v.to_bytes(8, "little"))
    return h.hexdigest()[:16]


def child(method: str, corpus: str, workers: int, check: bool, mode: str = "fresh") -> dict:
    out: dict = {}
    if method == "regex":
        from collections import Counter

        import regex

        from gpubpe import GPT2_PATTERN

        pat = regex.compile(GPT2_PATTERN)
        c0, t0 = time.process_time(), time.perf_counter()
        text = Path(corpus).read_bytes().decode("utf-8", "surrogateescape")
        counts: Counter = Counter()
        for piece in text.split(C.SPECIAL):
            counts.update(m.group() for m in pat.finditer(piece))
        t1, c1 = time.perf_counter(), time.process_time()
        out.update(unique=len(counts), pretokens=sum(counts.values()))
        if check:
            t = time.perf_counter()
            out["digest"] = _digest((k.encode("utf-8", "surrogateescape"), v) for k, v in counts.items())
            out["check_s"] = time.perf_counter() - t
        out.update(call_s=t1 - t0, cpu_s=c1 - c0)
        return out

    import gpubpe

    def run():
        if method == "count_pretokens":
            return gpubpe.count_pretokens(Path(corpus), special_tokens=[C.SPECIAL], workers=workers)
        from gpubpe import config
        from gpubpe.corpus import iter_chunks, special_bytes
        from gpubpe.patterns import GPT2_PATTERN
        from gpubpe.pretok import count_table

        specials = special_bytes([C.SPECIAL])
        chunks = iter_chunks([Path(corpus)], None, specials, config.CHUNK_SIZE)
        return count_table(chunks, specials, workers=workers, pattern=GPT2_PATTERN)

    if mode == "warm":
        t = time.perf_counter()
        run()
        out["first_s"] = time.perf_counter() - t
    c0, t0 = time.process_time(), time.perf_counter()
    result = run()
    t1, c1 = time.perf_counter(), time.process_time()
    if isinstance(result, dict):
        out.update(unique=len(result), pretokens=sum(result.values()))
        items = result.items()
    else:
        out.update(unique=result.num_words, pretokens=int(result.counts.sum()))
        items = None
    if check:
        t = time.perf_counter()
        out["digest"] = _digest(items if items is not None else result.to_counts().items())
        out["check_s"] = time.perf_counter() - t  # not part of the process time reported
    out.update(call_s=t1 - t0, cpu_s=c1 - c0)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the multi-worker runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="regex,count_pretokens:1,count_pretokens:W,count_table:1,count_table:W",
                    help="comma list of METHOD[:WORKERS]; W is --workers")
    ap.add_argument("--modes", default="fresh,warm", help="comma list of fresh (first call of a process) and warm")
    ap.add_argument("--check", action="store_true", help="fail unless all methods give identical counts")
    ap.add_argument("--json", help="write every sample here")
    ap.add_argument("--results", nargs="?", const=str(C.RESULTS_MD), default=None, metavar="PATH",
                    help="write the table into benchmarks/RESULTS.md (or PATH)")
    ap.add_argument("--note", action="append", default=[], help="a line for the notes under the table (repeatable)")
    ap.add_argument("--section", metavar="KEY", help="the RESULTS.md section to write (default pretok-<corpus name>)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--_child", nargs=4, metavar=("METHOD", "WORKERS", "MODE", "RESULT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        method, workers, mode, result = args._child
        Path(result).write_text(json.dumps(child(method, args.corpus, int(workers), args.check, mode)))
        return 0

    import tempfile

    corpus = C.corpus_info(args.corpus)
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"fresh", "warm"}:
        raise SystemExit(f"--modes: fresh and/or warm, not {args.modes}")
    methods = []  # (name, workers, mode)
    for m in args.methods.split(","):
        name, _, w = m.partition(":")
        nw = 1 if not w else (args.workers if w == "W" else int(w))
        methods.extend([(name, nw, "fresh")] if name == "regex" else [(name, nw, mode) for mode in modes])
    samples: dict[tuple[str, int, str], list[dict]] = {m: [] for m in methods}
    load_before = C.load_average()
    with tempfile.TemporaryDirectory(prefix="gpubpe-bench-pretok-") as tmp:
        for r in range(args.repeats):
            for name, w, mode in methods:
                result = Path(tmp) / f"{name}-{w}-{mode}-{r}.json"
                argv = [__file__, "--corpus", args.corpus, "--_child", name, str(w), mode, str(result)]
                if args.check and r == 0:
                    argv.append("--check")
                run = C.run_measured([sys.executable, *argv], timeout=args.timeout)
                if run.returncode != 0:
                    print(f"{name} w{w} {mode} failed:\n{run.tail(20)}", file=sys.stderr)
                    return 1
                s = json.loads(result.read_text())
                s.update(max_rss=run.max_rss, process_s=run.wall_s - s.get("check_s", 0.0))
                samples[(name, w, mode)].append(s)
                print(f"  {name} w{w} {mode} run {r + 1}: call {s['call_s']:.3f} s, cpu {s['cpu_s']:.3f} s, "
                      f"process {s['process_s']:.3f} s, peak {C.fmt_mib(run.max_rss)}", file=sys.stderr)

    mb = corpus.size / 1e6
    base = C.median(s["call_s"] for s in samples[methods[0]])
    base_process = C.median(s["process_s"] for s in samples[methods[0]])
    rows = []
    for name, w, mode in methods:
        ss = samples[(name, w, mode)]
        call = C.median(s["call_s"] for s in ss)
        cpu = C.median(s["cpu_s"] for s in ss)
        process = C.median(s["process_s"] for s in ss)
        label = "regex.finditer + Counter" if name == "regex" else f"{name} w{w}"
        rows.append([label, w, "–" if name == "regex" else mode, C.fmt_s(call), C.fmt_s(cpu), f"{mb / call:.1f}",
                     f"{mb / call / w:.1f}", f"{mb / cpu:.1f}", C.fmt_ratio(base / call),
                     C.fmt_s(process), C.fmt_ratio(base_process / process),
                     C.fmt_mib(max(s["max_rss"] for s in ss)), f"{ss[0]['unique']:,}"])
    if args.check:
        digests = {m: samples[m][0]["digest"] for m in methods}
        if len(set(digests.values())) != 1:
            print(f"counts differ between methods: {digests}", file=sys.stderr)
            return 1
    headers = ["method", "workers", "mode", "call s", "cpu s", "MB/s", "MB/s per core", "MB/s per cpu-s",
               f"call speed-up vs {methods[0][0]}", "process s", "process speed-up", "peak RSS", "unique"]
    table = C.md_table(headers, rows)
    notes = [(f"corpus {corpus.markdown()}; median of {args.repeats} runs, each in a fresh process, interleaved; "
              f"{os.cpu_count()} cores"),
             ("fresh: the call is the process's first (Numba's import and cached code load inside it); warm: the "
              "call ran once on the corpus before, in the same process; regex has nothing to warm and runs once per "
              "round, the baseline of both modes"),
             ("speed-ups are same-run ratios against regex.finditer + Counter; process s is the whole child process "
              "(for a warm run: both calls), less the time --check spent on its digest")]
    if args.check:
        notes.append("--check: every method gave the same counts")
    notes.append(C.load_note(load_before, C.load_average()))
    notes.extend(args.note)
    print(table)
    print("\n".join(notes))
    if args.json:
        Path(args.json).write_text(json.dumps({"corpus": corpus.as_dict(),
                                               "samples": {f"{n}:{w}:{m}": s for (n, w, m), s in samples.items()}},
                                              indent=1, default=str))
    if args.results:
        section = C.render_section(title=f"Pre-tokenization and counting ({corpus.name})", command=C.command_line(),
                                   body=table, corpora=[corpus], machine=C.machine_info(), notes=notes)
        C.update_results(args.section or f"pretok-{corpus.name}", section, path=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
