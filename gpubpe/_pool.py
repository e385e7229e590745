"""Worker processes, shared by the regex pre-tokenizer and the corpus encoder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that ignore SIGINT (the parent takes it
    and shuts the pool down), then run ``initializer(*initargs)``."""
    import multiprocessing as mp

    # fork starts in milliseconds; spawn re-imports everything per worker.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start,
                               initargs=(initializer, initargs))


def _start(initializer, initargs) -> None:
    # Ctrl-C goes to the whole process group: the parent handles it (and
    # shuts the pool down); a worker that raised too would print a traceback.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
