"""Streamed GenePT-s: :func:`encode_file` with a text model embedding each chunk's sentences.

:func:`encode_sentences` is to GenePT-s what :func:`genept_fast.stream.encode_weighted` is to
GenePT-w: the cells of a larger-than-memory AnnData file written as sentences of their top
genes (:class:`genept_fast.encode.SentenceBuilder`), embedded chunk by chunk by an
:class:`~genept_fast.embed.Embedder` and streamed to ``output``, resumable; every embedding is
also cached by content by the embedder. :func:`estimate_sentences` prices the same job without
sending anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from genept_fast.encode import (
    SentenceEncoder,
    as_embedder,
    resolve_gene_symbols,
    sentence_record,
)
from genept_fast.errors import InputError
from genept_fast.kernels import DEFAULT_PREFIX
from genept_fast.stream.pipeline import StreamReport, encode_file
from genept_fast.stream.sources import ChunkSource, open_source, source_matrix, source_var

if TYPE_CHECKING:
    import os

    from genept_fast.embed import CostEstimate, Embedder

__all__ = ["encode_sentences", "estimate_sentences", "sentence_encoder"]


def sentence_encoder(
    source: ChunkSource,
    embedder: Embedder | str = "local",
    *,
    gene_key: str | None = None,
    top_n: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    max_input_tokens: int | None = None,
    n_threads: int | None = None,
    progress: bool = False,
) -> tuple[SentenceEncoder, str]:
    """The :class:`~genept_fast.encode.SentenceEncoder` of a source's genes, and how their
    symbols were found (:func:`genept_fast.encode.resolve_gene_symbols`).

    Raises
    ------
    InputError
        No gene of the source has a symbol.
    """
    emb = as_embedder(embedder)
    symbols, how = resolve_gene_symbols(source.var_names, source_var(source), gene_key=gene_key)
    enc = SentenceEncoder(
        emb,
        symbols,
        top_n=top_n,
        prefix=prefix,
        sep=sep,
        max_input_tokens=max_input_tokens,
        n_threads=n_threads,
        progress=progress,
    )
    if not enc.builder.usable.any():
        msg = (
            f"no gene of {source.name} has a symbol ({how}); name a var column of gene symbols"
            " with gene_key= (command line: --gene-key)"
        )
        raise InputError(msg)
    return enc, how


def _source(
    input: str | os.PathLike[str] | ChunkSource, layer: str | None, use_raw: bool
) -> tuple[ChunkSource, bool]:
    if isinstance(input, ChunkSource):
        if layer is not None or use_raw:
            msg = "layer= and use_raw= apply to file inputs; a ChunkSource selects its own matrix"
            raise InputError(msg)
        return input, False
    return open_source(input, layer=layer, use_raw=use_raw), True


def estimate_sentences(
    input: str | os.PathLike[str] | ChunkSource,
    embedder: Embedder | str = "local",
    *,
    layer: str | None = None,
    use_raw: bool = False,
    chunk_size: int = 10_000,
    **options: Any,
) -> CostEstimate:
    """Tokens, price and time of :func:`encode_sentences` with the same arguments; nothing is
    embedded or sent (``options``: those of :func:`sentence_encoder`)."""
    source, own = _source(input, layer, use_raw)
    try:
        enc, _ = sentence_encoder(source, embedder, **options)
        sentences: list[str] = []
        tokens: list[int] = []
        step = max(int(chunk_size), 1)
        for a in range(0, source.n_cells, step):
            s, _, _, t = enc.builder.build_counted(source.read(a, min(a + step, source.n_cells)))
            sentences.extend(s)
            tokens.extend(t.tolist())
        return enc.embedder.estimate(sentences, token_counts=tokens)
    finally:
        if own:
            source.close()


def encode_sentences(
    input: str | os.PathLike[str] | ChunkSource,
    output: str | os.PathLike[str],
    embedder: Embedder | str = "local",
    *,
    gene_key: str | None = None,
    top_n: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    sep: str = " ",
    max_input_tokens: int | None = None,
    n_threads: int | None = None,
    key: str = "X_genept_s",
    **kw: Any,
) -> StreamReport:
    """GenePT-s embeddings of every cell of a large AnnData file, streamed to ``output``.

    :func:`encode_file` with a :class:`~genept_fast.encode.SentenceEncoder` as the encoder:
    each chunk's cells are written as sentences (as :func:`genept_fast.tl.genept_s` writes
    them) and embedded by ``embedder``. Killed, the same call resumes where it stopped (the
    resume manifest records the model, the options and the genes); sentences embedded before
    are also served by the embedder's cache.

    Parameters
    ----------
    input, output
        As for :func:`encode_file`.
    embedder
        An :class:`~genept_fast.embed.Embedder` or a spec for
        :func:`~genept_fast.embed.get_embedder` (``"local"``, ``"openai:text-embedding-3-small"``).
    gene_key
        A ``var`` column of gene symbols to write (default: ``var_names``, or a symbol column
        of ``var`` when they are Ensembl IDs; see :func:`genept_fast.encode.resolve_gene_symbols`).
    top_n, prefix, sep, max_input_tokens
        As for :func:`genept_fast.tl.genept_s`.
    n_threads
        Threads for the ranking kernel.
    key
        Array name in ``.zarr`` and ``obsm`` key in ``.h5ad`` outputs.
    **kw
        Passed to :func:`encode_file` (``layer``, ``use_raw``, ``chunk_size``, ``output_dtype``,
        ``progress``, ``resume``, ``uns``, ``overwrite``); no preprocessing is applied (ranking
        is the same on counts and on log-normalised values).

    Returns
    -------
    :class:`StreamReport`; its ``encoder_stats`` count the cells encoded by this call, the
    sentences cut at the token limit and the cells without a usable expressed gene (zero
    vectors).
    """
    for name in ("encoder", "dim", "preprocess", "fingerprint"):
        if name in kw:
            msg = f"encode_sentences builds the encoder itself; do not pass {name}="
            raise InputError(msg)
    source, own = _source(input, kw.pop("layer", None), kw.pop("use_raw", False))
    try:
        enc, how = sentence_encoder(
            source,
            embedder,
            gene_key=gene_key,
            top_n=top_n,
            prefix=prefix,
            sep=sep,
            max_input_tokens=max_input_tokens,
            n_threads=n_threads,
            progress=bool(kw.get("progress", True)),
        )
        emb = enc.embedder
        if emb.dimension is None:
            emb.dimension = int(emb.embed(["A cell"]).shape[1])
        record = sentence_record(
            enc.builder,
            emb,
            dimension=int(emb.dimension),
            matrix=source_matrix(source),
            gene_symbols=how,
        )
        extra = dict(kw.pop("uns", None) or {})
        params = {**record["params"], **dict(extra.pop("params", None) or {})}
        report = encode_file(
            source,
            output,
            encoder=enc,
            dim=int(emb.dimension),
            preprocess="none",
            key=key,
            fingerprint=enc.fingerprint,
            uns={**record, **extra, "params": params},
            **kw,
        )
        report.encoder_stats = {
            "n_cells": enc.n_cells,
            "n_cut": enc.n_cut,
            "n_empty": enc.n_empty,
            "max_input_tokens": int(enc.builder.max_input_tokens),
        }
        return report
    finally:
        if own:
            source.close()
