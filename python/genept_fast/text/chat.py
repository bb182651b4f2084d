"""The chat client: one answer from any OpenAI-compatible ``/chat/completions`` endpoint.

It uses the official ``openai`` client (its own retries on 429/5xx/timeouts, honouring
``Retry-After``); failures become :class:`~genept_fast.errors.ServiceError` through
:func:`genept_fast._http.openai_error`, with the API key masked.
"""

from __future__ import annotations

import os
from typing import Any

from genept_fast._http import is_openai_error, openai_error
from genept_fast._secrets import check_url, public_url
from genept_fast.errors import InputError

__all__ = ["ChatClient"]


class ChatClient:
    """Ask a chat model one question at a time (thread-safe: one ``openai`` client).

    Parameters
    ----------
    model
        The chat model.
    api_key
        The API key (else ``$OPENAI_API_KEY``); a server given by ``base_url`` may need none.
    base_url
        An OpenAI-compatible base URL (None: the OpenAI API).
    system
        An optional system message sent before every question.
    temperature, max_tokens
        Sampling options (None: the server's defaults).
    timeout, max_retries
        Per-request timeout in seconds and retries on 429/5xx/timeouts.

    Raises
    ------
    InputError
        No API key and no ``base_url``.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 20.0,
        max_retries: int = 4,
    ) -> None:
        import openai

        if base_url is not None:
            base_url = check_url(base_url, option="base_url")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self._secret = key
        if not key:
            if base_url is None:
                msg = (
                    "source='llm' needs an API key: set OPENAI_API_KEY (or pass api_key=), or "
                    "give base_url= of an OpenAI-compatible server that needs none"
                )
                raise InputError(msg)
            key = "not-needed"
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )
        self.model = model
        self._where = f"LLM at {public_url(base_url) if base_url else 'the OpenAI API'}"
        self._system = system
        self._timeout = timeout
        self._retries = max_retries
        self._extra: dict[str, Any] = {}
        if temperature is not None:
            self._extra["temperature"] = temperature
        if max_tokens is not None:
            self._extra["max_tokens"] = max_tokens

    def ask(self, prompt: str) -> str | None:
        """The model's answer to ``prompt``, stripped; None when it answered nothing.

        Raises
        ------
        genept_fast.errors.ServiceError
            The server failed after the retries, or answered an error (the key masked).
        """
        messages: list[Any] = [{"role": "user", "content": prompt}]
        if self._system:
            messages.insert(0, {"role": "system", "content": self._system})
        try:
            reply = self._client.chat.completions.create(
                model=self.model, messages=messages, **self._extra
            )
        except Exception as exc:
            if not is_openai_error(exc):
                raise
            raise openai_error(
                exc,
                where=self._where,
                timeout=self._timeout,
                retries=self._retries,
                secrets=[self._secret],
            ) from None
        content = reply.choices[0].message.content if reply.choices else None
        return content.strip() if content else None

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()
