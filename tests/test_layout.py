"""The architecture holds: package layers import only downwards, no import cycles,
the store knows nothing of what it stores, the client stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMON = ROOT / "daemon"
# Lowest first; a package may import its own modules and those of lower layers.
LAYERS = {
    "errors": 0, "logs": 0, "metrics": 0, "util": 0,
    "host": 1, "criu": 1, "store": 1,
    "snapshots": 2,
    "runtime": 3,
    "remote": 4,
    "checkpoint": 5, "restore": 5,
    "api": 6,
    "server": 7, "__main__": 8,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in DAEMON.rglob("*.py"):
        if path.name.endswith("_pb2.py"):
            continue
        name = ".".join(path.with_suffix("").relative_to(DAEMON).parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports() -> dict[str, set[str]]:
    """Module -> the snapd_daemon modules it imports (at any level of the file)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snapd_daemon"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    graph[name].add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name.startswith("snapd_daemon")}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles() -> None:
    graph = _imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt == "snapd_daemon":
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_packages_import_only_downwards() -> None:
    wrong = []
    for module, targets in _imports().items():
        mine = _package(module)
        for target in targets:
            theirs = _package(target)
            if not mine or not theirs or mine == theirs:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_store_imports_nothing_of_the_domain() -> None:
    allowed = {"store", "errors", "util"}
    wrong = [f"{m} -> {t}" for m, ts in _imports().items() if _package(m) == "store"
             for t in ts if _package(t) not in allowed]
    assert wrong == []


def test_client_stands_alone() -> None:
    """Importing the client and its CLI loads no daemon module (grpcio, protobuf, click only)."""
    code = ("import sys, snapd_client, snapd_client.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith('snapd_daemon')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for path in (ROOT / "client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith("snapd_daemon") for n in names), path


def test_no_hand_written_module_is_huge() -> None:
    big = {str(p.relative_to(ROOT)): n for p in list(DAEMON.rglob("*.py")) + list((ROOT / "client").rglob("*.py"))
           if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")) and (n := len(p.read_text().splitlines())) > 420}
    assert big == {}
