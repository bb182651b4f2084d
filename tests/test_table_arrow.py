"""Gene tables as Arrow IPC files (issue 21 goal 1): written by ``GeneEmbeddings.write`` for an
``.arrow``/``.feather``/``.ipc`` path, read by mapping the file (no decode, no copy), told apart
from parquet by their first bytes, and the same table, the same cells' bits, as parquet."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genept_fast import GeneptError
from genept_fast._inputs import check_claim, sniff
from genept_fast.table import GeneEmbeddings


def make_table(n: int = 6, d: int = 5) -> GeneEmbeddings:
    rng = np.random.default_rng(2)
    m = rng.standard_normal((n, d)).astype(np.float32)
    m[n - 1] = 0  # a gene without text
    meta = {"model_id": "openai:text-embedding-3-small", "text_source": "ncbi", "x": [1, 2]}
    return GeneEmbeddings([f"G{i}" for i in range(n)], m, meta)


@pytest.mark.parametrize("suffix", [".arrow", ".feather", ".ipc", ".ARROW"])
def test_arrow_roundtrip_is_the_parquet_table(tmp_path: Path, suffix: str) -> None:
    t = make_table()
    path = t.write(tmp_path / "sub" / f"genes{suffix}")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    assert path.read_bytes()[:6] == b"ARROW1"
    assert sniff(path).kind == "arrow"
    # polars reads it as the documented layout
    df = pl.read_ipc(path)
    assert df.schema == pl.Schema({"gene": pl.String, "embedding": pl.Array(pl.Float32, 5)})
    back = GeneEmbeddings.read(path)
    parquet = GeneEmbeddings.read(t.write(tmp_path / "genes.parquet"))
    for table in (back, parquet):
        assert table.genes == t.genes
        assert table.metadata == t.metadata
        assert table.missing == ["G5"]
        np.testing.assert_array_equal(table.matrix, t.matrix)
        assert table.matrix.dtype == np.float32 and table.matrix.flags.c_contiguous
    with pytest.raises(GeneptError, match="already exists"):
        make_table(2, 2).write(path)
    make_table(2, 2).write(path, overwrite=True)
    assert GeneEmbeddings.read(path).dimension == 2


def test_read_maps_the_file_without_a_copy_and_survives_its_replacement(tmp_path: Path) -> None:
    t = make_table(40, 16)
    path = t.write(tmp_path / "g.arrow")
    back = GeneEmbeddings.read(path)
    m = back.matrix
    assert not m.flags.owndata and not m.flags.writeable  # a view of the mapped file
    # the values' memory is the file's mapping (Linux: /proc/self/maps names the file)
    assert _mapped_file(m.ctypes.data) == str(path)
    # write() replaces a file by renaming a new one over it: the mapped table is intact
    GeneEmbeddings(t.genes, -t.matrix, t.metadata).write(path, overwrite=True)
    np.testing.assert_array_equal(m, t.matrix)
    np.testing.assert_array_equal(GeneEmbeddings.read(path).matrix, -t.matrix)


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process, if any (Linux)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) == 6 else None
    return None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    m=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(1, 9)),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    data=st.data(),
)
def test_any_table_reads_back_the_same_from_arrow_and_parquet(tmp_path: Path, m, data) -> None:
    names = data.draw(
        st.lists(
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6).filter(
                lambda s: s.strip() == s and s
            ),
            min_size=len(m),
            max_size=len(m),
            unique=True,
        )
    )
    t = GeneEmbeddings(names, m, {"model_id": "m"})
    with tempfile.TemporaryDirectory(dir=tmp_path) as where:
        d = Path(where)
        a = GeneEmbeddings.read(t.write(d / "t.arrow"))
        p = GeneEmbeddings.read(t.write(d / "t.parquet"))
    assert a.genes == p.genes == t.genes
    assert a.metadata == p.metadata
    assert a.matrix.tobytes() == p.matrix.tobytes() == t.matrix.tobytes()


@pytest.mark.parametrize("compression", ["uncompressed", "lz4", "zstd"])
def test_polars_written_ipc_files_read_the_same(tmp_path: Path, compression: str) -> None:
    t = make_table(9, 4)
    path = tmp_path / "polars.arrow"
    t.to_frame().write_ipc(path, compression=compression)
    back = GeneEmbeddings.read(path)
    assert back.genes == t.genes and back.model_id == "unknown"  # polars writes no provenance
    np.testing.assert_array_equal(back.matrix, t.matrix)


def test_several_batches_other_layouts_and_bad_files(tmp_path: Path) -> None:
    def write(name: str, table: pa.Table, *, batch: int | None = None) -> Path:
        path = tmp_path / name
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=batch)
        return path

    values = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 3)
    genes = [f"g{i}" for i in range(10)]
    batches = write("batches.arrow", pa.table({"gene": genes, "embedding": emb}), batch=3)
    assert pa.ipc.open_file(str(batches)).num_record_batches == 4
    np.testing.assert_array_equal(GeneEmbeddings.read(batches).matrix, values)
    ints = pa.array([[1, 2], [3, 4]], pa.list_(pa.int64()))
    t = GeneEmbeddings.read(write("ints.arrow", pa.table({"gene": [7, 8], "embedding": ints})))
    assert t.genes == ["7", "8"] and t.matrix.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(GeneptError, match="needs columns 'gene' and 'embedding'"):
        GeneEmbeddings.read(write("cols.arrow", pa.table({"symbol": ["A"], "vec": [[1.0]]})))
    with pytest.raises(GeneptError, match="NaN"):
        GeneEmbeddings.read(
            write("nan.arrow", pa.table({"gene": ["A"], "embedding": [[float("nan"), 1.0]]}))
        )
    with pytest.raises(GeneptError, match="different lengths"):
        GeneEmbeddings.read(
            write("ragged.arrow", pa.table({"gene": ["A", "B"], "embedding": [[1.0], [1.0, 2]]}))
        )
    good = make_table().write(tmp_path / "good.arrow").read_bytes()
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(GeneptError, match=r"cut\.arrow is not a readable Arrow IPC file"):
        GeneEmbeddings.read(cut)
    magic = tmp_path / "magic.arrow"
    magic.write_bytes(b"ARROW1" + b"\0" * 64)
    with pytest.raises(GeneptError, match="not a readable Arrow IPC file"):
        GeneEmbeddings.read(magic)


def test_the_content_decides_and_a_wrong_suffix_is_named(tmp_path: Path) -> None:
    t = make_table()
    arrow = t.write(tmp_path / "g.arrow")
    renamed = tmp_path / "looks.parquet"
    renamed.write_bytes(arrow.read_bytes())
    np.testing.assert_array_equal(GeneEmbeddings.read(renamed).matrix, t.matrix)
    with pytest.raises(GeneptError, match="named like a parquet file but is an Arrow IPC file"):
        check_claim(renamed)
    parquet_named_arrow = tmp_path / "looks.arrow"
    parquet_named_arrow.write_bytes(t.write(tmp_path / "g.parquet").read_bytes())
    with pytest.raises(GeneptError, match="named like an Arrow IPC file but is a parquet file"):
        check_claim(parquet_named_arrow)


def _cells() -> ad.AnnData:
    X = sp.random(50, 6, density=0.5, format="csr", random_state=1, dtype=np.float32)
    X.data = np.round(X.data * 9) + 1
    a = ad.AnnData(X=X)
    a.var_names = [f"G{i}" for i in range(6)][::-1]
    a.obs_names = [f"c{i}" for i in range(50)]
    return a


def test_a_broken_arrow_table_is_one_line_and_exit_2(tmp_path: Path) -> None:
    h5ad = tmp_path / "in.h5ad"
    _cells().write_h5ad(h5ad)
    good = make_table().write(tmp_path / "good.arrow").read_bytes()
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(good[:100])
    out = tmp_path / "o.npy"
    run = subprocess.run(
        [sys.executable, "-m", "genept_fast", "encode", str(h5ad), "--genes", str(cut), "-o", out],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "cut.arrow is not a readable Arrow IPC file" in run.stderr
    assert not out.exists()
