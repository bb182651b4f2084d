"""What an input file is, checked before any work starts.

:func:`sniff` says what a path holds from its content, not its name: the HDF5 signature
(``h5py.is_hdf5``) and then the groups inside (AnnData ``.h5ad``, 10x Genomics ``.h5``,
``.loom``), a zarr group's metadata (AnnData ``.zarr`` or another store), a 10x Matrix Market
folder, the Matrix Market header, the parquet, Arrow IPC, zip, gzip and pickle magic bytes, else
text or binary. The ``require_*`` functions turn a mismatch into one
:class:`~genept_fast.errors.InputError` line naming the file and what it is; formats that
scanpy or anndata can read (10x ``.h5``, 10x folders and ``.mtx``, ``.loom``) get the one
command that converts them to ``.h5ad``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast.errors import InputError

if TYPE_CHECKING:
    import os

__all__ = [
    "ARROW_MAGIC",
    "ARROW_SUFFIXES",
    "GENE_TABLE_EXPECT",
    "GENE_TABLE_KINDS",
    "Sniffed",
    "check_claim",
    "conversion_hint",
    "require_anndata",
    "require_table",
    "sniff",
]

_HEAD = 4096
_MTX = b"%%matrixmarket"

#: The first bytes of an Arrow IPC file, and the suffixes that name one.
ARROW_MAGIC = b"ARROW1"
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")

#: The :func:`sniff` kinds a gene-embedding table may be (``GeneEmbeddings.read``), and the
#: words for a message about a file that is none of them.
GENE_TABLE_KINDS = ("parquet", "arrow", "pickle")
GENE_TABLE_EXPECT = "a gene-embedding table (parquet or Arrow from embed-genes, or GenePT's pickle)"


@dataclass(frozen=True)
class Sniffed:
    """What a path holds: ``kind`` (a short name) and ``what`` (words for a message)."""

    kind: str
    what: str


def _h5_kind(path: Path) -> Sniffed:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            enc = f.attrs.get("encoding-type")
            enc = enc.decode() if isinstance(enc, bytes) else enc
            if enc == "anndata" or {"obs", "var"} <= keys:
                return Sniffed("h5ad", "an AnnData .h5ad file")
            if "matrix" in keys and isinstance(f["matrix"], h5py.Group):
                m = f["matrix"]
                if "barcodes" in m and ("features" in m or "genes" in m):
                    return Sniffed("10x-h5", "a 10x Genomics HDF5 matrix (.h5)")
            if "matrix" in keys and ("row_attrs" in keys or "col_attrs" in keys):
                return Sniffed("loom", "a .loom file")
            for key in keys:
                g = f[key]
                if isinstance(g, h5py.Group) and {"barcodes", "genes", "data"} <= set(g.keys()):
                    return Sniffed("10x-h5", "a 10x Genomics HDF5 matrix (.h5, v2)")
    except OSError as exc:
        return Sniffed("hdf5-broken", f"a truncated or corrupt HDF5 file ({exc})")
    return Sniffed("hdf5", "an HDF5 file that is not AnnData (no obs/var groups)")


def _zarr_kind(path: Path) -> Sniffed:
    try:
        import zarr

        g: Any = zarr.open_group(str(path), mode="r")
        keys = set(g.keys())
    except Exception as exc:
        return Sniffed("zarr-broken", f"a zarr store that cannot be opened ({exc})")
    if {"obs", "var"} <= keys:
        return Sniffed("zarr-anndata", "an AnnData .zarr store")
    return Sniffed("zarr", "a zarr store that is not AnnData (no obs/var groups)")


def _tenx_dir(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    has_matrix = bool(names & {"matrix.mtx", "matrix.mtx.gz"})
    has_genes = bool(names & {"features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz"})
    return has_matrix and has_genes


def _text_kind(head: bytes) -> Sniffed:
    if b"\0" in head:
        return Sniffed("binary", "a binary file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the end of the sample
            return Sniffed("binary", "a binary file (not UTF-8 text)")
    if head.lstrip().lower().startswith(_MTX):
        return Sniffed("mtx", "a Matrix Market matrix (.mtx)")
    return Sniffed("text", "a text file")


def _dir_kind(p: Path) -> Sniffed:
    if any((p / m).is_file() for m in ("zarr.json", ".zgroup")):
        return _zarr_kind(p)
    if _tenx_dir(p):
        return Sniffed("10x-dir", "a 10x Genomics matrix folder (matrix.mtx + features.tsv)")
    return Sniffed("directory", "a folder")


def _magic_kind(p: Path, head: bytes) -> Sniffed | None:
    """What the first bytes of a non-HDF5 file say it is, if they say."""
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return Sniffed("hdf5-broken", "a truncated or corrupt HDF5 file")
    if head.startswith(b"PAR1"):
        return Sniffed("parquet", "a parquet file")
    if head.startswith(ARROW_MAGIC):
        return Sniffed("arrow", "an Arrow IPC file")
    if head.startswith(b"PK\x03\x04"):
        return Sniffed("zip", "a zip archive")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return Sniffed("pickle", "a Python pickle")
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(p, "rb") as g:
                inner = _text_kind(g.read(_HEAD))
        except (OSError, EOFError):
            return Sniffed("binary", "a corrupt gzip file")
        return Sniffed(f"gzip-{inner.kind}", f"{inner.what}, gzip-compressed")
    return None


def sniff(path: str | os.PathLike[str]) -> Sniffed:
    """What ``path`` holds, from its content (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        return Sniffed("missing", "not found")
    if p.is_dir():
        return _dir_kind(p)
    try:
        with p.open("rb") as f:
            head = f.read(_HEAD)
    except OSError as exc:
        return Sniffed("unreadable", f"unreadable ({exc.strerror or exc})")
    if not head:
        return Sniffed("empty", "an empty file")
    import h5py

    if h5py.is_hdf5(str(p)):
        return _h5_kind(p)
    return _magic_kind(p, head) or _text_kind(head)


#: What a file's suffix claims it holds: suffix → (words, kinds from :func:`sniff` that fit).
_CLAIMS: dict[str, tuple[str, frozenset[str]]] = {
    ".h5ad": ("an AnnData .h5ad file", frozenset({"h5ad"})),
    ".zarr": ("an AnnData .zarr store", frozenset({"zarr-anndata", "zarr"})),
    ".parquet": ("a parquet file", frozenset({"parquet"})),
    ".pq": ("a parquet file", frozenset({"parquet"})),
    **{suffix: ("an Arrow IPC file", frozenset({"arrow"})) for suffix in ARROW_SUFFIXES},
    ".loom": ("a .loom file", frozenset({"loom"})),
    ".mtx": ("a Matrix Market file", frozenset({"mtx"})),
    ".pickle": ("a pickle", frozenset({"pickle"})),
    ".pkl": ("a pickle", frozenset({"pickle"})),
    ".csv": ("a CSV table", frozenset({"text"})),
    ".tsv": ("a TSV table", frozenset({"text"})),
    ".txt": ("a text file", frozenset({"text"})),
    ".gz": ("a gzip file", frozenset({"gzip-text", "gzip-mtx"})),
}


def check_claim(
    path: str | os.PathLike[str], found: Sniffed | None = None, *, role: str | None = None
) -> Sniffed:
    """``sniff(path)``, or a one-line error when the content is not what the suffix says.

    ``role`` (``"--file"``...) is put in front of the path in the message.
    """
    p = Path(path)
    found = sniff(p) if found is None else found
    claim = _CLAIMS.get(p.suffix.lower())
    if claim is not None and found.kind not in claim[1] and found.kind != "missing":
        who = f"{role} {p}" if role else str(p)
        msg = f"{who} is named like {claim[0]} but is {found.what}"
        raise InputError(msg)
    return found


def _py(s: str | Path) -> str:
    return repr(str(s))


def _h5ad_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".mtx", ".h5", ".loom", ".hdf5"):
        name = name.removesuffix(suffix)
    return str(path.with_name((name or "converted") + ".h5ad"))


def conversion_hint(path: Path, kind: str) -> str | None:
    """How to convert a ``kind`` file (from :func:`sniff`) to ``.h5ad`` (a command), if known."""
    out = _h5ad_name(path)
    if kind == "10x-h5":
        read = f"sc.read_10x_h5({_py(path)})"
    elif kind == "10x-dir":
        read = f"sc.read_10x_mtx({_py(path)})"
        out = str(path.with_name(path.name.rstrip("/") + ".h5ad"))
    elif kind in ("mtx", "gzip-mtx"):
        folder = path.parent
        if _tenx_dir(folder):
            read = f"sc.read_10x_mtx({_py(folder)})"
            out = str(folder.with_name(folder.name + ".h5ad"))
        else:
            return (
                "it has no gene names: read it with them and write an .h5ad, e.g. python -c"
                f' "import scanpy as sc; a = sc.read_mtx({_py(path)}).T;'
                " a.var_names = open('genes.txt').read().split();"
                f' a.write_h5ad({_py(out)})"'
            )
    elif kind == "loom":
        return (
            'convert it once: pip install loompy && python -c "import anndata as ad;'
            f' ad.io.read_loom({_py(path)}).write_h5ad({_py(out)})"'
        )
    else:
        return None
    return f'convert it once: python -c "import scanpy as sc; {read}.write_h5ad({_py(out)})"'


def require_anndata(path: str | os.PathLike[str], *, role: str = "input") -> str:
    """``"h5ad"`` or ``"zarr"`` for an AnnData ``path``; else a one-line ``InputError``.

    ``role`` names the argument in the message (``"input"``, ``"--genes"``...).
    """
    p = Path(path)
    s = sniff(p)
    if s.kind == "h5ad":
        return "h5ad"
    if s.kind == "zarr-anndata":
        return "zarr"
    if s.kind == "missing":
        msg = f"{role} not found: {p}"
        raise FileNotFoundError(msg)
    hint = conversion_hint(p, s.kind)
    if hint:
        msg = f"cannot read {p} as AnnData: it is {s.what}; {hint}"
    else:
        msg = f"cannot read {p} as AnnData (.h5ad or .zarr): it is {s.what}"
    raise InputError(msg)


def require_table(
    path: str | os.PathLike[str],
    *,
    role: str,
    allowed: tuple[str, ...] = ("parquet", "text"),
    expect: str = "a parquet or CSV/TSV table",
) -> str:
    """The :func:`sniff` kind of ``path`` if it is one of ``allowed``; else a one-line error."""
    p = Path(path)
    s = sniff(p)
    if s.kind == "missing":
        msg = f"{role} not found: {p}"
        raise FileNotFoundError(msg)
    if s.kind in allowed:
        check_claim(p, s, role=role)
        return s.kind
    msg = f"{role} {p} is {s.what}, not {expect}"
    raise InputError(msg)
