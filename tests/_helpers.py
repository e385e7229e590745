"""What the tests share besides fixtures: paths, backend runners, example counts."""

import os
from pathlib import Path

import numpy as np
import pytest

from gpubpe import backends

FIXTURES = Path(__file__).parent / "fixtures"


def merge_fn(name: str, full: bool = False):
    """A callable ``(WordTable, num_merges, **options) -> int32[n, 2]`` for
    backend ``name`` (``options``: :class:`gpubpe.backends.MergeOptions`'s
    fields); ``full``: it returns ``(merges, counts, ntokens)``."""
    if name == "cpu-numba":
        run = backends._cpu("numba")
    elif name == "cpu-steps":
        run = backends._cpu("steps")
    elif name == "cpu-python":
        run = backends._cpu("python")
    else:
        try:
            run = backends.get(name)
        except backends.BackendUnavailable as e:
            pytest.skip(str(e))

    def merge(table, num_merges, **options):
        out = run(table, num_merges, np.zeros(2, np.int64), backends.MergeOptions(**options))
        return out if full else np.asarray(out[0])

    return merge


def max_examples(default: int) -> int:
    """Hypothesis example counts stay bounded; GPUBPE_MAX_EXAMPLES raises them."""
    return int(os.environ.get("GPUBPE_MAX_EXAMPLES", default))
