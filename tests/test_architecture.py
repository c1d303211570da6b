"""The package's layers (docs/architecture.md): imports only run downward, no cycles, lazy
imports only for optional dependencies, and the public API does not depend on them."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import front_onnx

PKG = Path(front_onnx.__file__).parent

# Bottom to top, as docs/architecture.md draws them. A module may import its own layer or below.
LAYERS = [
    ("front_onnx._version", "front_onnx.errors", "front_onnx.outputs", "front_onnx.datafiles",
     "front_onnx.progress"),
    ("front_onnx.numeric",),
    ("front_onnx.onnxio",),
    ("front_onnx.analysis",),
    ("front_onnx.method",),
    ("front_onnx.validation",),
    ("front_onnx.torch",),
    ("front_onnx.api",),
    ("front_onnx.cli", "front_onnx.__main__", "front_onnx"),
]
OPTIONAL = ("torch", "onnxscript", "tqdm", "matplotlib", "sklearn", "transformers", "timm")


def layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or (n != "front_onnx" and module.startswith(n + ".")):
                best = i
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to docs/architecture.md and LAYERS")
    return best


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(path: Path, name: str) -> list[tuple[str, bool, int]]:
    """(imported front_onnx module, at module level?, line) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "front_onnx" or t.startswith("front_onnx."):
                found.append((t, id(node) in top, node.lineno))
    return found


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_imports_run_only_downward():
    bad = []
    for name, path in modules().items():
        for target, _, line in imports(path, name):
            if target == name:
                continue
            if layer(target) > layer(name):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {name} (layer {layer(name)}) imports "
                           f"{target} (layer {layer(target)})")
    assert not bad, "\n".join(bad)


def test_lazy_imports_only_for_optional_dependencies():
    """A function-level import of our own code hides a cycle; only the torch side, which
    needs an optional dependency, may be imported lazily."""
    bad = []
    for name, path in modules().items():
        for target, at_top, line in imports(path, name):
            optional = target.startswith("front_onnx.torch") and not name.startswith("front_onnx.torch")
            if not at_top and not optional:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: lazy import of {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {name: {t for t, _, _ in imports(path, name) if t != name and t in modules()}
             for name, path in modules().items()}
    # a package's __init__ is imported by its submodules' import machinery, not by them
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if m == "front_onnx":
                continue
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if not state.get(m):
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if not state.get(n):
            visit(n)


def test_importing_the_package_imports_no_optional_dependency():
    code = ("import sys, front_onnx, front_onnx.cli; "
            f"print(','.join(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""


def test_no_public_name_is_also_a_submodule():
    """``front_onnx.weights`` once was both a function and a submodule: the lazy import of the
    submodule replaced the function after its first call."""
    subs = {m.name for m in pkgutil.iter_modules([str(PKG)])}
    clash = sorted(set(front_onnx.__all__) & subs)
    assert not clash, clash


@pytest.mark.parametrize("name", [n for n in front_onnx.__all__ if not n.startswith("__")])
def test_public_names_resolve(name):
    assert getattr(front_onnx, name) is not None
