"""Progress bars on stderr, shared by training and corpus encoding (one look)."""

from __future__ import annotations

import sys


def want_progress(progress) -> bool:
    """``progress`` as given, or (None) whether stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


def bar(enabled: bool, **kw):
    """A tqdm bar on stderr, or None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)
