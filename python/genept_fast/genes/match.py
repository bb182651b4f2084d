"""Lining a dataset's genes up with a gene table's genes, through the identity layer.

:func:`match_genes` finds, for each of a dataset's gene identifiers, the row of a table (a
:class:`~genept_fast.table.GeneEmbeddings`) that holds the same gene, whatever form either
side uses: symbols (current, previous, alias, any case), Ensembl IDs with or without version,
Entrez IDs, HGNC IDs, or mouse genes (matched to a human table through their orthologs, to a
mouse table directly). The :class:`Coverage` it returns says how each gene was matched and
lists, by the dataset's own names, the genes that found nothing, the ambiguous ones (with
their candidates) and the duplicates.

Order of preference for one dataset gene: its identifier is a table key as written
(``exact``); else one table key differs from it in case only (``case``; not for mouse genes,
whose human namesake is found through orthology); else the gene it resolves to is a table
gene (``symbol`` when only the spelling differs, ``hgnc``, ``ensembl``, ``entrez``, ``case``,
``previous``, ``alias`` or ``ortholog``: the least direct step on either side names the
match); else, for Ensembl IDs neither side can resolve, the same ID up to its version
(``ensembl``); else the same again with the dataset's alternative identifier (a ``var``
column of symbols next to Ensembl ``var_names``, say), used only when the first one resolved
to nothing or to the same gene. An ambiguous identifier is never matched.

Duplicates: when several dataset genes match one table gene, those matched directly
(``exact``, ``symbol``, ``hgnc``, ``ensembl``, ``entrez``) keep it and those matched only through
a case change, a previous or alias symbol or an ortholog are left out (``shadowed``: the
dataset has the gene itself, so the other name most likely means another gene). When none of
them is direct (several mouse paralogs of one human gene, say) all of them keep it. Every such
group is listed in :attr:`Coverage.duplicates`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.errors import InputError
from genept_fast.genes.resolve import Resolution, detect_species, is_ensembl, resolve, strip_version

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import pandas as pd

__all__ = [
    "DIRECT",
    "METHODS",
    "SYMBOL_COLUMNS",
    "Coverage",
    "DatasetIds",
    "KeyIndex",
    "dataset_identifiers",
    "describe_ids",
    "explain_no_match",
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
        Genes matched to a table gene (duplicates left out are not counted).
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
    duplicates
        Table gene → the dataset genes that matched it, where more than one did.
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
    duplicates: dict[str, list[str]] = field(default_factory=dict)
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
            "n_duplicates": len(self.duplicates),
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
        if self.unmatched:
            head = ", ".join(self.unmatched[:_SHOWN])
            more = ", ..." if len(self.unmatched) > _SHOWN else ""
            s += f"; {len(self.unmatched):,} not in the table ({head}{more})"
        return s


# -- the table side ------------------------------------------------------------------------------


@dataclass
class KeyIndex:
    """A gene table's keys, resolved once: exact keys and canonical tokens → (row, method)."""

    keys: list[str]
    exact: dict[str, int]
    folded: dict[str, list[int]]
    tokens: dict[str, tuple[int, str]]
    species: str


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
    """Resolve a table's keys once (see :func:`genept_fast.genes.resolve.resolve`).

    Two keys of one gene (``CD3E`` and ``ENSG00000198851``, or an old and a current symbol):
    a query matching that gene gets the key resolved most directly (then the first one).
    """
    keys = [str(k) for k in keys]
    exact: dict[str, int] = {}
    folded: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        exact.setdefault(k, i)
        folded.setdefault(k.strip().casefold(), []).append(i)
    sp = detect_species(keys) if species == "auto" else species
    tokens: dict[str, tuple[int, str]] = {}
    for i, r in enumerate(resolve(keys, species=sp)):
        for token, method in _tokens(r):
            have = tokens.get(token)
            if have is None or _RANK[method] < _RANK[have[1]]:
                tokens[token] = (i, method)
    return KeyIndex(keys, exact, folded, tokens, sp)


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

    Parameters
    ----------
    names
        The dataset's gene identifiers (``var_names``).
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
    names = [str(n) for n in names]
    sp = detect_species(names) if species == "auto" else species
    hits = [_find(n, r, index) for n, r in zip(names, resolve(names, species=sp), strict=True)]
    if alternatives is not None:
        alts = ["" if a is None else str(a) for a in alternatives]
        if len(alts) != len(names):
            msg = f"{len(alts)} alternative identifiers for {len(names)} genes"
            raise InputError(msg)
        todo = [i for i, h in enumerate(hits) if h.row < 0 and alts[i].strip()]
        if todo:
            alt_names = [alts[i] for i in todo]
            alt_sp = detect_species(alt_names) if species == "auto" else species
            for i, r in zip(todo, resolve(alt_names, species=alt_sp), strict=True):
                h = _find(alts[i], r, index)
                if h.row >= 0 and (hits[i].key is None or hits[i].key == h.key):
                    hits[i] = h

    # duplicates: a direct match shadows indirect ones of the same table gene
    groups: dict[int, list[int]] = {}
    for i, h in enumerate(hits):
        if h.row >= 0:
            groups.setdefault(h.row, []).append(i)
    duplicates: dict[str, list[str]] = {}
    shadowed: dict[str, str] = {}
    for row, members in groups.items():
        if len(members) < 2:
            continue
        duplicates[index.keys[row]] = [names[i] for i in members]
        if any(hits[i].method in DIRECT for i in members):
            for i in members:
                if hits[i].method not in DIRECT:
                    shadowed[names[i]] = index.keys[row]
                    hits[i] = _Hit(method="shadowed")

    nz = np.ones(len(index.keys), dtype=bool) if nonzero is None else np.asarray(nonzero, bool)
    out = np.full(len(names), -1, dtype=np.int64)
    by_method = dict.fromkeys(METHODS, 0)
    unmatched: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    one_to_many: list[str] = []
    methods: list[str | None] = []
    n_matched = n_zero = 0
    for i, h in enumerate(hits):
        if h.row < 0:
            methods.append(None)
            if h.ambiguous:
                ambiguous[names[i]] = list(h.ambiguous)
            elif h.method != "shadowed":
                unmatched.append(names[i])
            continue
        assert h.method is not None
        methods.append(h.method)
        by_method[h.method] += 1
        n_matched += 1
        if h.one_to_many:
            one_to_many.append(names[i])
        if nz[h.row]:
            out[i] = h.row
        else:
            n_zero += 1
    cov = Coverage(
        n_query=len(names),
        n_matched=n_matched,
        n_zero=n_zero,
        unmatched=unmatched,
        n_case_insensitive=by_method["case"],
        by_method={m: n for m, n in by_method.items() if n},
        ambiguous=ambiguous,
        duplicates=duplicates,
        shadowed=shadowed,
        one_to_many=one_to_many,
        methods=methods,
        species=sp,
    )
    return out, cov


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


def _column(var: pd.DataFrame, col: str) -> list[str]:
    return ["" if v is None else str(v) for v in var[col].astype(object).tolist()]


def dataset_identifiers(
    var_names: Sequence[str], var: pd.DataFrame | None = None, *, gene_key: str | None = None
) -> DatasetIds:
    """How to identify a dataset's genes: ``var[gene_key]`` then ``var_names``, or ``var_names``
    then the first symbol column of ``var`` (:data:`SYMBOL_COLUMNS`) when there is one.

    Raises
    ------
    InputError
        ``gene_key`` is not a column of ``var``.
    """
    names = [str(v) for v in var_names]
    if gene_key is not None:
        if var is None or gene_key not in var.columns:
            msg = f"gene_key {gene_key!r} is not a column of var"
            raise InputError(msg)
        return DatasetIds(_column(var, gene_key), names, f"var[{gene_key!r}], then var_names")
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
