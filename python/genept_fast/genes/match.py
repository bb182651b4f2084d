"""Lining a dataset's genes up with a gene table's genes, through the identity layer.

:func:`match_genes` finds, for each of a dataset's gene identifiers, the row of a table (a
:class:`~genept_fast.table.GeneEmbeddings`) that holds the same gene, whatever form either
side uses: symbols (current, previous, alias, any case), Ensembl IDs with or without version,
Entrez IDs, HGNC IDs, or mouse genes (matched to a human table through their orthologs, to a
mouse table directly). The :class:`Coverage` it returns says how each gene was matched and
lists, by the dataset's own names, the genes that found nothing, the ambiguous ones (with
their candidates) and the table genes several dataset genes share.

Order of preference for one dataset gene: its identifier is a table key as written
(``exact``); else one table key differs from it in case only (``case``; not for mouse genes,
whose human namesake is found through orthology); else the gene it resolves to is a table
gene (``symbol`` when only the spelling differs, ``hgnc``, ``ensembl``, ``entrez``, ``case``,
``previous``, ``alias`` or ``ortholog``: the least direct step on either side names the
match); else, for Ensembl IDs neither side can resolve, the same ID up to its version
(``ensembl``); else the same again with the dataset's alternative identifier (a ``var``
column of symbols next to Ensembl ``var_names``, say), used only when the first one resolved
to nothing or to the same gene. An ambiguous identifier is never matched.

Two different things are called duplicates, and they are kept apart:

- **Duplicate gene names**: one name carried by several of a dataset's genes (two ``var_names``
  both ``HES4``). Such names are refused by :func:`dataset_identifiers`, which every encoder
  goes through (:func:`genept_fast.encode.match_table`), with a
  :class:`DuplicateGeneNamesError` naming them and their columns: each column would get the
  same gene's embedding without a word. Names are compared without surrounding whitespace;
  empty names are no names (they match nothing) and are not counted. The fix is the user's:
  ``adata.var_names_make_unique()``, or matching by a ``var`` column of unique identifiers
  (``gene_key=``). Only the identifiers a dataset names its genes by first must be unique:
  ``var_names``, or ``var[gene_key]``. The second identifier (a symbol column next to Ensembl
  ``var_names``) may repeat: genes with distinct first names are distinct genes.
- **Shared table genes**: several dataset genes whose *different* identifiers resolve to one
  table gene (an alias and a symbol, an Ensembl ID and a symbol, two mouse paralogs, two
  Ensembl IDs whose symbol column says the same name). Those matched directly (``exact``,
  ``symbol``, ``hgnc``, ``ensembl``, ``entrez``) keep it, and those matched only through a
  case change, a previous or alias symbol or an ortholog are left out (``shadowed``: the
  dataset has the gene itself, so the other name most likely means another gene). When none
  of them is direct (several mouse paralogs of one human gene, say) all of them keep it.
  Every such group is listed in :attr:`Coverage.shared`, and the coverage report says how
  many table genes more than one dataset gene kept.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.errors import InputError
from genept_fast.genes.resolve import (
    SPECIES,
    Resolution,
    detect_species,
    is_ensembl,
    resolve,
    strip_version,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import pandas as pd

__all__ = [
    "DIRECT",
    "METHODS",
    "SYMBOL_COLUMNS",
    "Coverage",
    "DatasetIds",
    "DuplicateGeneNamesError",
    "KeyIndex",
    "check_unique_names",
    "dataset_identifiers",
    "describe_duplicates",
    "describe_ids",
    "duplicate_names",
    "explain_no_match",
    "gene_names",
    "index_keys",
    "match_genes",
    "var_columns",
]

#: Every way a dataset gene can match a table gene, most direct first.
METHODS = (
    "exact",
    "symbol",
    "hgnc",
    "ensembl",
    "entrez",
    "case",
    "previous",
    "alias",
    "ortholog",
)
#: Methods that name the gene itself (they win over the others when two dataset genes collide).
DIRECT = frozenset({"exact", "symbol", "hgnc", "ensembl", "entrez"})
_RANK = {m: i for i, m in enumerate(METHODS)}
_SHOWN = 5


def _worst(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


@dataclass
class Coverage:
    """How a dataset's genes matched a gene table.

    Attributes
    ----------
    n_query
        Genes asked for.
    n_matched
        Genes matched to a table gene (shadowed genes, left out, are not counted).
    n_zero
        Of those, genes whose table vector is all zeros (no text): not embedded.
    unmatched
        Genes with no table gene, by the dataset's names, in query order (the ambiguous and
        shadowed ones are listed apart).
    n_case_insensitive
        Matches that needed a case change (``by_method["case"]``).
    by_method
        Matched genes per method (see :data:`METHODS`).
    ambiguous
        Dataset name → the genes it could be (an alias of two genes, a mouse gene with several
        equally supported human orthologs); never matched.
    shared
        Table gene → the dataset genes that matched it, where more than one did (different
        identifiers of one gene; see the module's note on duplicates), shadowed ones included.
    shadowed
        Dataset name → the table gene it would have matched, left out because another dataset
        gene matched that table gene directly.
    one_to_many
        Dataset genes matched through one of several supported human orthologs.
    methods
        Per query gene: how it matched (a :data:`METHODS` entry), or None.
    species
        Species the dataset's symbols were read as.
    """

    n_query: int
    n_matched: int
    n_zero: int
    unmatched: list[str] = field(default_factory=list)
    n_case_insensitive: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    shared: dict[str, list[str]] = field(default_factory=dict)
    shadowed: dict[str, str] = field(default_factory=dict)
    one_to_many: list[str] = field(default_factory=list)
    methods: list[str | None] = field(default_factory=list)
    species: str = "human"

    @property
    def n_embedded(self) -> int:
        """Genes with a non-zero embedding."""
        return self.n_matched - self.n_zero

    @property
    def fraction(self) -> float:
        """``n_embedded / n_query`` (1.0 for an empty query)."""
        return self.n_embedded / self.n_query if self.n_query else 1.0

    @property
    def kept_by_several(self) -> dict[str, list[str]]:
        """Table gene → the dataset genes that all kept it (two or more, none shadowed): each
        of their columns gets the gene's embedding."""
        out: dict[str, list[str]] = {}
        for key, members in self.shared.items():
            kept = [m for m in members if m not in self.shadowed]
            if len(kept) > 1:
                out[key] = kept
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain-type summary, e.g. for ``adata.uns`` (counts; ambiguous and shadowed genes by
        name)."""
        return {
            "n_query": self.n_query,
            "n_matched": self.n_matched,
            "n_zero": self.n_zero,
            "n_embedded": self.n_embedded,
            "n_case_insensitive": self.n_case_insensitive,
            "n_unmatched": len(self.unmatched),
            "n_ambiguous": len(self.ambiguous),
            "n_shared": len(self.shared),
            "n_kept_by_several": len(self.kept_by_several),
            "n_shadowed": len(self.shadowed),
            "n_one_to_many": len(self.one_to_many),
            "by_method": {m: int(n) for m, n in self.by_method.items()},
            "ambiguous": {g: ";".join(c) for g, c in self.ambiguous.items()},
            "shadowed": dict(self.shadowed),
            "species": self.species,
        }

    def __str__(self) -> str:
        s = f"{self.n_embedded:,} of {self.n_query:,} genes embedded ({100 * self.fraction:.1f}%)"
        indirect = [(m, n) for m, n in self.by_method.items() if m != "exact" and n]
        if indirect:
            s += "; matched by " + ", ".join(f"{m} {n:,}" for m, n in indirect)
        if self.n_zero:
            s += f"; {self.n_zero:,} in the table without text (zero vector)"
        if self.ambiguous:
            items = list(self.ambiguous.items())
            head = ", ".join(f"{g} → {'|'.join(c[:4])}" for g, c in items[:_SHOWN])
            more = ", ..." if len(items) > _SHOWN else ""
            s += f"; {len(items):,} ambiguous, not matched ({head}{more})"
        if self.shadowed:
            items2 = list(self.shadowed.items())
            head = ", ".join(f"{g} (= {k})" for g, k in items2[:_SHOWN])
            more = ", ..." if len(items2) > _SHOWN else ""
            s += f"; {len(items2):,} left out as duplicates of directly matched genes"
            s += f" ({head}{more})"
        several = list(self.kept_by_several.items())
        if several:
            head = ", ".join(f"{k} ← {' + '.join(m[:3])}" for k, m in several[:_SHOWN])
            more = ", ..." if len(several) > _SHOWN else ""
            genes = "table gene" if len(several) == 1 else "table genes"
            s += f"; {len(several):,} {genes} kept by several dataset genes ({head}{more})"
        if self.unmatched:
            head = ", ".join(self.unmatched[:_SHOWN])
            more = ", ..." if len(self.unmatched) > _SHOWN else ""
            s += f"; {len(self.unmatched):,} not in the table ({head}{more})"
        return s


# -- the table side ------------------------------------------------------------------------------


class KeyIndex:
    """A gene table's keys: exact keys at once; keys without case, the canonical tokens of
    every key and the table's species on first use.

    Building the tokens resolves every key through the identity layer (the HGNC table, about
    a second for 20,000 keys); a dataset whose names are all table keys as written never
    needs them (:func:`match_genes`).

    Attributes
    ----------
    keys
        The table's keys, in row order.
    exact
        Key as written → its first row.
    """

    def __init__(self, keys: Sequence[str], *, species: str = "auto") -> None:
        if species not in SPECIES:
            msg = f"species must be one of {SPECIES}, got {species!r}"
            raise InputError(msg)
        self.keys = [str(k) for k in keys]
        self.exact: dict[str, int] = {}
        for i, k in enumerate(self.keys):
            self.exact.setdefault(k, i)
        self._species = species

    @functools.cached_property
    def folded(self) -> dict[str, list[int]]:
        """Key without surrounding whitespace and case → its rows."""
        folded: dict[str, list[int]] = {}
        for i, k in enumerate(self.keys):
            folded.setdefault(k.strip().casefold(), []).append(i)
        return folded

    @functools.cached_property
    def species(self) -> str:
        """Species of the table's symbols (given, or :func:`detect_species` of the keys)."""
        return detect_species(self.keys) if self._species == "auto" else self._species

    @functools.cached_property
    def tokens(self) -> dict[str, tuple[int, str]]:
        """Canonical token (``g:`` gene, ``mm:`` mouse gene, ``id:`` Ensembl ID) → (row, how
        its key was resolved); of two keys of one gene, the one resolved most directly."""
        tokens: dict[str, tuple[int, str]] = {}
        for i, r in enumerate(resolve(self.keys, species=self.species)):
            for token, method in _tokens(r):
                have = tokens.get(token)
                if have is None or _RANK[method] < _RANK[have[1]]:
                    tokens[token] = (i, method)
        return tokens


def _tokens(r: Resolution) -> list[tuple[str, str]]:
    """(token, method) pairs under which a resolved identifier can be found."""
    out: list[tuple[str, str]] = []
    if r.mouse_id is not None and r.mouse_kind is not None:
        out.append(("mm:" + r.mouse_id, r.mouse_kind))
    if r.resolved and r.key is not None and r.kind is not None:
        out.append(("g:" + r.key, r.kind))
    text = r.query.strip()
    if is_ensembl(text):
        out.append(("id:" + strip_version(text), "ensembl"))
    return out


def index_keys(keys: Sequence[str], *, species: str = "auto") -> KeyIndex:
    """A table's keys for :func:`match_genes` (see :func:`genept_fast.genes.resolve.resolve`).

    Two keys of one gene (``CD3E`` and ``ENSG00000198851``, or an old and a current symbol):
    a query matching that gene gets the key resolved most directly (then the first one). The
    keys are resolved on first need (:class:`KeyIndex`).

    Raises
    ------
    InputError
        Unknown species.
    """
    return KeyIndex(keys, species=species)


# -- the dataset side ----------------------------------------------------------------------------


@dataclass
class _Hit:
    row: int = -1
    method: str | None = None
    key: str | None = None  # canonical gene the query resolved to
    ambiguous: tuple[str, ...] = ()
    one_to_many: bool = False


def _find(name: str, r: Resolution, index: KeyIndex) -> _Hit:
    exact = index.exact.get(name)
    if exact is not None:
        return _Hit(exact, "exact", r.key)
    mouse = r.species == "mouse"
    if not mouse:  # for a mouse gene, a human key of the same letters is not evidence enough
        same = index.folded.get(name.strip().casefold(), [])
        if len(same) == 1:
            method = "exact" if index.keys[same[0]] == name.strip() else "case"
            return _Hit(same[0], method, r.key)
    for token, q_method in _tokens(r):
        found = index.tokens.get(token)
        if found is None:
            continue
        row, k_method = found
        if mouse and token.startswith("g:") and k_method == "ortholog":
            continue  # two mouse genes sharing a human ortholog are not the same gene
        method = _worst(q_method, k_method)
        return _Hit(row, method, r.key, one_to_many=r.one_to_many and method == "ortholog")
    if r.status == "ambiguous":
        return _Hit(key=None, ambiguous=r.candidates)
    return _Hit(key=r.key)


def match_genes(
    names: Sequence[str],
    index: KeyIndex,
    *,
    nonzero: np.ndarray | None = None,
    alternatives: Sequence[str | None] | None = None,
    species: str = "auto",
) -> tuple[np.ndarray, Coverage]:
    """The table row of each dataset gene, and the :class:`Coverage` of the match.

    A name that is a table key as written matches it (``exact``) without going through the
    identity layer; the others do. When all of them are table keys and fewer than a quarter
    even look like mouse genes, neither the HGNC table nor the table keys' resolution is
    needed (the common case: a gene table built for the dataset's own names). The result is
    the same as resolving every name.

    Parameters
    ----------
    names
        The dataset's gene identifiers (``var_names``). A name given twice is looked up twice;
        the encoders refuse such names first (:func:`dataset_identifiers`).
    index
        The table's keys (:func:`index_keys`).
    nonzero
        Per table row, whether its vector is non-zero; a match to a zero row counts as
        matched but not embedded and gets index ``-1``. Default: every row non-zero.
    alternatives
        A second identifier per dataset gene (None or ``""``: none), tried where the first
        found no table gene and resolved to nothing else.
    species
        Species of the dataset's symbols (``"auto"``: decided from ``names``).

    Returns
    -------
    index : numpy.ndarray
        int64 per dataset gene: the table row, or ``-1`` (no match, ambiguous, shadowed, or a
        zero vector).
    coverage : Coverage
    """
    return _match(
        names, index, nonzero=nonzero, alternatives=alternatives, species=species, exact_first=True
    )


def _match(
    names: Sequence[str],
    index: KeyIndex,
    *,
    nonzero: np.ndarray | None,
    alternatives: Sequence[str | None] | None,
    species: str,
    exact_first: bool,
) -> tuple[np.ndarray, Coverage]:
    """:func:`match_genes`; ``exact_first=False`` resolves every name (see :func:`_hits`)."""
    names = [str(n) for n in names]
    nz = np.ones(len(index.keys), dtype=bool) if nonzero is None else np.asarray(nonzero, bool)
    if exact_first:
        rows = [index.exact.get(name) for name in names]
        if None not in rows and len(set(rows)) == len(rows):
            if alternatives is not None and len(alternatives) != len(names):
                msg = f"{len(alternatives)} alternative identifiers for {len(names)} genes"
                raise InputError(msg)
            return _all_exact(np.array(rows, dtype=np.int64), nz, _species(names, species))
    hits, sp = _hits(names, index, species=species, exact_first=exact_first)
    if alternatives is not None:
        _try_alternatives(hits, names, alternatives, index, species=species)
    shared, shadowed = _shadow_indirect(hits, names, index)
    out = np.full(len(names), -1, dtype=np.int64)
    tally = _Tally()
    for i, h in enumerate(hits):
        if not tally.add(names[i], h):
            continue
        if nz[h.row]:
            out[i] = h.row
        else:  # matched, but the table has no text for it: not embedded
            tally.n_zero += 1
    cov = Coverage(
        n_query=len(names),
        n_matched=tally.n_matched,
        n_zero=tally.n_zero,
        unmatched=tally.unmatched,
        n_case_insensitive=tally.by_method["case"],
        by_method={m: n for m, n in tally.by_method.items() if n},
        ambiguous=tally.ambiguous,
        shared=shared,
        shadowed=shadowed,
        one_to_many=tally.one_to_many,
        methods=tally.methods,
        species=sp,
    )
    return out, cov


def _species(names: list[str], species: str) -> str:
    if species not in SPECIES:
        msg = f"species must be one of {SPECIES}, got {species!r}"
        raise InputError(msg)
    return detect_species(names) if species == "auto" else species


def _all_exact(rows: np.ndarray, nonzero: np.ndarray, species: str) -> tuple[np.ndarray, Coverage]:
    """The match of names that are all distinct table keys as written: what the hit-by-hit
    tally gives them (every one ``exact``, none shared, shadowed or missing), array-wise."""
    n = int(rows.shape[0])
    embedded = nonzero[rows]
    cov = Coverage(
        n_query=n,
        n_matched=n,
        n_zero=int(n - np.count_nonzero(embedded)),
        by_method={"exact": n} if n else {},
        methods=["exact"] * n,
        species=species,
    )
    return np.where(embedded, rows, -1), cov


def _hits(
    names: list[str], index: KeyIndex, *, species: str, exact_first: bool
) -> tuple[list[_Hit], str]:
    """The hit of each dataset name, and the species the names were read as.

    With ``exact_first`` a name that is a table key as written is an ``exact`` hit without
    being resolved (what :func:`_find` gives it first anyway), and only the others go through
    the identity layer; when every name is a table key, and the species is clear from the
    names' form, neither the HGNC table nor the table's tokens are built. The hits are the
    same either way (``tests/test_gene_match.py`` checks it).
    """
    sp = _species(names, species)
    if not exact_first:
        pairs = zip(names, resolve(names, species=sp), strict=True)
        return [_find(n, r, index) for n, r in pairs], sp
    found: list[_Hit | None] = [None] * len(names)
    rest: list[int] = []
    for i, name in enumerate(names):
        row = index.exact.get(name)
        if row is None:
            rest.append(i)
        else:
            found[i] = _Hit(row, "exact")  # the canonical key of a hit is never read
    todo = [names[i] for i in rest]
    for i, r in zip(rest, resolve(todo, species=sp) if todo else [], strict=True):
        found[i] = _find(names[i], r, index)
    return [h for h in found if h is not None], sp


def _try_alternatives(
    hits: list[_Hit],
    names: list[str],
    alternatives: Sequence[str | None],
    index: KeyIndex,
    *,
    species: str,
) -> None:
    """Replace in ``hits`` each miss whose second identifier finds a table gene (the same
    canonical gene, where the first identifier resolved to one)."""
    alts = ["" if a is None else str(a) for a in alternatives]
    if len(alts) != len(names):
        msg = f"{len(alts)} alternative identifiers for {len(names)} genes"
        raise InputError(msg)
    todo = [i for i, h in enumerate(hits) if h.row < 0 and alts[i].strip()]
    if not todo:
        return
    alt_names = [alts[i] for i in todo]
    alt_sp = detect_species(alt_names) if species == "auto" else species
    for i, r in zip(todo, resolve(alt_names, species=alt_sp), strict=True):
        h = _find(alts[i], r, index)
        if h.row >= 0 and (hits[i].key is None or hits[i].key == h.key):
            hits[i] = h


def _shadow_indirect(
    hits: list[_Hit], names: list[str], index: KeyIndex
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Table genes matched by several dataset genes: a direct match shadows the indirect ones
    of the same table gene (their hits in ``hits`` become ``"shadowed"``).

    Returns the table key → dataset names sharing it, and each shadowed name → its table key.
    """
    groups: dict[int, list[int]] = {}
    for i, h in enumerate(hits):
        if h.row >= 0:
            groups.setdefault(h.row, []).append(i)
    shared: dict[str, list[str]] = {}
    shadowed: dict[str, str] = {}
    for row, members in groups.items():
        if len(members) < 2:
            continue
        shared[index.keys[row]] = [names[i] for i in members]
        if any(hits[i].method in DIRECT for i in members):
            for i in members:
                if hits[i].method not in DIRECT:
                    shadowed[names[i]] = index.keys[row]
                    hits[i] = _Hit(method="shadowed")
    return shared, shadowed


@dataclass
class _Tally:
    """The counts and lists of :class:`Coverage`, gathered hit by hit."""

    by_method: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHODS, 0))
    unmatched: list[str] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    one_to_many: list[str] = field(default_factory=list)
    methods: list[str | None] = field(default_factory=list)
    n_matched: int = 0
    n_zero: int = 0

    def add(self, name: str, h: _Hit) -> bool:
        """Count the hit of dataset gene ``name``; whether it found a table row."""
        if h.row < 0:
            self.methods.append(None)
            if h.ambiguous:
                self.ambiguous[name] = list(h.ambiguous)
            elif h.method != "shadowed":
                self.unmatched.append(name)
            return False
        assert h.method is not None
        self.methods.append(h.method)
        self.by_method[h.method] += 1
        self.n_matched += 1
        if h.one_to_many:
            self.one_to_many.append(name)
        return True


# -- a dataset's identifiers --------------------------------------------------------------------

#: var columns that hold gene symbols when var_names are Ensembl IDs (scanpy, CELLxGENE, 10x).
SYMBOL_COLUMNS = (
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "gene_names",
    "symbol",
)


@dataclass(frozen=True)
class DatasetIds:
    """The identifiers a dataset's genes are matched by: a first and an optional second one."""

    primary: list[str]
    alternatives: list[str] | None
    description: str


class DuplicateGeneNamesError(InputError):
    """One name carried by several of a dataset's genes (two ``var_names`` both ``HES4``).

    Attributes
    ----------
    names
        Each repeated name (without surrounding whitespace) → the 0-based positions (columns
        of ``X``) that carry it.
    source
        Where the names were read (``"var_names"``, ``"var['gene_symbols']"``).
    """

    def __init__(
        self, message: str, names: Mapping[str, Sequence[int]] | None = None, source: str = ""
    ) -> None:
        super().__init__(message)
        self.names = {k: list(v) for k, v in (names or {}).items()}
        self.source = source

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.names, self.source))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    # pd.NA, NaT: only in values pandas made, so pandas is loaded (a var column read without
    # pandas, genept_fast._frames.Columns, holds None and float NaN, and is not made to load it)
    pd = sys.modules.get("pandas")
    return pd is not None and bool(pd.api.types.is_scalar(value) and pd.isna(value))


def gene_names(values: Iterable[object]) -> list[str]:
    """Gene identifiers as strings; a missing value (None, NaN, ``pd.NA``) is ``""``, no name.

    ``str(nan)`` would make the word ``"nan"`` a gene name (a symbol column with gaps).
    """
    return [v if isinstance(v, str) else "" if _missing(v) else str(v) for v in values]


def duplicate_names(names: Sequence[str]) -> dict[str, list[int]]:
    """Names carried by more than one position → those positions, in order of first use.

    Names are compared without surrounding whitespace (the matcher reads ``" HES4"`` as
    ``HES4``); empty names name nothing and are left out.
    """
    keys = [name.strip() for name in names]
    if len(set(keys)) == len(keys):  # the usual case: one set, no per-name dict work
        return {}
    where: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key:
            where.setdefault(key, []).append(i)
    return {k: p for k, p in where.items() if len(p) > 1}


def describe_duplicates(
    names: Sequence[str], dups: Mapping[str, Sequence[int]], *, unit: str = "columns"
) -> str:
    """``dups`` (:func:`duplicate_names`) for a message: the first names with their positions
    (``unit``: ``"columns"``, ``"rows"``), and their spellings where they differ."""
    parts = []
    for key, pos in list(dups.items())[:_SHOWN]:
        where = ", ".join(str(i) for i in pos[:4]) + (", ..." if len(pos) > 4 else "")
        forms = sorted({names[i] for i in pos})
        spelled = f": {', '.join(repr(f) for f in forms[:4])}" if len(forms) > 1 else ""
        parts.append(f"{key!r} ({unit} {where}{spelled})")
    more = f" and {len(dups) - _SHOWN:,} more" if len(dups) > _SHOWN else ""
    return "; ".join(parts) + more


def check_unique_names(
    names: Sequence[str],
    *,
    source: str = "var_names",
    what: str = "the dataset",
    option: str = "gene_key=",
) -> None:
    """Refuse names that several genes carry (see the module's note on duplicates).

    Parameters
    ----------
    names
        The identifiers a dataset names its genes by first.
    source
        Where they were read: ``"var_names"`` or ``"var['COLUMN']"`` (the fix differs).
    what
        The dataset, for the message.
    option
        How the user names a ``var`` column (``"gene_key="``, ``"--gene-key "``).

    Raises
    ------
    DuplicateGeneNamesError
        A name (without surrounding whitespace; empty names aside) is carried twice or more.
    """
    dups = duplicate_names(names)
    if not dups:
        return
    if source == "var_names":
        fix = (
            "Make the names unique (adata.var_names_make_unique()) or match by a var column of "
            f"unique identifiers ({option}COLUMN)"
        )
    else:
        fix = (
            f"Name a column of unique identifiers ({option}COLUMN), or leave {option.strip()} "
            "out to match by var_names"
        )
    listing = describe_duplicates(names, dups)
    msg = (
        f"{what}: one name given to several genes in {source}: {listing}. Their columns "
        f"would all be read as one gene (GenePT-w: one embedding; GenePT-s: one word). {fix}"
    )
    raise DuplicateGeneNamesError(msg, dups, source)


def _column(var: pd.DataFrame, col: str) -> list[str]:
    return gene_names(var[col].astype(object).tolist())


def dataset_identifiers(
    var_names: Sequence[str],
    var: pd.DataFrame | None = None,
    *,
    gene_key: str | None = None,
    what: str = "the dataset",
    option: str = "gene_key=",
) -> DatasetIds:
    """How to identify a dataset's genes: ``var[gene_key]`` then ``var_names``, or ``var_names``
    then the first symbol column of ``var`` (:data:`SYMBOL_COLUMNS`) when there is one.

    The first identifiers must name each gene once (:func:`check_unique_names`); the second
    ones may repeat. Missing values (None, NaN) are empty names, which match nothing.

    Parameters
    ----------
    var_names, var
        The dataset's gene names and gene annotations.
    gene_key
        A ``var`` column to identify the genes by first.
    what, option
        For messages: the dataset, and how the user names a ``var`` column.

    Raises
    ------
    InputError
        ``gene_key`` is not a column of ``var``.
    DuplicateGeneNamesError
        The first identifiers give one name to several genes.
    """
    names = gene_names(var_names)
    if gene_key is not None:
        if var is None or gene_key not in var.columns:
            columns = ", ".join(map(str, var.columns)) if var is not None else "none"
            msg = f"{option}{gene_key!r} is not a column of var (its columns: {columns})"
            raise InputError(msg)
        primary = _column(var, gene_key)
        check_unique_names(primary, source=f"var[{gene_key!r}]", what=what, option=option)
        return DatasetIds(primary, names, f"var[{gene_key!r}], then var_names")
    check_unique_names(names, what=what, option=option)
    col = next((c for c in SYMBOL_COLUMNS if var is not None and c in var.columns), None)
    if var is None or col is None:
        return DatasetIds(names, None, "var_names")
    return DatasetIds(names, _column(var, col), f"var_names, then var[{col!r}]")


def var_columns(var: pd.DataFrame | None, limit: int = 20) -> dict[str, list[str]]:
    """The text columns of ``var`` (at most ``limit``), as candidates for ``gene_key``."""
    if var is None:
        return {}
    out: dict[str, list[str]] = {}
    for col in var.columns:
        kind = str(var[col].dtype)
        if kind in ("object", "category", "string", "str") and len(out) < limit:
            out[str(col)] = _column(var, col)
    return out


# -- explaining a failed match -------------------------------------------------------------------


def describe_ids(ids: Sequence[str]) -> str:
    """What kind of gene identifiers a list holds, with examples (for error messages)."""
    sample = [str(i).strip() for i in ids if str(i).strip()][:2000]
    if not sample:
        return "no identifiers"
    n = len(sample)
    forms = {
        "human Ensembl IDs": sum(s.startswith("ENSG") and is_ensembl(s) for s in sample),
        "mouse Ensembl IDs": sum(s.startswith("ENSMUSG") and is_ensembl(s) for s in sample),
        "Entrez IDs": sum(s.isdigit() for s in sample),
    }
    form, count = max(forms.items(), key=lambda kv: kv[1])
    if count * 2 < n:
        form = f"{detect_species(sample)} symbols"
    if form.endswith("Ensembl IDs"):
        versioned = sum(strip_version(s) != s for s in sample)
        form += ", versioned" if versioned * 2 >= n else ", without version"
    return f"{form} ({', '.join(sample[:3])}{', ...' if n > 3 else ''})"


def explain_no_match(
    names: Sequence[str],
    index: KeyIndex,
    *,
    columns: Mapping[str, Iterable[object]] | None = None,
    option: str = "gene_key=",
    what: str = "the dataset",
) -> str:
    """Why no gene of ``names`` matched the table, and what would help."""
    msg = (
        f"none of the {len(names):,} genes of {what} has an embedding in the table: {what} uses "
        f"{describe_ids(names)}, the table {describe_ids(index.keys)}, and they share no gene "
        "even through HGNC symbols, aliases, previous symbols, Ensembl and Entrez IDs and "
        "mouse orthologs"
    )
    best: tuple[int, str] | None = None
    for col, values in (columns or {}).items():
        vals = ["" if v is None else str(v) for v in values]
        if len(vals) != len(names):
            continue
        _, cov = match_genes(vals, index)
        if cov.n_matched and (best is None or cov.n_matched > best[0]):
            best = (cov.n_matched, col)
    if best is not None:
        return f"{msg}. Column {best[1]!r} matches {best[0]:,} of them: pass {option}{best[1]}"
    n_res = sum(r.resolved for r in resolve(names[:2000], species=detect_species(names)))
    if n_res == 0:
        return (
            f"{msg}. No identifier of {what} is a gene this layer knows (human: HGNC; mouse: "
            "Ensembl/MGI symbols): name a column of gene symbols or Ensembl IDs with "
            f"{option}COLUMN"
        )
    return (
        f"{msg}. The table was built for other genes (another species or ID system?): build "
        "one for these genes (genept-fast gene-text GENES -o texts.parquet, then genept-fast "
        "embed-genes texts.parquet -o genes.parquet) or fetch GenePT's published one "
        "(genept-fast fetch-genept -o genes.parquet)"
    )
