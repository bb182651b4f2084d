"""The MyGene.info client for gene records (symbol, full name, RefSeq summary).

The query itself (``POST /v3/query`` in batches) is :func:`genept_fast.genes.ids.mygene_query`,
which the identity layer's online mapping uses too; this client asks for the text fields and
picks each key's record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genept_fast._http import JsonClient
from genept_fast.genes.ids import MYGENE_BATCH, MYGENE_URL, mygene_query
from genept_fast.text.ncbi import GeneSummary, RecordClient

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MYGENE_URL", "MyGeneClient"]


class MyGeneClient(RecordClient):
    """MyGene.info's gene records.

    Parameters
    ----------
    url
        The MyGene.info base URL (:data:`MYGENE_URL`, a mirror, or a test server).
    timeout, max_retries, backoff
        Per-request timeout in seconds, retries on 429/5xx/timeouts, first backoff in seconds.
    """

    #: MyGene.info answers at most this many queries a request.
    max_batch: int | None = MYGENE_BATCH

    def __init__(
        self,
        url: str = MYGENE_URL,
        *,
        timeout: float = 20.0,
        max_retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(
            JsonClient(
                url, timeout=timeout, max_retries=max_retries, backoff=backoff, name="MyGene.info"
            )
        )

    def summaries(self, keys: Sequence[str], *, species: str) -> dict[str, GeneSummary]:
        """The record of each key (a symbol, alias or Entrez ID) that MyGene.info knows: the hit
        with that symbol or ID (then the one with that symbol in another case), else the only
        gene all hits name. Keys without a record are left out."""
        hits = mygene_query(
            self._json,
            keys,
            scopes="symbol,alias,entrezgene",
            fields="symbol,name,summary",
            species=species,
        )
        out: dict[str, GeneSummary] = {}
        for key in keys:
            found = [h for h in hits.get(key, []) if h.get("symbol") or h.get("name")]
            exact = [h for h in found if h.get("symbol") == key or str(h.get("_id")) == key] or [
                h for h in found if str(h.get("symbol", "")).upper() == key.upper()
            ]
            pool = exact or (found if len({h.get("symbol") for h in found}) == 1 else [])
            if pool:
                hit = pool[0]
                out[key] = GeneSummary(
                    str(hit.get("symbol") or key), hit.get("name"), hit.get("summary")
                )
        return out
