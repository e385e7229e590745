"""A stand-in for ``hypothesis`` where it is not installed (a bare device
machine runs ``pytest -m gpu`` with what it has): every property test is
collected and skipped with the reason, and every other test runs."""

from __future__ import annotations

import functools
import inspect
import sys
import types

import pytest

REASON = "hypothesis is not installed: property tests skipped (pip install hypothesis)"


class _Anything:
    """What a strategy or setting expression evaluates to: anything, chained."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __iter__(self):
        return iter(())


def _given(*args, **kwargs):
    def wrap(fn):
        def skipped(*a, **k):
            pytest.skip(REASON)

        # the test keeps the parameters pytest fills (fixtures, parametrize),
        # without those the strategies would have drawn
        params = list(inspect.signature(fn).parameters.values())
        params = [p for p in params if p.name not in kwargs]
        params = params[: len(params) - len(args)]  # positional strategies fill the last parameters
        functools.update_wrapper(skipped, fn)
        del skipped.__wrapped__
        skipped.__signature__ = inspect.Signature(params)
        return skipped

    return wrap


def _settings(*args, **kwargs):
    return lambda fn: fn


_settings.register_profile = lambda *a, **k: None
_settings.load_profile = lambda *a, **k: None


def install() -> None:
    anything = _Anything()
    mod = types.ModuleType("hypothesis")
    mod.given, mod.settings, mod.HealthCheck = _given, _settings, anything
    mod.assume = mod.event = mod.note = lambda *a, **k: None  # only reached inside a skipped test
    mod.example = _settings  # a decorator that leaves the test as it is
    mod.strategies = types.ModuleType("hypothesis.strategies")
    mod.strategies.__getattr__ = lambda name: anything
    sys.modules["hypothesis"] = mod
    sys.modules["hypothesis.strategies"] = mod.strategies
