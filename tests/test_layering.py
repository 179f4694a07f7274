"""The package's layers: no module imports a module of a layer above its own (design.md, "Layers").

Listed bottom-up; a module belongs to the first entry that is it or its package ("=name": that module
only). Moving a module or
adding an upward import fails here with the offending import named.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "specdec"

LAYERS = [
    ("token trees (pure data)", ["specdec.core.tree", "=specdec.core"]),
    ("options and errors", ["specdec.config", "specdec.errors"]),
    ("statistics, clocks", ["specdec.core.stats", "specdec.core.timing"]),
    ("processors per node", ["specdec.core.sampling"]),
    ("acceptance rules", ["specdec.core.acceptance"]),
    ("kernels", ["specdec.kernels"]),
    ("runtime: runners, caches, masks", ["specdec.runtime"]),
    ("loading models, checking their pair", ["specdec.models"]),
    ("drafters", ["specdec.drafters"]),
    ("planning", ["specdec.planning"]),
    ("the step", ["specdec.core.engine"]),
    ("the generation loop", ["specdec.core.loop"]),
    ("the embedded pair", ["specdec.embedded"]),
    ("SpeculativeModel", ["specdec.generate"]),
    ("the public face", ["specdec"]),
    ("the command line", ["specdec.cli", "specdec.__main__"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix.startswith("=") or prefix == "specdec":  # that module only
                if module == prefix.lstrip("="):
                    return rank
                continue
            if module == prefix or module.startswith(prefix + "."):
                return rank
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported specdec module, line) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specdec"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists()
                found.append((candidate if is_module else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("specdec")]
    return found


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_imports_point_downward():
    upward = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        rank = layer_of(module)
        for imported, line in imports_of(path):
            if layer_of(imported) > rank:
                upward.add(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[rank][0]}) imports {imported} "
                    f"({LAYERS[layer_of(imported)][0]})"
                )
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_the_check_can_fail(tmp_path):
    """An upward import is found: the acceptance rules importing the engine."""
    probe = PACKAGE / "core" / "acceptance.py"
    tree = ast.parse("from specdec.core.engine import SpeculativeEngine")
    fake = tmp_path / "acceptance.py"
    fake.write_text(ast.unparse(tree))
    ((imported, _),) = imports_of(fake)
    assert layer_of(imported) > layer_of(module_name(probe))
