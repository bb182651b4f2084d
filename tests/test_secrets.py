"""Hostile suite for secrets (issue 20, items 1 and 6): no API key, URL password or
``Authorization`` value reaches a message, a crash log or a stored file, and a malformed URL is
a usage error (exit 2) naming it, for every option and API that takes one.

Servers are real loopback HTTP servers; the header echo server quotes back the ``Authorization``
header that ``httpx`` builds from a URL's user-info, so each test first checks that the secret
was really on the wire before checking that no message repeats it."""

from __future__ import annotations

import base64
import json
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from genept_fast import _secrets
from genept_fast._http import JsonClient
from genept_fast._secrets import check_url, public_url, remember_url, scrub, strip_userinfo
from genept_fast.cli import _crash_log, _one_line, main
from genept_fast.embed import get_embedder
from genept_fast.embed.openai_api import OpenAIEmbedder
from genept_fast.errors import InvalidArgumentError, ServiceError
from servers.echo import HeaderEchoServer

if TYPE_CHECKING:
    from collections.abc import Iterator

PASSWORD = "PASSWORD-s3cr3t"
USER = "alice"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
API_KEY = "sk-test-0123456789abcdefghij"

MALFORMED = [
    ("http://u:PASSWORD@127.0.0.1:99999/v1", "Port out of range"),
    ("http://[::1/v1", "IPv6"),
    ("http://u:PASSWORD@[::1/v1", "IPv6"),
    ("http://127.0.0.1:abc/v1", "Port could not be cast"),
    ("localhost:8000/v1", "no scheme"),
    ("127.0.0.1:8000/v1", "no scheme"),
    ("ftp://example.org/v1", "'ftp' is not http"),
    ("http:///v1", "no scheme and host"),
    ("http://exa mple.org/v1", "space"),
    ("", "empty"),
]


def secret_free(text: str) -> bool:
    return PASSWORD not in text and BASIC not in text and API_KEY not in text


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("GENEPT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # crash logs land here
    # secrets remembered by one test (a random password) must not mask another's text
    monkeypatch.setattr(_secrets, "_remembered", set())


@pytest.fixture
def echo() -> Iterator[HeaderEchoServer]:
    with HeaderEchoServer() as server:
        yield server


def with_credentials(root: str, path: str = "") -> str:
    return root.replace("http://", f"http://{USER}:{PASSWORD}@") + path


def crash_logs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("genept-fast-crash-*.log"))


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.parquet"
    pl.DataFrame({"gene": ["CD3E", "TP53"], "text": ["T cell", "tumour"]}).write_parquet(path)
    return path


# -- the scrubber ---------------------------------------------------------------------------------


def test_url_userinfo_is_masked_wherever_a_url_stands():
    text = f"failed: http://{USER}:{PASSWORD}@h:8/v1/x?q=1 and https://tok@h2/ and ftp://a:b@c"
    out = scrub(text)
    assert out == "failed: http://***@h:8/v1/x?q=1 and https://***@h2/ and ftp://***@c"
    # an unencoded @ in the password: the user-info runs to the last @, as urllib splits it
    assert scrub("GET http://u:p@ss@host/x") == "GET http://***@host/x"
    # a URL too malformed to parse is masked all the same
    assert scrub(f"http://u:{PASSWORD}@[::1/v1") == "http://***@[::1/v1"


@pytest.mark.parametrize(
    "echoed",
    [
        f"Authorization: Basic {BASIC}\r\nHost: h",
        f"{{'authorization': 'Basic {BASIC}', 'host': 'h'}}",
        f'{{"Authorization": "Bearer {API_KEY}"}}',
        f"authorization=Basic {BASIC}",
        f"Proxy-Authorization: Basic {BASIC}",
        f"b'authorization': b'Basic {BASIC}'",
        f"the header was Basic {BASIC} (base64)",
        f"token Bearer {API_KEY}.",
        "Authorization: Token abcdef0123456789",
    ],
)
def test_authorization_values_are_masked_in_any_form(echoed: str):
    out = scrub(echoed)
    assert secret_free(out) and "abcdef0123456789" not in out
    assert "***" in out


def test_remembered_password_is_masked_in_each_encoding():
    password = 'p@ss"wörd\\/x'
    remember_url(f"http://{USER}:{urllib.parse.quote(password, safe='')}@h/")
    basic = base64.b64encode(f"{USER}:{password}".encode()).decode()
    for form in (
        password,
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote_plus(password),
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=True)[1:-1],
        repr(password)[1:-1],
        basic,
    ):
        out = scrub(f"before {form} after")
        assert form not in out and out == "before *** after", form


def test_api_keys_from_the_environment_and_the_caller_are_masked(monkeypatch):
    assert scrub(f"key {API_KEY} !") == "key *** !"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert scrub("key ncbi-key-42 !", ["ncbi-key-42"]) == "key *** !"
    assert scrub("key ncbi-key-42 !") == "key ncbi-key-42 !"  # given for that text only
    monkeypatch.setenv("OPENAI_API_KEY", "test")  # a placeholder: masked by place only
    assert scrub("/tmp/pytest-of-root/test_x0/in.h5ad") == "/tmp/pytest-of-root/test_x0/in.h5ad"
    assert scrub("Authorization: Bearer test") == "Authorization: ***"
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://{USER}:{PASSWORD}@h/v1")
    assert scrub(f"echo {PASSWORD} and {BASIC}") == "echo *** and ***"


def test_short_secrets_are_masked_only_by_their_place():
    remember_url("http://u:pw@h/")
    assert scrub("http://u:pw@h/ pw") == "http://***@h/ pw"  # not every 'pw' in the text


@settings(max_examples=80, deadline=None)
@given(
    user=st.text(st.characters(codec="utf-8", exclude_characters="*"), min_size=1, max_size=12),
    password=st.text(
        st.characters(codec="utf-8", exclude_characters="*"),
        min_size=_secrets.MIN_SECRET_LENGTH,
        max_size=24,
    ),
)
def test_no_remembered_password_survives_in_any_form(user: str, password: str):
    url = f"http://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@h/"
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        remember_url(url)
        text = f"{url} {password!r} {json.dumps(password)} Authorization: Basic {basic} {basic}"
        text = scrub(text)
    finally:
        _secrets._remembered.clear()
    assert password not in text and basic not in text
    assert urllib.parse.quote(password, safe="") not in text


def test_stored_urls_carry_no_userinfo_and_no_query():
    url = f"https://{USER}:{PASSWORD}@zenodo.org:443/records/1/files/x.zip?download=1&token=t#f"
    assert public_url(url) == "https://zenodo.org:443/records/1/files/x.zip"
    assert (
        strip_userinfo(url) == "https://zenodo.org:443/records/1/files/x.zip?download=1&token=t#f"
    )
    assert public_url("http://[::1]:8/v1?x") == "http://[::1]:8/v1"
    assert strip_userinfo("http://h/x") == "http://h/x"


# -- malformed URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "problem"), MALFORMED)
def test_malformed_urls_are_refused_naming_them(url: str, problem: str):
    with pytest.raises(InvalidArgumentError, match=problem) as err:
        check_url(url, option="--base-url")
    message = str(err.value)
    assert message.startswith("--base-url: ") and "PASSWORD" not in message
    assert scrub(url) in message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/v1", "https://api.openai.com/v1", "HTTP://[::1]:80/", "http://h"]
)
def test_wellformed_urls_pass(url: str):
    assert check_url(url) == url


@pytest.mark.parametrize(("url", "problem"), MALFORMED)
def test_every_api_that_takes_a_url_refuses_a_malformed_one(url: str, problem: str):
    with pytest.raises(InvalidArgumentError, match=problem):
        get_embedder("openai:text-embedding-3-small", base_url=url)
    with pytest.raises(InvalidArgumentError, match=problem):
        JsonClient(url)
    with pytest.raises(InvalidArgumentError, match=problem):
        OpenAIEmbedder("text-embedding-3-small", base_url=url)


def test_the_openai_embedder_masks_every_secret_it_can_meet(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    emb = OpenAIEmbedder(
        "text-embedding-3-small",
        base_url=f"http://u:{PASSWORD}@127.0.0.1:8/v1",
        api_key="sk-test-0123456789abcdef",
    )
    basic = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    text = emb.scrub(f"key sk-test-0123456789abcdef; Authorization: Basic {basic}; {PASSWORD}")
    assert PASSWORD not in text and basic not in text and "0123456789abcdef" not in text


def test_a_malformed_openai_base_url_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://u:{PASSWORD}@127.0.0.1:99999/v1")
    with pytest.raises(InvalidArgumentError, match="OPENAI_BASE_URL") as err:
        get_embedder("openai:text-embedding-3-small")
    assert PASSWORD not in str(err.value)


@pytest.mark.parametrize(("url", "problem"), MALFORMED)
def test_embed_genes_malformed_base_url_is_exit_2(url, problem, texts, tmp_path, capsys):
    argv = ["embed-genes", str(texts), "-o", str(tmp_path / "o.parquet"), "--no-cache"]
    argv += ["--embedder", "openai:text-embedding-3-small", "--base-url", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--base-url" in err and problem in err and "internal error" not in err
    assert secret_free(err) and "PASSWORD" not in err
    assert crash_logs(tmp_path) == []


def test_encode_malformed_base_url_is_exit_2(tmp_path, capsys):
    import anndata as ad

    path = tmp_path / "in.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(path)
    url = f"http://u:{PASSWORD}@127.0.0.1:99999/v1"
    argv = ["encode", str(path), "--method", "s", "--embedder", "openai:text-embedding-3-small"]
    assert main([*argv, "--base-url", url, "-o", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:99999" in err and "Port out of range" in err and secret_free(err)
    assert crash_logs(tmp_path) == []


@pytest.mark.parametrize("option", ["--ncbi-url", "--mygene-url"])
def test_gene_text_malformed_service_url_is_exit_2(option, tmp_path, capsys):
    url = f"http://u:{PASSWORD}@127.0.0.1:99999/eutils"
    argv = ["gene-text", "CD3E", "-o", str(tmp_path / "t.parquet"), "--no-fallback", option, url]
    if option == "--mygene-url":
        argv.append("--mygene")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:99999" in err and "Port out of range" in err and secret_free(err)


def test_gene_text_malformed_llm_url_is_exit_2(tmp_path, capsys):
    argv = ["gene-text", "CD3E", "-o", str(tmp_path / "t.parquet"), "--source", "llm"]
    assert main([*argv, "--base-url", f"http://u:{PASSWORD}@[::1/v1"]) == 2
    err = capsys.readouterr().err
    assert "URL" in err and "internal error" not in err and secret_free(err)
    assert crash_logs(tmp_path) == []


def test_gene_text_llm_url_with_a_bad_port_is_exit_2(tmp_path, capsys):
    argv = ["gene-text", "CD3E", "-o", str(tmp_path / "t.parquet"), "--source", "llm"]
    assert main([*argv, "--base-url", f"http://u:{PASSWORD}@127.0.0.1:99999/v1"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:99999" in err and "Port out of range" in err and secret_free(err)
    assert crash_logs(tmp_path) == []


def test_text_sources_describe_themselves_without_credentials():
    from genept_fast.text import text_source

    url = with_credentials("http://127.0.0.1:8000", "/v1")
    llm = text_source("llm", model="m", base_url=url, api_key="sk-test-0123456789abcdef")
    ncbi = text_source("ncbi", ncbi_url=with_credentials("http://127.0.0.1:8000", "/eutils"))
    for described in (llm.describe(), ncbi.describe()):
        assert secret_free(repr(described)) and "0123456789abcdef" not in repr(described)
    assert llm.describe()["base_url"] == "http://127.0.0.1:8000/v1"


# -- echoed credentials ---------------------------------------------------------------------------


def test_json_client_masks_an_echoed_basic_credential(echo):
    client = JsonClient(with_credentials(echo.root), max_retries=0, timeout=5.0)
    with pytest.raises(ServiceError) as err:
        client.get_json("esummary.fcgi", {"id": "7157"})
    # the credential was on the wire and came back in the body
    assert echo.requests[0].headers["authorization"] == f"Basic {BASIC}"
    message = str(err.value)
    assert err.value.status == 400 and "refused; you sent headers" in message
    assert secret_free(message) and "authorization': '***'" in message
    assert err.value.url == f"{echo.root}/esummary.fcgi"
    assert secret_free(client.name)


def test_embed_genes_masks_echoed_credentials_and_the_key(echo, texts, tmp_path, capsys):
    argv = ["embed-genes", str(texts), "-o", str(tmp_path / "o.parquet"), "--no-cache"]
    argv += ["--embedder", "openai:text-embedding-3-small", "--max-retries", "0"]
    assert main([*argv, "--base-url", with_credentials(echo.root, "/v1")]) == 3
    sent = echo.requests[0].headers["authorization"]
    assert sent in (f"Basic {BASIC}", f"Bearer {API_KEY}")  # whichever httpx kept
    err = capsys.readouterr().err
    assert "refused; you sent headers" in err
    assert secret_free(err) and sent.split()[1] not in err
    assert not (tmp_path / "o.parquet").exists()


def test_gene_text_masks_echoed_credentials(echo, tmp_path, capsys):
    argv = ["gene-text", "CD3E", "-o", str(tmp_path / "t.parquet"), "--no-fallback"]
    assert main([*argv, "--retries", "0", "--ncbi-url", with_credentials(echo.root)]) == 3
    assert echo.requests[0].headers["authorization"] == f"Basic {BASIC}"
    err = capsys.readouterr().err
    assert "refused; you sent headers" in err and secret_free(err)


def test_llm_source_masks_echoed_credentials(echo, tmp_path, capsys):
    argv = ["gene-text", "CD3E", "-o", str(tmp_path / "t.parquet"), "--source", "llm"]
    argv += ["--retries", "0", "--base-url", with_credentials(echo.root, "/v1")]
    assert main(argv) == 3
    assert echo.requests, "the request never reached the echo server"
    err = capsys.readouterr().err
    assert "refused; you sent headers" in err and secret_free(err)


# -- crash logs -----------------------------------------------------------------------------------


def test_crash_log_holds_no_secret(tmp_path):
    url = with_credentials("http://127.0.0.1:8000", "/v1")
    try:
        msg = f"boom at {url} with Authorization: Basic {BASIC} and key {API_KEY}"
        raise RuntimeError(msg)
    except RuntimeError as exc:
        path = _crash_log(["embed-genes", "--base-url", url, f"--base-url={url}"], exc)
    assert path is not None
    text = Path(path).read_text(encoding="utf-8")
    assert "RuntimeError: boom at http://***@127.0.0.1:8000/v1" in text
    assert "Traceback" in text and secret_free(text)


def test_one_line_messages_hold_no_secret():
    exc = RuntimeError(f"failed at {with_credentials('http://h')}: Basic {BASIC}")
    exc.add_note(f"key {API_KEY}")
    line = _one_line(exc)
    assert line == "failed at http://***@h: Basic ***; key ***"


@settings(max_examples=300, deadline=None)
@given(
    url=st.one_of(
        st.text(max_size=40),
        st.builds(
            "{}://{}{}/{}".format,
            st.sampled_from(["http", "https", "HTTP", "ftp", "", "h ttp"]),
            st.sampled_from(["", "u:PASSWORD-h@", "u@", ":@"]),
            st.text(st.characters(codec="ascii"), max_size=20),
            st.text(max_size=10),
        ),
    )
)
@example("://u:PASSWORD-h@/")  # no scheme: the user-info was shown (found by hypothesis)
def test_check_url_accepts_or_refuses_any_text_and_never_leaks(url: str):
    try:
        assert check_url(url, option="--base-url") == url
    except InvalidArgumentError as exc:
        assert "PASSWORD-h" not in str(exc) and str(exc).startswith("--base-url: ")
    else:  # what it accepts, both parsers and the client can use
        import httpx2

        parts = urllib.parse.urlsplit(url)
        assert parts.scheme.lower() in ("http", "https") and parts.hostname
        assert 0 < (parts.port or 80) <= 65535
        assert httpx2.URL(url).host


def test_the_reported_case_end_to_end_in_a_subprocess(texts, tmp_path):
    """``genept-fast embed-genes --base-url http://u:PASSWORD@127.0.0.1:99999/v1`` as a user
    runs it: exit 2 naming the URL, no crash log anywhere in TMPDIR, no password."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "genept_fast", "embed-genes", str(texts)]
    argv += ["-o", str(tmp_path / "o.parquet"), "--embedder", "openai:text-embedding-3-small"]
    argv += ["--base-url", "http://u:PASSWORD@127.0.0.1:99999/v1"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "'http://***@127.0.0.1:99999/v1' is not a valid http(s) URL" in done.stderr
    assert "PASSWORD" not in done.stderr + done.stdout
    assert crash_logs(tmp_path) == []
