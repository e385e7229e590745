"""How training cost grows: time and peak memory against corpus size and against vocabulary size.

    python benchmarks/bench_scaling.py \\
        --corpora /work/corpora/tiny.txt,/work/corpora/small.txt,/work/corpora/medium.txt --with-2gb \\
        --vocab-size 32000 --vocab-sweep 1024,4096,16384,32768,65536,131072 \\
        --vocab-corpus /work/corpora/small.txt --tools cpu,cuda --json scaling.json --results

Each point is measured as in bench_train.py (a fresh process per run, tools
interleaved, medians), so the two scripts' figures agree. For every pair of
neighbouring points the table gives the growth exponent k of cost ∝ size^k
(log of the time ratio over log of the size ratio): k ≈ 1 is linear, k < 1
means a fixed cost still dominates, k > 1 superlinear growth.

``--with-2gb`` writes a ~2 GB corpus made of whole copies of the largest
``--corpora`` file into ``--tmp-dir`` and deletes it afterwards; it is never
kept. Repeating a corpus multiplies every word count but adds no new word, so
on that point pre-tokenization grows and the merge loop's table does not; the
table says so.

Plots (PNG) need matplotlib; without it they are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_train as BT  # noqa: E402

TWO_GB = 2 * 10**9


def make_repeated(src: Path, target_bytes: int, directory: Path) -> tuple[Path, int]:
    """Write whole copies of ``src`` into ``directory`` until at least ``target_bytes``.

    Whole copies keep every document intact (the project's corpora end each
    document with ``<|endoftext|>``), so no pre-token spans two copies except
    across that special token. Returns the path and the number of copies.
    """
    size = src.stat().st_size
    copies = max(1, math.ceil(target_bytes / size))
    free = shutil.disk_usage(directory).free
    need = copies * size
    if free < need + (1 << 30):
        raise SystemExit(f"--with-2gb needs {C.fmt_bytes(need)} plus 1 GB spare in {directory}, "
                         f"which has {C.fmt_bytes(free)} free: pass --tmp-dir on a larger disk")
    out = directory / f"{src.stem}_x{copies}.txt"
    with open(out, "wb") as w:
        for _ in range(copies):
            with open(src, "rb") as r:
                shutil.copyfileobj(r, w, 1 << 24)
    return out, copies


def warm_page_cache(path: Path) -> None:
    """Read the file once so that the first timed run does not pay for the disk alone."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def exponent(x0, y0, x1, y1) -> float | None:
    """k in y ∝ x^k between two points; None when undefined."""
    if None in (x0, y0, x1, y1) or min(x0, y0, x1, y1) <= 0 or x0 == x1:
        return None
    return math.log(y1 / y0) / math.log(x1 / x0)


def fit_exponent(xs, ys) -> float | None:
    """Least-squares slope of log y on log x over all points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def fmt_k(k: float | None) -> str:
    return "–" if k is None else f"{k:.2f}"


def sweep(points, tools, *, key, repeats, threads, timeout, log) -> list[dict]:
    """Measure ``tools`` at each point; ``points`` is a list of (x, corpus path, vocab, label)."""
    rows = []
    for x, path, vocab, label in points:
        warm_page_cache(Path(path))
        runs = BT.measure(tools, str(path), [vocab], repeats=repeats, warmup=0, threads=threads,
                          timeout=timeout, log=log)
        for r in BT.summarize(runs, tools, vocab, baseline=None):
            r[key] = x
            r["label"] = label
            r["samples"] = [s for s in runs if s["tool"] == r["tool"]]
            rows.append(r)
    # growth exponents between neighbouring points, per tool
    for t in tools:
        mine = [r for r in rows if r["tool"] == t]
        for a, b in zip(mine, mine[1:]):
            b["k_time"] = exponent(a[key], a.get("train_s"), b[key], b.get("train_s"))
            b["k_mem"] = exponent(a[key], a.get("tree_peak") or a.get("max_rss"),
                                  b[key], b.get("tree_peak") or b.get("max_rss"))
    return rows


def sweep_table(rows, xlabel: str) -> str:
    headers = [xlabel, "tool", "train s", "count s", "merge s", "k (time)", "peak MiB (tree)", "max RSS MiB", "k (memory)",
               "vocab"]
    out = []
    for r in rows:
        label = BT.TOOLS[r["tool"]].label
        if "train_s" not in r:
            out.append([r["label"], label, f"failed: {r['error']}", "", "", "", "", "", "", ""])
            continue
        out.append([r["label"], label, C.fmt_s(r["train_s"]), C.fmt_s(r.get("count_s")), C.fmt_s(r.get("merge_s")),
                    fmt_k(r.get("k_time")), C.fmt_mib(r["tree_peak"]), C.fmt_mib(r["max_rss"]), fmt_k(r.get("k_mem")),
                    f"{r['vocab']:,}"])
    return C.md_table(headers, out, align="llrrrrrrrr")


def fit_lines(rows, key, tools) -> list[str]:
    lines = []
    for t in tools:
        mine = [r for r in rows if r["tool"] == t and "train_s" in r]
        k = fit_exponent([r[key] for r in mine], [r["train_s"] for r in mine])
        km = fit_exponent([r[key] for r in mine], [r["tree_peak"] or r["max_rss"] for r in mine])
        if k is not None:
            lines.append(f"{BT.TOOLS[t].label}: over the whole range, time ∝ {key}^{k:.2f}, peak memory ∝ {key}^{km:.2f} "
                         "(least squares on log–log).")
    return lines


def plot(rows, key, tools, xlabel, path: Path, title: str) -> bool:
    plt = C.pyplot()
    if plt is None:
        return False
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in tools:
        mine = [r for r in rows if r["tool"] == t and "train_s" in r]
        if not mine:
            continue
        xs = [r[key] for r in mine]
        label = BT.TOOLS[t].label
        (line,) = ax_t.plot(xs, [r["train_s"] for r in mine], marker="o", label=label)
        if all("merge_s" in r for r in mine):
            ax_t.plot(xs, [r["merge_s"] for r in mine], ls="--", color=line.get_color(), label=f"{label}: merge")
            ax_t.plot(xs, [r["count_s"] for r in mine], ls=":", color=line.get_color(), label=f"{label}: count")
        ax_m.plot(xs, [(r["tree_peak"] or r["max_rss"]) / 2**20 for r in mine], marker="o", label=label)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    xfmt = FuncFormatter(lambda v, _: C.fmt_bytes(int(v)) if key == "bytes" else f"{v:,.0f}")
    for ax, ylabel in ((ax_t, "seconds (median)"), (ax_m, "peak MiB (process tree)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(xfmt)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sorted({r[key] for r in rows}))  # a tick at every measured point
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Training time and peak memory against corpus size and vocabulary size.")
    p.add_argument("--corpora", help="comma-separated corpus files for the corpus-size sweep (measured smallest first)")
    p.add_argument("--with-2gb", action="store_true",
                   help="add a ~2 GB point made of copies of the largest --corpora file (written to --tmp-dir, then deleted)")
    p.add_argument("--big-size", type=float, default=TWO_GB,
                   help="the size --with-2gb aims at, in bytes (default 2e9; whole copies, so it ends at or above it)")
    p.add_argument("--tmp-dir", default=tempfile.gettempdir(),
                   help="where --with-2gb writes its file (default: the system temp dir)")
    p.add_argument("--vocab-size", type=int, default=32000, help="vocab size of the corpus-size sweep (default 32000)")
    p.add_argument("--vocab-sweep", default="1024,4096,16384,32768,65536,131072",
                   help="vocab sizes of the vocab sweep (default 1024,4096,16384,32768,65536,131072)")
    p.add_argument("--vocab-corpus", help="the corpus of the vocab sweep (default: the largest --corpora file)")
    p.add_argument("--sweeps", default="corpus,vocab", help="which sweeps to run: corpus, vocab or both (default)")
    p.add_argument("--tools", default="cpu,cuda", help=f"comma-separated, from {', '.join(BT.TOOLS)} (default cpu,cuda)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per point and tool (default 1)")
    p.add_argument("--threads", type=int, default=C.usable_cores(), help="threads per tool (default: all usable cores)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed and reported failed")
    p.add_argument("--plots", default=str(C.PLOTS_DIR), help="folder for the PNG plots (default benchmarks/plots)")
    p.add_argument("--json", metavar="OUT.json", help="write every sample, the machine and the command here")
    p.add_argument("--results", nargs="?", const=str(C.RESULTS_MD), default=None, metavar="RESULTS.md",
                   help="write the sweeps' sections into RESULTS.md (default path benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    args.sweep_list = [s.strip() for s in args.sweeps.split(",") if s.strip()]
    if not args.sweep_list or set(args.sweep_list) - {"corpus", "vocab"}:
        p.error(f"--sweeps {args.sweeps!r}: use corpus, vocab, or corpus,vocab")
    args.corpus_list = [c for c in (args.corpora or "").split(",") if c.strip()]
    if "corpus" in args.sweep_list and not args.corpus_list:
        p.error("the corpus sweep needs --corpora (e.g. /work/corpora/tiny.txt,/work/corpora/small.txt)")
    if "vocab" in args.sweep_list and not (args.vocab_corpus or args.corpus_list):
        p.error("the vocab sweep needs --vocab-corpus (or --corpora, whose largest file it then uses)")
    try:
        args.vocab_list = sorted(int(v) for v in args.vocab_sweep.split(",") if v.strip())
    except ValueError:
        p.error(f"--vocab-sweep {args.vocab_sweep!r}: give integers separated by commas")
    if min(args.vocab_list + [args.vocab_size]) < 258:
        p.error("vocab sizes must be at least 258 (256 bytes, <|endoftext|>, one merge)")
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tool_list if t not in BT.TOOLS]
    if unknown:
        p.error(f"--tools: unknown {', '.join(unknown)}; choose from {', '.join(BT.TOOLS)}")
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        infos = sorted((C.corpus_info(c) for c in args.corpus_list), key=lambda i: i.size)
        if args.vocab_corpus:
            C.corpus_info(args.vocab_corpus)
    except FileNotFoundError as e:
        raise SystemExit(f"bench_scaling: {e}") from None
    prov = C.Provenance(command=C.command_line(None if argv is None else [__file__, *argv]))
    tools, skipped = BT.available(args.tool_list, args.threads)
    for t, why in skipped.items():
        print(f"skipped {BT.TOOLS[t].label}: {why}")
    if not tools:
        print("no tool can run here: nothing measured", file=sys.stderr)
        return 1
    plots_dir = Path(args.plots)
    results = args.results
    doc = {**prov.as_dict(), "threads": args.threads, "repeats": args.repeats, "skipped": skipped}
    common_notes = [
        f"Each point: a fresh process per run, tools interleaved, median of {args.repeats} run(s) after one "
        f"warm-up run per tool on the smallest input; the corpus is read once into the page cache first. "
        f"{args.threads} thread(s) per tool.",
        "`k`: the growth exponent from the previous row of the same tool (cost ∝ size^k). `count s` / `merge s`: "
        "gpubpe's pre-tokenize+count and merge-loop stages.",
        "`peak MiB (tree)`: the largest sampled sum of PSS over the process tree, workers included; `max RSS`: "
        "the largest single process (wait4). See bench_train.py.",
    ] + [f"Skipped {BT.TOOLS[t].label}: {why}." for t, why in skipped.items()]

    # one warm-up run per tool (JIT caches, shared libraries), on the smallest input
    first = infos[0].path if infos else Path(args.vocab_corpus)
    BT.measure(tools, str(first), [min(args.vocab_list + [args.vocab_size])], repeats=0, warmup=1,
               threads=args.threads, timeout=args.timeout, log=log)

    def report(rows, *, key, label, axis, section, title, plot_title, notes, corpora):
        """One sweep's table, plot, printout and RESULTS.md section."""
        body = sweep_table(rows, label)
        png = plots_dir / f"{section.replace('.', '_')}.png"
        if plot(rows, key, tools, axis, png, plot_title):
            log(f"wrote {png}")
            link = C.relpath_for_markdown(png, results or C.RESULTS_MD)
            body += f"\n\n![time and peak memory against {label}]({link})"
        notes = notes + fit_lines(rows, key, tools)
        print(f"## {label}\n\n{body}\n")
        print("\n".join(f"- {n}" for n in notes) + "\n")
        if results:
            C.update_results(section, C.render_section(
                title=title, command=prov.command, body=body, corpora=corpora,
                machine=prov.machine, date=prov.date, notes=notes), path=results)
            log(f"updated {results} (section {section})")

    tmp = None
    try:
        if "corpus" in args.sweep_list:
            points = [(i.size, i) for i in infos]
            repeated_note = []
            if args.with_2gb:
                tmp = Path(tempfile.mkdtemp(prefix="gpubpe-2gb-", dir=args.tmp_dir))
                src = infos[-1]
                log(f"writing a {C.fmt_bytes(int(args.big_size))} corpus from {src.name} into {tmp} (deleted at the end)")
                big, copies = make_repeated(src.path, int(args.big_size), tmp)
                info = C.corpus_info(big, name=f"{src.name} × {copies}")
                points.append((info.size, info))
                repeated_note = [
                    f"`{info.name}` is {copies} whole copies of `{src.name}`, made for this run and deleted after it: "
                    "every word count is multiplied and no word is added, so pre-tokenization grows with it and "
                    "the merge loop's word table does not (its merge time measures the same table as the previous row)."]
            rows = sweep([(x, i.path, args.vocab_size, f"{i.name} ({C.fmt_bytes(i.size)})") for x, i in points], tools,
                         key="bytes", repeats=args.repeats, threads=args.threads, timeout=args.timeout, log=log)
            report(rows, key="bytes", label="corpus", axis="corpus bytes", section="scaling.corpus",
                   title=f"Scaling with corpus size (vocab {args.vocab_size:,})",
                   plot_title=f"gpubpe: cost against corpus size (vocab {args.vocab_size:,})",
                   notes=common_notes + repeated_note, corpora=[i for _, i in points])
            doc["corpus_sweep"] = {"vocab_size": args.vocab_size, "corpora": [i.as_dict() for _, i in points], "rows": rows}

        if "vocab" in args.sweep_list:
            vinfo = C.corpus_info(args.vocab_corpus) if args.vocab_corpus else infos[-1]
            warm_page_cache(vinfo.path)
            rows = sweep([(v, vinfo.path, v, f"{v:,}") for v in args.vocab_list], tools, key="vocab_size",
                         repeats=args.repeats, threads=args.threads, timeout=args.timeout, log=log)
            report(rows, key="vocab_size", label="vocab size", axis="vocab size", section="scaling.vocab",
                   title=f"Scaling with vocab size ({vinfo.name})",
                   plot_title=f"gpubpe: cost against vocab size ({vinfo.name})",
                   notes=common_notes + [
                       "`vocab`: the size reached; below the one asked, the corpus ran out of pairs to merge."],
                   corpora=[vinfo])
            doc["vocab_sweep"] = {"corpus": vinfo.as_dict(), "rows": rows}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"deleted {tmp}")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
