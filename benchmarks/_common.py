"""Shared helpers for the benchmark scripts.

Every script in ``benchmarks/`` uses these so that its figures carry the same
provenance: the corpus (path, size, sha256), the machine (CPU, cores, RAM, GPU,
package versions, git commit), the date, and the exact command that made them.

- :func:`corpus_info`: size and sha256 of a corpus file.
- :func:`machine_info` / :func:`machine_markdown`: what the figures were measured on.
- :func:`run_measured`: run a command in a fresh process and measure its wall
  time and peak memory, worker processes included.
- :func:`md_table` and the ``fmt_*`` functions: markdown output.
- :func:`render_section` / :func:`update_results`: write one generated section
  of ``RESULTS.md``, leaving the other sections as they are.
- :func:`pyplot`: matplotlib with the Agg backend, or None (plots are optional).

The scripts are run as ``python benchmarks/NAME.py``, so ``benchmarks/`` is on
``sys.path`` and ``import _common`` works without making it a package.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
PLOTS_DIR = BENCH_DIR / "plots"

SPECIAL = "<|endoftext|>"

# Packages whose versions go into every machine description.
PACKAGES = ("gpubpe", "numpy", "numba", "regex", "cupy-cuda12x", "tokenizers", "rustbpe",
            "bpeasy", "sentencepiece", "tiktoken")


# ---------------------------------------------------------------------------
# statistics and formatting
# ---------------------------------------------------------------------------


def median(xs: Iterable[float]) -> float:
    """The median; the mean of the middle two for an even count."""
    s = sorted(xs)
    if not s:
        raise ValueError("median of no values")
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def fmt_s(seconds: float | None) -> str:
    """Seconds with three significant digits (``0.0123``, ``1.23``, ``123``)."""
    if seconds is None:
        return "–"
    if seconds >= 100:
        return f"{seconds:,.0f}"
    return f"{seconds:.3g}"


def fmt_mib(nbytes: int | None) -> str:
    """Bytes as MiB, no decimals above 100 MiB."""
    if nbytes is None:
        return "–"
    mib = nbytes / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.1f}"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def fmt_bytes(n: int) -> str:
    """A byte count for people: ``38.0 MB``, ``2.04 GB`` (decimal units, as corpus sizes are quoted)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub markdown table. ``align`` has one letter per column: l, r or c (default: all l).

    >>> print(md_table(["tool", "s"], [["cpu", 1.5]], align="lr"))
    | tool | s |
    |:---|---:|
    | cpu | 1.5 |
    """
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} letters for {len(headers)} columns")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join(rule[a] for a in align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(headers)} columns")
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusInfo:
    path: Path
    name: str
    size: int
    sha256: str

    def markdown(self) -> str:
        return f"`{self.name}` ({self.size:,} bytes, sha256 `{self.sha256}`)"

    def as_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "bytes": self.size, "sha256": self.sha256}


def sha256_file(path: str | os.PathLike, *, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _corpus_info(path: str, size: int, mtime_ns: int, name: str) -> CorpusInfo:
    # keyed by size and mtime: a file rewritten in place is hashed again
    return CorpusInfo(Path(path), name, size, sha256_file(path))


def corpus_info(path: str | os.PathLike, *, name: str | None = None) -> CorpusInfo:
    """Size and sha256 of a corpus file (hashed once per process; ~1 s per 400 MB).

    ``name`` defaults to the file name; the scaling benchmark names its
    generated 2 GB file after what it was made from.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(
            f"corpus {str(path)!r} not found: build the corpora with "
            f"`bash ../shared/corpora/build.sh OUTDIR` or pass another text file"
        )
    st = p.stat()
    return _corpus_info(str(p), st.st_size, st.st_mtime_ns, name or p.name)


# ---------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    if m:
        return m.group(1).strip()
    return platform.processor() or platform.machine()


def total_ram_bytes() -> int | None:
    m = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    if m:
        return int(m.group(1)) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpus() -> list[str]:
    """One line per CUDA device (name, memory, driver), from nvidia-smi; empty when none answers."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [f"{name.strip()} ({mem.strip()}, driver {drv.strip()})"
            for name, mem, drv in (ln.split(",") for ln in out.stdout.strip().splitlines() if ln.count(",") == 2)]


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names``; packages that are not installed are left out."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    """The project's commit, with ``+dirty`` when tracked files differ from it.

    Read-only git plumbing: nothing in the repository is written.
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=20)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=REPO,
                               capture_output=True, timeout=60).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def machine_info() -> dict:
    """What the figures were measured on, as plain data (it goes into the JSON output too)."""
    ram = total_ram_bytes()
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "ram_bytes": ram,
        "gpus": gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": package_versions(),
        "git": git_revision(),
    }


def machine_markdown(info: dict | None = None) -> str:
    """The machine in two markdown lines: hardware, then software."""
    info = info or machine_info()
    ram = f"{info['ram_bytes'] / 2**30:.1f} GiB RAM" if info.get("ram_bytes") else "RAM unknown"
    gpu = "; ".join(info["gpus"]) if info.get("gpus") else "no GPU"
    pk = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items())
    git = f"gpubpe commit `{info['git']}`; " if info.get("git") else ""
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {ram}, {gpu}.  \n"
            f"Software: {info['os']}, Python {info['python']}; {git}{pk}.  ")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = str(script)
    return shlex.join(["python", script_s, *argv[1:]])


# ---------------------------------------------------------------------------
# measuring a child process
# ---------------------------------------------------------------------------


@dataclass
class ChildRun:
    """One measured run of a command.

    wall_s:      from fork to exit (interpreter start, imports and JIT
                 loading included), timed by the launcher (see _LAUNCHER).
    max_rss:     the kernel's high-water mark of resident memory of the largest
                 *single* process among the command and its reaped descendants
                 (``wait4`` ru_maxrss). Exact, but it does not add up workers
                 that ran at the same time, and it has a floor of the
                 launcher's own few MB (``run_measured(['true']).max_rss``).
    tree_peak:   the largest sum, over the live process tree (the command and
                 all its descendants, forked workers included), of each process's
                 proportional set size (PSS: shared pages divided among the
                 processes sharing them, so fork's copy-on-write pages are not
                 counted twice), sampled every ``interval`` seconds. Where PSS
                 cannot be read it is RSS, which over-counts shared pages
                 (``tree_metric`` says which). A peak shorter than the interval
                 can be missed. None when psutil is not installed.
    """

    argv: list[str]
    returncode: int
    wall_s: float
    max_rss: int
    tree_peak: int | None
    tree_metric: str | None
    stdout: str
    stderr: str

    def tail(self, lines: int = 5) -> str:
        return "\n".join((self.stderr or self.stdout).strip().splitlines()[-lines:])


def _pss_bytes(pid: int) -> int | None:
    """PSS of ``pid`` in bytes; None when its smaps_rollup cannot be read (it has exited)."""
    # smaps_rollup (Linux >= 4.14) sums the page tables in the kernel: about a
    # millisecond per GB of RSS, cheap enough to sample 20 times a second.
    # psutil's memory_full_info() parses the whole smaps and is 10-100x slower.
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proc_children_ok() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/children")


def _descendants(pid: int) -> list[int]:
    """All descendants of ``pid``, from /proc/PID/task/TID/children.

    A few file reads per process: psutil's children(recursive=True) reads the
    stat file of every process on the machine and took ~25 ms a call on a busy
    2-core machine, which at 20 samples a second stole half a core from the
    command being measured.
    """
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue  # exited
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


class _TreeSampler(threading.Thread):
    """Samples the memory of the descendants of ``pid`` (the launcher) until stopped."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak: int | None = None
        self.metric: str | None = None
        self._done = threading.Event()

    def run(self):
        # decided once, on this process, so that one run never mixes PSS and RSS;
        # a child's unreadable smaps later means that it has just exited
        use_pss = _pss_bytes(os.getpid()) is not None
        if use_pss and _proc_children_ok():
            list_tree = lambda: _descendants(self.pid)  # noqa: E731
            rss = None
        else:
            try:
                import psutil
            except ImportError:
                return  # no way to list the tree: tree_peak stays None
            try:
                root = psutil.Process(self.pid)
            except psutil.Error:
                return
            list_tree = lambda: [p.pid for p in root.children(recursive=True)]  # noqa: E731

            def rss(pid):
                try:
                    return psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    return 0  # exited between listing and reading
        self.metric = "pss" if use_pss else "rss"
        self.peak = 0
        while not self._done.is_set():
            try:
                # the launcher itself is left out: only the command and its descendants
                pids = list_tree()
            except Exception:
                break  # the launcher has exited
            total = sum((_pss_bytes(p) or 0) if use_pss else rss(p) for p in pids)
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()


# The launcher between the harness and the measured command. Why it exists: at
# exec, Linux folds the *old* address space's RSS high-water mark into the new
# program's ru_maxrss, and the old address space of a child forked (or
# vforked) by the harness is the harness's own, tens of MB once plots are
# loaded. A bare interpreter (-S: no site) forks the command instead, so the
# floor is the launcher's few MB; it also times fork-to-exit itself, and its
# wait4 rusage covers the command and every descendant the command reaped.
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except BaseException as e:
        sys.stderr.write("cannot run %r: %s\\n" % (sys.argv[2], e))
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    f.write("%r %d %d" % (wall, ru.ru_maxrss, os.waitstatus_to_exitcode(status)))
os._exit(0)
"""


def _maxrss_bytes(value: int) -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return value if sys.platform == "darwin" else value * 1024


def run_measured(
    argv: Sequence[str],
    *,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
    interval: float = 0.1,
) -> ChildRun:
    """Run ``argv`` in a fresh process; measure wall time and peak memory (see :class:`ChildRun`).

    stdout and stderr go to temporary files, not pipes, so a chatty child can
    never block on a full pipe while the parent waits. A child that runs past
    ``timeout`` is killed with its process group and reported with returncode -9.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpubpe-run-") as tmp, \
            open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
        report = Path(tmp) / "rusage"
        t0 = time.perf_counter()
        # setsid: its own process group, so a timeout can kill the workers with it
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv],
                                stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        sampler = _TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
        if rc == 0 and report.exists():
            w, maxrss, rc = report.read_text().split()
            wall, maxrss, rc = float(w), _maxrss_bytes(int(maxrss)), int(rc)
        else:  # killed, or the launcher itself failed: no rusage to report
            maxrss = 0
            rc = rc if rc != 0 else -9
        out.seek(0)
        err.seek(0)
        return ChildRun(
            argv=list(argv),
            returncode=rc,
            wall_s=wall,
            max_rss=maxrss,
            tree_peak=sampler.peak,
            tree_metric=sampler.metric,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


# ---------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------

_BEGIN = "<!-- BEGIN {key} -->"
_END = "<!-- END {key} -->"

RESULTS_HEADER = """# gpubpe benchmark results

Every section below is written by the benchmark script named in it: the figures,
the machine, the date, the corpus hashes and the command that made them. Do not
edit between the `BEGIN`/`END` markers by hand: run the command again instead
(`benchmarks/README.md` lists them all). A section that a script has not written
yet is absent.
"""


def render_section(
    *,
    title: str,
    command: str,
    body: str,
    corpora: Sequence[CorpusInfo] = (),
    machine: dict | None = None,
    date: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """One RESULTS.md section: the title, the provenance lines, the body, then notes.

    ``body`` is markdown (usually a :func:`md_table`, plus plot links).
    """
    lines = [f"## {title}", ""]
    lines.append(f"Measured {date or utc_now()} with:")
    lines.append("")
    lines.append("```")
    lines.append(command)
    lines.append("```")
    lines.append("")
    lines.append(machine_markdown(machine))
    for c in corpora:
        lines.append(f"Corpus: {c.markdown()}.  ")
    lines.append("")
    lines.append(body.rstrip())
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines).rstrip() + "\n"


def update_results(key: str, section: str, *, path: str | os.PathLike = RESULTS_MD) -> Path:
    """Write ``section`` between the markers for ``key`` in ``path``.

    A section already there is replaced in place; a new one is appended. The
    rest of the file is kept byte for byte. The file is replaced atomically
    (temporary file + rename), so a run that is killed leaves the old file.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", key):
        raise ValueError(f"section key {key!r}: use letters, digits and _ . : - only")
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    begin, end = _BEGIN.format(key=key), _END.format(key=key)
    block = f"{begin}\n{section.rstrip()}\n{end}"
    i, j = text.find(begin), text.find(end)
    if (i < 0) != (j < 0) or (i >= 0 and j < i):
        raise ValueError(f"{path}: the markers of section {key!r} are broken; fix or remove them by hand")
    if i >= 0:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    from gpubpe._files import atomic_write_text

    atomic_write_text(path, text)
    return path


def results_sections(path: str | os.PathLike = RESULTS_MD) -> list[str]:
    """The keys of the sections in ``path``, in file order."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    return re.findall(r"<!-- BEGIN ([A-Za-z0-9_.:-]+) -->", text)


def relpath_for_markdown(target: str | os.PathLike, markdown_file: str | os.PathLike) -> str:
    """``target`` relative to the folder of ``markdown_file``, with forward slashes (for links)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(markdown_file).resolve().parent)).as_posix()


# ---------------------------------------------------------------------------
# plots (optional)
# ---------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend, or None with a message on stderr."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib, or pip install -e '.[bench]')",
              file=sys.stderr)
        return None
    return plt


@dataclass
class Provenance:
    """What a script records once per run: the date, the machine and the command."""

    command: str = field(default_factory=command_line)
    date: str = field(default_factory=utc_now)
    machine: dict = field(default_factory=machine_info)

    def as_dict(self) -> dict:
        return {"command": self.command, "date": self.date, "machine": self.machine}


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_note(before: float | None, after: float | None) -> str:
    """A note on how busy the machine was: its load average when the runs began and ended
    (this benchmark's own processes included)."""
    if before is None or after is None:
        return "load average: not available on this OS"
    return (f"load average (1 min, this benchmark's own runs included) {before:.2f} when the runs began, "
            f"{after:.2f} when they ended, on {usable_cores()} cores")
