"""Compile the kernels with NVRTC through ctypes, without a GPU.

NVRTC is a plain shared library (the ``nvidia-cuda-nvrtc-cu12`` wheel ships
it); compiling needs no driver and no device, so CI checks every ``.cu`` for
the architectures the project targets. On a device, CuPy drives the same
NVRTC with the same options (``catalogue.nvrtc_options``).
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache
from pathlib import Path

from ... import config
from .catalogue import device_source, nvrtc_options


class NvrtcUnavailable(RuntimeError):
    """libnvrtc was not found."""


def _candidates() -> list[str]:
    out = []
    env = config.env("GPUBPE_NVRTC")
    if env:
        out.append(env)
    try:
        import nvidia.cuda_nvrtc as m  # the pip wheel (a namespace package)

        for root in m.__path__:
            out += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for home in (config.env("CUDA_HOME"), config.env("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            out += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))
    out += ["libnvrtc.so.12", "libnvrtc.so"]
    # the builtins companions are loaded by libnvrtc itself, not by us
    return [c for c in out if "builtins" not in os.path.basename(c) and ".alt." not in os.path.basename(c)]


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The loaded libnvrtc."""
    errors = []
    for c in _candidates():
        try:
            lib = ctypes.CDLL(c)
        except OSError as e:
            errors.append(f"{c}: {e}")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    raise NvrtcUnavailable(
        "libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12 (works without a GPU), "
        "or set GPUBPE_NVRTC to the library's path. Tried: " + "; ".join(errors[-3:])
    )


def version() -> tuple[int, int]:
    lib = library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def compile_cu(path: Path, arch: str) -> tuple[int, str]:
    """Compile one ``.cu`` for ``arch`` (e.g. ``sm_80``): returns (CUBIN size, log).

    Raises RuntimeError with NVRTC's log when the source does not compile.
    """
    lib = library()
    path = Path(path)
    prog = ctypes.c_void_p()
    src = device_source(path).encode()  # exactly what the device loader compiles

    def check(rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(rc).decode()}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, path.name.encode(), 0, None, None), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in nvrtc_options(arch)]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value + 1)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if rc != 0:
            raise RuntimeError(f"NVRTC ({arch}) failed on {path.name}:\n{log}")
        cubin = ctypes.c_size_t()
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin)), "nvrtcGetCUBINSize")
        return cubin.value, log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
