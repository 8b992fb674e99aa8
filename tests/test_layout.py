"""The package's layout: layers that import one way, no cycles, no private names across
subpackages, and a public API that resolves.

Read from the source with ``ast`` (module-level and function-local imports alike), so an
import hidden inside a function to dodge a cycle is caught too.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path
from types import SimpleNamespace

import jax
import pytest

import ssjax

ROOT = Path(ssjax.__file__).resolve().parent

#: what each layer may import from (besides itself and the package's top-level helpers)
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "datasets": {"core", "data"},
    "fit": {"core"},
    "rolling": {"core", "data", "fit"},
    "analysis": {"core", "data", "fit", "rolling"},
    "trading": {"core", "data", "fit", "rolling", "analysis"},
    "app": {"core", "data", "datasets", "fit", "rolling", "analysis", "trading"},
}
#: top-level modules any layer may use (no ssjax imports of their own)
HELPERS = {"_lazy", "_version", "checks", "compile_cache", "progress"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every ssjax import in the file."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] + (
                    node.module.split(".") if node.module else []
                )
                mod = ".".join(base)
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "ssjax":
                out.append((mod, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ssjax":
                    out.append((a.name, [], node.lineno))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_cycle():
    mods = _modules()
    graph = collections.defaultdict(set)
    for name, path in mods.items():
        for mod, names, _ in _imports(name, path):
            for target in [mod] + [f"{mod}.{n}" for n in names]:
                if target in mods and target != name:
                    graph[name].add(target)
    # Tarjan's strongly connected components
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(mods):
        if v not in index:
            visit(v)
    assert cycles == []


def test_layers_import_one_way():
    bad = []
    for name, path in _modules().items():
        layer = _layer(name)
        if layer is None or layer in HELPERS or layer == "__main__":
            continue
        for mod, _, line in _imports(name, path):
            target = _layer(mod)
            if target is None and layer != "app":
                bad.append(f"{path.name}:{line} imports the top-level package")
            elif target not in (None, layer) and target not in HELPERS | ALLOWED[layer]:
                bad.append(f"{name}:{line} ({layer}) imports {mod} ({target})")
    assert bad == []


def test_no_private_name_crosses_a_subpackage():
    bad = []
    for name, path in _modules().items():
        here = name.split(".")[:2] if path.name != "__init__.py" else name.split(".")[:2]
        for mod, names, line in _imports(name, path):
            there = mod.split(".")[:2]
            for n in names:
                if (
                    n.startswith("_")
                    and not n.startswith("__")
                    and (there != here or len(here) < 2)
                ):
                    bad.append(f"{name}:{line} from {mod} import {n}")
    assert bad == []


def test_every_layer_is_a_subpackage_with_an_api():
    import importlib

    for layer in ALLOWED:
        mod = importlib.import_module(f"ssjax.{layer}")
        assert mod.__doc__, layer
        if layer not in ("app",):
            assert mod.__all__, layer
            for n in mod.__all__:
                assert hasattr(mod, n), f"ssjax.{layer}.{n}"
    # no flat module is left beside the subpackages but the helpers
    flat = {p.stem for p in ROOT.glob("*.py")} - {"__init__", "__main__"}
    assert flat <= HELPERS


@pytest.mark.parametrize("name", ssjax.__all__)
def test_public_api_resolves(name):
    assert getattr(ssjax, name) is not None


def test_the_heavy_first_order_names_existing_test_files():
    """``conftest.HEAVY_FIRST`` (the CI's scheduling order) names test files that exist."""
    from conftest import HEAVY_FIRST

    tests = Path(__file__).resolve().parent
    missing = [name for name in HEAVY_FIRST if not (tests / name).is_file()]
    assert not missing and len(set(HEAVY_FIRST)) == len(HEAVY_FIRST), missing


def test_memory_map_guard_clears_between_files_not_inside_one(monkeypatch):
    """The caches survive between two tests of one file unless the maps near the limit."""
    import conftest

    f = jax.jit(lambda x: x + 1)
    here, other = SimpleNamespace(path=Path("a.py")), SimpleNamespace(path=Path("b.py"))

    def cached_after(maps, nextitem):
        f(1.0)
        monkeypatch.setattr(conftest, "_memory_maps", lambda: maps)
        conftest.pytest_runtest_teardown(here, nextitem)
        return f._cache_size()

    assert cached_after((60, 100), here) == 1  # same file, past half: kept
    assert cached_after((60, 100), other) == 0  # next file: cleared
    assert cached_after((60, 100), None) == 0  # last test
    assert cached_after((90, 100), here) == 0  # same file, near the limit
    assert cached_after((10, 100), other) == 1
    assert cached_after(None, here) == 1 and cached_after(None, other) == 0
