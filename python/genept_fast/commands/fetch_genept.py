"""``genept-fast fetch-genept``: GenePT's published gene embeddings as a GeneEmbeddings parquet.

The authors' release v2 on Zenodo (record 10833191, ``GenePT_emebdding_v2.zip``, 574,395,233
bytes, md5 ``3f6ce4317e3a0091978ae5cb8fbf05a3``) holds two pickled tables, gene symbol →
vector, and the texts they were embedded from:

- ``ada``: ``GenePT_gene_embedding_ada_text.pickle``, text-embedding-ada-002 (1536 d) of the
  NCBI gene summaries (``NCBI_summary_of_genes.json``);
- ``model3``: ``GenePT_gene_protein_embedding_model_3_text.pickle.`` (sic: the published
  name ends in a dot), text-embedding-3-large (3072 d) of the NCBI + UniProt summaries
  (``NCBI_UniProt_summary_of_genes.json``).

Members are found by their published names (:attr:`Variant.pickles`: the name as published
first, then the same name as a repackaged mirror may spell it). Each member read is checked
before it is unpickled or parsed: its size and sha256 against :data:`PUBLISHED_MEMBERS` where
the authors' values are known (a mismatch is refused, naming both), and hashed and recorded
either way, so the provenance of every table says exactly which bytes it came from
(``source_file_size``, ``source_file_sha256``, ``source_file_verified``).

The zip is downloaded into the cache (``<cache>/genept/``) through a ``.part`` file that a
rerun resumes with an HTTP ``Range`` request, checked against its size and md5, and only then
renamed into place; a verified copy is reused. The chosen pickle is read straight from the zip
by the restricted unpickler of :mod:`genept_fast.table` (nothing but containers, numbers and
arrays) and written as our parquet with its provenance; ``--texts`` writes the summaries as a
gene text table. Outputs are written atomically and never replace an existing file without
``--overwrite``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._inputs import ARROW_SUFFIXES
from genept_fast._outputs import add_overwrite_argument, check_output
from genept_fast._secrets import check_url, public_url
from genept_fast.commands._args import int_range, old_spelling, positive_float, url
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse
    import os

    import polars as pl

    from genept_fast.table import GeneEmbeddings

__all__ = [
    "PUBLISHED_MEMBERS",
    "RELEASE_MD5",
    "RELEASE_SIZE",
    "RELEASE_URL",
    "VARIANTS",
    "fetch_genept",
    "register",
]

ZENODO_RECORD = "10833191"
RELEASE_FILE = "GenePT_emebdding_v2.zip"  # sic: the authors' spelling
RELEASE_URL = f"https://zenodo.org/records/{ZENODO_RECORD}/files/{RELEASE_FILE}?download=1"
RELEASE_SIZE = 574_395_233
RELEASE_MD5 = "3f6ce4317e3a0091978ae5cb8fbf05a3"
CITATION = (
    "Chen Y, Zou J. Simple and effective embedding model for single-cell biology built from "
    "ChatGPT. Nat Biomed Eng (2024); data: doi:10.5281/zenodo.10833191"
)


#: Published (size in bytes, sha256) of the release's members, by file name: data that
#: :func:`fetch_genept` consults before it unpickles or parses a member. A member not listed
#: here is hashed and its values recorded, unverified.
PUBLISHED_MEMBERS: dict[str, tuple[int, str]] = {
    "GenePT_gene_embedding_ada_text.pickle": (
        460_797_248,
        "fd297510ddd3040744033fde0b0f2cf15a40ac8b2fd2fb02f10667295e55c862",
    ),
    "NCBI_summary_of_genes.json": (
        10_982_188,
        "3db721b7cfbc35795428c6a7ab4e8a9c59fb5f5ccb8c64af50dd3c97c2d4de2e",
    ),
}


@dataclass(frozen=True)
class Variant:
    """One of the release's tables and the texts it was embedded from.

    ``pickles`` and ``texts`` are the member names that may hold them, the published name
    first (the model3 pickle's ends in a dot), then the name a repackaged mirror may use.
    """

    pickles: tuple[str, ...]
    texts: tuple[str, ...]
    model_id: str
    text_source: str


VARIANTS = {
    "ada": Variant(
        ("GenePT_gene_embedding_ada_text.pickle",),
        ("NCBI_summary_of_genes.json",),
        "openai:text-embedding-ada-002",
        "genept_ncbi",
    ),
    "model3": Variant(
        (
            "GenePT_gene_protein_embedding_model_3_text.pickle.",
            "GenePT_gene_protein_embedding_model_3_text.pickle",
        ),
        ("NCBI_UniProt_summary_of_genes.json",),
        "openai:text-embedding-3-large",
        "genept_ncbi_uniprot",
    ),
}
#: Bytes read at a time while a member is hashed.
_BLOCK = 1 << 22


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def download_release(
    url: str,
    folder: Path,
    *,
    size: int | None,
    md5: str | None,
    timeout: float = 60.0,
    max_retries: int = 8,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """The release zip in ``folder``, downloaded (resuming a ``.part``) and verified.

    A wrong size or md5 removes the partial download and raises: nothing is installed.
    """
    from genept_fast._http import download

    name = Path(urllib.parse.urlsplit(url).path).name or RELEASE_FILE
    final = folder / name
    fits = final.is_file() and (size is None or final.stat().st_size == size)
    if fits and (md5 is None or _md5(final) == md5.lower()):
        return final
    part = final.with_name(final.name + ".part")
    bar: Any = None
    if progress:
        from genept_fast._progress import progress as progress_meter

        bar = progress_meter(size, unit="B", unit_scale=True, desc=name)
    try:
        got = download(
            url,
            part,
            size=size,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    if size is not None and got != size:
        part.unlink(missing_ok=True)
        msg = f"{public_url(url)}: got {got:,} bytes, expected {size:,}; nothing was installed"
        raise InputError(msg)
    digest = _md5(part)
    if md5 is not None and digest != md5.lower():
        part.unlink(missing_ok=True)
        msg = (
            f"{public_url(url)}: checksum mismatch (md5 {digest}, expected {md5}); the download "
            "was removed and nothing was installed. A mirror (--url) must serve the same "
            "release, or give its checksum with --md5"
        )
        raise InputError(msg)
    part.replace(final)
    return final


def _member(zf: zipfile.ZipFile, names: tuple[str, ...], where: Path) -> str:
    """The one member whose file name is one of ``names`` (outside ``__MACOSX/``)."""
    found = [
        m for m in zf.namelist() if m.rsplit("/", 1)[-1] in names and not m.startswith("__MACOSX/")
    ]
    if len(found) != 1:
        listing = ", ".join(m for m in zf.namelist() if not m.endswith("/"))[:400]
        how = "no" if not found else "more than one"
        msg = f"{where} has {how} {' or '.join(names)} (it holds: {listing})"
        raise InputError(msg)
    return found[0]


@dataclass(frozen=True)
class MemberCheck:
    """What was read of one member: its size and sha256, and whether they are the
    published values (None: none are published for its name)."""

    member: str
    size: int
    sha256: str
    verified: bool | None

    def provenance(self, prefix: str = "source_file") -> dict[str, Any]:
        return {
            prefix: self.member,
            f"{prefix}_size": self.size,
            f"{prefix}_sha256": self.sha256,
            f"{prefix}_verified": self.verified,
        }


def _mismatch(where: str, what: str, got: object, want: object) -> InputError:
    msg = (
        f"{where}: {what} {got}, but the published member has {want}; refusing to read it "
        "(a corrupt download or a different release: delete the cached zip to fetch it again)"
    )
    return InputError(msg)


def check_member(zf: zipfile.ZipFile, member: str, where: Path) -> MemberCheck:
    """Size and sha256 of ``member``, checked against :data:`PUBLISHED_MEMBERS` when its name
    is listed there; read in blocks, before anything parses it.

    Raises
    ------
    InputError
        The member's size or sha256 differs from the published values (a declared size that
        differs is refused before a byte is decompressed; bytes past it stop the read).
    """
    label = f"{where}:{member}"
    published = PUBLISHED_MEMBERS.get(member.rsplit("/", 1)[-1])
    declared = zf.getinfo(member).file_size
    if published is not None and declared != published[0]:
        raise _mismatch(label, "its size is", f"{declared:,} bytes", f"{published[0]:,}")
    h = hashlib.sha256()
    size = 0
    try:
        with zf.open(member) as fh:
            while block := fh.read(_BLOCK):
                size += len(block)
                if published is not None and size > published[0]:
                    raise _mismatch(label, "it holds more than", f"{size:,} bytes", published[0])
                h.update(block)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a CRC error, a truncated member
        msg = f"{label} cannot be read: {exc}"
        raise InputError(msg) from None
    digest = h.hexdigest()
    if published is not None:
        if size != published[0]:
            raise _mismatch(label, "it holds", f"{size:,} bytes", f"{published[0]:,}")
        if digest != published[1]:
            raise _mismatch(label, "its sha256 is", digest, published[1])
    return MemberCheck(member, size, digest, None if published is None else True)


def _texts(zf: zipfile.ZipFile, member: str, variant: Variant, where: Path) -> pl.DataFrame:
    import polars as pl

    from genept_fast.text import TEXT_SCHEMA

    try:
        data = json.loads(zf.read(member).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"{where}:{member} is not JSON: {exc}"
        raise InputError(msg) from None
    if not isinstance(data, dict):
        msg = f"{where}:{member}: expected a JSON object gene → text"
        raise InputError(msg)
    now = dt.datetime.now(dt.timezone.utc)
    genes, texts, sources = [], [], []
    for gene, text in data.items():
        clean = " ".join(text.split()) if isinstance(text, str) else None
        genes.append(str(gene))
        texts.append(clean or None)
        sources.append(variant.text_source if clean else "missing")
    return pl.DataFrame(
        {"gene": genes, "text": texts, "source": sources, "fetched_at": [now] * len(genes)},
        schema=TEXT_SCHEMA,
    )


def fetch_genept(
    output: str | os.PathLike[str],
    *,
    which: str = "ada",
    texts: str | os.PathLike[str] | None = None,
    url: str = RELEASE_URL,
    size: int | None = RELEASE_SIZE,
    md5: str | None = RELEASE_MD5,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
    max_retries: int = 8,
    backoff: float = 1.0,
    progress: bool = True,
) -> GeneEmbeddings:
    """Download GenePT's release (or reuse the cached copy) and write one table as parquet.

    Parameters
    ----------
    output
        The GeneEmbeddings parquet to write.
    which
        ``"ada"`` (text-embedding-ada-002, 1536 d) or ``"model3"`` (text-embedding-3-large,
        3072 d); see :data:`VARIANTS`.
    texts
        Also write the summaries the table was embedded from, as a gene text table.
    url, size, md5
        Where the zip is and what it must be (default: Zenodo's v2 release). ``size``/``md5``
        None skip that check.
    cache_dir
        Cache root (the zip goes to ``<cache_dir>/genept/``); default
        :func:`genept_fast.text.default_cache_dir`.
    overwrite
        Replace existing outputs.
    timeout, max_retries, backoff
        Per-read timeout, retries of a dropped or failed transfer, first wait between them.
    progress
        Show a download progress bar.

    Returns
    -------
    GeneEmbeddings
        The table written (metadata: model, text source, source URL without credentials or
        query, the member read with its size and sha256 and whether they are the published
        ones, the zip's md5, the record; with ``texts`` also the texts member's).

    Raises
    ------
    InputError
        A bad argument or output, a malformed ``url``, a download that is not the release
        (size or md5), a zip without the table, a member whose size or sha256 differs from
        the published values (:data:`PUBLISHED_MEMBERS`), a pickle the restricted unpickler
        refuses.
    ServiceError
        The server refused the download or kept failing; it cannot be reached.
    """
    from genept_fast.table import GeneEmbeddings
    from genept_fast.text import default_cache_dir, write_texts

    check_url(url, option="url")
    if which not in VARIANTS:
        msg = f"which must be one of {sorted(VARIANTS)}, got {which!r}"
        raise InputError(msg)
    out = Path(output)
    texts_out = Path(texts) if texts is not None else None
    check_output(out, overwrite=overwrite)
    if out.suffix.lower() not in (".parquet", *ARROW_SUFFIXES):
        msg = f"{out}: the table is written as .parquet or .arrow"
        raise InputError(msg)
    if texts_out is not None:
        if texts_out.resolve() == out.resolve():
            msg = "--texts and -o name the same file"
            raise InputError(msg)
        check_output(texts_out, overwrite=overwrite)
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "genept"
    zip_path = download_release(
        url,
        folder,
        size=size,
        md5=md5,
        timeout=timeout,
        max_retries=max_retries,
        backoff=backoff,
        progress=progress,
    )
    variant = VARIANTS[which]
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        msg = f"{zip_path} is not a zip file: {exc}"
        raise InputError(msg) from None
    with zf:
        member = _member(zf, variant.pickles, zip_path)
        frame = texts_check = None
        if texts_out is not None:  # checked before the long unpickling: a bad one fails fast
            texts_member = _member(zf, variant.texts, zip_path)
            texts_check = check_member(zf, texts_member, zip_path)
            frame = _texts(zf, texts_member, variant, zip_path)
        check = check_member(zf, member, zip_path)
        meta = {
            "model_id": variant.model_id,
            "text_source": variant.text_source,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": f"GenePT release v2, Zenodo record {ZENODO_RECORD}",
            "source_url": public_url(url),
            **check.provenance(),
            "source_md5": md5 or _md5(zip_path),
            "genept_variant": which,
            "citation": CITATION,
        }
        if texts_check is not None:
            meta.update(texts_check.provenance("texts_file"))
        with zf.open(member) as fh:
            table = GeneEmbeddings.from_genept_pickle(
                fh, where=f"{zip_path}:{member}", metadata=meta
            )
    table.metadata["n_genes"] = len(table)
    table.metadata["missing"] = table.missing
    table.write(out, overwrite=overwrite)
    if texts_out is not None and frame is not None and texts_check is not None:
        provenance = texts_check.provenance("genept_fast.source_file")
        write_texts(
            frame,
            texts_out,
            metadata={
                "genept_fast.text_source": variant.text_source,
                "genept_fast.source_url": public_url(url),
                **{k: str(v) for k, v in provenance.items()},
            },
            overwrite=overwrite,
        )
    return table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "fetch-genept",
        help="download GenePT's published gene embeddings (Zenodo) as a genes.parquet",
        description=(
            "Download the GenePT authors' release v2 (Zenodo record 10833191, "
            f"{RELEASE_FILE}, {RELEASE_SIZE:,} bytes) into the cache, resumable and checked "
            "against its md5, and write one of its tables as a GeneEmbeddings parquet with "
            "provenance: ada (text-embedding-ada-002 of NCBI summaries, 1536 d) or model3 "
            "(text-embedding-3-large of NCBI + UniProt summaries, 3072 d)."
        ),
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="output .parquet or .arrow")
    p.add_argument("--which", choices=sorted(VARIANTS), default="ada", help="which table")
    p.add_argument("--texts", type=Path, help="also write the summaries as a gene text table")
    p.add_argument("--url", type=url, default=RELEASE_URL, help="where the zip is (a mirror)")
    p.add_argument("--md5", default=RELEASE_MD5, help="expected md5 of the zip")
    p.add_argument(
        "--size", type=int_range(0), default=RELEASE_SIZE, help="expected bytes of the zip"
    )
    p.add_argument("--cache-dir", type=Path, help="cache root (default: ~/.cache/genept-fast)")
    add_overwrite_argument(p)
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per read")
    old_spelling(p, "--retries", "--max-retries")
    p.add_argument(
        "--max-retries", type=int_range(0, 1000), default=8, help="resumes of a dropped transfer"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = fetch_genept(
        args.output,
        which=args.which,
        texts=args.texts,
        url=args.url,
        size=args.size if args.size and args.size > 0 else None,
        md5=args.md5 or None,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        timeout=args.timeout,
        max_retries=args.max_retries,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(f"wrote {args.output}: {table}")
        if args.texts is not None:
            print(f"wrote {args.texts}: the summaries the table was embedded from")
    return 0
