"""Numba, imported without the SciPy import it does not need here.

The first compiled call of a process (a cache load included) makes Numba
import its NumPy implementations, and ``numba.np.arraymath`` checks at import
whether SciPy's BLAS is there by importing ``scipy.linalg.cython_blas``: 0.17
s of a fresh process's 0.35 s to its first compiled call (measured on
small.txt, 2-core VM), for a check whose answer gpubpe never uses (no
compiled function here calls BLAS). :func:`load` imports that module with the
BLAS import refused, then sets its flag to what the check would have found,
decided by whether SciPy is installed (found without importing it).

Nothing else changes for other Numba code in the process: the flag is the
check's answer, and Numba's BLAS calls import SciPy themselves when they are
compiled (``numba.np.linalg.ensure_blas``). Where SciPy or that module is
already imported (``scipy.linalg``), or this Numba lacks the flag, nothing is done.
"""

from __future__ import annotations

import importlib.util
import sys
import threading

_BLAS = "scipy.linalg.cython_blas"
_lock = threading.Lock()
_loaded = False


def load() -> None:
    """Import Numba, and ``numba.np.arraymath`` without importing SciPy
    (once per process; safe from any thread)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        import numba  # noqa: F401

        # (`import numba` imports SciPy's top package, which is cheap; scipy.linalg is what costs)
        if "numba.np.arraymath" not in sys.modules and _BLAS not in sys.modules and "scipy.linalg" not in sys.modules:
            have_scipy = "scipy" in sys.modules or importlib.util.find_spec("scipy") is not None
            sys.modules[_BLAS] = None  # `import scipy.linalg.cython_blas` raises ImportError, imports nothing
            try:
                import numba.np.arraymath as arraymath
            finally:
                if sys.modules.get(_BLAS, 0) is None:
                    del sys.modules[_BLAS]
            if hasattr(arraymath, "_HAVE_BLAS"):
                arraymath._HAVE_BLAS = have_scipy
        _loaded = True
