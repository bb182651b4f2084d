"""Out-of-core streaming encoder: formats, preprocessing, sources, resume, corrupt inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genept_fast as gf
from genept_fast import GeneptError, stream
from genept_fast.preprocess import normalize_log1p
from genept_fast.stream import sources as sources_mod
from genept_fast.stream.state import PartialState

ROOT = Path(__file__).resolve().parents[1]
N_CELLS, N_GENES, N_RAW_GENES, DIM = 700, 300, 340, 24
CHUNK = 128  # 6 chunks, the last one short


def _counts(n: int, g: int, seed: int) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    X = sp.random_array((n, g), density=0.08, format="csr", dtype=np.float32, rng=rng)
    X.data = np.ceil(X.data * 20).astype(np.float32)
    keep = np.ones(n, dtype=np.float32)
    keep[:5] = 0  # a few empty cells
    X = sp.csr_array(sp.diags_array(keep) @ X)
    X.eliminate_zeros()
    return X


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("stream")
    counts = _counts(N_CELLS, N_GENES, 0)
    raw_counts = _counts(N_CELLS, N_RAW_GENES, 1)
    lognorm = normalize_log1p(counts)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.random.default_rng(2).choice(["T", "B", "NK"], N_CELLS))},
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    var = pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)])
    adata = ad.AnnData(X=counts, obs=obs, var=var, layers={"lognorm": lognorm})
    adata.raw = ad.AnnData(
        X=raw_counts, obs=obs, var=pd.DataFrame(index=[f"R{j}" for j in range(N_RAW_GENES)])
    )
    h5ad = d / "cells.h5ad"
    adata.write_h5ad(h5ad)
    zarr_path = d / "cells.zarr"
    # Without raw: X, the matrix every path reads by default then (genept_fast.cells).
    plain = ad.AnnData(X=counts, obs=obs, var=var, layers={"lognorm": lognorm})
    plain_h5ad, plain_zarr = d / "plain.h5ad", d / "plain.zarr"
    plain.write_h5ad(plain_h5ad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: zarr v2 default will change
        adata.write_zarr(zarr_path)
        plain.write_zarr(plain_zarr)
    rng = np.random.default_rng(3)
    E = rng.standard_normal((N_GENES, DIM)).astype(np.float32)
    E_raw = rng.standard_normal((N_RAW_GENES, DIM)).astype(np.float32)
    return {
        "dir": d,
        "h5ad": h5ad,
        "zarr": zarr_path,
        "plain_h5ad": plain_h5ad,
        "plain_zarr": plain_zarr,
        "counts": counts,
        "raw_counts": raw_counts,
        "lognorm": lognorm,
        "obs": obs,
        "E": E,
        "E_raw": E_raw,
        # Raw counts are log-normalised by the kernel as it reads them (the fused path) ...
        "ref": gf.weighted_embedding(counts, E, preprocess="log1p"),
        # ... which equals the two-step path to float32 rounding (see test_fused_log1p_...).
        "ref_ln": gf.weighted_embedding(lognorm, E),
    }


def _load(path: Path, key: str = "X_genept_w") -> tuple[np.ndarray, list[str] | None]:
    suffix = path.suffix
    if suffix == ".npy":
        return np.load(path), None
    if suffix == ".zarr":
        import zarr

        g = zarr.open_group(str(path), mode="r")
        return g[key][:], [str(s) for s in g["obs_names"][:]]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        emb = t.column("embedding").combine_chunks().flatten().to_numpy()
        return emb.reshape(t.num_rows, -1), t.column("obs_name").to_pylist()
    a = ad.read_h5ad(path)
    return a.obsm[key], list(a.obs_names)


@pytest.mark.parametrize("fmt", [".npy", ".zarr", ".parquet", ".h5ad"])
def test_every_format_equals_in_memory_kernel(data: dict, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"emb{fmt}"
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"], chunk_size=CHUNK, progress=False
    )
    assert rep.n_chunks == 6 and rep.chunks_encoded == 6 and rep.chunks_resumed == 0
    assert rep.cells_encoded == N_CELLS and rep.log1p  # counts detected
    emb, names = _load(out)
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, data["ref"])
    if names is not None:
        assert names == list(data["obs"].index)
    assert not out.with_name(out.name + ".partial").exists()
    if fmt == ".h5ad":
        a = ad.read_h5ad(out)
        assert a.n_vars == 0
        pd.testing.assert_series_equal(a.obs["cell_type"], data["obs"]["cell_type"])
        assert a.uns["X_genept_w"]["params"]["preprocess"] == "log1p"
    if fmt == ".parquet":
        import polars as pl

        df = pl.read_parquet(out)
        assert df.schema["embedding"] == pl.Array(pl.Float32, DIM)


@pytest.mark.parametrize("fmt", [".npy", ".parquet"])
def test_float16_output(data: dict, tmp_path: Path, fmt: str) -> None:
    out32, out16 = tmp_path / f"a{fmt}", tmp_path / f"b{fmt}"
    stream.encode_weighted(data["plain_h5ad"], out32, data["E"], chunk_size=CHUNK, progress=False)
    stream.encode_weighted(
        data["plain_h5ad"],
        out16,
        data["E"],
        chunk_size=CHUNK,
        progress=False,
        output_dtype="float16",
    )
    emb, _ = _load(out16)
    assert emb.dtype == np.float16
    np.testing.assert_array_equal(emb, data["ref"].astype(np.float16))
    if fmt == ".npy":
        assert out16.stat().st_size < 0.55 * out32.stat().st_size


def test_fused_log1p_equals_the_two_step_path(data: dict) -> None:
    np.testing.assert_allclose(data["ref"], data["ref_ln"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(data["ref"] == 0, data["ref_ln"] == 0)


def test_preprocess_modes(data: dict, tmp_path: Path) -> None:
    E = data["E"]
    r = stream.encode_weighted(
        data["plain_h5ad"], tmp_path / "n.npy", E, preprocess="none", progress=False
    )
    assert not r.log1p
    np.testing.assert_array_equal(
        np.load(tmp_path / "n.npy"), gf.weighted_embedding(data["counts"], E)
    )
    r = stream.encode_weighted(
        data["plain_h5ad"], tmp_path / "l.npy", E, preprocess="log1p", progress=False
    )
    assert r.log1p
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), data["ref"])
    with pytest.raises(GeneptError, match="preprocess must be"):
        stream.encode_weighted(data["plain_h5ad"], tmp_path / "x.npy", E, preprocess="scale")


def test_layer_and_raw(data: dict, tmp_path: Path) -> None:
    rep = stream.encode_weighted(
        data["h5ad"], tmp_path / "layer.npy", data["E"], layer="lognorm", progress=False
    )
    assert not rep.log1p  # already log-normalised: auto leaves it
    np.testing.assert_array_equal(np.load(tmp_path / "layer.npy"), data["ref_ln"])
    stream.encode_weighted(
        data["h5ad"], tmp_path / "raw.npy", data["E_raw"], use_raw=True, progress=False
    )
    expected = gf.weighted_embedding(data["raw_counts"], data["E_raw"], preprocess="log1p")
    np.testing.assert_array_equal(np.load(tmp_path / "raw.npy"), expected)
    assert stream.read_var_names(data["h5ad"], use_raw=True)[:2] == ["R0", "R1"]
    assert stream.read_var_names(data["zarr"], use_raw=False) == [f"G{j}" for j in range(N_GENES)]
    # the one rule's default (genept_fast.cells.choose_matrix): raw's genes when there is raw
    assert stream.read_var_names(data["zarr"]) == stream.read_var_names(data["zarr"], use_raw=True)
    assert stream.read_obs_names(data["h5ad"]) == list(data["obs"].index)
    with pytest.raises(GeneptError, match=r"no layer 'nope' \(layers: lognorm\)"):
        stream.encode_weighted(data["h5ad"], tmp_path / "x.npy", data["E"], layer="nope")
    with pytest.raises(GeneptError, match="not both"):
        stream.open_source(data["h5ad"], layer="lognorm", use_raw=True)


def test_zarr_input_and_gene_index(data: dict, tmp_path: Path) -> None:
    # The table has rows in another order plus unrelated rows; 10 genes have no embedding.
    rng = np.random.default_rng(5)
    rows = rng.permutation(N_GENES + 50)[:N_GENES]
    big = rng.standard_normal((N_GENES + 50, DIM)).astype(np.float32)
    big[rows] = data["E"]
    gene_index = rows.astype(np.int64)
    gene_index[:10] = -1
    out = tmp_path / "z.zarr"
    stream.encode_weighted(
        data["plain_zarr"], out, big, gene_index=gene_index, chunk_size=100, progress=False
    )
    expected = gf.weighted_embedding(data["counts"], big, gene_index=gene_index, preprocess="log1p")
    np.testing.assert_array_equal(_load(out)[0], expected)
    with pytest.raises(GeneptError, match="gene_index has 3 entries"):
        stream.encode_weighted(data["plain_zarr"], tmp_path / "y.npy", big, gene_index=[0, 1, 2])
    with pytest.raises(GeneptError, match="pass gene_index"):
        stream.encode_weighted(data["plain_zarr"], tmp_path / "y.npy", big)


def test_dense_x_and_csc(data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dense = tmp_path / "dense.h5ad"
    ad.AnnData(X=data["lognorm"].toarray(), obs=data["obs"]).write_h5ad(dense)
    monkeypatch.setattr(sources_mod, "DENSE_BLOCK_VALUES", 7 * N_GENES)  # several reads per chunk
    stream.encode_weighted(dense, tmp_path / "d.npy", data["E"], chunk_size=CHUNK, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), data["ref_ln"])
    csc = tmp_path / "csc.h5ad"
    ad.AnnData(X=sp.csc_matrix(data["lognorm"]), obs=data["obs"]).write_h5ad(csc)
    with pytest.raises(GeneptError, match=r"csc\.h5ad: X is stored as CSC"):
        stream.encode_weighted(csc, tmp_path / "c.npy", data["E"])


def test_generic_encoder_and_array_source(data: dict, tmp_path: Path) -> None:
    calls: list[int] = []

    def top3(chunk: sp.csr_array) -> np.ndarray:
        assert sp.issparse(chunk) and chunk.format == "csr"
        calls.append(chunk.shape[0])
        return gf.top_genes(chunk, 3).astype(np.float32)

    src = stream.ArraySource(data["lognorm"], obs_names=list(data["obs"].index))
    rep = stream.encode_file(
        src, tmp_path / "t.parquet", encoder=top3, dim=3, chunk_size=300, progress=False
    )
    assert calls == [300, 300, 100] and not rep.log1p
    emb, names = _load(tmp_path / "t.parquet")
    np.testing.assert_array_equal(emb, gf.top_genes(data["lognorm"], 3).astype(np.float32))
    assert names == list(data["obs"].index)
    with pytest.raises(
        GeneptError, match=r"encoder returned shape \(300, 3\).*expected \(300, 4\)"
    ):
        stream.encode_file(src, tmp_path / "u.npy", encoder=top3, dim=4, chunk_size=300)
    with pytest.raises(GeneptError, match="reads its own matrix"):
        stream.encode_file(src, tmp_path / "u.npy", encoder=top3, dim=3, layer="x")


def test_h5ad_output_from_zarr_and_array_sources(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "from_zarr.h5ad"
    stream.encode_weighted(data["plain_zarr"], out, data["E"], chunk_size=CHUNK, progress=False)
    a = ad.read_h5ad(out)
    np.testing.assert_array_equal(a.obsm["X_genept_w"], data["ref"])
    pd.testing.assert_frame_equal(a.obs, data["obs"])
    src = stream.ArraySource(data["lognorm"], obs_names=list(data["obs"].index))
    out = tmp_path / "from_array.h5ad"
    stream.encode_weighted(src, out, data["E"], key="X_w", output_dtype="float16", progress=False)
    a = ad.read_h5ad(out)
    assert list(a.obs_names) == list(data["obs"].index)
    np.testing.assert_array_equal(a.obsm["X_w"], data["ref_ln"].astype(np.float16))
    assert a.uns["X_w"]["stream"]["output_dtype"] == "float16"


def test_empty_input(tmp_path: Path) -> None:
    src = stream.ArraySource(sp.csr_array((0, 4), dtype=np.float32))
    rep = stream.encode_weighted(src, tmp_path / "e.npy", np.eye(4, dtype=np.float32))
    assert rep.n_chunks == 0
    assert np.load(tmp_path / "e.npy").shape == (0, 4)


class _FailAfter:
    """Encoder that dies on its ``n``-th call (simulates a crash mid-job)."""

    def __init__(self, inner: stream.WeightedEncoder, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0
        self.fingerprint = inner.fingerprint

    def begin(self, preprocess: str) -> None:
        self.inner.begin(preprocess)

    def __call__(self, chunk: sp.csr_array) -> np.ndarray:
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("boom")
        return self.inner(chunk)


def _crash(data: dict, out: Path, n: int, **kw: object) -> set[int]:
    enc = _FailAfter(stream.WeightedEncoder(data["E"]), n)
    before = out.stat().st_mtime_ns if out.exists() else None
    with pytest.raises(RuntimeError, match="boom"):
        stream.encode_file(
            data["plain_h5ad"], out, encoder=enc, dim=DIM, chunk_size=CHUNK, progress=False, **kw
        )
    assert (out.stat().st_mtime_ns if out.exists() else None) == before  # output untouched
    manifest = json.loads((out.with_name(out.name + ".partial") / "manifest.json").read_text())
    return set(manifest["done"])


@pytest.mark.parametrize("fmt", [".zarr", ".h5ad"])
def test_resume_after_crash_computes_only_missing(data: dict, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"r{fmt}"
    done = _crash(data, out, 4)
    assert done == {0, 1, 2}
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"], chunk_size=CHUNK, progress=False
    )
    assert (rep.chunks_resumed, rep.chunks_encoded) == (3, 3)
    assert rep.cells_encoded == N_CELLS - 3 * CHUNK
    np.testing.assert_array_equal(_load(out)[0], data["ref"])
    # Running again over a finished output is refused; with overwrite=True it recomputes and
    # replaces it in place (issue #9).
    with pytest.raises(GeneptError, match="already exists"):
        stream.encode_weighted(data["plain_h5ad"], out, data["E"], chunk_size=CHUNK, progress=False)
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"], chunk_size=CHUNK, progress=False, overwrite=True
    )
    assert rep.chunks_encoded == 6
    np.testing.assert_array_equal(_load(out)[0], data["ref"])


def test_mismatched_partial_state_is_discarded(
    data: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "m.npy"
    caplog.set_level(logging.WARNING, logger="genept_fast.stream")
    # Other parameters (chunk size): the old state is thrown away with a message. (Each rerun
    # replaces the previous output: overwrite=True.)
    _crash(data, out, 3, overwrite=True)
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"], chunk_size=100, progress=False, overwrite=True
    )
    assert rep.chunks_resumed == 0 and "chunk_size: 128 -> 100" in (rep.discarded or "")
    assert "discarding partial state" in caplog.text
    np.testing.assert_array_equal(np.load(out), data["ref"])
    # Another encoder (table): discarded.
    _crash(data, out, 3, overwrite=True)
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"] * 2, chunk_size=CHUNK, progress=False, overwrite=True
    )
    assert rep.chunks_resumed == 0 and "encoder" in (rep.discarded or "")
    # The input changed (mtime): discarded.
    inp = tmp_path / "in.h5ad"
    shutil.copy(data["plain_h5ad"], inp)
    _crash({**data, "h5ad": inp}, out, 3, overwrite=True)
    os.utime(inp, ns=(time.time_ns(), time.time_ns() + 10**9))
    rep = stream.encode_weighted(
        inp, out, data["E"], chunk_size=CHUNK, progress=False, overwrite=True
    )
    assert rep.chunks_resumed == 0 and "input changed" in (rep.discarded or "")
    # A corrupt manifest or a missing data file: discarded.
    _crash(data, out, 3, overwrite=True)
    (out.with_name("m.npy.partial") / "manifest.json").write_text("{not json")
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"], chunk_size=CHUNK, progress=False, overwrite=True
    )
    assert rep.chunks_resumed == 0 and "unreadable" in (rep.discarded or "")
    _crash(data, out, 3, overwrite=True)
    (out.with_name("m.npy.partial") / "data.npy").unlink()
    rep = stream.encode_weighted(
        data["plain_h5ad"], out, data["E"], chunk_size=CHUNK, progress=False, overwrite=True
    )
    assert rep.chunks_resumed == 0 and "missing" in (rep.discarded or "")
    np.testing.assert_array_equal(np.load(out), data["ref"])
    # resume=False starts over even when the state matches.
    _crash(data, out, 3, overwrite=True)
    rep = stream.encode_weighted(
        data["plain_h5ad"],
        out,
        data["E"],
        chunk_size=CHUNK,
        progress=False,
        resume=False,
        overwrite=True,
    )
    assert rep.chunks_resumed == 0


def test_second_job_on_same_output_is_refused(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "busy.npy"
    holder = PartialState(out.with_name("busy.npy.partial"), {"n_chunks": 1})
    try:
        with pytest.raises(GeneptError, match="in use by another running job"):
            stream.encode_weighted(data["plain_h5ad"], out, data["E"], progress=False)
    finally:
        holder.release()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from genept_fast import stream

    class Slow:
        def __init__(self, inner):
            self.inner, self.fingerprint = inner, inner.fingerprint
        def begin(self, preprocess):
            self.inner.begin(preprocess)
        def __call__(self, chunk):
            time.sleep(0.15)
            return self.inner(chunk)

    E = np.load(sys.argv[3])
    enc = Slow(stream.WeightedEncoder(E))
    stream.encode_file(sys.argv[1], sys.argv[2], encoder=enc, dim=E.shape[1], chunk_size=40,
                       progress=False)
    print("finished")
    """
)


def test_kill_9_then_resume_equals_uninterrupted(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "killed.parquet"
    table = tmp_path / "E.npy"
    np.save(table, data["E"])
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    manifest = tmp_path / "killed.parquet.partial" / "manifest.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data["plain_h5ad"]), str(out), str(table)], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(json.loads(manifest.read_text())["done"]) >= 4:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the final name never holds a partial result
    done = set(json.loads(manifest.read_text())["done"])
    n_chunks = -(-N_CELLS // 40)
    assert 4 <= len(done) < n_chunks
    rep = stream.encode_weighted(data["plain_h5ad"], out, data["E"], chunk_size=40, progress=False)
    assert rep.chunks_resumed == len(done)
    assert rep.chunks_encoded == n_chunks - len(done)
    fresh = tmp_path / "fresh.parquet"
    stream.encode_weighted(data["plain_h5ad"], fresh, data["E"], chunk_size=40, progress=False)
    resumed, names = _load(out)
    np.testing.assert_array_equal(resumed, _load(fresh)[0])
    np.testing.assert_array_equal(resumed, data["ref"])
    assert names == list(data["obs"].index)


def _chunk_offset(path: Path, dataset: str) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        if ds.chunks is None:
            return ds.id.get_offset(), ds.id.get_storage_size()
        info = ds.id.get_chunk_info(0)
        return info.byte_offset, info.size


def test_truncated_and_corrupt_inputs(data: dict, tmp_path: Path) -> None:
    E = data["E"]
    src = data["plain_h5ad"]
    blob = src.read_bytes()

    trunc = tmp_path / "trunc.h5ad"
    trunc.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(GeneptError, match=r"trunc\.h5ad.*(truncated|corrupt)"):
        stream.encode_weighted(trunc, tmp_path / "o.npy", E, progress=False)

    header = tmp_path / "header.h5ad"
    header.write_bytes(b"\x00" * 16 + blob[16:])
    with pytest.raises(GeneptError, match=r"header\.h5ad"):
        stream.encode_weighted(header, tmp_path / "o.npy", E, progress=False)

    # Flip bytes inside X/indices: column indices far out of range.
    bad_idx = tmp_path / "indices.h5ad"
    off, size = _chunk_offset(src, "X/indices")
    raw = bytearray(blob)
    raw[off + size // 2 : off + size // 2 + 8] = b"\xff\x7f\x00\x01\xff\x7f\x00\x01"
    bad_idx.write_bytes(bytes(raw))
    with pytest.raises(GeneptError, match=r"indices\.h5ad: X has column index .* outside 0\.\.299"):
        stream.encode_weighted(bad_idx, tmp_path / "o.npy", E, chunk_size=CHUNK, progress=False)
    assert not (tmp_path / "o.npy").exists()

    # Flip bytes inside X/indptr: it decreases.
    bad_ptr = tmp_path / "indptr.h5ad"
    off, size = _chunk_offset(src, "X/indptr")
    raw = bytearray(blob)
    width = 8 if h5py.File(src, "r")["X/indptr"].dtype.itemsize == 8 else 4
    mid = off + (size // 2 // width) * width
    raw[mid : mid + width] = (2**30).to_bytes(width, "little")
    bad_ptr.write_bytes(bytes(raw))
    with pytest.raises(GeneptError, match=r"indptr\.h5ad: X/indptr decreases"):
        stream.encode_weighted(bad_ptr, tmp_path / "o.npy", E, chunk_size=CHUNK, progress=False)

    junk = tmp_path / "junk.h5ad"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(GeneptError, match=r"junk\.h5ad: cannot open"):
        stream.read_var_names(junk)
    with pytest.raises(GeneptError, match="input not found"):
        stream.read_obs_names(tmp_path / "missing.h5ad")
    with pytest.raises(GeneptError, match="unknown format"):
        stream.encode_weighted(src, tmp_path / "o.csv", E)


def test_a_table_matches_the_files_genes_as_tl_does(tmp_path: Path) -> None:
    """Unknown var_names found through a symbol column of var, and gene_key= first (one
    matching layer for tl, the stream and the CLI: genept_fast.encode.match_table)."""
    from genept_fast import tl
    from genept_fast.table import GeneEmbeddings

    counts = _counts(200, 40, 3)
    symbols = [f"SYM{j}" for j in range(40)]
    var = pd.DataFrame({"gene_symbols": symbols}, index=[f"ID{j}" for j in range(40)])
    adata = ad.AnnData(X=counts, var=var)
    adata.obs_names = [f"c{i}" for i in range(200)]
    path = tmp_path / "ids.h5ad"
    adata.write_h5ad(path)
    rng = np.random.default_rng(4)
    table = GeneEmbeddings(symbols[::-1], rng.standard_normal((40, 8)), {"model_id": "t:m"})
    out = tmp_path / "w.h5ad"
    stream.encode_weighted(path, out, table, chunk_size=64, progress=False)
    got = ad.read_h5ad(out)
    tl.genept_w(adata, table)
    assert np.array_equal(got.obsm["X_genept_w"], adata.obsm["X_genept_w"])
    params = got.uns["X_genept_w"]["params"]
    assert params["gene_symbols"] == "var_names, then var['gene_symbols']"
    assert params["method"] == "GenePT-w" and params["matrix"] == "X"
    n_embedded = got.uns["X_genept_w"]["coverage"]["n_embedded"]
    assert n_embedded == adata.uns["X_genept_w"]["coverage"]["n_embedded"] > 30
    with pytest.raises(GeneptError, match=r"gene_key\W*'nope'"):
        stream.encode_weighted(path, tmp_path / "x.npy", table, gene_key="nope", progress=False)


def test_a_kernel_error_names_the_whole_matrix_cell_and_the_file(
    data: dict, tmp_path: Path
) -> None:
    """A NaN in the third chunk: exc.cell is its row in the file (row_offset, no message
    surgery), a note names the file, and the partial work is dropped (the input is at fault)."""
    X = data["lognorm"].copy()
    cell = 2 * CHUNK + 17
    X.data[X.indptr[cell]] = np.nan
    path = tmp_path / "nan.h5ad"
    ad.AnnData(X=X, obs=data["obs"]).write_h5ad(path)
    out = tmp_path / "o.npy"
    with pytest.raises(GeneptError, match="NaN") as info:
        stream.encode_weighted(path, out, data["E"], chunk_size=CHUNK, progress=False)
    assert info.value.cell == cell  # type: ignore[attr-defined]
    notes = getattr(info.value, "__notes__", [])
    assert sys.version_info < (3, 11) or any(str(path) in n for n in notes)
    assert not out.exists() and not out.with_name("o.npy.partial").exists()
