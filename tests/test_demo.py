"""The README's main job: `genept-fast demo`, end to end, offline (about a minute)."""

from __future__ import annotations

import json

import pytest

from genept_fast.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gene text:" in printed and "X_genept_w" in printed
    for name in ("report.md", "report.json", "genes.parquet", "pbmc68k_genept.h5ad"):
        assert (out / name).is_file(), name
    for key in ("X_genept_w", "X_genept_s", "X_pca"):
        assert (out / f"umap_{key}.png").stat().st_size > 10_000
    results = json.loads((out / "report.json").read_text())["results"]
    # Real signal, not noise: 10 PBMC types, chance kNN accuracy is ~0.3 (the largest class).
    assert results["X_genept_w"]["knn_accuracy"] > 0.6
    assert results["X_genept_s"]["knn_accuracy"] > 0.45
    assert results["X_genept_w"]["kmeans_ami"] > 0.3
