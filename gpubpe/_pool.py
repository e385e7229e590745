"""Worker processes, shared by the regex pre-tokenizer and the corpus encoder."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that leave signals to the parent and
    die with it (:func:`_start`), then run ``initializer(*initargs)``.

    fork on Linux (milliseconds, and a warm parent's state, such as the
    encoder's compiled kernels, arrives without pickling); spawn elsewhere."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start,
                               initargs=(os.getpid(), initializer, initargs))


def _start(parent: int, initializer, initargs) -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent alone handles it
    # (and stops the pool); a worker that raised too would print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a forked worker inherits the parent's SIGTERM handler, which may raise;
    # the parent's Process.terminate() must end a worker outright
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        # a parent killed outright (SIGKILL, OOM) cannot stop its workers,
        # and they would wait for work forever
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    if initializer is not None:
        initializer(*initargs)
