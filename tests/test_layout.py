"""The package graph (ARCHITECTURE.md): imports point down the layers, no cycles (not even through imports inside
functions), and every flag main.py declares is read by some mode.

Checked statically with ``ast`` over every module, so a function-local import counts like a top-level one:
    python -m pytest tests/test_layout.py
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["optics", "data", "hardware", "metrics", "anonymizer", "video", "federated", "pipelines"]
# a package may import only the packages listed for it (and itself)
ALLOWED = {
    "optics": set(),
    "data": set(),
    "hardware": {"optics", "data"},
    "metrics": {"optics", "data"},
    "anonymizer": {"optics", "data", "metrics"},
    "video": {"optics", "data", "hardware", "metrics", "anonymizer"},
    "federated": {"optics", "data", "hardware", "metrics", "anonymizer"},
    "pipelines": {"optics", "data", "hardware", "metrics", "anonymizer", "video", "federated"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def test_imports_point_down_the_layers(graph):
    bad = []
    for mod, deps in graph.items():
        top = mod.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{mod} imports {dep}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components; a package's __init__ importing its own modules is not a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def edges(mod):
        return [d for d in graph.get(mod, ()) if not (mod.startswith(d + ".") and d in graph)]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_anonymizer_and_camera_building_do_not_reach_hardware_or_pipelines(graph):
    assert not any(d.startswith(("hardware", "pipelines")) for m, ds in graph.items() if m.startswith("anonymizer")
                   for d in ds)


def test_every_flag_is_read_somewhere():
    """Each flag is read as ``args.<flag>`` / ``getattr(args, "<flag>")`` in pipelines/ or main.py, or is a field
    of a config the pipelines build from the whole namespace (Stage II TrainOptions.from_args, build_model)."""
    from dataclasses import fields

    import main
    from anonymizer.stage2.model import MODEL_KEYS
    from anonymizer.stage2.solver import TrainOptions

    parser = main.build_parser()
    dests = {a.dest for a in parser._actions if a.dest not in ("help",)}
    code = "\n".join(p.read_text() for p in (ROOT / "pipelines").rglob("*.py")) + (ROOT / "main.py").read_text()
    by_config = {f.name for f in fields(TrainOptions)} | set(MODEL_KEYS)
    unread = [d for d in sorted(dests - by_config)
              if not re.search(rf"args\.{d}\b|getattr\(args, [\"']{d}[\"']", code)]
    assert not unread, f"flags declared in main.py but read nowhere: {unread}"
