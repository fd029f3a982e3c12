"""The package's house plan: every import between miras modules goes down a floor or stays on it, and no import
circle exists. Imports inside functions count too (a lazy import still couples the modules), unless LAZY lists them
with a reason.

The graph is read from the source with `ast` (nothing is imported), so this test fails on a new arrow back up or a new
cycle before any code runs. `python tests/test_import_layers.py` prints the counts: rooms, floors, arrows up, cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "miras"

# Floors, low to high: a room (a top-level module or subpackage of miras) may import rooms on its own floor or below.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("io_atomic", "device", "checks", "progress"),  # small shared helpers: the model's config and data use them
    ("miras", "spec", "presets", "memory", "ops", "config", "layers", "models", "data"),  # the model itself
    ("run", "metrics", "plots"),  # the run-folder format, metric primitives, figures
    ("train",),
    ("eval", "hf", "lmeval", "bench"),  # scoring, conversion, benchmarks
    ("experiments",),  # studies that train and score many models
    ("cli",),
)

# Entry-point shims: `python -m miras.<room>` runs the command line, the top floor, by design.
SHIMS = {"miras.__main__", "miras.train.__main__", "miras.lmeval.__main__"}

# (importer, imported) pairs made inside functions that may point up a floor, with the reason.
LAZY: dict[tuple[str, str], str] = {}


def module_names() -> dict[str, Path]:
    """miras.* module name -> its file."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported miras module, made inside a function) for every import statement of module `name`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((_resolve(alias.name, known), lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    # `from miras.x import y` imports the submodule miras.x.y when there is one, else miras.x
                    found.append((_resolve(f"{base}.{alias.name}", known) or _resolve(base, known), lazy))
            visit(child, inner)

    visit(tree, False)
    return sorted({(target, lazy) for target, lazy in found if target and target != name})


def _resolve(dotted: str, known: set[str]) -> str | None:
    """The longest miras module that `dotted` names or lies in; None outside the package."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def room(module: str) -> str:
    """The top-level module or subpackage `module` lies in; `python -m miras` is the command line's."""
    parts = module.split(".")
    if module == "miras.__main__":
        return "cli"
    return parts[1] if len(parts) > 1 else "miras"


def floor_of() -> dict[str, int]:
    return {r: i for i, rooms in enumerate(FLOORS) for r in rooms}


def graph() -> dict[str, list[tuple[str, bool]]]:
    names = module_names()
    known = set(names)
    return {name: imports(name, path, known) for name, path in sorted(names.items())}


def arrows_up(edges: dict[str, list[tuple[str, bool]]]) -> list[str]:
    floors = floor_of()
    bad = []
    for source, targets in edges.items():
        if source in SHIMS:
            continue
        for target, lazy in targets:
            if floors[room(target)] > floors[room(source)] and not (lazy and (source, target) in LAZY):
                bad.append(
                    f"{source} -> {target}{' (inside a function)' if lazy else ''}: floor "
                    f"{floors[room(source)]} ({room(source)}) imports floor {floors[room(target)]} "
                    f"({room(target)})"
                )
    return bad


def cycles(edges: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """One cycle per back edge found by a depth-first search (shims and allowed lazy imports left out)."""
    adjacency = {
        s: sorted({t for t, lazy in ts if not (lazy and (s, t) in LAZY)}) for s, ts in edges.items() if s not in SHIMS
    }
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    found = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in adjacency.get(node, ()):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in adjacency:
        if node not in state:
            dfs(node)
    return found


def test_every_room_has_a_floor():
    floors = floor_of()
    missing = sorted({room(m) for m in module_names()} - set(floors))
    assert not missing, f"rooms without a floor in FLOORS: {missing}; add them to the table"


def test_no_import_points_up_a_floor():
    bad = arrows_up(graph())
    assert not bad, "imports from a lower floor to a higher one:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_lazy_exceptions_still_exist():
    edges = graph()
    stale = [pair for pair in LAZY if (pair[1], True) not in edges.get(pair[0], [])]
    assert not stale, f"LAZY lists imports that no longer exist: {stale}"


if __name__ == "__main__":
    edges = graph()
    print(
        f"modules {len(edges)}, rooms {len({room(m) for m in edges})}, floors {len(FLOORS)}, "
        f"arrows up {len(arrows_up(edges))}, cycles {len(cycles(edges))}"
    )
    for line in arrows_up(edges):
        print("  up:", line)
    for c in cycles(edges):
        print("  cycle:", " -> ".join(c))
