"""No import circles among genept_fast's modules.

An edge ``a -> b`` is an ``import``/``from ... import`` in module ``a`` that names module ``b``
of the package, at the top of the file or inside a function (both run). Not counted: imports
under ``if TYPE_CHECKING:`` (they never run), and ``importlib.import_module`` with a computed
name (the package's lazy attributes and the CLI's command registry, each from a package to its
own children). ``from genept_fast import __version__`` is an edge to the package's
``__init__``; importing ``genept_fast.a.b`` is an edge to ``genept_fast.a.b`` only (Python
initialises the parent packages first, which is no circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import genept_fast

PACKAGE = Path(genept_fast.__file__).parent
NAME = "genept_fast"


def _modules() -> dict[str, Path]:
    mods = {f"{NAME}._core": PACKAGE / "_core.pyi"}  # the compiled module: imports nothing
    for path in PACKAGE.rglob("*.py"):
        parts = [NAME, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def import_graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        if path.suffix == ".pyi":
            graph[mod] = set()
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        is_pkg = path.name == "__init__.py"
        targets: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names if a.name.startswith(NAME))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, *([base] if base else [])])
                if base.split(".")[0] != NAME:
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in mods else owner(base))
        graph[mod] = {t for t in targets if t is not None and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert f"{NAME}.embed.batch" in graph[f"{NAME}.embed.openai_api"]
    assert f"{NAME}.cli" in graph[f"{NAME}.__main__"]
    assert f"{NAME}.text" in graph[f"{NAME}.commands.gene_text"]  # inside run()


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_batch_runner_does_not_import_the_embedder():
    assert f"{NAME}.embed.openai_api" not in import_graph()[f"{NAME}.embed.batch"]


# The layers, bottom first: a module may import its own layer and those below, never above.
# Each entry is a module or a package prefix (``genes`` covers ``genes.*``); every module of
# the package must be in exactly one layer, so a new module is placed on purpose.
LAYERS: tuple[tuple[str, ...], ...] = (
    # the floor: errors, the compiled core (imported only by kernels and _version), file and
    # secret helpers that know nothing of genes or cells
    ("errors", "_core", "_version", "_atomic", "_extras", "_secrets", "_outputs", "_inputs"),
    ("_frames",),  # AnnData dataframes read from a store without anndata (imports nothing above)
    ("_progress",),  # progress on a terminal or in a log (imports errors only)
    # pure computation and the HTTP client
    ("preprocess", "kernels", "_http", "cache"),
    # what a gene is, gene tables, reading cells from AnnData
    ("genes", "table", "cells", "soma", "stream.sources"),
    # gene text and text embedding (network clients at this edge)
    ("text", "embed"),
    # cells × genes → embeddings: the one engine
    ("encode",),
    # where chunks come from and go: streaming, Dask, annotation from a reference
    ("stream", "dask", "annotate", "_into"),
    # scanpy-shaped tools and evaluation
    ("tl", "eval"),
    # the front: the package's lazy attributes, the demo, the command line
    ("__init__", "demo", "commands", "cli", "__main__"),
)

#: The only modules that import the compiled core directly.
CORE_IMPORTERS = {f"{NAME}.kernels", f"{NAME}._version"}


def layer_of(module: str) -> int | None:
    """The layer of ``genept_fast.x.y``: its longest matching entry in :data:`LAYERS`."""
    rel = module.removeprefix(NAME).lstrip(".") or "__init__"
    best: tuple[int, int] | None = None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            matches = rel == entry or rel.startswith(entry + ".")
            if matches and (best is None or len(entry) > best[1]):
                best = (i, len(entry))
    return None if best is None else best[0]


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if layer_of(m) is None] == []


def test_no_import_runs_up_the_layers():
    graph = import_graph()
    up = [
        f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if (layer_of(b) or 0) > (layer_of(a) or 0)
    ]
    assert up == []


def test_only_the_kernels_touch_the_compiled_core():
    graph = import_graph()
    users = {a for a, targets in graph.items() if f"{NAME}._core" in targets}
    assert users <= CORE_IMPORTERS


def test_the_layer_check_sees_an_upward_import():
    assert layer_of(f"{NAME}.annotate._index") == layer_of(f"{NAME}.stream.pipeline")
    assert layer_of(f"{NAME}.stream.sources") < layer_of(f"{NAME}.stream.pipeline")
    assert layer_of(f"{NAME}.eval._io") > layer_of(f"{NAME}.annotate._index")  # an up-edge
    assert layer_of(NAME) == len(LAYERS) - 1
