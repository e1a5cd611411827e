"""The package's architecture, checked from its source: layers import downwards only, the
import graph has no cycle, no subpackage reaches into another's private modules or names,
and modules stay short (kernel files excepted)."""
from __future__ import annotations

import ast
import pathlib


PKG = pathlib.Path(__file__).resolve().parents[1] / "dadf_fast"

# Lower rank = lower layer.  A module may import its own subpackage and any lower rank.
LAYERS = {
    "dadf_fast.utils": 0,
    "dadf_fast.reference": 0,
    "dadf_fast.kernels": 1,
    "dadf_fast.ops": 2,
    "dadf_fast.nn": 3,
    "dadf_fast.integrations": 4,  # adapters for other libraries (FrEIA, anomalib) over nn/ops
    "dadf_fast.data": 4,
    "dadf_fast.metrics": 4,
    "dadf_fast.models": 5,
    "dadf_fast.engine": 6,
    "dadf_fast.deploy": 6,  # export of a trained detector to ONNX / OpenVINO (beside engine)
    "dadf_fast.cli": 7,
    "dadf_fast": 8,  # the package root re-exports the public API
}
MAX_LINES = 500
# Triton kernel files: the kernels, their launchers and autograd in one file (Liger-style)
LONG_OK = ("dadf_fast/kernels/triton/",)


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import of the package in ``path``,
    including the ones inside functions (a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "dadf_fast"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "dadf_fast":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append((sub, None) if sub in MODULES else (mod, a.name))
    return found


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in LAYERS else "dadf_fast"


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for mod, _ in _imports(name, path):
            while mod not in MODULES and "." in mod:
                mod = mod.rsplit(".", 1)[0]
            if mod != name:
                deps.add(mod)
        graph[name] = deps
    return graph


def test_the_layer_table_covers_every_subpackage():
    tops = {".".join(m.split(".")[:2]) for m in MODULES if m.count(".") >= 1 and (PKG / m.split(".")[1]).is_dir()}
    assert tops <= set(LAYERS), f"subpackages without a layer: {sorted(tops - set(LAYERS))}"


def test_imports_point_down():
    bad = []
    for name, deps in _graph().items():
        mine = _layer(name)
        for dep in deps:
            theirs = _layer(dep)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports that do not point to a lower layer:\n" + "\n".join(sorted(bad))


def test_reference_imports_nothing_else_of_the_package():
    bad = [f"{n} -> {d}" for n, deps in _graph().items() if n.startswith("dadf_fast.reference")
           for d in deps if not d.startswith("dadf_fast.reference")]
    assert not bad, bad


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_subpackages():
    bad = []
    for name, path in MODULES.items():
        mine = _layer(name)
        for mod, attr in _imports(name, path):
            if _layer(mod) == mine:
                continue
            private_mod = any(p.startswith("_") and p != "__init__" for p in mod.split(".")[1:])
            if private_mod or (attr is not None and attr.startswith("_")):
                bad.append(f"{name}: {mod}{'.' + attr if attr else ''}")
    assert not bad, "private modules/names imported from another subpackage:\n" + "\n".join(sorted(bad))


def test_modules_are_short():
    long = []
    for path in MODULES.values():
        rel = path.relative_to(PKG.parent).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and not rel.startswith(LONG_OK):
            long.append(f"{rel}: {n} lines")
    assert not long, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(long)
