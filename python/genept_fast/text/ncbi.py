"""The NCBI E-utilities client: gene symbols and Entrez IDs to NCBI Gene records.

``esearch`` maps symbols to Entrez IDs in one query per batch; ``esummary`` returns the records
(200 IDs a request). Requests go through :class:`genept_fast._http.JsonClient` (retries,
``Retry-After``, NCBI's rate limit kept on the client side, the API key masked in every message
and sent in the POST body, never in a URL).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

from genept_fast._http import JsonClient
from genept_fast.errors import MalformedResponseError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from typing_extensions import Self

__all__ = [
    "NCBI_EUTILS_URL",
    "NCBI_RATE",
    "EutilsClient",
    "GeneSummary",
    "RecordClient",
    "clean_summary",
]

NCBI_EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
#: NCBI's limits (requests/s without and with an API key), less 10% for network jitter.
NCBI_RATE = (3.0 * 0.9, 10.0 * 0.9)
#: Entrez IDs per ``esummary`` request.
ESUMMARY_BATCH = 200
TAXON = {"human": 9606, "mouse": 10090}
_CITATION_RE = re.compile(r"\[(?:provided|supplied) by [^\]]*\]\.?", re.IGNORECASE)
_PUB_NOTE_RE = re.compile(r"Publication Note:.*$", re.IGNORECASE | re.DOTALL)


class GeneSummary(NamedTuple):
    """What an NCBI Gene record says about one gene (as the service wrote it)."""

    symbol: str
    full_name: str | None
    summary: str | None


def clean_summary(text: str | None) -> str | None:
    """An NCBI summary without ``[provided by RefSeq, …]`` citations, publication notes and
    runs of whitespace; None when nothing is left."""
    if text is None:
        return None
    text = _PUB_NOTE_RE.sub("", text)
    text = _CITATION_RE.sub("", text)
    text = " ".join(text.split())
    return text or None


def _match_docs(
    keys: Sequence[str], docs: Sequence[Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """Assign esummary records to queried symbols: symbol, then any case, then a unique alias."""
    by_name: dict[str, Mapping[str, Any]] = {}
    by_upper: dict[str, list[Mapping[str, Any]]] = {}
    by_alias: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        name = str(doc.get("name") or "")
        by_name.setdefault(name, doc)
        by_upper.setdefault(name.upper(), []).append(doc)
        aliases = str(doc.get("otheraliases") or "")
        for alias in (a.strip() for a in aliases.split(",")):
            if alias:
                by_alias.setdefault(alias.upper(), []).append(doc)
    out: dict[str, Mapping[str, Any]] = {}
    for key in keys:
        if key.isdigit():
            hit = next((d for d in docs if str(d.get("uid")) == key), None)
        elif key in by_name:
            hit = by_name[key]
        elif len(by_upper.get(key.upper(), [])) == 1:
            hit = by_upper[key.upper()][0]
        elif len(by_alias.get(key.upper(), [])) == 1:
            hit = by_alias[key.upper()][0]
        else:
            hit = None
        if hit is not None:
            out[key] = hit
    return out


class RecordClient(ABC):
    """A service of gene records over :class:`~genept_fast._http.JsonClient`: a context
    manager that closes its pooled connections, asked with :meth:`summaries`."""

    #: The most genes one call of :meth:`summaries` should carry (None: no limit).
    max_batch: int | None = None

    def __init__(self, client: JsonClient) -> None:
        self._json = client

    def close(self) -> None:
        """Close the pooled connections."""
        self._json.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def summaries(self, keys: Sequence[str], *, species: str) -> dict[str, GeneSummary]:
        """The record of each key (a symbol, alias or Entrez ID) the service knows; keys
        without a record are left out."""


class EutilsClient(RecordClient):
    """NCBI E-utilities (``esearch`` + ``esummary``) for gene records.

    Parameters
    ----------
    url
        The E-utilities base URL (:data:`NCBI_EUTILS_URL`, a mirror, or a test server).
    api_key
        An NCBI API key (raises the rate limit from 3 to 10 requests/s); sent in the POST body,
        masked in every message.
    timeout, max_retries, backoff
        Per-request timeout in seconds, retries on 429/5xx/timeouts, first backoff in seconds.
    """

    def __init__(
        self,
        url: str = NCBI_EUTILS_URL,
        *,
        api_key: str | None = None,
        timeout: float = 20.0,
        max_retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(
            JsonClient(
                url,
                timeout=timeout,
                max_retries=max_retries,
                backoff=backoff,
                rate_limit=NCBI_RATE[1] if api_key else NCBI_RATE[0],
                secrets=[api_key],
                name="NCBI E-utilities",
            )
        )
        self._base: dict[str, object] = {"tool": "genept-fast"}
        if api_key:
            self._base["api_key"] = api_key  # sent in the POST body, never in a URL

    def summaries(self, keys: Sequence[str], *, species: str) -> dict[str, GeneSummary]:
        """The NCBI Gene record of each key (a symbol, alias or Entrez ID) that NCBI knows.

        A symbol is matched to the records ``esearch`` found by symbol, then by any case, then
        by a unique alias; an Entrez ID by its ID. Keys without a record are left out.
        """
        uids = [k for k in keys if k.isdigit()]
        symbols = [k for k in keys if not k.isdigit()]
        if symbols:
            uids.extend(self._search(symbols, species))
        docs = self._esummary(list(dict.fromkeys(uids))) if uids else []
        return {
            key: GeneSummary(
                str(doc.get("name") or key), doc.get("description"), doc.get("summary")
            )
            for key, doc in _match_docs(keys, docs).items()
        }

    def _search(self, symbols: Sequence[str], species: str) -> list[str]:
        terms = " OR ".join(f'"{s.replace(chr(34), "")}"[sym]' for s in symbols)
        term = f"({terms}) AND txid{TAXON[species]}[orgn] AND alive[prop]"
        answer = self._json.post_form(
            "esearch.fcgi",
            {
                **self._base,
                "db": "gene",
                "retmode": "json",
                "retmax": max(500, 5 * len(symbols)),
                "term": term,
            },
        )
        found = answer.get("esearchresult") if isinstance(answer, dict) else None
        if not isinstance(found, dict) or not isinstance(found.get("idlist"), list):
            raise self._malformed(answer, "esearch", "'esearchresult.idlist'")
        return [str(u) for u in found["idlist"]]

    def _esummary(self, uids: Sequence[str]) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        for start in range(0, len(uids), ESUMMARY_BATCH):
            chunk = uids[start : start + ESUMMARY_BATCH]
            answer = self._json.post_form(
                "esummary.fcgi",
                {**self._base, "db": "gene", "retmode": "json", "id": ",".join(chunk)},
            )
            result = answer.get("result") if isinstance(answer, dict) else None
            if not isinstance(result, dict):
                raise self._malformed(answer, "esummary", "'result'")
            for uid in result.get("uids", []):
                doc = result.get(str(uid))
                if isinstance(doc, dict) and "error" not in doc:
                    docs.append(doc)
        return docs

    def _malformed(self, answer: object, tool: str, what: str) -> MalformedResponseError:
        err = answer.get("error") if isinstance(answer, dict) else None
        why = f": {self._json.mask(str(err))}" if err else ""
        msg = f"NCBI {tool} gave no {what}{why}"
        url = f"{self._json.base_url}/{tool}.fcgi"
        return MalformedResponseError(msg, service=self._json.name, url=url)
