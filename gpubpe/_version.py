"""The package version (one place: the package, pyproject and model records read it)."""

__version__ = "0.1.0"
