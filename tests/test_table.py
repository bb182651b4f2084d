"""GeneEmbeddings: parquet and pickle I/O, safe unpickling, alignment and coverage."""

from __future__ import annotations

import os
import pickle

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from genept_fast import GeneptError
from genept_fast.embed import get_embedder
from genept_fast.table import Coverage, GeneEmbeddings
from servers.openai_api import OpenAIEmbeddingServer, vector_for


def make_table(genes=("TP53", "BRCA1", "Actb", "NOTEXT"), d=5):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((len(genes), d)).astype(np.float32)
    if "NOTEXT" in genes:
        m[list(genes).index("NOTEXT")] = 0
    meta = {"model_id": "openai:text-embedding-3-small", "text_source": "ncbi", "x": [1, 2]}
    return GeneEmbeddings(list(genes), m, meta)


def test_properties_and_validation():
    t = make_table()
    assert t.model_id == "openai:text-embedding-3-small"
    assert t.text_source == "ncbi"
    assert t.dimension == 5
    assert t.metadata["dimension"] == 5
    assert len(t) == 4
    assert t.missing == ["NOTEXT"]
    assert "4 genes × 5" in repr(t)
    f64 = GeneEmbeddings(["a"], np.ones((1, 3), dtype=np.float64))
    assert f64.matrix.dtype == np.float32
    assert f64.model_id == "unknown"
    with pytest.raises(GeneptError, match="2 genes but the matrix has 3 rows"):
        GeneEmbeddings(["a", "b"], np.zeros((3, 2)))
    with pytest.raises(GeneptError, match="2-D"):
        GeneEmbeddings(["a"], np.zeros(3))
    with pytest.raises(GeneptError, match="duplicate genes"):
        GeneEmbeddings(["a", "a"], np.zeros((2, 2)))
    with pytest.raises(GeneptError, match="NaN"):
        GeneEmbeddings(["a"], np.array([[np.nan, 1.0]]))


def test_parquet_roundtrip(tmp_path):
    t = make_table()
    path = t.write(tmp_path / "sub" / "genes.parquet")
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["genes.parquet"]  # no temp file left
    df = pl.read_parquet(path)
    assert df.schema == pl.Schema({"gene": pl.String, "embedding": pl.Array(pl.Float32, 5)})
    assert "genept_fast" in pl.read_parquet_metadata(path)
    back = GeneEmbeddings.read(path)
    assert back.genes == t.genes
    np.testing.assert_array_equal(back.matrix, t.matrix)
    assert back.matrix.dtype == np.float32
    assert back.metadata == t.metadata
    # an existing file is refused, then replaced in place when asked (issue #9)
    t2 = GeneEmbeddings(["x"], np.ones((1, 2)), {"model_id": "local:m"})
    with pytest.raises(GeneptError, match="already exists"):
        t2.write(path)
    assert GeneEmbeddings.read(path).genes == t.genes
    t2.write(path, overwrite=True)
    assert GeneEmbeddings.read(path).model_id == "local:m"
    assert GeneEmbeddings.read(path, model_id="other", text_source="llm").text_source == "llm"


def test_reads_list_column_parquet_and_rejects_bad_files(tmp_path):
    p = tmp_path / "list.parquet"
    pl.DataFrame({"gene": ["A", "B"], "embedding": [[1.0, 2.0], [3.0, 4.0]]}).write_parquet(p)
    t = GeneEmbeddings.read(p)
    np.testing.assert_array_equal(t.matrix, [[1, 2], [3, 4]])
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"symbol": ["A"], "vec": [[1.0]]}).write_parquet(bad)
    with pytest.raises(GeneptError, match="needs columns"):
        GeneEmbeddings.read(bad)
    ragged = tmp_path / "ragged.parquet"
    pl.DataFrame({"gene": ["A", "B"], "embedding": [[1.0], [1.0, 2.0]]}).write_parquet(ragged)
    with pytest.raises(GeneptError, match="different lengths"):
        GeneEmbeddings.read(ragged)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(GeneptError, match="not a readable parquet"):
        GeneEmbeddings.read(junk)
    with pytest.raises(FileNotFoundError):
        GeneEmbeddings.read(tmp_path / "absent.parquet")
    with pytest.raises(GeneptError, match="parquet or Arrow, not pickle"):
        make_table().write(tmp_path / "x.pickle")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_genept_pickles(tmp_path, protocol):
    rng = np.random.default_rng(0)
    lists = {"TP53": [0.1, 0.2, 0.3], "BRCA1": [1.0, 2.0, 3.0]}
    arrays = {"TP53": rng.standard_normal(3), "MYC": rng.standard_normal(3).astype(np.float32)}
    for name, obj in (("GenePT_gene_embedding_ada_text.pickle", lists), ("arr.pkl", arrays)):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        t = GeneEmbeddings.read(path)
        assert t.genes == list(obj)
        np.testing.assert_allclose(t.matrix, np.array(list(obj.values()), dtype=np.float32))
    assert GeneEmbeddings.read(tmp_path / name).model_id == "unknown"
    ada = GeneEmbeddings.read(tmp_path / "GenePT_gene_embedding_ada_text.pickle")
    assert ada.model_id == "openai:text-embedding-ada-002"
    assert ada.text_source == "genept-pickle"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"TP53": _Evil(marker)}))
    with pytest.raises(GeneptError, match="refusing to unpickle"):
        GeneEmbeddings.read(path)
    assert not marker.exists()
    # the same pickle really does run code when loaded unrestricted (the test can fail)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_other_pickles_refused(tmp_path):
    cases = {
        "eval.pkl": b"cbuiltins\neval\n(S'1+1'\ntR.",
        "class.pkl": pickle.dumps({"A": Coverage(1, 1, 0)}),
        "set.pkl": pickle.dumps({"A": {1.0, 2.0}}),
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(GeneptError):
            GeneEmbeddings.read(p)
    p = tmp_path / "notdict.pkl"
    p.write_bytes(pickle.dumps([1.0, 2.0]))
    with pytest.raises(GeneptError, match="expected a non-empty dict"):
        GeneEmbeddings.read(p)
    p.write_bytes(pickle.dumps({"A": np.array(["x", "y"])}))
    with pytest.raises(GeneptError, match="not numeric"):
        GeneEmbeddings.read(p)


def test_align_exact_then_case_then_the_identity_layer():
    t = make_table(genes=("TP53", "tp53", "BRCA1", "Actb", "NOTEXT"))
    query = ["TP53", "tp53", "Tp53", "brca1", "ACTB", "NOTEXT", "GAPDH", "TP53", "ENSG00000141510"]
    idx, cov = t.index_for(query)
    assert idx.dtype == np.int64
    # Tp53 is TP53 in another case, but the dataset has TP53 itself: left out as a duplicate
    assert idx.tolist() == [0, 1, -1, 2, 3, -1, -1, 0, 0]
    assert (cov.n_query, cov.n_matched, cov.n_zero) == (9, 7, 1)
    assert cov.unmatched == ["GAPDH"]
    assert cov.shadowed == {"Tp53": "TP53"}
    assert cov.shared == {"TP53": ["TP53", "Tp53", "TP53", "ENSG00000141510"]}
    assert cov.n_case_insensitive == 2
    assert cov.by_method == {"exact": 4, "ensembl": 1, "case": 2}
    assert cov.methods == [
        "exact",
        "exact",
        None,
        "case",
        "case",
        "exact",
        None,
        "exact",
        "ensembl",
    ]
    assert cov.n_embedded == 6
    assert cov.fraction == pytest.approx(6 / 9)
    s = str(cov)
    assert "6 of 9 genes embedded (66.7%)" in s and "GAPDH" in s and "zero vector" in s
    assert "matched by ensembl 1, case 2" in s
    m, cov2 = t.align(query)
    assert m.shape == (9, t.dimension) and m.dtype == np.float32
    np.testing.assert_array_equal(m[0], t.matrix[0])
    np.testing.assert_array_equal(m[1], t.matrix[1])
    np.testing.assert_array_equal(m[3], t.matrix[2])
    np.testing.assert_array_equal(m[8], t.matrix[0])
    assert not m[2].any() and not m[5].any() and not m[6].any()
    assert cov2.as_dict()["n_unmatched"] == 1
    empty, cov3 = t.align([])
    assert empty.shape == (0, t.dimension) and cov3.fraction == 1.0
    rows, index, cov4 = t.rows_for(query)
    assert index.tolist() == [0, 1, -1, 2, 3, -1, -1, 4, 5]  # one row per embedded gene
    np.testing.assert_array_equal(rows, t.matrix[[0, 1, 2, 3, 0, 0]])
    assert cov4.n_embedded == 6


def test_from_texts_with_openai_compatible_server(tmp_path):
    df = pl.DataFrame(
        {
            "gene": ["TP53", "BRCA1", "ORPHAN1", "BLANK"],
            "text": ["tumor suppressor p53", "DNA repair", None, "  "],
            "source": ["ncbi", "ncbi", None, "symbol"],
        }
    )
    with OpenAIEmbeddingServer() as server:
        emb = get_embedder(
            "openai:text-embedding-3-small", base_url=server.url, dimensions=8, use_cache=False
        )
        t = GeneEmbeddings.from_texts(df, emb)
        assert [r.inputs for r in server.requests] == [["tumor suppressor p53", "DNA repair"]]
    assert t.genes == ["TP53", "BRCA1", "ORPHAN1", "BLANK"]
    np.testing.assert_array_equal(
        t.matrix[0], vector_for("tumor suppressor p53", "text-embedding-3-small", 8)
    )
    assert t.metadata["missing"] == ["ORPHAN1", "BLANK"]
    assert t.missing == ["ORPHAN1", "BLANK"]
    assert t.text_source == "ncbi+symbol"
    assert t.model_id == "openai:text-embedding-3-small"
    assert "created" in t.metadata
    _, cov = t.index_for(["TP53", "ORPHAN1", "NOPE"])
    assert (cov.n_matched, cov.n_zero, cov.n_embedded) == (2, 1, 1)
    with pytest.raises(GeneptError, match="columns 'gene' and 'text'"):
        GeneEmbeddings.from_texts(df.drop("text"), emb)
    with pytest.raises(GeneptError, match="duplicate genes"):
        GeneEmbeddings.from_texts(pl.concat([df, df]), emb)


# -- reading parquet through pyarrow: views, old files, other layouts ------------------------


def test_written_uncompressed_and_read_back_as_a_view(tmp_path):
    import pyarrow.parquet as pq

    t = make_table(d=7)
    path = t.write(tmp_path / "g.parquet")
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 1
    assert meta.row_group(0).column(1).compression == "UNCOMPRESSED"
    back = GeneEmbeddings.read(path)
    np.testing.assert_array_equal(back.matrix, t.matrix)
    assert not back.matrix.flags.owndata  # a view of the decoded column, no copy
    assert back.matrix.flags.c_contiguous and back.matrix.dtype == np.float32


@pytest.mark.parametrize("compression", ["zstd", "snappy", "uncompressed"])
@pytest.mark.parametrize("row_group_size", [None, 3])
def test_tables_written_before_and_in_several_row_groups_read_the_same(
    tmp_path, compression, row_group_size
):
    t = make_table(genes=[f"G{i}" for i in range(10)], d=4)
    path = tmp_path / "old.parquet"
    meta = {"genept_fast": '{"model_id": "m", "text_source": "ncbi"}'}
    t.to_frame().write_parquet(
        path, compression=compression, row_group_size=row_group_size, metadata=meta
    )
    back = GeneEmbeddings.read(path)
    assert back.genes == t.genes and back.model_id == "m" and back.text_source == "ncbi"
    np.testing.assert_array_equal(back.matrix, t.matrix)


def test_other_embedding_layouts_and_bad_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(name, gene, embedding):
        path = tmp_path / name
        pq.write_table(pa.table({"gene": gene, "embedding": embedding}), path)
        return path

    ints = pa.array([[1, 2], [3, 4]], pa.large_list(pa.int64()))
    t = GeneEmbeddings.read(write("ints.parquet", [1, 2], ints))
    assert t.genes == ["1", "2"] and t.matrix.tolist() == [[1, 2], [3, 4]]
    f64 = pa.array([[0.5, 1.5]], pa.list_(pa.float64(), 2))
    assert GeneEmbeddings.read(write("f64.parquet", ["A"], f64)).matrix.dtype == np.float32
    inner_null = pa.array([[1.0, None], [1.0, 2.0]], pa.list_(pa.float32(), 2))
    with pytest.raises(GeneptError, match="null genes or embeddings"):
        GeneEmbeddings.read(write("inner.parquet", ["A", "B"], inner_null))
    outer_null = pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))
    with pytest.raises(GeneptError, match="null genes or embeddings"):
        GeneEmbeddings.read(write("outer.parquet", ["A", "B"], outer_null))
    with pytest.raises(GeneptError, match="null genes or embeddings"):
        GeneEmbeddings.read(write("gene.parquet", ["A", None], [[1.0], [2.0]]))
    words = pa.array([["a", "b"]], pa.list_(pa.string()))
    with pytest.raises(GeneptError, match="must be Array or List of floats"):
        GeneEmbeddings.read(write("words.parquet", ["A"], words))
    with pytest.raises(GeneptError, match="must be Array or List of floats"):
        GeneEmbeddings.read(write("flat.parquet", ["A"], [1.0]))
    with pytest.raises(GeneptError, match="NaN"):
        GeneEmbeddings.read(write("nan.parquet", ["A"], [[float("nan"), 1.0]]))


@settings(max_examples=200, deadline=None)
@given(
    m=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=9),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_all_finite_is_numpys_isfinite_all(m):
    from genept_fast.table import _all_finite

    assert _all_finite(m) == bool(np.isfinite(m).all())
    big = np.full((3, 3), 3e38, dtype=np.float32)  # finite, but the sum overflows
    assert _all_finite(big)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_reading_a_table_imports_neither_polars_nor_pandas(tmp_path, suffix):
    """The encode path reads its table without polars, and without pyarrow's pandas shim."""
    import subprocess
    import sys

    path = make_table(genes=("TP53", "BRCA1", "CD3E", "NOTEXT")).write(tmp_path / f"g{suffix}")
    code = (
        "import sys\n"
        "from genept_fast.table import GeneEmbeddings\n"
        "t = GeneEmbeddings.read(sys.argv[1])\n"
        "t.index_for(t.genes)\n"
        "print(sorted(m for m in ('pandas', 'polars') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stdout.strip() == "[]"
