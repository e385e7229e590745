"""The CUDA kernels' sources, and one typed Python wrapper per kernel.

The same wrappers drive two launchers:

* ``DeviceLauncher``: CuPy ``RawModule`` per ``kernels/*.cu`` file, compiled by
  NVRTC on first use (memoized per process).
* ``SimLauncher``: the same sources compiled by the host C++ compiler through
  ``gpubpe/_sim`` and called through ctypes, on NumPy arrays the simulator
  allocated (poisoned redzones, so AddressSanitizer sees out-of-bounds access).

Every wrapper checks each array's dtype and contiguity and casts each scalar to
the exact C type of the kernel parameter: CuPy passes a Python ``int`` as a
64-bit value, which a kernel taking ``int`` would silently misread. The
expected types are read from the kernel signatures in the ``.cu`` files, so a
wrapper and its kernel cannot drift apart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

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

# Status slots and halt codes, as in kernels/common.cuh (checked by the tests).
ST_DONE, ST_HALT, ST_NOCC, ST_OCC_START, ST_POOL_USED, ST_DEAD, ST_USED = 0, 1, 2, 3, 4, 5, 6
ST_TOKBYTES, ST_A, ST_B, ST_DROPPED, ST_PENDING, ST_ERR, ST_SIZE = 7, 8, 9, 10, 11, 12, 16
HALT_NO_PAIR, HALT_TABLE, HALT_TOKBUF, HALT_INTERNAL = 1, 2, 3, 4
EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
MAX_BLOCK = 256


def kernel_dir() -> Path:
    """The folder holding ``*.cu``: ``gpubpe/kernels`` in a wheel, ``<repo>/kernels``
    in a source tree (editable install); ``GPUBPE_KERNEL_DIR`` overrides both."""
    env = os.environ.get("GPUBPE_KERNEL_DIR")
    pkg = Path(__file__).resolve().parent.parent
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


def nvrtc_options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options shared by the device loader and the compile test."""
    opts = ("--std=c++14", f"--include-path={kernel_dir()}")
    return opts + ((f"--gpu-architecture={arch}",) if arch else ())


class DeviceLauncher:
    """Launches on a CUDA device through CuPy; modules compile once per process."""

    sim = False

    def __init__(self):
        import cupy

        self.cp = cupy
        self._fns = {}
        dev = cupy.cuda.Device()
        self.sm_count = int(dev.attributes["MultiProcessorCount"])

    def _fn(self, sig: KernelSig):
        fn = self._fns.get(sig.name)
        if fn is None:
            mod = _device_module(str(kernel_dir() / sig.file))
            fn = self._fns[sig.name] = mod.get_function(sig.name)
        return fn

    def is_device_array(self, a) -> bool:
        return isinstance(a, self.cp.ndarray)

    def load_all(self) -> None:
        """Compile and load every kernel now: a module load must not happen
        inside a CUDA graph capture."""
        for sig in signatures().values():
            self._fn(sig)

    def launch(self, sig: KernelSig, grid: int, block: int, args: list) -> None:
        self._fn(sig)((grid,), (block,), tuple(args))


def device_source(path: Path) -> str:
    """The source of one ``.cu`` with ``common.cuh`` pasted in: CuPy's on-disk
    binary cache is keyed by the source text, so an edited header must change it."""
    header = (kernel_dir() / "common.cuh").read_text()
    return Path(path).read_text().replace('#include "common.cuh"', header)


@lru_cache(maxsize=None)
def _device_module(path: str):
    import cupy

    # NVRTC runs here, once per file and process (and CuPy caches the binary on disk).
    return cupy.RawModule(code=device_source(Path(path)), options=("--std=c++14",))


class SimLauncher:
    """Runs the host-compiled kernels (gpubpe._sim) on simulator-owned NumPy arrays."""

    sim = True
    sm_count = 2

    def __init__(self):
        from .. import _sim

        self.sim_mod = _sim
        self.lib = _sim.library()

    def is_device_array(self, a) -> bool:
        return isinstance(a, np.ndarray) and self.sim_mod.owns(a)

    def launch(self, sig: KernelSig, grid: int, block: int, args: list) -> None:
        self.sim_mod.launch(self.lib, sig, grid, block, args)


class Kernels:
    """One typed wrapper per kernel. Arrays must be device arrays of the
    launcher (CuPy arrays, or simulator arrays), C-contiguous, of the exact
    dtype; scalars are cast to the parameter's C type, refusing values that do
    not fit. ``block`` is the 1-D block size; ``grid`` the number of blocks,
    derived from the data size where the wrapper can (all loops are
    grid-stride, so any grid is correct and the choice is only speed)."""

    def __init__(self, launcher):
        self.launcher = launcher
        self.sigs = signatures()

    def _launch(self, name: str, grid: int, block: int, kwargs: dict) -> None:
        sig = self.sigs[name]
        if not (1 <= block <= MAX_BLOCK and block & (block - 1) == 0):
            raise ValueError(f"{name}: block={block} must be a power of two in 1..{MAX_BLOCK}")
        if grid < 1 or grid > 2**31 - 1:
            raise ValueError(f"{name}: grid={grid} out of range")
        names = [p for _, p in sig.params]
        if sorted(kwargs) != sorted(names):
            raise TypeError(f"{name}: wrapper passes {sorted(kwargs)}, kernel takes {names}")
        args = []
        for ctype, pname in sig.params:
            is_ptr, dtype = _CTYPES[ctype]
            v = kwargs[pname]
            if is_ptr:
                if not self.launcher.is_device_array(v):
                    raise TypeError(f"{name}: {pname} must be a "
                                    f"{'simulator' if self.launcher.sim else 'CuPy'} device array, got {type(v).__name__}")
                if v.dtype != dtype:
                    raise TypeError(f"{name}: {pname} must be {np.dtype(dtype).name}, got {v.dtype}")
                if not v.flags.c_contiguous:
                    raise ValueError(f"{name}: {pname} must be C-contiguous")
                args.append(v)
            else:
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{name}: {pname} must be an integer, got {type(v).__name__}")
                info = np.iinfo(dtype)
                if not info.min <= int(v) <= info.max:
                    raise OverflowError(f"{name}: {pname}={int(v)} does not fit {ctype}")
                args.append(dtype(int(v)))
        self.launcher.launch(sig, int(grid), int(block), args)

    @staticmethod
    def grid_over(n: int, block: int, most: int = 4096) -> int:
        """Blocks for a grid-stride loop over ``n`` items: enough to cover them
        once, at most ``most`` (the loop covers the rest)."""
        return max(1, min(most, -(-int(n) // block)))

    # -- pair_table.cu ------------------------------------------------------
    def count_pairs(self, *, block, sym, nxt, wrd, counts, n, keys, cnt, bits, used_limit, st, grid=None):
        grid = grid or self.grid_over(n, block)
        self._launch("count_pairs", grid, block, dict(sym=sym, nxt=nxt, wrd=wrd, counts=counts, n=n, keys=keys,
                                                      cnt=cnt, bits=bits, used_limit=used_limit, st=st))

    # -- argmax.cu ----------------------------------------------------------
    def argmax_partial(self, *, block, keys, cnt, bits, tb, toff, tlen, part, st, grid=None):
        grid = grid or self.grid_over(1 << int(bits), block, part.shape[0])
        if grid > part.shape[0]:
            raise ValueError(f"argmax_partial: grid={grid} blocks but part holds {part.shape[0]} results")
        self._launch("argmax_partial", grid, block, dict(keys=keys, cnt=cnt, bits=bits, tb=tb, toff=toff,
                                                         tlen=tlen, part=part, st=st))

    def argmax_final(self, *, block, keys, cnt, tb, toff, tlen, tb_cap, part, nparts, merges, list_start, list_len,
                     st):
        if nparts > part.shape[0]:
            raise ValueError(f"argmax_final: nparts={nparts} but part holds {part.shape[0]} results")
        self._launch("argmax_final", 1, block, dict(keys=keys, cnt=cnt, tb=tb, toff=toff, tlen=tlen, tb_cap=tb_cap,
                                                    part=part, nparts=nparts, merges=merges, list_start=list_start,
                                                    list_len=list_len, st=st))

    # -- merge.cu -----------------------------------------------------------
    def mark_occurrences(self, *, grid, block, sym, nxt, prv, mk, pool, list_start, list_len, pool_cap, st):
        self._launch("mark_occurrences", grid, block, dict(sym=sym, nxt=nxt, prv=prv, mk=mk, pool=pool,
                                                           list_start=list_start, list_len=list_len,
                                                           pool_cap=pool_cap, st=st))

    def remove_old_pairs(self, *, grid, block, sym, nxt, prv, mk, wrd, counts, pool, keys, cnt, bits, st):
        self._launch("remove_old_pairs", grid, block, dict(sym=sym, nxt=nxt, prv=prv, mk=mk, wrd=wrd,
                                                           counts=counts, pool=pool, keys=keys, cnt=cnt,
                                                           bits=bits, st=st))

    def apply_merges(self, *, grid, block, sym, nxt, prv, pool, st):
        self._launch("apply_merges", grid, block, dict(sym=sym, nxt=nxt, prv=prv, pool=pool, st=st))

    def add_new_pairs(self, *, grid, block, sym, nxt, prv, mk, wrd, counts, pool, keys, cnt, bits, used_limit, st):
        self._launch("add_new_pairs", grid, block, dict(sym=sym, nxt=nxt, prv=prv, mk=mk, wrd=wrd, counts=counts,
                                                        pool=pool, keys=keys, cnt=cnt, bits=bits,
                                                        used_limit=used_limit, st=st))

    # -- compact.cu ---------------------------------------------------------
    def compact_mark(self, *, block, sym, nxt, prv, wrd, counts, n, keep, st, grid=None):
        grid = grid or self.grid_over(n, block)
        self._launch("compact_mark", grid, block, dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=counts, n=n,
                                                       keep=keep, st=st))

    def compact_scatter(self, *, block, sym, nxt, prv, wrd, keep, newpos, n, out_sym, out_nxt, out_prv, out_wrd,
                        grid=None):
        grid = grid or self.grid_over(n, block)
        self._launch("compact_scatter", grid, block, dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, keep=keep,
                                                          newpos=newpos, n=n, out_sym=out_sym, out_nxt=out_nxt,
                                                          out_prv=out_prv, out_wrd=out_wrd))
