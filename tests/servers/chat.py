"""A real HTTP server speaking OpenAI's ``POST /v1/chat/completions`` wire format, for tests.

The "model" answers from real NCBI Gene records (shared NCBI table): asked about a gene it
knows, it replies with the gene's full name and summary; otherwise it says it does not know
the gene. Replies carry the real response shape (``id``, ``object``, ``created``, ``model``,
``choices[0].message.content``, ``finish_reason``, ``usage``). Errors use OpenAI's body
``{"error": {"message", "type", "param", "code"}}``: 401 for a wrong key (the message echoes
the key, to check that clients mask it), 404 for an unknown model, and the injected faults of
:class:`servers.ncbi.JsonServer` (429 with ``Retry-After``, 500, delays, malformed bodies).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from servers.ncbi import JsonServer, Request

if TYPE_CHECKING:
    import polars as pl

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-\.]*")


def openai_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class ChatServer(JsonServer):
    """OpenAI-compatible chat completions under ``/v1``; :attr:`url` is the client's base_url."""

    def __init__(
        self,
        genes: pl.DataFrame,
        *,
        api_key: str | None = None,
        models: tuple[str, ...] = ("gene-chat",),
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models
        self.records = {r["symbol"].upper(): r for r in genes.iter_rows(named=True) if r["symbol"]}
        self.n_completions = 0

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def prompts(self) -> list[str]:
        """The user prompts of every chat request received."""
        out = []
        for r in self.requests:
            if isinstance(r.json, dict):
                msgs = [m for m in r.json.get("messages", []) if m.get("role") == "user"]
                out.extend(str(m.get("content")) for m in msgs[-1:])
        return out

    def handle(self, req: Request) -> tuple[int, dict[str, str], Any]:
        if req.path != "/v1/chat/completions" or req.method != "POST":
            return (
                404,
                {},
                openai_error(
                    f"Unknown request URL: {req.method} {req.path}",
                    "invalid_request_error",
                    "unknown_url",
                ),
            )
        if self.api_key is not None:
            auth = req.headers.get("authorization", "")
            given = auth.removeprefix("Bearer ").strip()
            if given != self.api_key:
                msg = f"Incorrect API key provided: {given}."
                return 401, {}, openai_error(msg, "invalid_request_error", "invalid_api_key")
        body = req.json
        if not isinstance(body, dict) or not body.get("messages"):
            return (
                400,
                {},
                openai_error("'messages' is a required property", "invalid_request_error"),
            )
        model = body.get("model")
        if model not in self.models:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            return 404, {}, openai_error(msg, "invalid_request_error", "model_not_found")
        prompt = str(body["messages"][-1].get("content", ""))
        words = _WORD_RE.findall(prompt)
        row = next(
            (self.records[w.upper()] for w in reversed(words) if w.upper() in self.records), None
        )
        if row is None:
            content = f"I could not find a gene matching: {prompt}"
        else:
            content = f"{row['symbol']} encodes {row['full_name']}."
            if row["summary"]:
                content += f" {row['summary']}"
        with self.lock:
            self.n_completions += 1
            n = self.n_completions
        p_tokens = len(prompt.split())
        c_tokens = len(content.split())
        reply = {
            "id": f"chatcmpl-test{n:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": p_tokens,
                "completion_tokens": c_tokens,
                "total_tokens": p_tokens + c_tokens,
            },
            "system_fingerprint": "fp_test",
        }
        return 200, {}, reply
