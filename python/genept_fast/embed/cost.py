"""Prices and cost/time estimates for embedding jobs (the dry run).

Prices are USD per million input tokens of OpenAI's embedding models at standard pricing;
the Batch API charges half (:data:`BATCH_PRICE_FACTOR`) and promises results within 24 hours,
which is the time a batch estimate shows. Other OpenAI-compatible servers are treated as
free unless a price is given.
Expected times are rough: for a remote API, requests run ``max_concurrency`` at a time at an
assumed latency, and no faster than an assumed tokens-per-minute rate limit; for the local
model, a measured tokens-per-second rate on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BATCH_COMPLETION_WINDOW_S",
    "BATCH_PRICE_FACTOR",
    "PRICE_PER_MILLION_TOKENS",
    "CostEstimate",
    "format_seconds",
    "price_per_million",
]

#: USD per 1M input tokens (standard API pricing).
PRICE_PER_MILLION_TOKENS: dict[str, float] = {
    "text-embedding-ada-002": 0.10,
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
}

#: The Batch API's price as a fraction of the standard price.
BATCH_PRICE_FACTOR = 0.5
#: The Batch API's completion window (the only one offered: 24 hours), in seconds.
BATCH_COMPLETION_WINDOW_S = 24 * 3600

#: Assumed seconds per embeddings request to a remote API (network + queueing), for estimates.
REQUEST_LATENCY_S = 1.0
#: Assumed tokens-per-minute rate limit of a remote API (OpenAI usage tier 1), for estimates.
TOKENS_PER_MINUTE = 1_000_000


def price_per_million(model: str) -> float | None:
    """USD per million tokens for an OpenAI model name, or ``None`` when unknown."""
    return PRICE_PER_MILLION_TOKENS.get(model)


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"`` or ``"2.1 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class CostEstimate:
    """What embedding a list of texts would cost; only texts not yet cached count.

    Attributes
    ----------
    model_id
        The embedder's model id.
    n_texts
        Distinct non-empty texts asked for.
    n_uncached
        Of those, texts not in the cache (the ones that would be sent).
    tokens
        Tokens in the uncached texts, after truncation to the model's limit.
    usd
        Price in US dollars (0 for local models and unpriced servers).
    seconds
        Rough expected wall time.
    n_requests
        Requests the uncached texts would take (1 per local batch).
    n_truncated
        Uncached texts longer than the model's input limit (they would be truncated).
    exact_tokens
        Whether ``tokens`` was counted with the model's tokenizer (else it is an estimate).
    batch
        Whether the job would go through the Batch API (``usd`` is then the Batch price, half
        the standard one, and ``seconds`` the 24-hour completion window).
    """

    model_id: str
    n_texts: int
    n_uncached: int
    tokens: int
    usd: float
    seconds: float
    n_requests: int = 0
    n_truncated: int = 0
    exact_tokens: bool = True
    batch: bool = False

    def __str__(self) -> str:
        approx = "" if self.exact_tokens else "~"
        cached = self.n_texts - self.n_uncached
        lines = [
            f"{self.model_id}: {self.n_uncached:,} of {self.n_texts:,} distinct texts to embed"
            f" ({cached:,} cached)",
            f"  tokens:   {approx}{self.tokens:,}"
            + ("" if self.exact_tokens else " (estimated: tokenizer unavailable)"),
            f"  price:    ${self.usd:,.4f}" + ("" if self.usd else " (free)"),
            f"  time:     ~{format_seconds(self.seconds)} ({self.n_requests:,} requests)",
        ]
        if self.batch:
            standard = self.usd / BATCH_PRICE_FACTOR
            lines[2] = f"  price:    ${self.usd:,.4f} with the Batch API" + (
                f" (half the standard ${standard:,.4f})" if self.usd else " (free)"
            )
            lines[3] = (
                f"  time:     up to {format_seconds(self.seconds)} (the Batch API's completion"
                f" window; {self.n_requests:,} requests)"
            )
        if self.n_truncated:
            lines.append(f"  truncated: {self.n_truncated:,} texts exceed the input limit")
        return "\n".join(lines)
