"""``genept-fast fetch-genept``: GenePT's published gene embeddings as a GeneEmbeddings parquet.

The authors' release v2 on Zenodo (record 10833191, ``GenePT_emebdding_v2.zip``, 574,395,233
bytes, md5 ``3f6ce4317e3a0091978ae5cb8fbf05a3``) holds two pickled tables, gene symbol →
vector, and the texts they were embedded from:

- ``ada``: ``GenePT_gene_embedding_ada_text.pickle``, text-embedding-ada-002 (1536 d) of the
  NCBI gene summaries (``NCBI_summary_of_genes.json``);
- ``model3``: ``GenePT_gene_protein_embedding_model_3_text.pickle``, text-embedding-3-large
  (3072 d) of the NCBI + UniProt summaries (``NCBI_UniProt_summary_of_genes.json``).

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
import sys
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._outputs import add_overwrite_argument, check_output
from genept_fast.commands._args import int_range, positive_float
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse
    import os

    import polars as pl

    from genept_fast.table import GeneEmbeddings

__all__ = ["RELEASE_MD5", "RELEASE_SIZE", "RELEASE_URL", "VARIANTS", "fetch_genept", "register"]

ZENODO_RECORD = "10833191"
RELEASE_FILE = "GenePT_emebdding_v2.zip"  # sic: the authors' spelling
RELEASE_URL = f"https://zenodo.org/records/{ZENODO_RECORD}/files/{RELEASE_FILE}?download=1"
RELEASE_SIZE = 574_395_233
RELEASE_MD5 = "3f6ce4317e3a0091978ae5cb8fbf05a3"
CITATION = (
    "Chen Y, Zou J. Simple and effective embedding model for single-cell biology built from "
    "ChatGPT. Nat Biomed Eng (2024); data: doi:10.5281/zenodo.10833191"
)


@dataclass(frozen=True)
class Variant:
    """One of the release's tables and the texts it was embedded from."""

    pickle: str
    texts: str
    model_id: str
    text_source: str


VARIANTS = {
    "ada": Variant(
        "GenePT_gene_embedding_ada_text.pickle",
        "NCBI_summary_of_genes.json",
        "openai:text-embedding-ada-002",
        "genept_ncbi",
    ),
    "model3": Variant(
        "GenePT_gene_protein_embedding_model_3_text.pickle",
        "NCBI_UniProt_summary_of_genes.json",
        "openai:text-embedding-3-large",
        "genept_ncbi_uniprot",
    ),
}


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
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=name, file=sys.stderr)
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
        msg = f"{url}: got {got:,} bytes, expected {size:,}; nothing was installed"
        raise InputError(msg)
    digest = _md5(part)
    if md5 is not None and digest != md5.lower():
        part.unlink(missing_ok=True)
        msg = (
            f"{url}: checksum mismatch (md5 {digest}, expected {md5}); the download was removed "
            "and nothing was installed. A mirror (--url) must serve the same release, or give "
            "its checksum with --md5"
        )
        raise InputError(msg)
    part.replace(final)
    return final


def _member(zf: zipfile.ZipFile, name: str, where: Path) -> str:
    found = [m for m in zf.namelist() if Path(m).name == name and not m.startswith("__MACOSX/")]
    if len(found) != 1:
        listing = ", ".join(m for m in zf.namelist() if not m.endswith("/"))[:400]
        how = "no" if not found else "more than one"
        msg = f"{where} has {how} {name} (it holds: {listing})"
        raise InputError(msg)
    return found[0]


def _texts(zf: zipfile.ZipFile, member: str, variant: Variant, where: Path) -> pl.DataFrame:
    import polars as pl

    from genept_fast.genes.text import TEXT_SCHEMA

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
        :func:`genept_fast.genes.text.default_cache_dir`.
    overwrite
        Replace existing outputs.
    timeout, max_retries, backoff
        Per-read timeout, retries of a dropped or failed transfer, first wait between them.
    progress
        Show a download progress bar.

    Returns
    -------
    GeneEmbeddings
        The table written (metadata: model, text source, source URL, file, md5, record).
    """
    from genept_fast.genes.text import default_cache_dir, write_texts
    from genept_fast.table import GeneEmbeddings

    if which not in VARIANTS:
        msg = f"which must be one of {sorted(VARIANTS)}, got {which!r}"
        raise InputError(msg)
    out = Path(output)
    texts_out = Path(texts) if texts is not None else None
    check_output(out, overwrite=overwrite)
    if out.suffix.lower() != ".parquet":
        msg = f"{out}: the table is written as .parquet"
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
        member = _member(zf, variant.pickle, zip_path)
        meta = {
            "model_id": variant.model_id,
            "text_source": variant.text_source,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": f"GenePT release v2, Zenodo record {ZENODO_RECORD}",
            "source_url": url.split("?", 1)[0],
            "source_file": member,
            "source_md5": md5 or _md5(zip_path),
            "genept_variant": which,
            "citation": CITATION,
        }
        with zf.open(member) as fh:
            table = GeneEmbeddings.from_genept_pickle(
                fh, where=f"{zip_path}:{member}", metadata=meta
            )
        frame = None
        if texts_out is not None:
            frame = _texts(zf, _member(zf, variant.texts, zip_path), variant, zip_path)
    table.metadata["n_genes"] = len(table)
    table.metadata["missing"] = table.missing
    table.write(out, overwrite=overwrite)
    if texts_out is not None and frame is not None:
        write_texts(
            frame,
            texts_out,
            metadata={"genept_fast.text_source": variant.text_source},
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
    p.add_argument("-o", "--output", required=True, type=Path, help="output .parquet")
    p.add_argument("--which", choices=sorted(VARIANTS), default="ada", help="table (ada)")
    p.add_argument("--texts", type=Path, help="also write the summaries as a gene text table")
    p.add_argument("--url", default=RELEASE_URL, help="where the zip is (a mirror)")
    p.add_argument("--md5", default=RELEASE_MD5, help="expected md5 of the zip")
    p.add_argument(
        "--size", type=int_range(0), default=RELEASE_SIZE, help="expected bytes of the zip"
    )
    p.add_argument("--cache-dir", type=Path, help="cache root (default: ~/.cache/genept-fast)")
    add_overwrite_argument(p)
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per read")
    p.add_argument(
        "--retries", type=int_range(0, 1000), default=8, help="resumes of a dropped transfer"
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
        max_retries=args.retries,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if not args.quiet:
        print(f"wrote {args.output}: {table}")
        if args.texts is not None:
            print(f"wrote {args.texts}: the summaries the table was embedded from")
    return 0
