"""Start-up of the command line: building the parser imports no heavy part of genept_fast.

The commands' parsers write out a few constants of the modules they run (so that
``genept-fast --version`` and ``encode`` do not import scikit-learn, faiss or anndata for them);
these tests hold the copies equal to the originals and check, in a fresh interpreter, what
building the parser imports.
"""

from __future__ import annotations

import subprocess
import sys

from genept_fast.commands import build_reference, evaluate


def test_evaluate_gene_models_equal_the_evaluators() -> None:
    from genept_fast.eval import GENE_MODELS

    assert evaluate.GENE_MODELS == GENE_MODELS


def test_build_reference_defaults_equal_the_index() -> None:
    from genept_fast.annotate import HNSW_DEFAULTS, IVF_DEFAULTS

    assert build_reference.HNSW_DEFAULTS == HNSW_DEFAULTS
    assert build_reference.IVF_DEFAULTS == IVF_DEFAULTS


def test_building_the_parser_imports_no_evaluation_annotation_or_anndata() -> None:
    code = (
        "import sys\n"
        "from genept_fast.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('genept_fast.eval', 'genept_fast.annotate', 'anndata', 'pandas', 'sklearn')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or "
        "m.startswith(heavy[:2])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
