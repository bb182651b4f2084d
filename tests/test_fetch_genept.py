"""``genept-fast fetch-genept`` against a loopback Zenodo serving a small zip of the release's
layout: resumable download (a dropped connection resumes with Range), checksum, conversion
through the restricted unpickler, provenance, the texts table, and outputs that are never
clobbered; the published member names (the model3 pickle's trailing dot), each member's size
and sha256 checked against the published values before it is unpickled or parsed, and URLs
without credentials in the provenance (issue 20).

The zip's members are small, so the published values are those of this zip
(:func:`publish`, the default for every test); the tests of a mismatch use the real ones."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import socket
import zipfile

import numpy as np
import polars as pl
import pytest

from genept_fast.cli import main
from genept_fast.commands import fetch_genept as module
from genept_fast.commands.fetch_genept import RELEASE_FILE, fetch_genept
from genept_fast.errors import InvalidArgumentError
from genept_fast.table import GeneEmbeddings
from genept_fast.text import read_texts
from servers.zenodo import ZenodoServer

GENES = ["CD3E", "TP53", "FAM172A", "CD4", "ACTB", "GAPDH", "NOTEXT"]
FOLDER = "GenePT_emebdding_v2/"
ADA = "GenePT_gene_embedding_ada_text.pickle"
NCBI = "NCBI_summary_of_genes.json"
MODEL3 = "GenePT_gene_protein_embedding_model_3_text.pickle."  # sic, as published
#: The published sizes and sha256 (of the real 460 MB pickle and 11 MB JSON).
REAL_PUBLISHED = dict(module.PUBLISHED_MEMBERS)


def release_zip(
    ada: object | None = None, model3_name: str = MODEL3, extra: dict[str, bytes] | None = None
) -> tuple[bytes, dict[str, np.ndarray]]:
    """A zip laid out like GenePT_emebdding_v2.zip (a folder, two pickles, two JSON files,
    and the macOS metadata such archives carry), with small vectors; the model3 pickle under
    its published name, trailing dot included."""
    rng = np.random.default_rng(7)
    vectors = {g: rng.standard_normal(12).astype(np.float32) for g in GENES}
    vectors["NOTEXT"][:] = 0
    model3 = {g: rng.standard_normal(20).tolist() for g in GENES}  # lists of floats
    ncbi = {g: f"Gene {g}: a summary.  [provided by RefSeq]" for g in GENES[:-1]}
    uniprot = {g: f"{g} protein text" for g in GENES[:-2]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(FOLDER, "")
        pick = pickle.dumps(ada if ada is not None else vectors, protocol=4)
        zf.writestr(FOLDER + ADA, pick)
        zf.writestr(FOLDER + model3_name, pickle.dumps(model3, protocol=4))
        zf.writestr(FOLDER + NCBI, json.dumps(ncbi))
        for name, content in (extra or {}).items():
            zf.writestr(FOLDER + name, content)
        zf.writestr(FOLDER + "NCBI_UniProt_summary_of_genes.json", json.dumps(uniprot))
        zf.writestr("__MACOSX/" + FOLDER + "._GenePT_gene_embedding_ada_text.pickle", b"\0\5junk")
        zf.writestr(FOLDER + "padding.bin", rng.bytes(300_000))  # enough bytes to drop mid-way
    return buf.getvalue(), vectors


def members(data: bytes) -> dict[str, bytes]:
    """The zip's files by name (no folder), outside ``__MACOSX/``."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {
            m.rsplit("/", 1)[-1]: zf.read(m)
            for m in zf.namelist()
            if not m.endswith("/") and not m.startswith("__MACOSX/")
        }


def publish(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Make the ada pickle and NCBI texts of ``data`` the published members (the table of
    known checksums is data the code consults)."""
    files = members(data)
    table = {n: (len(files[n]), hashlib.sha256(files[n]).hexdigest()) for n in (ADA, NCBI)}
    monkeypatch.setattr(module, "PUBLISHED_MEMBERS", table)


@pytest.fixture(autouse=True)
def _published(monkeypatch):
    publish(monkeypatch, release_zip()[0])


@pytest.fixture
def release():
    data, vectors = release_zip()
    with ZenodoServer({RELEASE_FILE: data}) as server:
        yield server, data, vectors


def args(server, tmp_path, *extra):
    data = server.files[RELEASE_FILE]
    return [
        "fetch-genept",
        "--url",
        server.url(RELEASE_FILE),
        "--size",
        str(len(data)),
        "--md5",
        hashlib.md5(data).hexdigest(),
        "--cache-dir",
        str(tmp_path / "cache"),
        "-q",
        *extra,
    ]


def fetch(server, tmp_path):
    """The Python API, with short waits between resumes."""
    data = server.files[RELEASE_FILE]
    return fetch_genept(
        tmp_path / "genes.parquet",
        url=server.url(RELEASE_FILE),
        size=len(data),
        md5=hashlib.md5(data).hexdigest(),
        cache_dir=tmp_path / "cache",
        backoff=0.01,
        progress=False,
    )


def test_fetch_converts_with_provenance_and_texts(release, tmp_path):
    server, data, vectors = release
    out, texts = tmp_path / "genes.parquet", tmp_path / "texts.parquet"
    assert main(args(server, tmp_path, "-o", str(out), "--texts", str(texts))) == 0
    table = GeneEmbeddings.read(out)
    assert table.genes == GENES
    np.testing.assert_array_equal(table.matrix, np.stack([vectors[g] for g in GENES]))
    meta = table.metadata
    files = members(data)
    assert meta["source_file_size"] == len(files[ADA])
    assert meta["source_file_sha256"] == hashlib.sha256(files[ADA]).hexdigest()
    assert meta["source_file_verified"] is True
    assert meta["texts_file_sha256"] == hashlib.sha256(files[NCBI]).hexdigest()
    assert meta["source_url"] == server.url(RELEASE_FILE).split("?")[0]
    text_meta = pl.read_parquet_metadata(texts)
    assert text_meta["genept_fast.source_file_sha256"] == meta["texts_file_sha256"]
    assert text_meta["genept_fast.source_file_verified"] == "True"
    assert meta["model_id"] == "openai:text-embedding-ada-002"
    assert meta["text_source"] == "genept_ncbi"
    assert meta["source_md5"] == hashlib.md5(data).hexdigest()
    assert meta["source_file"] == FOLDER + "GenePT_gene_embedding_ada_text.pickle"
    assert "10833191" in meta["source"] and meta["genept_variant"] == "ada"
    assert meta["missing"] == ["NOTEXT"]
    df = read_texts(texts)
    assert df["gene"].to_list() == GENES[:-1]
    assert df["text"][0] == "Gene CD3E: a summary. [provided by RefSeq]"
    assert set(df["source"]) == {"genept_ncbi"}
    # the zip stays in the cache, verified: the other table needs no second download
    assert (tmp_path / "cache" / "genept" / RELEASE_FILE).read_bytes() == data
    n = len(server.requests)
    out3 = tmp_path / "model3.arrow"  # as Arrow IPC, which encode maps
    assert main(args(server, tmp_path, "-o", str(out3), "--which", "model3")) == 0
    assert out3.read_bytes()[:6] == b"ARROW1"
    assert len(server.requests) == n
    t3 = GeneEmbeddings.read(out3)
    assert t3.dimension == 20 and t3.model_id == "openai:text-embedding-3-large"
    # found under its published name, trailing dot included; no published checksum: recorded
    assert t3.metadata["source_file"] == FOLDER + MODEL3
    assert t3.metadata["source_file_sha256"] == hashlib.sha256(files[MODEL3]).hexdigest()
    assert t3.metadata["source_file_verified"] is None
    # Zenodo's download URL redirects to the file; both requests went through
    assert [h.status for h in server.requests[:2]] == [302, 200]
    # the table is usable at once, matched through the identity layer
    idx, cov = table.index_for(["ARB2A", "ENSG00000198851.9"])
    assert idx.tolist() == [2, 0] and cov.by_method == {"previous": 1, "ensembl": 1}


def test_dropped_connection_resumes_with_range(release, tmp_path):
    server, data, _ = release
    server.drop_after = [len(data) // 3, 2 * len(data) // 3]  # dies twice mid-body
    table = fetch(server, tmp_path)
    assert table.genes == GENES
    served = [h for h in server.requests if h.status in (200, 206)]
    assert [h.range for h in served] == [
        None,
        f"bytes={len(data) // 3}-",
        f"bytes={2 * len(data) // 3}-",
    ]
    assert [h.status for h in served] == [200, 206, 206]
    assert not list((tmp_path / "cache" / "genept").glob("*.part"))


def test_a_killed_download_resumes_in_the_next_run(release, tmp_path):
    server, data, _ = release
    server.drop_after = [len(data) // 2]
    rc = main(args(server, tmp_path, "-o", str(tmp_path / "g.parquet"), "--retries", "0"))
    assert rc == 3  # gave up: the bytes so far stay in the .part file
    part = tmp_path / "cache" / "genept" / (RELEASE_FILE + ".part")
    assert part.stat().st_size == len(data) // 2
    assert not (tmp_path / "g.parquet").exists()
    assert main(args(server, tmp_path, "-o", str(tmp_path / "g.parquet"))) == 0
    assert server.requests[-1].range == f"bytes={len(data) // 2}-"
    assert not part.exists()


def test_a_server_without_range_support_sends_it_all_again(release, tmp_path):
    server, data, _ = release
    server.drop_after = [len(data) // 2]
    server.ignore_range = True
    table = fetch(server, tmp_path)
    assert len(table) == len(GENES)
    assert [h.status for h in server.requests if h.status != 302] == [200, 200]


def test_wrong_checksum_installs_nothing(release, tmp_path, capsys):
    server, _, _ = release
    argv = args(server, tmp_path, "-o", str(tmp_path / "g.parquet"))
    argv[argv.index("--md5") + 1] = "0" * 32
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "nothing was installed" in err
    assert "Traceback" not in err
    assert not (tmp_path / "g.parquet").exists()
    assert list((tmp_path / "cache" / "genept").iterdir()) == []  # no zip, no .part


def test_existing_outputs_are_refused_without_overwrite(release, tmp_path, capsys):
    server, _, _ = release
    out = tmp_path / "g.parquet"
    out.write_bytes(b"mine")
    assert main(args(server, tmp_path, "-o", str(out))) == 2
    err = capsys.readouterr().err
    assert "g.parquet already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"mine" and server.requests == []  # refused before downloading
    texts = tmp_path / "t.parquet"
    texts.write_bytes(b"mine too")
    assert (
        main(args(server, tmp_path, "-o", str(tmp_path / "new.parquet"), "--texts", str(texts)))
        == 2
    )
    assert main(args(server, tmp_path, "-o", str(out), "--overwrite")) == 0
    assert len(GeneEmbeddings.read(out)) == len(GENES)
    assert main(args(server, tmp_path, "-o", str(out), "--texts", str(out), "--overwrite")) == 2
    assert main(args(server, tmp_path, "-o", str(tmp_path / "x.pickle"))) == 2


def test_a_malicious_pickle_in_the_release_is_refused(tmp_path, capsys, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    data, _ = release_zip(ada={"CD3E": Evil()})
    publish(monkeypatch, data)  # the checksums match: the restricted unpickler is what refuses
    with ZenodoServer({RELEASE_FILE: data}) as server:
        assert main(args(server, tmp_path, "-o", str(tmp_path / "g.parquet"))) == 2
    captured = capsys.readouterr()
    assert "refusing to unpickle builtins.print" in captured.err
    assert "pwned" not in captured.out
    assert not (tmp_path / "g.parquet").exists()


def test_unreachable_server_fails_fast(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["fetch-genept", "-q", "-o", str(tmp_path / "g.parquet"), "--cache-dir", str(tmp_path)]
    assert main([*argv, "--url", f"http://127.0.0.1:{port}/{RELEASE_FILE}"]) == 3
    assert "cannot reach" in capsys.readouterr().err
    assert not (tmp_path / "g.parquet").exists()
    # a table format it cannot write is refused before anything is fetched
    argv[3] = str(tmp_path / "g.csv")
    assert main([*argv, "--url", f"http://127.0.0.1:{port}/{RELEASE_FILE}"]) == 2
    assert "g.csv: the table is written as .parquet or .arrow" in capsys.readouterr().err


# -- issue 20: published member names and checksums, credentials, malformed URLs -----------------


def serve_and_fetch(data, tmp_path, *extra):
    with ZenodoServer({RELEASE_FILE: data}) as server:
        return main(args(server, tmp_path, "-o", str(tmp_path / "g.parquet"), *extra))


def test_a_small_file_under_a_published_name_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(module, "PUBLISHED_MEMBERS", REAL_PUBLISHED)
    data, _ = release_zip()
    assert serve_and_fetch(data, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{FOLDER}{ADA}: its size is {len(members(data)[ADA]):,} bytes" in err
    assert "published member has 460,797,248" in err and "Traceback" not in err
    assert not (tmp_path / "g.parquet").exists()


def test_a_sha256_mismatch_is_refused_before_unpickling(tmp_path, capsys, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    data, _ = release_zip(ada={"CD3E": Evil()})
    evil = members(data)[ADA]
    wrong = hashlib.sha256(b"the published pickle").hexdigest()
    monkeypatch.setattr(module, "PUBLISHED_MEMBERS", {ADA: (len(evil), wrong)})
    assert serve_and_fetch(data, tmp_path) == 2
    captured = capsys.readouterr()
    assert f"its sha256 is {hashlib.sha256(evil).hexdigest()}" in captured.err
    assert wrong in captured.err
    assert "refusing to unpickle" not in captured.err  # never reached the unpickler
    assert "pwned" not in captured.out
    assert not (tmp_path / "g.parquet").exists()


def test_a_texts_member_mismatch_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    data, _ = release_zip()
    texts = tmp_path / "t.parquet"
    monkeypatch.setitem(module.PUBLISHED_MEMBERS, NCBI, (len(members(data)[NCBI]), "0" * 64))
    assert serve_and_fetch(data, tmp_path, "--texts", str(texts)) == 2
    assert f"{FOLDER}{NCBI}: its sha256 is" in capsys.readouterr().err
    assert not (tmp_path / "g.parquet").exists() and not texts.exists()
    # without --texts the member is not read, and the table is written
    assert serve_and_fetch(data, tmp_path) == 0


@pytest.mark.parametrize("name", [MODEL3, MODEL3.rstrip(".")])
def test_model3_is_found_under_the_published_name_or_a_mirrors(name, tmp_path):
    data, _ = release_zip(model3_name=name)
    assert serve_and_fetch(data, tmp_path, "--which", "model3") == 0
    table = GeneEmbeddings.read(tmp_path / "g.parquet")
    assert table.metadata["source_file"] == FOLDER + name and table.dimension == 20


def test_both_model3_names_in_one_zip_are_ambiguous(tmp_path, capsys):
    data, _ = release_zip(extra={MODEL3.rstrip("."): pickle.dumps({"CD3E": [1.0, 2.0]})})
    assert serve_and_fetch(data, tmp_path, "--which", "model3") == 2
    assert "has more than one" in capsys.readouterr().err


def test_url_credentials_never_reach_the_provenance_or_a_message(release, tmp_path, capsys):
    server, _, _ = release
    password = "PASSWORD-zenodo-9"
    url = server.url(RELEASE_FILE).replace("http://", f"http://user:{password}@")
    texts = tmp_path / "t.parquet"
    argv = args(server, tmp_path, "-o", str(tmp_path / "g.parquet"), "--texts", str(texts))
    argv[argv.index("--url") + 1] = url
    assert main(argv) == 0
    meta = GeneEmbeddings.read(tmp_path / "g.parquet").metadata
    assert meta["source_url"] == server.url(RELEASE_FILE).split("?")[0]
    assert password not in json.dumps(meta, default=str)
    assert password not in json.dumps(pl.read_parquet_metadata(texts))
    captured = capsys.readouterr()
    assert password not in captured.out + captured.err
    # a refusal names the URL without them
    argv[argv.index("--md5") + 1] = "0" * 32
    argv[argv.index("--cache-dir") + 1] = str(tmp_path / "other")
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and password not in err


@pytest.mark.parametrize(
    "url", ["http://u:PASSWORD@127.0.0.1:99999/x.zip", "http://[::1/x.zip", "zenodo.org/x.zip"]
)
def test_a_malformed_url_is_a_usage_error_naming_it(url, tmp_path, capsys):
    argv = ["fetch-genept", "-q", "-o", str(tmp_path / "g.parquet"), "--cache-dir", str(tmp_path)]
    assert main([*argv, "--url", url]) == 2
    err = capsys.readouterr().err
    assert "argument --url:" in err and "not a valid http(s) URL" in err
    assert "PASSWORD" not in err and "offline" not in err
    with pytest.raises(InvalidArgumentError, match=r"url: .* is not a valid"):
        fetch_genept(tmp_path / "g.parquet", url=url, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
