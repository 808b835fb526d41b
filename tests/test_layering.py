"""The house's rules of dependencies, written down once and checked on the sources.

Each package of the tree is a layer; :data:`ALLOWED` lists, for every layer, the layers it may
import. Imports run downhill only: ``marketplace`` (the protocol library) never imports ``worker``
(the provider's daemons), neither imports ``flopex`` (the command line, the only code that imports
both sides), and nothing but ``flopex``, tests and benchmarks imports ``worker.testing`` (the
cheaters). Every import counts, also those inside functions, and no module may take part in an
import cycle. docs/architecture.md draws the same arrows.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("marketplace", "worker", "flopex")

LIBRARY = {
    "marketplace",  # the package itself: its errors re-exported
    "marketplace.errors",
    "marketplace.types",
    "marketplace.sdk",
    "marketplace.launch",
    "marketplace.rpc",
    "marketplace.protocol",
    "marketplace.verify",
    "marketplace.chain",
    "marketplace.contracts",
    "marketplace.market",
    "marketplace.requester",
}
BASE = {"marketplace.errors", "marketplace.types"}
WORKER = {"worker.daemon", "worker.sandbox", "worker.node", "worker.provider", "worker.pool", "worker.verifier"}

#: layer -> the layers it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "marketplace": {"marketplace.errors"},
    "marketplace.errors": set(),
    "marketplace.types": {"marketplace.errors"},
    "marketplace.sdk": set(),  # imported by job code inside the sandbox: stays light
    "marketplace.launch": set(),  # runs a job's steps inside the sandbox: standard library only
    "marketplace.rpc": set(),  # generated gRPC code
    "marketplace.protocol": BASE,
    "marketplace.verify": BASE | {"marketplace.protocol"},
    "marketplace.chain": BASE,
    "marketplace.contracts": BASE | {"marketplace.chain", "marketplace.protocol"},
    "marketplace.market": BASE | {"marketplace.chain", "marketplace.contracts", "marketplace.protocol"},
    "marketplace.requester": LIBRARY - {"marketplace.requester"},
    "worker": set(),
    "worker.daemon": LIBRARY,  # the step loop every daemon runs
    "worker.sandbox": {
        "marketplace",
        "marketplace.errors",
        "marketplace.sdk",
        "marketplace.launch",
        "marketplace.protocol",
    },
    "worker.node": LIBRARY | {"worker.sandbox"},
    "worker.provider": LIBRARY | {"worker.daemon", "worker.sandbox", "worker.node"},
    "worker.pool": LIBRARY | {"worker.daemon", "worker.sandbox", "worker.node", "worker.provider"},
    "worker.verifier": LIBRARY | {"worker.daemon", "worker.sandbox", "worker.node"},
    "worker.testing": LIBRARY | WORKER,
    "worker.serve": LIBRARY | {"worker.sandbox", "worker.node"},
    "worker.__main__": {"worker.serve"},
    "flopex": LIBRARY | WORKER | {"worker.testing"},
}


def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name (packages by their ``__init__``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The project modules ``path`` imports anywhere in the file, each with the line of its import."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _owner(alias.name, known), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in known else _owner(node.module, known)), node.lineno


def _owner(name: str, known: dict[str, Path]) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def layer(module: str) -> str:
    """The layer a module belongs to: ``flopex``, or the first two parts of its name."""
    if module.split(".")[0] == "flopex":
        return "flopex"
    return ".".join(module.split(".")[:2])


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    known = modules()
    return {m: {t for t, _ in imports_of(p, known) if t and t != m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_layer_has_its_rules() -> None:
    layers = {layer(m) for m in modules()}
    assert layers == set(ALLOWED), (
        f"layers without rules: {layers - set(ALLOWED)}; rules without a layer: {set(ALLOWED) - layers}"
    )


def test_imports_run_downhill__no_layer_imports_what_its_rules_do_not_allow() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        for target, line in imports_of(path, known):
            source, dest = layer(module), layer(target)
            if target and source != dest and dest not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}")
    assert wrong == []


def test_no_module_takes_part_in_an_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_rules_catch_an_import_against_them(tmp_path: Path) -> None:
    known = {"marketplace.chain.client": tmp_path / "client.py", "worker.node.jobs": tmp_path / "jobs.py"}
    known["marketplace.chain.client"].write_text("def f():\n    from worker.node.jobs import JobManager\n")
    (found,) = imports_of(known["marketplace.chain.client"], known)
    assert found == ("worker.node.jobs", 2)
    assert layer(found[0]) not in ALLOWED["marketplace.chain"]


def test_the_library_imports_without_the_worker_or_the_command_line() -> None:
    library = sorted(m for m in modules() if layer(m) in LIBRARY and not m.endswith(("_pb2", "_pb2_grpc")))
    assert len(library) > 25
    code = (
        "import importlib, sys\n"
        f"for name in {library!r}:\n"
        "    importlib.import_module(name)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'flopex'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_the_architecture_page_names_every_layer() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    for name in ALLOWED:
        short = name.split(".")[-1]
        if name in ("marketplace", "worker", "worker.__main__"):
            continue
        assert f"{short}/" in page or f"{short}.py" in page or f"`{name}`" in page, name
