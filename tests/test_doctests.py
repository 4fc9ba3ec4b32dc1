"""The examples in raygal's docstrings run, and importing any raygal module starts no Ray.

Every module of the package is imported and its doctests are run (``doctest.testmod``), so an
example that drifts from the code fails here. The demo uses the library, not the command line
(the command line runs the demo)."""
from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import raygal

PACKAGE = Path(raygal.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="raygal."))


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    import ray

    was_running = ray.is_initialized()
    mod = importlib.import_module(name)
    assert ray.is_initialized() == was_running, f"importing {name} started Ray"
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name} (output above)"


def test_there_are_doctests_to_run():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES
                   for t in finder.find(importlib.import_module(name)))
    assert examples >= 20


def _imports(path: Path, module: str) -> set[str]:
    """raygal modules that ``module`` imports, at module level or inside a function."""
    nodes = list(ast.walk(ast.parse(path.read_text())))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - n.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in n.names if f"{base}.{a.name}" in MODULES]
            out.update(subs)
            if len(subs) < len(n.names):
                out.add(base)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return {m for m in out if m.startswith("raygal") and m != module}


def _module_paths() -> dict[str, Path]:
    paths = {}
    for name in ["raygal", *MODULES]:
        rel = Path(*name.split(".")[1:])
        p = PACKAGE / rel / "__init__.py" if (PACKAGE / rel).is_dir() else \
            PACKAGE / rel.with_suffix(".py")
        paths[name] = p
    return paths


def test_the_demo_does_not_import_the_command_line():
    """The command line runs the demo; the demo uses the library only (the SDSS-sample
    helpers live in raygal.samples)."""
    paths = _module_paths()
    demo_imports = _imports(paths["raygal.demo"], "raygal.demo")
    assert "raygal.cli" not in demo_imports
    assert "raygal.samples" in demo_imports
    for name in MODULES:
        if name != "raygal.cli":
            assert "raygal.cli" not in _imports(paths[name], name), name
