"""Training time and peak memory: gpubpe's backends against the trainers users would pick instead.

    python benchmarks/bench_train.py --corpus /work/corpora/small.txt \\
        --vocab-sizes 10000,32000 --tools cpu,cuda,rustbpe,hf,bpeasy,spm \\
        --repeats 3 --json out.json [--results] [--check]

How it measures (what makes the figures comparable):

- Every run is a fresh process (``--_child``), so no tool inherits another's
  warm caches, JIT state or allocator. The runs are interleaved (A B C A B C ...)
  after one warm-up round, so slow drift of the machine (thermal, page cache,
  neighbours) spreads over all tools instead of landing on one.
- ``train s`` is timed inside the child around the training call: reading the
  corpus, pre-tokenizing, counting and merging, as a user's call would; it
  leaves out interpreter start and imports, which ``process s`` (timed by the
  parent, start to exit) includes. Medians over the repeats; every sample is in
  the JSON.
- Peak memory: see ``_common.ChildRun``: the process tree's sampled PSS (forked
  workers included, shared pages counted once), and the kernel's exact
  ru_maxrss of the largest single process.
- Same corpus, same vocabulary size, same GPT-2 pattern, ``<|endoftext|>``
  kept out of merging, same number of threads, for every tool that allows it;
  the notes under each table say where a tool cannot (SentencePiece has no
  regex pre-tokenizer).

``--check`` also trains with each engine of gpubpe (cpu-numba, cpu-python,
cuda-sim and cuda where they exist) and fails unless their merges are identical,
and holds gpubpe's parity modes against the anchors themselves: ``ties="hf"``
against HF tokenizers, ``ties="rustbpe"`` against rustbpe and bpeasy, merge for
merge (so the speed ratios of ``cpu-hf`` and ``cpu-rustbpe`` are the same work).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import anchors  # noqa: E402

GPUBPE_TOOLS = ("cpu", "cpu-numba", "cpu-python", "cuda", "cuda-sim", "cpu-hf", "cpu-rustbpe")
CHECK_ENGINES = ("cpu-numba", "cpu-python", "cuda-sim", "cuda")
# gpubpe's parity mode and the anchor it reproduces, merge for merge
PARITY = (("cpu-hf", "hf"), ("cpu-rustbpe", "rustbpe"), ("cpu-rustbpe", "bpeasy"))
DEFAULT_TOOLS = "cpu,cuda,cpu-hf,cpu-rustbpe,rustbpe,hf,bpeasy,spm"


@dataclass(frozen=True)
class Tool:
    name: str
    label: str
    module: str  # what must be importable; its absence skips the tool
    install: str  # how to get it
    pretok: str  # the pre-tokenization column of the table
    note: str = ""  # what differs from gpubpe's setup, under the table


_SPLIT_NOTE = ("the trainer has no special-token option, so the corpus is split at `<|endoftext|>` in Python "
               "(streamed, counted in `train s`) and the documents are fed to it; it is asked for vocab − 1 "
               "tokens and the special token is the last id, as gpubpe does")

TOOLS = {t.name: t for t in [
    Tool("cpu", "gpubpe cpu", "gpubpe", "pip install -e .", "GPT-2 regex",
         "gpubpe backend='cpu' (the Numba merge loop, or the plain-Python one for tables under "
         "`config.SMALL_TABLE_SYMBOLS` symbols, as in real use)"),
    Tool("cpu-numba", "gpubpe cpu (Numba engine)", "gpubpe", "pip install -e .", "GPT-2 regex"),
    Tool("cpu-python", "gpubpe cpu (Python engine)", "gpubpe", "pip install -e .", "GPT-2 regex"),
    Tool("cuda", "gpubpe cuda", "gpubpe", "pip install -e '.[cuda]'", "GPT-2 regex"),
    Tool("cpu-hf", "gpubpe cpu ties=hf", "gpubpe", "pip install -e .", "GPT-2 regex",
         "gpubpe backend='cpu' with `ties=\"hf\"`: HF tokenizers' merges, bit for bit (`--check` verifies)"),
    Tool("cpu-rustbpe", "gpubpe cpu ties=rustbpe", "gpubpe", "pip install -e .", "GPT-2 regex",
         "gpubpe backend='cpu' with `ties=\"rustbpe\"`: rustbpe's and bpeasy's merges, bit for bit "
         "(`--check` verifies)"),
    Tool("cuda-sim", "gpubpe cuda-sim", "gpubpe", "pip install -e .", "GPT-2 regex",
         "the CUDA backend's code run on the CPU: a correctness harness, not a speed figure"),
    Tool("rustbpe", "rustbpe", "rustbpe", "pip install rustbpe", "GPT-2 regex",
         "`Tokenizer.train_from_iterator(docs, vocab − 1, pattern=GPT-2)`; " + _SPLIT_NOTE),
    Tool("hf", "HF tokenizers", "tokenizers", "pip install tokenizers", "GPT-2 regex",
         "`Split(GPT-2 pattern, 'isolated')` + `ByteLevel(use_regex=False)`, `BpeTrainer(special_tokens=[<|endoftext|>], "
         "initial_alphabet=ByteLevel.alphabet())`; documents split at `<|endoftext|>` in Python, because "
         "HF's trainer would otherwise merge inside the special token"),
    Tool("bpeasy", "bpeasy", "bpeasy", "pip install bpeasy", "GPT-2 regex",
         "`train_bpe(docs, GPT-2, max_token_length=10**6, vocab − 1)` (the length cap set out of reach); " + _SPLIT_NOTE),
    Tool("spm", "SentencePiece", "sentencepiece", "pip install sentencepiece",
         "whitespace (cannot use GPT-2)",
         "**cannot use the GPT-2 pattern**: SentencePiece splits on whitespace (and script and digit "
         "boundaries) and has no regex pre-tokenizer, so it trains on different pre-tokens. BPE with "
         "`byte_fallback=True`, `<|endoftext|>` as a user-defined symbol; its vocab counts unk/bos/eos, "
         "the 256 byte pieces and every kept character, so it makes fewer merges; it reads the file "
         "itself, line by line, with `max_sentence_length` raised so that no line is skipped"),
]}


# ---------------------------------------------------------------------------
# the child side: one training run in this process
# ---------------------------------------------------------------------------


def iter_documents(path: str, special: str = C.SPECIAL, block: int = 1 << 22):
    """The non-empty documents of ``path``, split at ``special``, streamed in blocks.

    Invalid UTF-8 becomes U+FFFD: the anchors take Python str, and Rust
    strings cannot hold the lone surrogates that surrogateescape would make.
    """
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        tail = ""
        while data := f.read(block):
            parts = (tail + data).split(special)
            tail = parts.pop()  # may be the start of a document, or of a split special token
            yield from (p for p in parts if p)
        if tail:
            yield tail


def _train_gpubpe(path, vocab, threads, name):
    from gpubpe import config
    from gpubpe.trainer import train_with_stats

    backend = name
    ties = None
    if name in ("cpu-hf", "cpu-rustbpe"):
        backend, ties = "cpu", name[4:]
    if name in ("cpu-numba", "cpu-python"):
        backend = "cpu"
        # the two engines of backend='cpu', chosen by table size in real use
        config.SMALL_TABLE_SYMBOLS = -1 if name == "cpu-numba" else 1 << 62
    t0 = time.perf_counter()
    model, stats = train_with_stats(path, vocab_size=vocab, special_tokens=[C.SPECIAL], backend=backend,
                                    workers=threads, progress=False, ties=ties)
    t = time.perf_counter() - t0
    return t, len(model.vocab), model.merges, {"count_s": stats.seconds_count, "merge_s": stats.seconds_merge,
                                                "unique_words": stats.unique_words}


def _pattern():
    from gpubpe import GPT2_PATTERN

    return GPT2_PATTERN


def _train_rustbpe(path, vocab, threads, name):
    import rustbpe

    pattern = _pattern()
    t0 = time.perf_counter()
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter_documents(path), vocab - 1, pattern=pattern)
    t = time.perf_counter() - t0
    return t, tok.vocab_size + 1, anchors.merges_from_ranks(list(tok.get_mergeable_ranks())), {}


def _train_bpeasy(path, vocab, threads, name):
    import bpeasy

    pattern = _pattern()
    t0 = time.perf_counter()
    ranks = bpeasy.train_bpe(iter_documents(path), pattern, 10**6, vocab - 1)
    t = time.perf_counter() - t0
    return t, len(ranks) + 1, anchors.merges_from_ranks(list(ranks.items())), {}


def _train_hf(path, vocab, threads, name):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    pattern = _pattern()
    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[C.SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter_documents(path), trainer)
    t = time.perf_counter() - t0
    return t, tok.get_vocab_size(), anchors.hf_merges_of(tok), {}


def _train_spm(path, vocab, threads, name, longest_line):
    import io

    import sentencepiece as spm

    t0 = time.perf_counter()
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=path, model_writer=proto, model_type="bpe", vocab_size=vocab, byte_fallback=True,
        user_defined_symbols=[C.SPECIAL], num_threads=threads, max_sentence_length=max(4192, longest_line + 1),
        minloglevel=2,
    )
    t = time.perf_counter() - t0
    size = spm.SentencePieceProcessor(model_proto=proto.getvalue()).get_piece_size()
    return t, size, None, {}


TRAINERS = {"rustbpe": _train_rustbpe, "hf": _train_hf, "bpeasy": _train_bpeasy, "spm": _train_spm}


def child_main(args) -> int:
    fn = TRAINERS.get(args._child) or _train_gpubpe
    more = (args.longest_line,) if args._child == "spm" else ()
    train_s, vocab, merges, extra = fn(args.corpus, args.vocab_size, args.threads, args._child, *more)
    out = {"train_s": train_s, "vocab": vocab, "extra": extra}
    if args.merges_out and merges is not None:
        Path(args.merges_out).write_text(json.dumps([[a.hex(), b.hex()] for a, b in merges]))
    Path(args.result).write_text(json.dumps(out))
    return 0


def probe_main(name: str) -> int:
    """Exit 0 when gpubpe backend ``name`` can run here, else print why and exit 3."""
    from gpubpe import backends

    try:
        backends.get(name)
    except (backends.BackendUnavailable, ValueError) as e:
        print(e)
        return 3
    return 0


# ---------------------------------------------------------------------------
# the parent side
# ---------------------------------------------------------------------------


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    # the same thread budget for every tool: rayon (rustbpe, HF, bpeasy), Numba;
    # gpubpe's workers and SentencePiece's num_threads are passed as arguments
    env.update(RAYON_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    return env


def available(names, threads: int) -> tuple[list[str], dict[str, str]]:
    """The tools of ``names`` that can run here, and why each other one cannot."""
    ok, skipped = [], {}
    for n in names:
        tool = TOOLS[n]
        if importlib.util.find_spec(tool.module) is None:
            skipped[n] = f"{tool.module} is not installed ({tool.install})"
            continue
        if n in ("cuda", "cuda-sim"):
            r = C.run_measured([sys.executable, __file__, "--_probe", n], env=child_env(threads), timeout=300)
            if r.returncode != 0:
                skipped[n] = (r.stdout.strip() or r.tail()) or f"probe failed (exit {r.returncode})"
                continue
        ok.append(n)
    return ok, skipped


@functools.lru_cache(maxsize=None)
def _longest_line(path: str, size: int, mtime_ns: int) -> int:
    longest = 0
    with open(path, "rb") as f:
        for line in f:
            longest = max(longest, len(line))
    return longest


def longest_line(path: str) -> int:
    """Bytes in the longest line of ``path`` (read once per file, in the parent).

    SentencePiece silently skips lines longer than max_sentence_length (4192
    bytes by default): its limit is raised to this, so it trains on the whole
    corpus like the others, and the scan stays out of its process time.
    """
    st = os.stat(path)
    return _longest_line(path, st.st_size, st.st_mtime_ns)


def run_once(tool: str, corpus: str, vocab: int, threads: int, *, timeout: float | None,
             merges_out: str | None = None) -> dict:
    """One training run of ``tool`` in a fresh process; its measurements as a dict."""
    with tempfile.TemporaryDirectory(prefix="gpubpe-bench-") as tmp:
        result = Path(tmp) / "result.json"
        argv = [sys.executable, __file__, "--_child", tool, "--corpus", corpus, "--vocab-size", str(vocab),
                "--threads", str(threads), "--result", str(result)]
        if merges_out:
            argv += ["--merges-out", merges_out]
        if tool == "spm":
            argv += ["--longest-line", str(longest_line(corpus))]
        r = C.run_measured(argv, env=child_env(threads), timeout=timeout)
        rec = {"tool": tool, "vocab_size": vocab, "returncode": r.returncode, "process_s": r.wall_s,
               "max_rss": r.max_rss, "tree_peak": r.tree_peak, "tree_metric": r.tree_metric}
        if r.returncode == 0 and result.exists():
            rec.update(json.loads(result.read_text()))
        else:
            why = f"timed out after {timeout:g} s" if r.returncode == -9 and timeout else f"exit {r.returncode}"
            tail = r.tail(3)
            rec["error"] = f"{why}: {tail}" if tail else why
        return rec


def summarize(runs: list[dict], tools: list[str], vocab: int, baseline: str | None) -> list[dict]:
    """Median figures per tool at ``vocab``, with the ratio to ``baseline``'s median train time."""
    rows = []
    for t in tools:
        good = [r for r in runs if r["tool"] == t and r["vocab_size"] == vocab and "error" not in r]
        bad = [r for r in runs if r["tool"] == t and r["vocab_size"] == vocab and "error" in r]
        row = {"tool": t, "runs": len(good), "failed": len(bad), "error": bad[0]["error"] if bad else None}
        if good:
            row.update(
                train_s=C.median(r["train_s"] for r in good),
                train_min=min(r["train_s"] for r in good),
                train_max=max(r["train_s"] for r in good),
                process_s=C.median(r["process_s"] for r in good),
                max_rss=max(r["max_rss"] for r in good),
                tree_peak=max((r["tree_peak"] for r in good if r["tree_peak"] is not None), default=None),
                tree_metric=good[0]["tree_metric"],
                vocab=good[0]["vocab"],
            )
            ex = [r["extra"] for r in good if r.get("extra")]
            if ex and "count_s" in ex[0]:
                row["count_s"] = C.median(e["count_s"] for e in ex)
                row["merge_s"] = C.median(e["merge_s"] for e in ex)
        rows.append(row)
    base = next((r for r in rows if r["tool"] == baseline and "train_s" in r), None)
    for r in rows:
        r["ratio"] = r["train_s"] / base["train_s"] if base and "train_s" in r and base["train_s"] > 0 else None
    return rows


def table(rows: list[dict], baseline: str | None) -> str:
    blabel = TOOLS[baseline].label if baseline else "gpubpe"
    headers = ["tool", "pre-tokenization", "train s (median)", "min–max", f"time / {blabel}", "process s",
               "peak MiB (tree)", "max RSS MiB (1 process)", "vocab", "runs"]
    out = []
    for r in rows:
        tool = TOOLS[r["tool"]]
        if "train_s" not in r:
            out.append([tool.label, tool.pretok, f"failed: {r['error']}", "", "", "", "", "", "", f"0 (+{r['failed']} failed)"])
            continue
        train = C.fmt_s(r["train_s"])
        if "count_s" in r:
            train += f" ({C.fmt_s(r['count_s'])} count + {C.fmt_s(r['merge_s'])} merge)"
        metric = "" if r["tree_metric"] in (None, "pss") else f" ({r['tree_metric']})"
        runs = str(r["runs"]) + (f" (+{r['failed']} failed)" if r["failed"] else "")
        out.append([tool.label, tool.pretok, train, f"{C.fmt_s(r['train_min'])}–{C.fmt_s(r['train_max'])}",
                    C.fmt_ratio(r["ratio"]), C.fmt_s(r["process_s"]), C.fmt_mib(r["tree_peak"]) + metric,
                    C.fmt_mib(r["max_rss"]), f"{r['vocab']:,}", runs])
    return C.md_table(headers, out, align="llrrrrrrrr")


def method_notes(tools: list[str], repeats: int, warmup: int, threads: int) -> list[str]:
    notes = [
        f"Each run is a fresh process; tools interleaved (A B C A B C …) after {warmup} warm-up round(s); "
        f"median of {repeats} run(s). Every tool gets {threads} thread(s) (rayon, Numba, gpubpe workers, "
        "SentencePiece num_threads).",
        "`train s`: the training call inside the process, reading the corpus included (for gpubpe split into "
        "pre-tokenize+count and merge). `process s`: the whole process, interpreter start and imports included.",
        "`time / …`: median train time over the baseline's; above 1 is slower than the baseline.",
        "`peak MiB (tree)`: the largest sum of PSS over the live process tree (worker processes included, "
        "shared pages counted once), sampled every 100 ms. `max RSS`: the kernel's high-water mark of the "
        "largest single process (wait4 ru_maxrss), exact but not summed over workers.",
        "The anchors break ties between equal counts in their own way (lowest id pair), gpubpe by the CS336 "
        "rule unless a parity mode is asked for: `gpubpe cpu ties=hf` / `ties=rustbpe` make the anchors' "
        "own merges (`--check` compares them merge for merge), so their ratios are the same work.",
    ]
    notes += [f"{TOOLS[t].label}: {TOOLS[t].note}" for t in tools if TOOLS[t].note]
    return notes


def _merge_at(merges, i):
    """Merge ``i`` as a pair of bytes, for the report of a difference."""
    return tuple(bytes.fromhex(x) for x in merges[i]) if i < len(merges) else "(none)"


def check_engines(corpus: str, vocab: int, threads: int, engines: list[str], timeout,
                  merges_dir: str | None = None) -> dict:
    """Train with each engine (reusing a timed run's merges from ``merges_dir``
    where there is one); compare their merges. Returns the verdict as data."""
    merges = {}
    errors = {}
    with tempfile.TemporaryDirectory(prefix="gpubpe-check-") as tmp:
        for e in engines:
            done = Path(merges_dir) / f"{e}-{vocab}.json" if merges_dir else None
            if done is not None and done.exists():
                merges[e] = [tuple(p) for p in json.loads(done.read_text())]
                continue
            out = str(Path(tmp) / f"{e}.json")
            rec = run_once(e, corpus, vocab, threads, timeout=timeout, merges_out=out)
            if "error" in rec:
                errors[e] = rec["error"]
            else:
                merges[e] = [tuple(p) for p in json.loads(Path(out).read_text())]
    verdict = {"vocab_size": vocab, "engines": list(merges), "errors": errors, "identical": None, "differences": []}
    if len(merges) >= 2:
        (ref_name, ref), *others = merges.items()
        for name, m in others:
            if m != ref:
                i = next((k for k, (a, b) in enumerate(zip(ref, m)) if a != b), min(len(ref), len(m)))
                verdict["differences"].append(
                    f"{name} differs from {ref_name} at merge {i}: {_merge_at(m, i)!r} vs {_merge_at(ref, i)!r} "
                    f"({len(m)} vs {len(ref)} merges)")
        verdict["identical"] = not verdict["differences"]
        verdict["merges"] = len(ref)
    return verdict


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Training time and peak memory of gpubpe's backends and the anchor trainers, side by side.",
        epilog="Example: python benchmarks/bench_train.py --corpus /work/corpora/small.txt "
               "--vocab-sizes 10000,32000 --repeats 3 --json train_small.json --results --check",
    )
    p.add_argument("--corpus", help="a text file (build the project's with ../shared/corpora/build.sh)")
    p.add_argument("--vocab-sizes", default="10000,32000", help="comma-separated (default 10000,32000)")
    p.add_argument("--tools", default=DEFAULT_TOOLS,
                   help=f"comma-separated, from {', '.join(TOOLS)} (default {DEFAULT_TOOLS})")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per tool and vocab size (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the first timed one (default 1)")
    p.add_argument("--threads", type=int, default=C.usable_cores(), help="threads/processes per tool (default: all usable cores)")
    p.add_argument("--baseline", default=None, help="the tool the ratios divide by (default: gpubpe cuda if it ran, else cpu)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed and reported failed")
    p.add_argument("--json", metavar="OUT.json", help="write every sample, the machine and the command here")
    p.add_argument("--results", nargs="?", const=str(C.RESULTS_MD), default=None, metavar="RESULTS.md",
                   help="write this run's section into RESULTS.md (default path benchmarks/RESULTS.md)")
    p.add_argument("--note", action="append", default=[], help="a line for the notes under the tables (repeatable)")
    p.add_argument("--section", metavar="KEY", help="the RESULTS.md section to write (default train.<corpus stem>)")
    p.add_argument("--check", action="store_true",
                   help="also train with every gpubpe engine (cpu-numba, cpu-python, cuda-sim, cuda where available) "
                        "and fail unless their merges are identical")
    p.add_argument("--check-engines", default=",".join(CHECK_ENGINES),
                   help="the engines --check compares (the Python engine is slow on big tables)")
    p.add_argument("--check-only", action="store_true", help="run --check and skip the timings")
    # the child side (one run in a fresh process); not for users
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    p.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--merges-out", help=argparse.SUPPRESS)
    p.add_argument("--longest-line", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child or args._probe:
        return args
    if not args.corpus:
        p.error("--corpus is required: a text file, e.g. /work/corpora/tiny.txt (built by ../shared/corpora/build.sh)")
    try:
        args.vocab_list = [int(v) for v in args.vocab_sizes.split(",") if v.strip()]
    except ValueError:
        p.error(f"--vocab-sizes {args.vocab_sizes!r}: give integers separated by commas, e.g. 10000,32000")
    if not args.vocab_list or min(args.vocab_list) < 258:
        p.error("--vocab-sizes: each must be at least 258 (256 bytes, <|endoftext|>, one merge)")
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tool_list if t not in TOOLS]
    if unknown:
        p.error(f"--tools: unknown {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    args.engine_list = [t.strip() for t in args.check_engines.split(",") if t.strip()]
    bad = [t for t in args.engine_list if t not in CHECK_ENGINES]
    if bad:
        p.error(f"--check-engines: unknown {', '.join(bad)}; choose from {', '.join(CHECK_ENGINES)}")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1, --warmup at least 0")
    if args.baseline and args.baseline not in args.tool_list:
        p.error(f"--baseline {args.baseline!r} is not among --tools")
    args.check = args.check or args.check_only
    return args


def measure(tools: list[str], corpus: str, vocabs: list[int], *, repeats: int, warmup: int, threads: int,
            timeout=None, log=print, merges_dir: str | None = None) -> list[dict]:
    """The interleaved schedule: warm-up rounds, then ``repeats`` rounds per vocab size.
    ``merges_dir``: each timed run writes its merges to ``<tool>-<vocab>.json`` there."""
    runs = []
    for _ in range(warmup):
        for t in tools:
            rec = run_once(t, corpus, vocabs[0], threads, timeout=timeout)
            log(f"  warm-up {t:10s} vocab {vocabs[0]:>7,}: "
                + (f"{rec['train_s']:.3f} s" if "error" not in rec else rec["error"]))
    for v in vocabs:
        for i in range(repeats):
            for t in tools:
                out = str(Path(merges_dir) / f"{t}-{v}.json") if merges_dir else None
                rec = run_once(t, corpus, v, threads, timeout=timeout, merges_out=out)
                rec["repeat"] = i
                runs.append(rec)
                log(f"  run {i + 1}/{repeats} {t:10s} vocab {v:>7,}: "
                    + (f"{rec['train_s']:.3f} s, process {rec['process_s']:.3f} s" if "error" not in rec
                       else rec["error"]))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._probe:
        return probe_main(args._probe)
    if args._child:
        return child_main(args)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        corpus = C.corpus_info(args.corpus)
    except FileNotFoundError as e:
        raise SystemExit(f"bench_train: {e}") from None
    prov = C.Provenance(command=C.command_line(None if argv is None else [__file__, *argv]))
    path = str(corpus.path)
    tools, skipped = ([], {}) if args.check_only else available(args.tool_list, args.threads)
    for t, why in skipped.items():
        print(f"skipped {TOOLS[t].label}: {why}")
    if not args.check_only and not tools:
        print("no tool of --tools can run here: nothing measured", file=sys.stderr)
        return 1
    baseline = args.baseline or next((t for t in ("cuda", "cpu", "cpu-numba") if t in tools), None)

    load_before = C.load_average()
    merges_dir = tempfile.mkdtemp(prefix="gpubpe-merges-")  # the timed runs' merges, for the parity check
    runs = measure(tools, path, args.vocab_list, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                   timeout=args.timeout, log=log, merges_dir=merges_dir if args.check else None) if tools else []

    body, summaries = [], {}
    for v in args.vocab_list if tools else []:
        rows = summarize(runs, tools, v, baseline)
        summaries[v] = rows
        body.append(f"### vocab {v:,}\n\n{table(rows, baseline)}")

    checks, check_failed = [], False
    if args.check:
        engines, eskipped = available(args.engine_list, args.threads)
        for t, why in eskipped.items():
            print(f"check: skipped {t}: {why}")
        for v in args.vocab_list:
            log(f"check: vocab {v:,}: {', '.join(engines)}")
            verdict = check_engines(path, v, args.threads, engines, args.timeout)
            verdict["skipped"] = eskipped
            checks.append(verdict)
            if verdict["errors"] or verdict["identical"] is False or len(verdict["engines"]) < min(2, len(engines)):
                check_failed = True
        lines = []
        for c in checks:
            v = c["vocab_size"]
            if c["identical"]:
                lines.append(f"- vocab {v:,}: merges identical across {', '.join(c['engines'])} ({c['merges']:,} merges).")
            else:
                for d in c["differences"]:
                    lines.append(f"- vocab {v:,}: **DIFFERENT**: {d}")
                for e, err in c["errors"].items():
                    lines.append(f"- vocab {v:,}: **{e} failed**: {err}")
                if len(c["engines"]) < 2 and not c["errors"]:
                    ran = ", ".join(c["engines"]) or "none"
                    lines.append(f"- vocab {v:,}: fewer than two engines ran ({ran}): nothing compared.")
        if eskipped:
            lines.append("- not compared: " + "; ".join(f"{t} ({why})" for t, why in eskipped.items()))
        body.append("### Backends' merges (`--check`)\n\n" + "\n".join(lines))
        plines = []
        for mode, anchor in PARITY:
            ok, why = available([anchor], args.threads)
            if not ok:
                plines.append(f"- {TOOLS[mode].label} vs {TOOLS[anchor].label}: not compared ({why[anchor]})")
                continue
            for v in args.vocab_list:
                log(f"check: vocab {v:,}: {mode} against {anchor}")
                c = check_engines(path, v, args.threads, [anchor, mode], args.timeout, merges_dir=merges_dir)
                checks.append({**c, "parity": [mode, anchor]})
                if c["identical"]:
                    plines.append(f"- vocab {v:,}: {TOOLS[mode].label} = {TOOLS[anchor].label}, "
                                  f"{c['merges']:,} merges identical in order.")
                else:
                    check_failed = True
                    plines += [f"- vocab {v:,}: **DIFFERENT**: {d}" for d in c["differences"]]
                    plines += [f"- vocab {v:,}: **{e} failed**: {err}" for e, err in c["errors"].items()]
        body.append("### Parity modes against the anchors (`--check`)\n\n" + "\n".join(plines))

    skipped_notes = [f"Skipped {TOOLS[t].label}: {why}." for t, why in skipped.items()]
    notes = (method_notes(tools, args.repeats, args.warmup, args.threads) if tools else []) + skipped_notes
    notes += [C.load_note(load_before, C.load_average()), *args.note]
    markdown = "\n\n".join(body)
    print(markdown)
    if notes:
        print()
        print("\n".join(f"- {n}" for n in notes))

    if args.json:
        doc = {**prov.as_dict(), "corpus": corpus.as_dict(), "threads": args.threads, "repeats": args.repeats,
               "warmup": args.warmup, "baseline": baseline, "skipped": skipped, "runs": runs,
               "summary": {str(v): rows for v, rows in summaries.items()}, "check": checks}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        log(f"wrote {args.json}")
    if args.results:
        section = C.render_section(
            title=f"Training: gpubpe and the anchors on {corpus.name}", command=prov.command, body=markdown,
            corpora=[corpus], machine=prov.machine, date=prov.date, notes=notes)
        key = args.section or f"train.{corpus.path.stem}" + (".check" if args.check_only else "")
        C.update_results(key, section, path=args.results)
        log(f"updated {args.results} (section {key})")
    if check_failed:
        print("check FAILED: gpubpe's engines, or a parity mode and its anchor, do not agree (or could not all "
              "run); see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
