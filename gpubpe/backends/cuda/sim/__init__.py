"""The CUDA simulator: the kernels of ``kernels/*.cu`` compiled by the host C++
compiler, run on the CPU with shuffled block and thread order (see harness.h).

It exists to test the kernels without a GPU (CI, laptops) and to debug a
kernel with gdb or printf; it is slow and never a production backend.

The shared library is built on first use with ``$CXX`` (default ``g++``),
AddressSanitizer on (``GPUBPE_SIM_ASAN=0`` turns it off), and cached under
``$GPUBPE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/gpubpe`` or ``~/.cache/gpubpe``,
else the temp folder), keyed by a hash of every source and flag.
``GPUBPE_SIM_SEED`` fixes the schedule seed (default: random per process,
readable as ``gpubpe.backends.cuda.sim.seed()``) to replay a failing order.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np

from .... import config

_HERE = Path(__file__).resolve().parent
_lock = threading.RLock()  # re-entrant: a finalizer may run while held
_lib = None
_seed = None
_counter = 0
_starts: list[int] = []  # sorted start addresses of live allocations
_sizes: dict[int, int] = {}


class CompilerUnavailable(RuntimeError):
    """No host C++ compiler to build the simulator."""


def seed() -> int:
    """The base seed of this process's shuffled schedules."""
    global _seed
    if _seed is None:
        env = config.env("GPUBPE_SIM_SEED")
        _seed = int(env) if env else random.SystemRandom().randrange(2**63)
    return _seed


def _cache_dir() -> Path:
    base = Path(config.env("GPUBPE_CACHE_DIR") or config.CACHE_DIR)
    for d in (base / "sim", Path(tempfile.gettempdir()) / f"gpubpe-sim-{os.getuid()}"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise CompilerUnavailable("no writable cache folder for the simulator: set GPUBPE_CACHE_DIR")


def generated_source() -> str:
    """The translation unit: the harness, every .cu, and one C launcher per kernel."""
    from ..catalogue import kernel_files, signatures

    parts = ['#include "harness.h"']
    for f in kernel_files():
        parts.append(f'#include "{f.name}"')
    # The catalogue's parse, headers included: a kernel that reaches
    # __syncthreads through a helper in common.cuh must run on fibres here too.
    sigs = sorted(signatures().values(), key=lambda s: (s.file, s.name))
    for s in sigs:
        casts = ", ".join(f"*({ctype}*)a[{i}]" for i, (ctype, _) in enumerate(s.params))
        parts.append(
            f'extern "C" int gpubpe_sim_launch_{s.name}(unsigned grid, unsigned block, '
            f"unsigned long long seed, void** a) {{\n"
            f"    std::function<void()> body = [&]() {{ {s.name}({casts}); }};\n"
            f"    return gpubpe_sim::launch(grid, block, seed, {'true' if s.uses_barrier else 'false'}, body);\n"
            f"}}"
        )
    return "\n".join(parts) + "\n"


def _asan_wanted() -> bool | None:
    """True/False when GPUBPE_SIM_ASAN says so, None for the default (on when it builds)."""
    env = config.env("GPUBPE_SIM_ASAN")
    return None if env is None or env == "" else env != "0"


def build() -> Path:
    """Compile the simulator library if the cache lacks it; return its path.

    AddressSanitizer is on by default; a compiler without its runtime
    (libasan) gets a warning and a build without it, unless
    ``GPUBPE_SIM_ASAN=1`` insists.
    """
    wanted = _asan_wanted()
    if wanted is False:
        return _build(asan=False)
    try:
        return _build(asan=True)
    except CompilerUnavailable:
        raise
    except RuntimeError as e:
        if wanted:
            raise
        warnings.warn(f"CUDA simulator built without AddressSanitizer ({str(e).splitlines()[-1][:200]}); "
                      "install libasan for the memory checks", RuntimeWarning, stacklevel=2)
        return _build(asan=False)


def _build(*, asan: bool) -> Path:
    from ..catalogue import kernel_dir

    cxx = config.env("CXX", "g++")
    if shutil.which(cxx) is None:
        raise CompilerUnavailable(
            f"the CUDA simulator needs a host C++ compiler and {cxx!r} was not found: "
            "install g++ (apt-get install g++) or set CXX"
        )
    flags = ["-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer", "-fPIC", "-shared", "-w"]
    if asan:
        flags.append("-fsanitize=address")
    src = generated_source()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for blob in [src, version, " ".join(flags), (_HERE / "harness.h").read_text()] + [
        p.read_text() for p in sorted(kernel_dir().glob("*.cu*"))
    ]:
        h.update(blob.encode())
        h.update(b"\0")
    out = _cache_dir() / f"gpubpe_sim_{h.hexdigest()[:20]}.so"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cpp = Path(tmp) / "sim.cpp"
        cpp.write_text(src)
        so = Path(tmp) / "sim.so"
        cmd = [cxx, *flags, f"-I{_HERE}", f"-I{kernel_dir()}", str(cpp), "-o", str(so)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building the CUDA simulator failed ({' '.join(cmd)}):\n{r.stderr}")
        # atomic publish: concurrent builders race benignly to the same content
        staged = out.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(so, staged)
        os.replace(staged, out)
    return out


def library() -> ctypes.CDLL:
    """The loaded simulator library (built on first use)."""
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(str(build()))
            lib.gpubpe_sim_alloc.restype = ctypes.c_void_p
            lib.gpubpe_sim_alloc.argtypes = [ctypes.c_size_t]
            lib.gpubpe_sim_free.restype = None
            lib.gpubpe_sim_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.gpubpe_sim_error.restype = ctypes.c_char_p
            _lib = lib
        return _lib


def asan_enabled() -> bool:
    return bool(library().gpubpe_sim_asan())


def _release(ptr: int, n: int) -> None:
    with _lock:
        i = bisect.bisect_left(_starts, ptr)
        if i < len(_starts) and _starts[i] == ptr:
            _starts.pop(i)
            _sizes.pop(ptr, None)
    if _lib is not None:
        _lib.gpubpe_sim_free(ptr, n)


def empty(shape, dtype) -> np.ndarray:
    """A simulator "device" array (contents undefined, like cudaMalloc)."""
    lib = library()
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    n = max(count * dtype.itemsize, 1)
    ptr = lib.gpubpe_sim_alloc(n)
    if not ptr:
        raise MemoryError(f"simulator: cannot allocate {n} bytes")
    buf = (ctypes.c_char * n).from_address(ptr)
    weakref.finalize(buf, _release, ptr, n)
    with _lock:
        bisect.insort(_starts, ptr)
        _sizes[ptr] = n
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def asarray(a, dtype=None) -> np.ndarray:
    """A simulator copy of host array ``a``."""
    a = np.asarray(a, dtype=dtype)
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


def owns(a: np.ndarray) -> bool:
    """True when ``a`` lies inside one simulator allocation."""
    addr = a.__array_interface__["data"][0]
    with _lock:
        i = bisect.bisect_right(_starts, addr) - 1
        if i < 0:
            return False
        start = _starts[i]
        return addr + a.nbytes <= start + _sizes[start]


_PTR_TYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint32: ctypes.c_uint32}


def launch(lib, sig, grid: int, block: int, args: list) -> None:
    """Run kernel ``sig`` with already checked arguments (see kernels.Kernels)."""
    global _counter
    holders = []
    for v in args:
        if isinstance(v, np.ndarray):
            holders.append(ctypes.c_void_p(v.__array_interface__["data"][0]))
        else:
            holders.append(_PTR_TYPES[type(v)](int(v)))
    argv = (ctypes.c_void_p * max(len(holders), 1))(*[ctypes.addressof(h) for h in holders])
    with _lock:
        _counter += 1
        s = (seed() * 0x9E3779B97F4A7C15 + _counter) & (2**64 - 1)
    fn = getattr(lib, f"gpubpe_sim_launch_{sig.name}")
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_void_p]
    rc = fn(grid, block, s, argv)
    if rc != 0:
        raise RuntimeError(f"simulator launch of {sig.name} failed: {lib.gpubpe_sim_error().decode()}")


class SimLauncher:
    """Runs the host-compiled kernels on simulator-owned NumPy arrays (the
    launcher :class:`~gpubpe.backends.cuda.kernels.Kernels` takes in cuda-sim)."""

    sim = True
    sm_count = 2

    def __init__(self):
        self.lib = library()

    def is_device_array(self, a) -> bool:
        return isinstance(a, np.ndarray) and owns(a)

    def launch(self, sig, grid: int, block: int, args: list) -> None:
        launch(self.lib, sig, grid, block, args)
