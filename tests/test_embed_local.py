"""The offline local embedder (all-MiniLM-L6-v2 int8 ONNX) on real NCBI gene summaries."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import polars as pl
import pytest

from genept_fast import GeneptError
from genept_fast.embed import TruncationWarning, get_embedder
from genept_fast.embed.cache import EmbeddingCache
from genept_fast.embed.local import MODEL_SHA256, TOKENIZER_SHA256, LocalEmbedder
from genept_fast.errors import InputError
from genept_fast.table import GeneEmbeddings

FAMILIES = {
    "HOX": r"^HOX[ABCD][0-9]+$",
    "KRT": r"^KRT[0-9]+$",
    "RP": r"^RP[LS][0-9]+[AX]?$",
    "COL": r"^COL[0-9]+A[0-9]$",
}


@pytest.fixture(scope="module")
def ncbi(shared_data):
    df = pl.read_parquet(shared_data / "ncbi_gene_summaries_2022.parquet")
    return df.filter(pl.col("summary").is_not_null() & (pl.col("gene_type") == "protein coding"))


@pytest.fixture(scope="module")
def sample(ncbi):
    """6 genes from each of 4 families plus 30 other genes, with their NCBI summaries."""
    parts = [
        ncbi.filter(pl.col("symbol").str.contains(rx))
        .sort("symbol")
        .head(6)
        .with_columns(pl.lit(name).alias("family"))
        for name, rx in FAMILIES.items()
    ]
    fam = pl.concat(parts)
    rest = (
        ncbi.filter(~pl.col("symbol").is_in(fam["symbol"].implode()))
        .sample(30, seed=0)
        .with_columns(pl.lit("").alias("family"))
    )
    return pl.concat([fam, rest])


@pytest.fixture(scope="module")
def embedder():
    return LocalEmbedder(n_threads=1)


@pytest.fixture(scope="module")
def vectors(embedder, sample):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        return embedder.embed(sample["summary"].to_list())


def test_identity(embedder):
    assert embedder.model_id == "local:all-MiniLM-L6-v2-int8"
    assert embedder.dimension == 384
    assert embedder.max_input_tokens == 256
    assert not embedder.is_paid
    assert MODEL_SHA256 in embedder.cache_namespace or MODEL_SHA256[:16] in embedder.cache_namespace
    assert embedder.embed([]).shape == (0, 384)


def test_shape_norms_and_zero_for_empty(embedder, vectors, sample):
    assert vectors.shape == (sample.height, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    out = embedder.embed(["", "TP53 is a tumor suppressor", "   "])
    assert not out[0].any() and not out[2].any()
    assert np.linalg.norm(out[1]) == pytest.approx(1.0, abs=1e-5)


def test_texts_the_tokenizer_empties_still_get_unit_vectors(embedder):
    """Why a zero vector from the packaged model is a bug (refused as an InternalError), never a
    result: a non-empty text that tokenises to ``[CLS] [SEP]`` alone is still pooled."""
    texts = ["\u200b", "\x00", "\ufeff", "\u0301", "\x7f", "\u200d\u200c", "[PAD]"]
    out = embedder.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _msg(*fields: tuple[int, int | str | bytes]) -> bytes:
    """A protobuf message: varint fields (int) and length-delimited ones (str, bytes)."""
    out = b""
    for num, value in fields:
        if isinstance(value, int):
            out += _varint(num << 3) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(num << 3 | 2) + _varint(len(data)) + data
    return out


def _onnx_model(scale: list[float]) -> bytes:
    """An ONNX model (written field by field: the ``onnx`` package is not a dependency) whose
    ``last_hidden_state`` is ``attention_mask[..., None] * scale``: every token's hidden state
    is ``scale``."""
    float_, int64 = 1, 7

    def value(name: str, elem: int, dims: list[int | str]) -> bytes:
        shape = b"".join(_msg((1, _msg((2, d) if isinstance(d, str) else (1, d)))) for d in dims)
        return _msg((1, name), (2, _msg((1, _msg((1, elem), (2, shape))))))

    def tensor(name: str, arr: np.ndarray, elem: int) -> bytes:
        return _msg(*[(1, int(d)) for d in arr.shape], (2, elem), (8, name), (9, arr.tobytes()))

    def node(op: str, inputs: list[str], output: str, *attrs: bytes) -> bytes:
        return _msg(*[(1, i) for i in inputs], (2, output), (4, op), *[(5, a) for a in attrs])

    graph = _msg(
        (1, node("Cast", ["attention_mask"], "mf", _msg((1, "to"), (3, float_), (20, 2)))),
        (1, node("Unsqueeze", ["mf", "axes"], "m3")),
        (1, node("Mul", ["m3", "scale"], "last_hidden_state")),
        (2, "g"),
        (5, tensor("axes", np.array([2], dtype="<i8"), int64)),
        (5, tensor("scale", np.asarray(scale, dtype="<f4"), float_)),
        (11, value("input_ids", int64, ["N", "L"])),
        (11, value("attention_mask", int64, ["N", "L"])),
        (12, value("last_hidden_state", float_, ["N", "L", len(scale)])),
    )
    return _msg((1, 8), (8, _msg((2, 13))), (7, graph))  # IR version 8, opset 13


def test_a_model_file_giving_zero_or_nan_vectors_is_refused(tmp_path):
    path = tmp_path / "user-model.onnx"
    path.write_bytes(_onnx_model([1.0, 2.0, 2.0, 4.0]))
    good = LocalEmbedder(model_path=path, n_threads=1)
    np.testing.assert_allclose(good.embed(["TP53", ""])[0], [0.2, 0.4, 0.4, 0.8], rtol=1e-6)
    for scale, why in (([0.0] * 4, "2 are all zeros"), ([1.0, np.nan], "2 hold NaN")):
        path.write_bytes(_onnx_model(scale))
        cache = EmbeddingCache(tmp_path / f"cache-{len(scale)}")
        emb = LocalEmbedder(model_path=path, n_threads=1, cache=cache)
        with pytest.raises(InputError, match=f"{why}.*the model file {path}"):
            emb.embed(["TP53 is a tumor suppressor", "", "CD4"])
        assert cache.count() == 0 and emb.dimension is None


def test_gene_families_are_closer(vectors, sample):
    sim = vectors @ vectors.T
    labels = np.array(sample["family"].to_list())
    np.fill_diagonal(sim, -1.0)
    nearest = sim.argmax(axis=1)
    for name in FAMILIES:
        m = labels == name
        assert m.sum() == 6
        block = sim[np.ix_(m, m)]
        intra = block[~np.eye(6, dtype=bool)].mean()
        inter = sim[np.ix_(m, ~m)].mean()
        assert intra > inter + 0.2, (name, intra, inter)
        assert (labels[nearest[m]] == name).mean() >= 0.75, name


def test_deterministic_across_batching_and_order(vectors, sample):
    texts = sample["summary"].to_list()[:12]
    other = LocalEmbedder(batch_size=3, n_threads=1)
    again = other.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(again, vectors[:12], atol=2e-5)
    dup = other.embed([texts[0], texts[0]])
    np.testing.assert_array_equal(dup[0], dup[1])


def test_long_summaries_truncated_and_counted(embedder, ncbi):
    summaries = ncbi["summary"].head(3000).to_list()
    counts = embedder.count_tokens(summaries)
    long = [s for s, c in zip(summaries, counts, strict=True) if c > 256][:2]
    assert len(long) == 2
    short = "A short summary."
    before = embedder.n_truncated
    with pytest.warns(TruncationWarning, match="2 of 3 texts exceeded the 256-token"):
        out = embedder.embed([*long, short])
    assert embedder.n_truncated - before == 2
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    est = LocalEmbedder(n_threads=1).estimate([*long, short])
    assert (est.n_texts, est.n_uncached, est.n_truncated, est.usd) == (3, 3, 2, 0.0)
    assert est.tokens == 256 * 2 + embedder.count_tokens([short])[0]
    assert "free" in str(est)


def test_cache_roundtrip(tmp_path, sample):
    texts = sample["summary"].to_list()[:4]
    first = get_embedder("local", cache_dir=tmp_path, n_threads=1)
    a = first.embed(texts)
    assert first.cache is not None
    ns = first.cache_namespace
    assert first.cache.count(ns) == 4
    second = get_embedder("local", cache_dir=tmp_path, n_threads=1)
    assert second.estimate([*texts, "new text"]).n_uncached == 1
    b = second.embed([*texts, "new text"])
    np.testing.assert_array_equal(b[:4], a)
    assert second.cache is not None and second.cache.count(ns) == 5


def test_checksum_mismatch_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not the model")
    with pytest.raises(GeneptError, match="sha256"):
        LocalEmbedder(model_path=fake, model_sha256=MODEL_SHA256)
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    with pytest.raises(GeneptError, match=r"tokenizer file .* sha256"):
        LocalEmbedder(tokenizer_path=tok, tokenizer_sha256=TOKENIZER_SHA256)


def test_spec_errors():
    with pytest.raises(GeneptError, match="apply to 'openai:'"):
        get_embedder("local", base_url="http://127.0.0.1:1/v1", use_cache=False)
    with pytest.raises(GeneptError, match="unknown local model"):
        get_embedder("local:bge-small", use_cache=False)
    if importlib.util.find_spec("sentence_transformers") is None:
        with pytest.raises(GeneptError, match="sentence-transformers package"):
            get_embedder("sentence-transformers:all-MiniLM-L6-v2", use_cache=False)


def test_cli_local(tmp_path, sample, capsys):
    from genept_fast.cli import main

    texts = tmp_path / "texts.parquet"
    df = sample.head(6).select(
        pl.col("symbol").alias("gene"),
        pl.col("summary").alias("text"),
        pl.lit("ncbi").alias("source"),
    )
    df = pl.concat([df, pl.DataFrame({"gene": ["NOSUM"], "text": [None], "source": [None]})])
    df.write_parquet(texts)
    base = ["embed-genes", str(texts), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main([*base, "--dry-run"]) == 0
    assert "6 of 6 distinct texts" in capsys.readouterr().out
    out = tmp_path / "genes.parquet"
    assert main([*base, "-o", str(out)]) == 0
    table = GeneEmbeddings.read(out)
    assert table.model_id == "local:all-MiniLM-L6-v2-int8"
    assert table.dimension == 384
    assert table.metadata["missing"] == ["NOSUM"]
    _, cov = table.index_for([*df["gene"].to_list(), "ABSENT"])
    assert (cov.n_embedded, cov.n_zero, cov.unmatched) == (6, 1, ["ABSENT"])
    # the same table as Arrow IPC (from the cache: nothing embedded twice)
    arrow = tmp_path / "genes.arrow"
    assert main([*base, "-o", str(arrow)]) == 0
    assert arrow.read_bytes()[:6] == b"ARROW1"
    again = GeneEmbeddings.read(arrow)
    assert again.genes == table.genes
    assert {**again.metadata, "created": None} == {**table.metadata, "created": None}
    np.testing.assert_array_equal(again.matrix, table.matrix)
    assert main(["embed-genes", str(texts)]) == 2  # no -o
    assert "-o/--output" in capsys.readouterr().err


def test_pickle_roundtrip(embedder):
    import pickle

    clone = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_array_equal(clone.embed(["CD4 T cells"]), embedder.embed(["CD4 T cells"]))
