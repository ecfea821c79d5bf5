"""The package's layers: io -> data -> model -> {train, eval} -> viz, each importing only what lies
below it (train and eval are siblings); checked on every import statement, lazy ones in functions too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sam3d_med"
# subpackage -> subpackages it must never import (at module level or inside a function)
FORBIDDEN = {
    "io": {"data", "model", "train", "eval", "viz"},
    "data": {"model", "train", "eval", "viz"},
    "model": {"train", "eval", "viz"},
    "eval": {"train", "viz"},
    "train": {"eval", "viz"},
}


def imported_subpackages(source: str, module: str) -> set[tuple[str, int]]:
    """(sam3d_med subpackage, line) of every import in ``source``, the module ``sam3d_med.<module>``."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["sam3d_med", *package][: len(package) + 1 - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target] if node.module else [[*base, alias.name] for alias in node.names]
            else:
                names = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in names:
            if parts[0] == "sam3d_med" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def test_the_rule_reads_relative_absolute_and_lazy_imports():
    source = ("from ..train.trainer import train\nfrom .metrics import x\nimport sam3d_med.viz.report\n"
              "def f():\n    from .. import viz\n")
    assert imported_subpackages(source, "eval.runner") == {("train", 1), ("eval", 2), ("viz", 3), ("viz", 5)}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_one_above_it(layer):
    broken = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for target, line in imported_subpackages(path.read_text(), module):
            if target in FORBIDDEN[layer]:
                broken.append(f"{path.relative_to(PACKAGE)}:{line} imports sam3d_med.{target}")
    assert not broken, "\n".join(broken)
