"""What every gene text source shares: the protocol, the resolved query and the result table.

A source is a small object that holds its own options and implements :class:`TextSource`:
``texts(genes)`` gives one row per gene in a polars frame (:data:`TEXT_SCHEMA`), and
``describe()`` the parameters that decide the texts (its provenance; for the network sources
also the cache namespace). :class:`Source` is the base the shipped sources build on: it resolves
the genes once through the identity layer and asks the subclass for the rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import polars as pl

from genept_fast.errors import InputError
from genept_fast.genes.hgnc import hgnc
from genept_fast.genes.resolve import Resolution, is_ensembl, resolve

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "HGNC_SOURCE",
    "SPECIES",
    "TEXT_SCHEMA",
    "Query",
    "Row",
    "Source",
    "TextSource",
    "frame",
    "hgnc_text",
]

TEXT_SCHEMA: dict[str, pl.DataType] = {
    "gene": pl.String(),
    "text": pl.String(),
    "source": pl.String(),
    "fetched_at": pl.Datetime("us", "UTC"),
}
#: The ``source`` value of an ``hgnc`` text.
HGNC_SOURCE = "hgnc_name"
SPECIES = ("human", "mouse")
#: One result row: the gene as given, its text (None: none), where it came from, when.
Row = tuple[str, str | None, str, dt.datetime]


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@runtime_checkable
class TextSource(Protocol):
    """A gene text source: what :func:`genept_fast.text.gene_texts` builds and calls."""

    #: The source's name (``"symbol"``, ``"ncbi"``, …).
    name: ClassVar[str]

    def texts(self, genes: Iterable[object]) -> pl.DataFrame:
        """One row per gene, in input order, with the columns of :data:`TEXT_SCHEMA`."""
        ...

    def describe(self) -> dict[str, object]:
        """The parameters that decide the texts (never a secret), for provenance."""
        ...


@dataclasses.dataclass(frozen=True)
class Query:
    """The genes as given, resolved once by the identity layer.

    ``keys`` holds the key to look each gene up by. Symbols and Entrez IDs as given (NCBI and
    chat models know previous symbols and aliases themselves, in their own vintage); Ensembl
    IDs, and mouse genes with ``to_human``, by the current symbol the identity layer resolves
    them to (None when it cannot: an unknown ID, a mouse gene without a human ortholog).
    """

    raw: list[str]
    found: list[Resolution]
    keys: list[str | None]
    when: dt.datetime

    @classmethod
    def of(cls, genes: Iterable[object], *, species: str, to_human: bool) -> Query:
        raw = ["" if g is None else str(g) for g in genes]
        found = resolve(raw, species=species, to_human=to_human)
        keys: list[str | None] = []
        for g, r in zip(raw, found, strict=True):
            text = g.strip()
            if not text:
                keys.append(None)
            elif is_ensembl(text) or (to_human and r.species == "mouse"):
                keys.append(r.symbol if r.resolved else None)
            else:
                keys.append(text)
        return cls(raw, found, keys, now())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source(ABC):
    """The base of the shipped sources: options as dataclass fields, genes resolved once.

    A subclass sets :attr:`name`, declares its options as fields, implements :meth:`rows` and
    extends :meth:`describe` with the options that change a text.

    Parameters
    ----------
    species
        The species of the genes, ``"human"`` or ``"mouse"``.
    to_human
        Look mouse genes up by their human ortholog.
    """

    name: ClassVar[str]
    species: str = "human"
    to_human: bool = False

    def __post_init__(self) -> None:
        if self.species not in SPECIES:
            msg = f"species must be one of {SPECIES}, got {self.species!r}"
            raise InputError(msg)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The names of the source's options (its dataclass fields)."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options :meth:`from_options` reads."""
        return cls.field_names()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Source:
        """The source built from those of ``options`` it takes (others are left alone)."""
        names = cls.field_names()
        return cls(**{k: v for k, v in options.items() if k in names})

    @property
    def lookup_species(self) -> str:
        """The species the genes are looked up in (human with ``to_human``)."""
        return "human" if self.to_human else self.species

    def texts(self, genes: Iterable[object]) -> pl.DataFrame:
        """A text for every gene.

        Returns
        -------
        polars.DataFrame
            One row per input gene, in input order: ``gene`` (the input), ``text`` (null when
            none), ``source`` (where the text came from, or ``missing``) and ``fetched_at``
            (UTC; when the text was obtained, cached or not).
        """
        query = Query.of(genes, species=self.species, to_human=self.to_human)
        return frame(self.rows(query))

    @abstractmethod
    def rows(self, query: Query) -> list[Row]:
        """One :data:`Row` per gene of ``query``, in its order."""

    def describe(self) -> dict[str, object]:
        """The parameters that decide the texts (never a secret)."""
        return {"source": self.name, "species": self.species, "to_human": self.to_human}


def frame(rows: Sequence[Row]) -> pl.DataFrame:
    """The result table of ``rows`` (:data:`TEXT_SCHEMA`)."""
    return pl.DataFrame(
        {
            "gene": [r[0] for r in rows],
            "text": [r[1] for r in rows],
            "source": [r[2] for r in rows],
            "fetched_at": [r[3] for r in rows],
        },
        schema=TEXT_SCHEMA,
    )


def hgnc_text(r: Resolution) -> str | None:
    """``"SYMBOL: approved name"`` of a gene the identity layer resolved to an HGNC record."""
    table = hgnc()
    row = table.by_hgnc_id.get(r.key or "") if r.resolved else None
    if row is None:
        return None
    return f"{table.symbol[row]}: {table.name[row]}" if table.name[row] else table.symbol[row]


def hgnc_rows(query: Query) -> list[Row]:
    """The ``hgnc`` text of every gene of ``query`` (``missing`` where there is none)."""
    rows: list[Row] = []
    for g, r in zip(query.raw, query.found, strict=True):
        text = hgnc_text(r)
        rows.append((g, text, HGNC_SOURCE if text else "missing", query.when))
    return rows
