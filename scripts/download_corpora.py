#!/usr/bin/env python3
"""Download the corpora that CS336 assignment 1 trains on: TinyStories and the OpenWebText sample.

    python scripts/download_corpora.py --list
    python scripts/download_corpora.py --out data --dry-run
    python scripts/download_corpora.py --out data tinystories-valid tinystories-train
    python scripts/download_corpora.py --out data                 # all four (about 14.5 GB on disk)

The files come from the Hugging Face Hub, at the URLs the CS336 handout gives;
set ``HF_ENDPOINT`` to use a mirror (for example ``HF_ENDPOINT=https://hf-mirror.com``).
Downloads resume: an interrupted file is kept as ``NAME.part`` and continued
with an HTTP Range request on the next run. ``.gz`` files are unpacked to
``.txt`` (and the ``.gz`` deleted unless ``--keep-gz``). A file that is already
there is not fetched again (``--force`` does). Every finished file's size and
sha256 are written to ``OUT/SHA256SUMS``, so a benchmark table can name exactly
what it ran on.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Dataset:
    name: str
    repo: str  # Hugging Face dataset repository
    file: str  # file in the repository (at the main revision)
    approx_bytes: int  # unpacked size on disk, approximate: for the free-space check and --list
    about: str

    def url(self, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/datasets/{self.repo}/resolve/main/{self.file}"

    @property
    def target(self) -> str:
        """The file name written into --out (unpacked)."""
        return self.file[:-3] if self.file.endswith(".gz") else self.file


DATASETS = {d.name: d for d in [
    Dataset("tinystories-train", "roneneldan/TinyStories", "TinyStoriesV2-GPT4-train.txt", 2_230_000_000,
            "TinyStories V2 (GPT-4 stories), training split; CS336 trains vocab 10,000 on it"),
    Dataset("tinystories-valid", "roneneldan/TinyStories", "TinyStoriesV2-GPT4-valid.txt", 22_500_000,
            "TinyStories V2, validation split"),
    Dataset("owt-train", "stanford-cs336/owt-sample", "owt_train.txt.gz", 11_900_000_000,
            "OpenWebText sample of CS336, training split (gzip, unpacked here); CS336 trains vocab 32,000 on it"),
    Dataset("owt-valid", "stanford-cs336/owt-sample", "owt_valid.txt.gz", 290_000_000,
            "OpenWebText sample of CS336, validation split (gzip, unpacked here)"),
]}


def human(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


class Progress:
    """One line on stderr, rewritten at most twice a second."""

    def __init__(self, label: str, total: int | None, done: int = 0):
        self.label, self.total, self.done = label, total, done
        self.t0 = self.last = time.monotonic()
        self.start = done

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            self.show()

    def show(self, end: str = "") -> None:
        rate = (self.done - self.start) / max(time.monotonic() - self.t0, 1e-9)
        of = f" of {human(self.total)}" if self.total else ""
        print(f"\r  {self.label}: {human(self.done)}{of}, {human(rate)}/s   ", end=end, file=sys.stderr, flush=True)


def fetch(url: str, dest: Path, *, retries: int, timeout: float) -> None:
    """Download ``url`` to ``dest``, resuming from ``dest.part``; rename on completion."""
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "gpubpe-download-corpora/1"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = getattr(resp, "status", None)
                if have and status != 206:
                    have = 0  # the server ignored the Range request: start over
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                bar = Progress(dest.name, total, have)
                with open(part, "ab" if have else "wb") as out:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
                bar.show(end="\n")
            if total is not None and part.stat().st_size != total:
                raise OSError(f"short read: {part.stat().st_size:,} of {total:,} bytes")
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the range starts at the end: the part file is complete
                os.replace(part, dest)
                return
            if e.code in (401, 403, 404):
                raise SystemExit(f"{url}: HTTP {e.code} {e.reason}. Check the URL, or set HF_ENDPOINT to a mirror "
                                 "that serves it; for gated data log in with `huggingface-cli login` and download "
                                 "with huggingface_hub instead") from None
            why = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
            why = str(getattr(e, "reason", e))
        if attempt == retries:
            raise SystemExit(f"{url}: giving up after {retries} attempts ({why}); run again to resume from "
                             f"{part} ({human(part.stat().st_size) if part.exists() else 'nothing'} so far)")
        wait = min(60, 2 ** attempt)
        print(f"\n  {why}: retrying in {wait} s (attempt {attempt + 1} of {retries})", file=sys.stderr)
        time.sleep(wait)


def gunzip(src: Path, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    bar = Progress(f"unpacking {src.name}", None)
    with gzip.open(src, "rb") as r, open(part, "wb") as w:
        while block := r.read(1 << 22):
            w.write(block)
            bar.update(len(block))
    bar.show(end="\n")
    os.replace(part, dest)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def record_checksum(out: Path, name: str, digest: str, size: int) -> None:
    """Add or replace ``name``'s line in OUT/SHA256SUMS (``sha256  name  # bytes``)."""
    sums = out / "SHA256SUMS"
    lines = [ln for ln in (sums.read_text().splitlines() if sums.exists() else [])
             if ln.split()[1:2] != [name]]
    lines.append(f"{digest}  {name}  # {size:,} bytes")
    tmp = sums.with_name("SHA256SUMS.tmp")
    tmp.write_text("\n".join(sorted(lines, key=lambda ln: ln.split()[1])) + "\n")
    os.replace(tmp, sums)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Download TinyStories and the CS336 OpenWebText sample for training and benchmarks.",
        epilog="Datasets: " + "; ".join(f"{d.name} (~{human(d.approx_bytes)})" for d in DATASETS.values())
               + ". Mirror: set HF_ENDPOINT (default https://huggingface.co).",
    )
    p.add_argument("datasets", nargs="*", metavar="DATASET",
                   help=f"which to fetch: {', '.join(DATASETS)} (default: all)")
    p.add_argument("--out", default="data", help="destination folder (default ./data; created if needed)")
    p.add_argument("--list", action="store_true", help="list the datasets, their URLs and sizes, and exit")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded and where, fetch nothing")
    p.add_argument("--force", action="store_true", help="fetch again even when the file is already there")
    p.add_argument("--keep-gz", action="store_true", help="keep the .gz files after unpacking them")
    p.add_argument("--retries", type=int, default=5, help="attempts per file before giving up (default 5)")
    p.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry (default 60)")
    args = p.parse_args(argv)
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(DATASETS)}")
    if args.retries < 1:
        p.error("--retries must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    chosen = [DATASETS[n] for n in (args.datasets or DATASETS)]
    out = Path(args.out)

    if args.list:
        for d in DATASETS.values():
            print(f"{d.name:18s} ~{human(d.approx_bytes):>8s}  {d.url(endpoint)}\n{'':18s} {d.about}")
        return 0

    todo = [d for d in chosen if args.force or not (out / d.target).exists()]
    for d in chosen:
        if d not in todo:
            print(f"{d.name}: {out / d.target} is already there (--force fetches it again)")
    # a .gz and its text are on disk together while it is unpacked; text compresses
    # to well under half with gzip, so half the text size is room enough for it
    need = int(sum(d.approx_bytes * (1.5 if d.file.endswith(".gz") else 1) for d in todo))
    if args.dry_run:
        for d in todo:
            print(f"{d.name}: would fetch {d.url(endpoint)}\n{'':{len(d.name) + 2}}into {out / d.target}"
                  f" (~{human(d.approx_bytes)})")
        print(f"about {human(need)} needed in {out.resolve()}")
        return 0
    if not todo:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if free < need:
        raise SystemExit(f"about {human(need)} is needed in {out.resolve()} and {human(free)} is free: "
                         f"free some space, pick fewer datasets, or pass --out on a larger disk")

    for d in todo:
        print(f"{d.name}: {d.url(endpoint)}", file=sys.stderr)
        target = out / d.target
        if d.file.endswith(".gz"):
            gz = out / d.file
            if args.force or not gz.exists():
                fetch(d.url(endpoint), gz, retries=args.retries, timeout=args.timeout)
            gunzip(gz, target)
            if not args.keep_gz:
                gz.unlink()
        else:
            fetch(d.url(endpoint), target, retries=args.retries, timeout=args.timeout)
        digest = sha256(target)
        size = target.stat().st_size
        record_checksum(out, target.name, digest, size)
        print(f"{d.name}: {target} ({size:,} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
