"""Progress on stderr, shared by training and corpus encoding (one look): tqdm
bars for people, or JSON lines for programs (``progress="json"``)."""

from __future__ import annotations

import json
import sys
import time

from . import config


def want_progress(progress):
    """``progress`` as given (``"json"`` kept), or (None) whether stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    if progress == "json":
        return "json"
    if isinstance(progress, str):
        raise ValueError(f"progress must be True, False, None or 'json', got {progress!r}")
    return bool(progress)


class JsonLines:
    """The part of tqdm's interface the callers use, writing one JSON object a
    line to stderr, ``{"stage", "done", "total"}`` (``total`` null when unknown),
    at most every ``config.PROGRESS_JSON_INTERVAL`` seconds and once at the end."""

    def __init__(self, *, desc: str, total=None, **_):
        self.stage = desc
        self.total = total
        self.n = 0
        self._last = -1.0
        self._emit()

    def _emit(self):
        total = None if self.total is None else int(self.total)
        print(json.dumps({"stage": self.stage, "done": int(self.n), "total": total}), file=sys.stderr, flush=True)
        self._last = time.monotonic()

    def update(self, n=1):
        self.n += n
        if time.monotonic() - self._last >= config.PROGRESS_JSON_INTERVAL:
            self._emit()

    def close(self):
        self._emit()


def bar(enabled, **kw):
    """A tqdm bar on stderr, JSON lines (``enabled == "json"``), or None when disabled."""
    if not enabled:
        return None
    if enabled == "json":
        return JsonLines(**kw)
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kw)
