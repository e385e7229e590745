"""Backend selection. Backends load on first use: ``import gpubpe`` imports
neither Numba nor CuPy (DESIGN §3).

A backend is a function ``(WordTable, num_merges, progress, *, options) ->
(merges, counts, ntokens)`` where ``merges`` is int32[n, 2] of token ids,
``counts`` int64[n] each merge's count when it was made, ``ntokens`` the
tokens the words hold after the merges, and ``progress`` an int64[2] array:
the backend keeps ``progress[0]`` set to the number of merges done, and stops
early (returning the merges made so far) once another thread sets
``progress[1]`` (how an interrupt reaches a loop that runs in compiled code).
``num_merges`` is at most :meth:`WordTable.max_merges`, so no backend sizes
its memory by a vocabulary that cannot be reached.

``options`` (:class:`MergeOptions`) are the rules every backend honours:
``max_len`` (0 or the most bytes a token may hold), ``rank`` (the tie rule's
byte rank table, :func:`gpubpe.ties.byte_rank`), ``forced`` (int32[k, 2], the
first k merges given: a parent model replayed) and ``min_count`` (stop at the
first chosen pair whose count is below it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class MergeOptions:
    max_len: int = 0
    rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    forced: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    min_count: int = 0


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (for example no CUDA device)."""


def _step_threads() -> int:
    from .. import config

    knob = config.env("GPUBPE_CPU_STEP_THREADS")
    return int(knob) if knob else config.CPU_STEP_MIN_THREADS


def _cpu(engine: str = "auto"):
    """engine: 'numba', 'python' (small tables), 'steps' (the Numba step loop,
    parallel by word) or 'auto': by table size, and the step loop only with at
    least ``config.CPU_STEP_MIN_THREADS`` Numba threads (0: never; the knob
    ``GPUBPE_CPU_STEP_THREADS`` overrides it)."""
    from .. import config

    def run(table, num_merges, progress, options=MergeOptions()):
        small = table.symbols.shape[0] <= config.SMALL_TABLE_SYMBOLS
        if engine == "python" or (engine == "auto" and small):
            from .cpu_python import merge_loop_python as loop
        elif engine == "steps" or (engine == "auto" and 0 < _step_threads() <= _numba_threads()):
            from .cpu_steps import merge_loop_steps as loop
        else:
            from .cpu import merge_loop as loop
        return loop(table.symbols, table.offsets, table.counts, num_merges, progress, options.max_len,
                    options.rank, options.forced, options.min_count)

    return run


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


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
