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

Cache loads without the compiler's set-up: before loading a function's
machine code from the disk cache, Numba refreshes its typing and lowering
contexts (``Cache.load_overload`` calls ``target_context.refresh()``), which
imports and registers every implementation it has (typed dicts and lists,
cffi with pycparser, NumPy's random and polynomial code, ...): 0.1-0.15 s of
a fresh process's first compiled call (2-core VM), needed only to compile.
Code loaded from the cache is already compiled; it needs the runtime (NRT),
which is initialized here as the refresh would. :func:`load` makes that so
for gpubpe's own CPU functions only (their module is ``gpubpe.*``): the cached
code is loaded without the refresh, and where the cache has no entry for the
signature (first run, changed code) Numba's own path runs, refresh and
compile included. Every other function, and every compilation, goes through
Numba unchanged (a compilation refreshes the contexts itself).
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
        _load_cached_without_refresh()
        _loaded = True


def _load_cached_without_refresh() -> None:
    """Load gpubpe's cached machine code without Numba's context refresh (see the module notes)."""
    from numba.core import caching
    from numba.core.cpu import CPUContext
    from numba.core.runtime import nrt

    cache = caching.Cache
    numba_load = cache.load_overload
    if getattr(numba_load, "_gpubpe", False) or not all(
        hasattr(cache, a) for a in ("_load_overload", "_guard_against_spurious_io_errors")
    ) or not hasattr(nrt, "rtsys"):
        return  # done already, or a Numba whose cache is laid out otherwise: leave it as it is

    def load_overload(self, sig, target_context):
        ours = getattr(getattr(self, "_py_func", None), "__module__", "").startswith("gpubpe.")
        if ours and isinstance(target_context, CPUContext):  # the CPU target only: NRT is set up for it here
            nrt.rtsys.initialize(target_context)  # what the refresh does first; once per process
            with self._guard_against_spurious_io_errors():
                cres = self._load_overload(sig, target_context)
            if cres is not None:
                return cres
        return numba_load(self, sig, target_context)  # not ours, or not cached: Numba's path

    load_overload._gpubpe = True
    cache.load_overload = load_overload
