"""The pipeline is visible in the imports: no circle among the package's
modules, and no module imports from a later stage (lazy imports inside
functions count too: a circle through a function body is still a circle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gpubpe

PKG = Path(gpubpe.__file__).parent

# The stages of DESIGN §2 in pipeline order; a module may import only from its
# own stage or an earlier one. Helpers every stage may use come first.
STAGES = [
    ["gpubpe.config", "gpubpe._validate", "gpubpe._files", "gpubpe._progress", "gpubpe._pool", "gpubpe._version",
     "gpubpe._numba"],
    ["gpubpe.patterns", "gpubpe.ties"],
    ["gpubpe.corpus"],
    ["gpubpe.wordtable"],  # the seam: what counting makes and every backend takes
    # the engines: the merge loops, and the device (kernels, launchers) on which
    # pre-tokenization and counting run too (gpubpe.pretok.device); they import
    # nothing of the stages after the seam
    ["gpubpe.backends"],
    ["gpubpe.pretok"],
    ["gpubpe.model", "gpubpe.counts"],
    ["gpubpe.trainer"],
    ["gpubpe.formats"],
    ["gpubpe.tokenizer"],
    ["gpubpe.encode"],
    ["gpubpe.cli", "gpubpe.__main__", "gpubpe"],
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every gpubpe module ``path`` imports, wherever the import statement is."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "gpubpe")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "gpubpe":
                continue
            for a in node.names:  # `from . import config` names a module, not the package
                sub = f"{mod}.{a.name}"
                out.add(sub if _is_module(sub) else mod)
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        # importing a submodule runs its packages' __init__ anyway: an edge to
        # one's own package is not a dependency
        graph[name] = {m for m in _imports(path, name) if m in files and m != name and not name.startswith(m + ".")}
    return graph


def _stage(name: str) -> int:
    best = None
    for i, stage in enumerate(STAGES):
        for root in stage:
            if name == root or name.startswith(root + ".") and root != "gpubpe":
                best = i if best is None else max(best, i)
    if best is None:
        assert name == "gpubpe", name
        return len(STAGES) - 1
    return best


def test_every_module_has_a_stage():
    for name in _graph():
        _stage(name)


def test_no_import_circle():
    graph = _graph()
    # a package imports its own submodules (its API); those edges point down
    # the tree, and the submodule importing the package back is the circle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_module_imports_a_later_stage():
    bad = []
    for name, deps in _graph().items():
        for d in deps:
            if name.startswith(d + ".") or d == "gpubpe" and name != "gpubpe":
                continue  # a module reaching its own package's __init__
            if _stage(d) > _stage(name):
                bad.append(f"{name} (stage {_stage(name)}) imports {d} (stage {_stage(d)})")
    assert not bad, "\n".join(sorted(bad))


def test_import_gpubpe_stays_light():
    # neither Numba nor CuPy nor the regex engine on `import gpubpe`; training
    # on the CPU loads Numba but never CuPy
    code = (
        "import sys, gpubpe\n"
        "assert not {'numba', 'cupy', 'tqdm'} & set(sys.modules), sorted({'numba', 'cupy', 'tqdm'} & set(sys.modules))\n"
        "import gpubpe.pretok, gpubpe.corpus\n"
        "assert gpubpe.pretokenize.__module__ == 'gpubpe.pretok'\n"
        "gpubpe.train(iter(['the cat sat on the mat ' * 50]), vocab_size=270, backend='cpu', progress=False)\n"
        "assert 'cupy' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_suite_runs_without_hypothesis(tmp_path):
    """A device machine may lack hypothesis: its property tests skip with the
    reason, and the other tests of the same modules still run."""
    import subprocess
    import sys

    # A package of the same name ahead of site-packages whose import fails: a
    # finder on sys.meta_path would not do, since pytest's assertion rewriter
    # looks up the modules of plugin distributions (hypothesis is one) itself,
    # through the path finder, ahead of any such finder.
    (tmp_path / "hypothesis").mkdir()
    (tmp_path / "hypothesis" / "__init__.py").write_text("raise ImportError('hypothesis blocked')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:hypothesispytest", "-p", "no:cacheprovider",
                        "-rs", "tests/test_steps.py"], cwd=PKG.parent, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "hypothesis is not installed" in r.stdout and " passed" in r.stdout
