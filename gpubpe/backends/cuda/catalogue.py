"""The catalogue of CUDA kernels: where the sources are, and what each kernel takes.

One parse of ``kernels/*.cu`` with their headers serves every consumer: the
typed wrappers (:mod:`.kernels`), the simulator (:mod:`.sim`, which must know
which kernels reach a ``__syncthreads`` through a ``__device__`` helper, a
header's included) and the NVRTC compile check (:mod:`.nvrtc`). Also the
status slots and halt codes of ``kernels/common.cuh`` (checked by the tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ... import config

# C parameter type (const and __restrict__ removed) -> (is_pointer, NumPy dtype)
_CTYPES = {
    "int*": (True, np.int32),
    "long long*": (True, np.int64),
    "u64*": (True, np.uint64),
    "unsigned long long*": (True, np.uint64),
    "unsigned char*": (True, np.uint8),
    "int": (False, np.int32),
    "long long": (False, np.int64),
    "unsigned": (False, np.uint32),
}

# Status slots, halt codes and candidate-record fields, as in kernels/common.cuh
# (checked by the tests).
ST_DONE, ST_HALT, ST_OCC, ST_LISTS, ST_POOL_USED, ST_DEAD, ST_USED, ST_TOKBYTES = 0, 1, 2, 3, 4, 5, 6, 7
ST_NSEL, ST_NACC, ST_DROPPED, ST_MKBASE, ST_ERR, ST_LIMIT, ST_THRESH, ST_NCAND = 8, 9, 10, 11, 12, 13, 14, 15
ST_NNEW, ST_SUSED, ST_WANT, ST_TFULL, ST_CFULL, ST_SFULL, ST_STEPS, ST_RUNMAX = 16, 17, 18, 19, 20, 21, 22, 23
ST_ARRIVED, ST_NLONG, ST_RUNROUNDS, ST_LONGMAX, ST_SIZE = 24, 25, 26, 27, 32
HALT_NO_PAIR, HALT_TABLE, HALT_TOKBUF, HALT_INTERNAL, HALT_REFILL, HALT_CAND, HALT_LIMIT, HALT_MIN_COUNT = range(1, 9)
SEL_SLOT, SEL_CNT, SEL_KEY, SEL_LSTART, SEL_PRE, SEL_MAXC, SEL_NOCC, SEL_FILL, SEL_TOK, SEL_POOL = range(10)
SEL_FIELDS, SELECT_LOCAL, SELECT_UNROLL, DECIDE_MAX, RUN_UNROLL, LRUN_FIELDS = 10, 4, 8, 256, 4, 4
EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
# Pre-tokenization and word counting (kernels/pretokenize.cu, kernels/wordcount.cu; checked by the tests)
PT_TILE = 64
WC_USED, WC_NWORDS, WC_ABYTES, WC_NEXT, WC_ERR, WC_SIZE = 0, 1, 2, 3, 4, 8
WC_NO_REP = 2**63 - 1
MAX_BLOCK = 256  # as kernels/common.cuh sizes its shared arrays


def kernel_dir() -> Path:
    """The folder holding ``*.cu``: ``gpubpe/kernels`` in a wheel, ``<repo>/kernels``
    in a source tree (editable install); ``GPUBPE_KERNEL_DIR`` overrides both."""
    env = config.env("GPUBPE_KERNEL_DIR")
    pkg = Path(__file__).resolve().parents[2]  # gpubpe/
    candidates = [Path(env)] if env else [pkg / "kernels", pkg.parent / "kernels"]
    for c in candidates:
        if (c / "common.cuh").is_file():
            return c
    raise FileNotFoundError(
        "gpubpe's CUDA kernel sources (kernels/*.cu) were not found in "
        + ", ".join(str(c) for c in candidates)
        + ": reinstall gpubpe, or set GPUBPE_KERNEL_DIR to the folder holding them"
    )


def kernel_files() -> list[Path]:
    """Every ``.cu`` file, in a fixed order."""
    return sorted(kernel_dir().glob("*.cu"))


@dataclass(frozen=True)
class KernelSig:
    name: str
    file: str
    params: tuple[tuple[str, str], ...]  # (normalized C type, name)
    uses_barrier: bool

_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{', re.S)

_DEVICE_FN = re.compile(r"__device__\s+[\w\s\*]*?(\w+)\s*\([^)]*\)\s*\{", re.S)


def _body(source: str, start: int) -> str:
    """The text of the brace block that opens just before ``start``."""
    depth, i = 1, start
    while depth:
        c = source[i]
        depth += (c == "{") - (c == "}")
        i += 1
    return source[start:i]


def _barrier_functions(source: str) -> set[str]:
    """Names of ``__device__`` functions that reach ``__syncthreads``, directly or
    through another such function: a kernel calling one needs the simulator's
    per-thread fibers just as if it called ``__syncthreads`` itself."""
    bodies = {m.group(1): _body(source, m.end()) for m in _DEVICE_FN.finditer(source)}
    found = {name for name, b in bodies.items() if "__syncthreads" in b}
    grew = True
    while grew:
        grew = False
        for name, b in bodies.items():
            if name not in found and any(re.search(rf"\b{f}\s*\(", b) for f in found):
                found.add(name)
                grew = True
    return found


def _norm_type(decl: str) -> tuple[str, str]:
    decl = " ".join(decl.replace("__restrict__", " ").replace("const ", " ").split())
    m = re.match(r"^(.*?)(\w+)$", decl)
    if not m:
        raise ValueError(f"cannot parse kernel parameter {decl!r}")
    ctype = m.group(1).replace(" *", "*").strip()
    return ctype, m.group(2)


def parse_kernels(source: str, file: str = "<source>", headers: str = "") -> list[KernelSig]:
    """The ``extern "C" __global__`` kernels of a ``.cu`` source with their
    parameters, and whether each body reaches ``__syncthreads`` (itself or
    through ``__device__`` functions of the source or of ``headers``)."""
    out = []
    barrier_fns = _barrier_functions(headers + "\n" + source)
    for m in _SIG.finditer(source):
        body = _body(source, m.end())
        params = tuple(_norm_type(p) for p in m.group(2).split(",") if p.strip())
        for ctype, pname in params:
            if ctype not in _CTYPES:
                raise ValueError(f"{file}: kernel {m.group(1)} parameter {pname} has type {ctype!r}, "
                                 f"which the wrappers do not map (known: {sorted(_CTYPES)})")
        uses_barrier = "__syncthreads" in body or any(re.search(rf"\b{f}\s*\(", body) for f in barrier_fns)
        out.append(KernelSig(m.group(1), file, params, uses_barrier))
    return out


@lru_cache(maxsize=None)
def _signatures(kdir: str) -> dict[str, KernelSig]:
    sigs = {}
    headers = "\n".join(h.read_text() for h in sorted(Path(kdir).glob("*.cuh")))
    for f in sorted(Path(kdir).glob("*.cu")):
        for s in parse_kernels(f.read_text(), f.name, headers):
            sigs[s.name] = s
    return sigs


def signatures() -> dict[str, KernelSig]:
    return _signatures(str(kernel_dir()))


NVRTC_STD = "--std=c++14"  # the device loader and the compile check compile alike


def nvrtc_options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options of the compile check: the loader's standard, the kernel
    folder for ``#include "common.cuh"`` (the loader pastes the header in
    instead, see :func:`device_source`) and the target architecture."""
    opts = (NVRTC_STD, f"--include-path={kernel_dir()}")
    return opts + ((f"--gpu-architecture={arch}",) if arch else ())


def device_source(path: Path) -> str:
    """The source of one ``.cu`` with ``common.cuh`` pasted in: CuPy's on-disk
    binary cache is keyed by the source text, so an edited header must change it."""
    header = (kernel_dir() / "common.cuh").read_text()
    return Path(path).read_text().replace('#include "common.cuh"', header)
