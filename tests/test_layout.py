"""The package layout of docs/ARCHITECTURE.md holds: stages in pipeline order, imports only
downwards (a stage uses its own modules, the stages above it and the foundation), and every
module small enough to have one job."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pneumolib"
ARCH = PKG.parent / "docs" / "ARCHITECTURE.md"
STAGES = ["data", "prep", "models", "training", "evaluation", "reporting", "commands"]
FOUNDATION = {"config", "paths", "errors", "seeding", "runio", "machine", "metrics"}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _rank(parts: tuple[str, ...]) -> int:
    """-1 for the foundation and the package root, the stage's place, len(STAGES) for the CLI."""
    head = parts[0] if parts else ""
    if head in STAGES:
        return STAGES.index(head)
    if head == "cli":
        return len(STAGES)
    return -1


def _imported(path: Path, source: str | None = None) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, pneumolib-relative module parts)`` of every pneumolib import in ``path``
    (or in ``source``, read as if it were that file)."""
    package = path.relative_to(PKG).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = (*base, *(node.module.split(".") if node.module else ()))
            elif node.module and node.module.split(".")[0] == "pneumolib":
                mod = tuple(node.module.split(".")[1:])
            else:
                continue
            if not mod:            # from pneumolib import x: x is the module
                out += [(node.lineno, (a.name,)) for a in node.names]
            else:
                out.append((node.lineno, mod))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names
                    if a.name.split(".")[0] == "pneumolib"]
    return out


def test_top_level_reads_as_the_pipeline():
    names = {p.name.removesuffix(".py") for p in PKG.iterdir() if not p.name.startswith(("_", "."))
             and (p.is_dir() or p.suffix == ".py")}
    names.discard("__pycache__")
    assert names == set(STAGES) | FOUNDATION | {"cli"}, sorted(names)
    text = ARCH.read_text()
    assert [text.index(f"  {s}/") for s in STAGES] == sorted(text.index(f"  {s}/") for s in STAGES), \
        "docs/ARCHITECTURE.md lists the stages out of pipeline order"


def test_every_module_has_at_most_400_lines():
    long = {str(p.relative_to(PKG)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (> {MAX_LINES} lines): {long}"


def test_imports_only_go_down_the_pipeline():
    bad = []
    for path in _modules():
        rel = path.relative_to(PKG).with_suffix("").parts
        mine = _rank(rel)
        for line, mod in _imported(path):
            if _rank(mod) > mine and not (mine == -1 and rel[0] == "__init__"):
                bad.append(f"{path.relative_to(PKG)}:{line} imports pneumolib.{'.'.join(mod)}")
            if mine == -1 and rel[0] in FOUNDATION and _rank(mod) >= 0:
                bad.append(f"{path.relative_to(PKG)}:{line}: the foundation imports a stage")
    assert not bad, "\n".join(bad)


def test_the_import_check_sees_absolute_relative_and_nested_imports():
    probe = PKG / "data" / "probe.py"
    src = ("from pneumolib.reporting import plots\nfrom ..training import fit\nfrom . import rle\n"
           "def f():\n    import pneumolib.commands.bench\n")
    found = _imported(probe, src)
    assert found == [(1, ("reporting",)), (2, ("training",)), (3, ("data",)), (5, ("commands", "bench"))]
    assert all(_rank(m) > _rank(("data",)) for _, m in found[:2])
