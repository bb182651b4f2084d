"""A real HTTP server that refuses every request and echoes the request's headers back, as a
careless proxy or debug endpoint does: the hostile case for secrets in messages.

Every answer is ``status`` (400 by default) with an OpenAI-style JSON error body whose message
quotes the headers it got (the ``Authorization`` header ``httpx`` builds from a URL's
user-info included), once as a Python mapping and once as header lines.
"""

from __future__ import annotations

from typing import Any

from servers.ncbi import JsonServer, Request


class HeaderEchoServer(JsonServer):
    """Answers ``status`` to everything, quoting the request headers in the error message."""

    def __init__(self, status: int = 400) -> None:
        super().__init__()
        self.status = status

    def handle(self, req: Request) -> tuple[int, dict[str, str], Any]:
        lines = "\r\n".join(f"{k}: {v}" for k, v in req.headers.items())
        message = f"refused; you sent headers {req.headers!r}; raw:\r\n{lines}"
        return self.status, {}, {"error": {"message": message, "type": "invalid_request"}}
