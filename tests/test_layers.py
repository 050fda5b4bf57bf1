"""The house's floors, checked from the source: which package may import which.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import
hides a dependency from the interpreter, not from the reader. Read top to bottom, a layer may
import the layers above it and itself, never one below.

    crypto/            identities, canonical encoding, signed records (pure)
    merge/             the bit-exact side: LoRA loading, fold, digest, spec, export
    merge/pipeline/    backends, datasets, train, distill, search, evaluate
    node/errors.py     the one error tree of node/
    node/core/         the sans-IO replication core (crypto only)
    node/forge/        the only node code that touches merge/: validation, composer, author
    node/shell/        trio, sockets, files: service, store, transport, control, status
    node/sim/          the simulator: real cores on a virtual network
    node/cli/          the commands (and the demo, a client of the commands)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("crypto", "merge", "node")

# layer -> the layers it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "crypto": set(),
    "merge": set(),
    "merge.pipeline": {"merge"},
    "node": set(),
    "node.errors": set(),
    "node.core": {"crypto", "node.errors"},
    "node.forge": {"crypto", "merge", "merge.pipeline", "node.errors", "node.core"},
    "node.shell": {"crypto", "node.errors", "node.core", "node.forge"},
    "node.sim": {"crypto", "node.errors", "node.core", "node.forge"},
    "node.cli": {
        "crypto", "merge", "merge.pipeline", "node.errors", "node.core", "node.forge",
        "node.shell", "node.sim",
    },
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def layer(module: str) -> str:
    """The longest layer name that is ``module`` or a package above it."""
    candidates = [name for name in ALLOWED if module == name or module.startswith(name + ".")]
    return max(candidates, key=len)


def imported(module: str, path: Path) -> Iterator[str]:
    """Every module of ours that ``module`` imports, resolved to a file we have."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target.split(".")[0] not in PACKAGES:
                continue
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target


GRAPH = {module: set(imported(module, path)) for module, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_the_layers_above_it(module: str) -> None:
    own = layer(module)
    upward = sorted(
        target
        for target in GRAPH[module]
        if layer(target) != own
        and layer(target) not in ALLOWED[own]
        # a package's __init__ is on the path to its modules, not a dependency on them
        and not any(m.startswith(target + ".") for m in GRAPH[module] | {module})
    )
    assert not upward, f"{module} ({own}) imports {upward}"


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_scripts_import_the_installed_package() -> None:
    """Benchmarks run against what ``pip install`` gives a user, not a path hack."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted([*(ROOT / "scripts").glob("*.py"), *(ROOT / "tests").rglob("*.py")])
        if "sys.path.insert" in path.read_text() and path != Path(__file__).resolve()
    ]
    assert not offenders, f"sys.path.insert in {offenders}"
