import os
import random

# pyarrow's default allocator (jemalloc) reserves address ranges that the
# AddressSanitizer runtime of cuda-sim, loaded later in the same process, needs
# for its shadow memory: with the system allocator both fit.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import pytest

try:
    import hypothesis  # noqa: F401
except ImportError:  # a bare device machine: property tests skip, every other test runs
    from ._no_hypothesis import install

    install()
from hypothesis import HealthCheck, settings

from gpubpe import config

from ._helpers import merge_fn

# Hypothesis profiles. 'ci' (what .ci/run selects) is derandomized: the same
# examples every run, so CI cannot pass or fail by luck. 'random' (the default
# for local runs) draws new examples each session from a seed printed in the
# header: rerun a failure with --hypothesis-seed=N.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("random", print_blob=True, suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("GPUBPE_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "random")
settings.load_profile(PROFILE)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Before hypothesis' own plugin reads the option: a random profile gets an
    # explicit seed, so that it can be printed and a failure replayed.
    if PROFILE == "random" and config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.randrange(2**32))


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed", None)
    extra = f", seed {seed} (rerun with --hypothesis-seed={seed})" if PROFILE == "random" else ", derandomized"
    return f"hypothesis profile {PROFILE!r}{extra}"



# Every backend runs the same test bodies. 'cpu-numba', 'cpu-steps' and
# 'cpu-python' are the engines of backend='cpu' (chosen by table size and
# thread count in real runs).
BACKENDS = [
    pytest.param("cpu-numba", id="cpu-numba"),
    pytest.param("cpu-steps", id="cpu-steps"),
    pytest.param("cpu-python", id="cpu-python"),
    pytest.param("cuda-sim", id="cuda-sim"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture
def merge(backend_name):
    return merge_fn(backend_name)


@pytest.fixture
def train_kwargs(backend_name, monkeypatch):
    """Keyword arguments that make gpubpe.train use this backend."""
    if backend_name == "cpu-numba":
        monkeypatch.setattr(config, "SMALL_TABLE_SYMBOLS", -1)
        return {"backend": "cpu"}
    if backend_name == "cpu-steps":
        monkeypatch.setattr(config, "SMALL_TABLE_SYMBOLS", -1)
        monkeypatch.setattr(config, "CPU_STEP_MIN_THREADS", 1)
        return {"backend": "cpu"}
    if backend_name == "cpu-python":
        monkeypatch.setattr(config, "SMALL_TABLE_SYMBOLS", 1 << 62)
        return {"backend": "cpu"}
    merge_fn(backend_name)  # skips when unavailable
    return {"backend": backend_name}
