"""Streamed GenePT-s: a started GenePT-s job (:func:`genept_fast.encode.start_sentences`) whose
chunks' sentences are embedded by a text model and go to a file.

:func:`encode_sentences` is to GenePT-s what :func:`genept_fast.stream.encode_weighted` is to
GenePT-w: the cells of a larger-than-memory AnnData file written as sentences of their top
genes (:class:`genept_fast.encode.SentenceBuilder`), embedded chunk by chunk by an
:class:`~genept_fast.embed.Embedder` and streamed to ``output``, resumably; every embedding is
also cached by content by the embedder. :func:`estimate_sentences` prices the same job without
sending anything.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from genept_fast.encode import merge_uns, start_sentences
from genept_fast.errors import InputError
from genept_fast.kernels import DEFAULT_PREFIX
from genept_fast.stream.pipeline import StreamReport, check_output_args, encode_cells

if TYPE_CHECKING:
    import os

    from genept_fast.cells import ChunkSource
    from genept_fast.embed import CostEstimate, Embedder

__all__ = ["encode_sentences", "estimate_sentences"]


def estimate_sentences(
    input: str | os.PathLike[str] | ChunkSource,
    embedder: Embedder | str = "local",
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    chunk_size: int = 10_000,
    **options: Any,
) -> CostEstimate:
    """Tokens, price and time of :func:`encode_sentences` with the same arguments; nothing is
    embedded or sent (``options``: ``gene_key``, ``top_n``, ``prefix``, ``sep``,
    ``max_input_tokens``, ``n_threads``, ``gene_key_flag``, as for
    :func:`genept_fast.encode.start_sentences`)."""
    with start_sentences(
        input, embedder, layer=layer, use_raw=use_raw, chunk_size=chunk_size, **options
    ) as job:
        sentences, _, _, tokens = job.build_all()
    return job.encoder.embedder.estimate(sentences, token_counts=tokens.tolist())


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
    layer: str | None = None,
    use_raw: bool | None = None,
    chunk_size: int = 10_000,
    output_dtype: str = "float32",
    key: str = "X_genept_s",
    uns: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    gene_key_flag: str = "gene_key=",
    **kw: Any,
) -> StreamReport:
    """GenePT-s embeddings of every cell of a large AnnData file, streamed to ``output``.

    The job starts as every GenePT-s job does (:func:`genept_fast.encode.start_sentences`) and
    its :class:`~genept_fast.encode.SentenceEncoder` writes each chunk's sentences (as
    :func:`genept_fast.tl.genept_s` writes them) and embeds them with ``embedder``. Killed,
    the same call resumes where it stopped (the resume manifest records the model, the options
    and the genes); sentences embedded before are also served by the embedder's cache. The
    output's width is the embedder's dimension, or, when the embedder does not say it, that of
    the first chunk's embeddings (no probe request is sent).

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
        ``gene_key_flag``: how messages name it.
    top_n, prefix, sep, max_input_tokens
        As for :func:`genept_fast.tl.genept_s`.
    n_threads
        Threads for the ranking kernel.
    layer, use_raw, chunk_size, output_dtype, key, uns, overwrite, progress
        As for :func:`encode_file`; no preprocessing is applied (ranking is the same on counts
        and on log-normalised values).
    **kw
        Passed on (``resume``).

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
    t0 = time.perf_counter()
    out = check_output_args(input, output, key=key, output_dtype=output_dtype, overwrite=overwrite)
    with start_sentences(
        input,
        embedder,
        gene_key=gene_key,
        top_n=top_n,
        prefix=prefix,
        sep=sep,
        max_input_tokens=max_input_tokens,
        n_threads=n_threads,
        layer=layer,
        use_raw=use_raw,
        chunk_size=chunk_size,
        progress=progress,
        gene_key_flag=gene_key_flag,
    ) as job:
        enc = job.encoder
        dim = enc.embedder.dimension
        report = encode_cells(
            job.cells,
            out,
            encoder=enc,
            dim=None if dim is None else int(dim),
            fused=True,
            uns=merge_uns(job.record(int(dim or 0)), uns),
            progress=progress,
            encoder_id=enc.fingerprint,
            t0=t0,
            **kw,
        )
    report.encoder_stats = {
        "n_cells": enc.n_cells,
        "n_cut": enc.n_cut,
        "n_empty": enc.n_empty,
        "max_input_tokens": int(enc.builder.max_input_tokens),
    }
    return report
