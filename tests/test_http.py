"""The JSON HTTP client against a real loopback server: retries, Retry-After, timeouts, errors."""

from __future__ import annotations

import email.utils
import socket
import time

import pytest

from genept_fast._http import JsonClient, RateLimiter, _unreachable, parse_retry_after
from genept_fast.errors import MalformedResponseError, ServiceError, ServiceUnavailableError
from servers.ncbi import Fault, JsonServer, Request


class EchoServer(JsonServer):
    def handle(self, req: Request):
        if req.path == "/missing":
            return 404, {}, {"error": {"message": "no such thing", "type": "not_found"}}
        return 200, {}, {"path": req.path, "form": req.form, "json": req.json}


@pytest.fixture(scope="module")
def server():
    with EchoServer() as s:
        yield s


@pytest.fixture
def echo(server):
    server.reset()
    return server


def client(url: str, **kw) -> JsonClient:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.01)
    return JsonClient(url, **kw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_get_post_roundtrip(echo):
    c = client(echo.root)
    assert c.get_json("a/b", {"x": "1"})["form"] == {"x": ["1"]}
    assert c.post_form("form", {"q": "TP53,CD4"})["form"] == {"q": ["TP53,CD4"]}
    assert c.post_json("js", {"q": ["TP53"]})["json"] == {"q": ["TP53"]}
    assert c.n_requests == 3 == len(echo.requests)


def test_429_retry_after_is_honoured(echo):
    echo.inject(Fault("status", 429, headers={"Retry-After": "1"}, body={"error": "slow down"}))
    c = client(echo.root, backoff=0.01)
    t0 = time.monotonic()
    assert c.get_json("x")["path"] == "/x"
    waited = time.monotonic() - t0
    assert len(echo.requests) == 2
    assert waited >= 0.95  # the server's Retry-After, not the 10 ms backoff


def test_5xx_retried_with_backoff_then_success(echo):
    echo.inject(Fault("status", 500), Fault("status", 503, body=b"upstream down"))
    assert client(echo.root).get_json("ok")["path"] == "/ok"
    assert len(echo.requests) == 3


def test_5xx_gives_up_with_clear_error(echo):
    echo.inject(*[Fault("status", 502, body=b"bad gateway")] * 3)
    with pytest.raises(ServiceError, match=r"failed after 3 tries: HTTP 502: bad gateway") as err:
        client(echo.root, max_retries=2).get_json("x")
    assert err.value.status == 502
    assert len(echo.requests) == 3


def test_timeout_is_retried(echo):
    echo.inject(Fault("delay", delay=1.0))
    c = client(echo.root, timeout=0.3, max_retries=2)
    assert c.get_json("slow")["path"] == "/slow"
    assert len(echo.requests) == 2


def test_timeout_exhausted(echo):
    echo.inject(Fault("delay", delay=0.8), Fault("delay", delay=0.8))
    with pytest.raises(ServiceError, match=r"after 2 tries: no answer within 0.2 s"):
        client(echo.root, timeout=0.2, max_retries=1).get_json("slow")


def test_malformed_json_is_a_clear_error_not_retried(echo):
    echo.inject(Fault("malformed"))
    with pytest.raises(MalformedResponseError, match="not valid JSON") as err:
        client(echo.root).get_json("x")
    assert 'starts with \'{"result"' in str(err.value)
    assert len(echo.requests) == 1


def test_client_error_not_retried_and_message_shown(echo):
    with pytest.raises(ServiceError, match=r"HTTP 404: no such thing") as err:
        client(echo.root).get_json("missing")
    assert err.value.status == 404
    assert len(echo.requests) == 1


def test_offline_fails_fast():
    port = closed_port()
    c = client(f"http://127.0.0.1:{port}", max_retries=5, backoff=1.0)
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="cannot reach") as err:
        c.get_json("x")
    assert time.monotonic() - t0 < 1.0
    assert isinstance(err.value, ConnectionError)
    assert c.n_requests == 1


def test_dns_failure_counts_as_unreachable():
    assert _unreachable(socket.gaierror(-2, "Name or service not known"))
    assert _unreachable(ConnectionRefusedError(111, "refused"))
    assert not _unreachable(TimeoutError("timed out"))


def test_secrets_are_masked_everywhere(echo):
    key = "ncbi-secret-key-123"
    body = {"error": "API rate limit exceeded", "api-key": key, "count": "4", "limit": "3"}
    echo.inject(*[Fault("status", 429, headers={"Retry-After": "0"}, body=body)] * 2)
    c = client(echo.root, max_retries=1, secrets=[key])
    with pytest.raises(ServiceError) as err:
        c.post_form("esummary.fcgi", {"id": "7157", "api_key": key})
    assert key not in str(err.value)
    assert "API rate limit exceeded" in str(err.value)
    # the key travelled in the body, never in the URL
    assert all("api_key" not in r.query for r in echo.requests)
    assert echo.requests[0].form["api_key"] == [key]
    assert c.mask(f"x {key} y") == "x *** y"


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after(future) <= 31
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True)) == 0.0


def test_rate_limiter_spaces_requests(echo):
    c = client(echo.root, rate_limit=10.0)
    t0 = time.monotonic()
    for _ in range(4):
        c.get_json("x")
    assert time.monotonic() - t0 >= 0.29
    assert RateLimiter(None).interval == 0.0


def test_a_malformed_url_is_refused_before_any_request(tmp_path):
    from genept_fast._http import download
    from genept_fast.errors import InvalidArgumentError

    for url in ("http://u:PASSWORD@127.0.0.1:99999/x", "http://[::1/x", "example.org/x"):
        with pytest.raises(InvalidArgumentError, match="is not a valid http") as err:
            download(url, tmp_path / "x.part")
        assert "PASSWORD" not in str(err.value)
        with pytest.raises(InvalidArgumentError):
            client(url)
    assert list(tmp_path.iterdir()) == []


def test_download_names_the_url_without_credentials(tmp_path):
    from genept_fast._http import download
    from servers.echo import HeaderEchoServer

    with HeaderEchoServer(status=403) as server:
        url = server.root.replace("http://", "http://user:PASSWORD-dl-1@") + "/f.zip?token=t"
        with pytest.raises(ServiceError, match="HTTP 403") as err:
            download(url, tmp_path / "f.part", max_retries=0)
        assert server.requests[0].headers["authorization"].startswith("Basic ")
        assert err.value.url == f"{server.root}/f.zip"
    assert "PASSWORD-dl-1" not in str(err.value) and err.value.status == 403


def test_retry_log_lines_hold_no_echoed_credential(caplog):
    from servers.echo import HeaderEchoServer

    with HeaderEchoServer(status=503) as server:
        c = client(server.root.replace("http://", "http://user:PASSWORD-log-1@"), max_retries=1)
        with caplog.at_level("INFO", logger="genept_fast.http"), pytest.raises(ServiceError):
            c.get_json("x")
        sent = server.requests[0].headers["authorization"]
    assert "retry 1/1" in caplog.text and "you sent headers" in caplog.text
    assert sent.split()[1] not in caplog.text and "PASSWORD-log-1" not in caplog.text
