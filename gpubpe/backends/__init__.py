"""Backend selection. Backends load on first use: ``import gpubpe`` imports
neither Numba nor CuPy (DESIGN §3).

A backend is a function ``(WordTable, num_merges, progress, *, max_token_length=None)
-> (merges, ntokens)``
where ``merges`` is int32[n, 2] of token ids and ``progress`` an int64[2] array:
the backend keeps ``progress[0]`` set to the number of merges done, and stops
early (returning the merges made so far) once another thread sets
``progress[1]`` (how an interrupt reaches a loop that runs in compiled code).
``num_merges`` is at most :meth:`WordTable.max_merges`, so no backend sizes
its memory by a vocabulary that cannot be reached.
"""

from __future__ import annotations

from typing import Callable


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (for example no CUDA device)."""


def _cpu(engine: str = "auto"):
    """engine: 'numba', 'python' (small tables) or 'auto' (by table size)."""
    from .. import config

    def run(table, num_merges, progress, *, max_token_length=None):
        small = table.symbols.shape[0] <= config.SMALL_TABLE_SYMBOLS
        if engine == "python" or (engine == "auto" and small):
            from .cpu_python import merge_loop_python as loop
        else:
            from .cpu import merge_loop as loop
        return loop(table.symbols, table.offsets, table.counts, num_merges, progress, max_token_length or 0)

    return run


def _cuda(sim: bool):
    from . import cuda  # NumPy only at import; CuPy or the simulator load in make_backend

    return cuda.make_backend(sim=sim)


def cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def resolve(name: str) -> str:
    """The concrete backend for ``name``; 'auto' is 'cuda' where a device answers."""
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    return name


def select(name: str) -> tuple[str, Callable]:
    """``(concrete name, backend)`` for ``name``: 'auto' resolved once."""
    name = resolve(name)
    return name, get(name)


def get(name: str) -> Callable:
    name = resolve(name)
    if name == "cpu":
        return _cpu()
    if name == "cuda":
        if not cuda_available():
            raise BackendUnavailable(
                "backend='cuda' needs CuPy and a CUDA device, and none answered: "
                "use backend='cpu' (or 'auto', which falls back to it)"
            )
        return _cuda(sim=False)
    if name == "cuda-sim":
        return _cuda(sim=True)
    raise ValueError(f"unknown backend {name!r}")
