"""``genept-fast encode``: GenePT-w or GenePT-s cell embeddings of an .h5ad / .zarr file.

The file is streamed (bounded memory, resumable; see :mod:`genept_fast.stream`): GenePT-w runs
the Rust kernel on each chunk; GenePT-s writes each chunk's cell sentences and embeds them with
the chosen text model. The output suffix picks the format: ``.h5ad`` (the input's ``obs`` and the
embedding in ``obsm``; ``X`` is not copied), ``.parquet`` (``obs_name`` + ``embedding``), ``.zarr``
or ``.npy``. With ``--into STORE`` the result goes into the user's AnnData instead
(:mod:`genept_fast._into`): the stream writes a hidden ``.npy`` beside ``STORE`` (resumable),
which is then moved into it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._inputs import (
    GENE_TABLE_EXPECT,
    GENE_TABLE_KINDS,
    require_anndata,
    require_table,
)
from genept_fast._outputs import add_overwrite_argument
from genept_fast.commands._args import (
    add_embedder_arguments,
    build_embedder,
    embedder_flags_given,
    int_range,
    old_spelling,
)
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from genept_fast._into import IntoPlan

log = logging.getLogger("genept_fast.encode")

DESCRIPTION = """\
GenePT-w or GenePT-s cell embeddings of an AnnData .h5ad file or .zarr store.

The file is streamed in chunks of cells (bounded memory) and the job is resumable: killed, the
same command continues where it stopped. GenePT-w weighs the gene embeddings of --genes by each
cell's expression; GenePT-s writes each cell's top genes as a sentence and embeds it with the
text model of --embedder.

The output's suffix picks its format: .h5ad (the input's obs, the embedding in obsm; X is not
copied), .parquet (columns obs_name and embedding), .zarr or .npy. An existing output is
refused unless --overwrite is given. 10x .h5, .mtx folders and .loom files are refused with
the command that converts them to .h5ad.

--into STORE puts the result into the user's own AnnData instead: obsm[KEY] and uns[KEY] are
added in place to an existing AnnData .zarr store (whose cells must be the input's; an existing
KEY is refused unless --overwrite; nothing else in the store changes but its consolidated
metadata), or a new .zarr / .h5ad is written that is the input plus the new keys. A .h5ad file
is never changed in place: an existing one is replaced (by a copy of it plus the keys) only with
--overwrite, and never when it is the input. Run encode twice (-m w, then -m s) into one store,
then `genept-fast evaluate STORE --obsm X_genept_w X_genept_s X_pca` compares them."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "encode",
        help="GenePT-w / GenePT-s cell embeddings of an .h5ad or .zarr file (streamed, resumable)",
        description=DESCRIPTION,
    )
    p.add_argument("input", help="input AnnData (.h5ad or .zarr), or a TileDB-SOMA experiment URI")
    p.add_argument("-m", "--method", choices=["w", "s"], default="w", help="GenePT-w or GenePT-s")
    p.add_argument(
        "--genes", help="gene-embedding table for -w: our parquet or Arrow file, or GenePT's pickle"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-o", "--output", help="new file: .h5ad (obs + the embedding), .parquet, .zarr or .npy"
    )
    where.add_argument(
        "--into",
        metavar="STORE",
        help="put obsm[KEY] and uns[KEY] into the user's AnnData: an existing .zarr store (in"
        " place), or a new .zarr / .h5ad that is the input plus the new keys",
    )
    p.add_argument(
        "--layer",
        help="read adata.layers[LAYER] instead of X; for a SOMA experiment the X layer"
        " (default: raw, or the only one)",
    )
    p.add_argument(
        "--use-raw",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read adata.raw.X (default: when the file has raw and no --layer is given)",
    )
    p.add_argument(
        "--gene-key",
        help="var column of gene identifiers: -w matches it first, then var_names (default:"
        " var_names, then a symbol column such as feature_name); -s writes it in sentences",
    )
    p.add_argument(
        "--preprocess",
        choices=["auto", "log1p", "none"],
        default="auto",
        help="-w: log-normalise raw counts (auto: when the values look like counts)",
    )
    p.add_argument(
        "--top-n",
        type=int_range(),
        help="-s: most genes per sentence (default: 25 for wordllama, else as many as the "
        "model's token limit holds)",
    )
    p.add_argument("--prefix", help="-s: sentence prefix")
    p.add_argument(
        "--max-input-tokens",
        type=int_range(),
        help="-s: cut sentences at this many tokens (default: the model's limit)",
    )
    p.add_argument(
        "--key-added",
        metavar="KEY",
        help="obsm / uns key, array name (default: X_genept_w or X_genept_s)",
    )
    old_spelling(p, "--key", "--key-added")
    p.add_argument("--chunk-size", type=int_range(), default=10_000, help="cells per chunk")
    p.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32", help="embedding dtype"
    )
    p.add_argument("--threads", type=int_range(), help="kernel threads (default: all cores)")
    p.add_argument("--no-resume", action="store_true", help="discard partial work and restart")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the genes matched (-w) or tokens/price/time (-s); write and embed nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_soma_arguments(p)
    add_embedder_arguments(p, applies="--method s")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


SOMA_FLAGS = (
    ("--measurement", "measurement"),
    ("--obs-filter", "obs_filter"),
    ("--var-key", "var_key"),
)


def _add_soma_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "TileDB-SOMA / CELLxGENE Census input (the 'soma' extra)",
        "INPUT is a SOMA experiment (a local folder, tiledb:// or s3:// URI); the output is"
        " keyed by soma_joinid, and --into URI writes ms[MEASUREMENT].obsm[KEY] into it",
    )
    g.add_argument("--measurement", help="the measurement read (default: RNA)")
    g.add_argument(
        "--obs-filter",
        metavar="FILTER",
        help="SOMA value filter on obs, e.g. \"cell_type == 'T cell'\" (default: every cell)",
    )
    g.add_argument(
        "--var-key",
        metavar="COLUMN",
        help="var column of gene names (default: feature_name, else var_id)",
    )


def _is_soma(args: argparse.Namespace) -> bool:
    from genept_fast.soma import is_soma_uri

    return is_soma_uri(args.input)


def _check_soma_args(args: argparse.Namespace) -> None:
    """Flags that belong to one kind of input only."""
    if _is_soma(args):
        if args.use_raw is not None:
            msg = "--use-raw is for an AnnData input; a SOMA experiment has X layers (--layer)"
            raise InputError(msg)
        return
    given = [flag for flag, name in SOMA_FLAGS if getattr(args, name) is not None]
    if given:
        msg = f"{', '.join(given)} apply to a SOMA experiment input, not to {args.input}"
        raise InputError(msg)
    if not Path(args.input).exists():
        msg = f"input not found: {args.input}"
        raise FileNotFoundError(msg)


def _open_soma(args: argparse.Namespace) -> Any:
    from genept_fast.soma import SomaSource

    return SomaSource(
        args.input,
        measurement=args.measurement or "RNA",
        layer=args.layer,
        obs_filter=args.obs_filter,
        var_key=args.var_key,
    )


def _check_args(args: argparse.Namespace) -> IntoPlan | SomaInto | None:
    """What only the command line can get wrong: files, and flags of the other method.
    Returns the plan of ``--into`` (None with ``-o``)."""
    _check_soma_args(args)
    if args.layer is not None and args.use_raw:
        msg = "give either --layer or --use-raw, not both"
        raise InputError(msg)
    if args.method == "w":
        if not args.genes:
            msg = "--method w needs --genes TABLE (make one with `genept-fast embed-genes`)"
            raise InputError(msg)
        if not Path(args.genes).exists():
            msg = f"--genes table not found: {args.genes}"
            raise FileNotFoundError(msg)
        unused = embedder_flags_given(args) + [
            flag
            for flag, value in (
                ("--top-n", args.top_n),
                ("--prefix", args.prefix),
                ("--max-input-tokens", args.max_input_tokens),
            )
            if value is not None
        ]
    else:
        unused = ["--genes"] if args.genes else []
        if args.preprocess != "auto":
            unused.append("--preprocess")
    if unused:
        msg = f"{', '.join(unused)} do(es) not apply to --method {args.method}"
        raise InputError(msg)
    if not _is_soma(args):
        require_anndata(args.input)
    if args.method == "w":
        require_table(
            args.genes,
            role="--genes table",
            allowed=GENE_TABLE_KINDS,
            expect=GENE_TABLE_EXPECT,
        )
    if args.dry_run:
        return None
    plan: IntoPlan | SomaInto | None = None
    if args.into is not None:
        plan = _check_into(args)
    _check_output(args, plan)
    return plan


@dataclass(frozen=True)
class SomaInto:
    """``--into URI`` for a SOMA input: ``ms[measurement].obsm[key]`` of the experiment."""

    uri: str
    measurement: str
    key: str
    overwrite: bool

    @property
    def work(self) -> Path:
        """The stream's resumable ``.npy`` (named by experiment and key): beside a local
        experiment's folder (never inside it), else in the current folder."""
        name = self.uri.rstrip("/").rsplit("/", 1)[-1] or "experiment"
        where = Path(self.uri).parent if Path(self.uri).is_dir() else Path()
        return where / f".{name}.{self.key}.genept-into.npy"


def _check_into(args: argparse.Namespace) -> IntoPlan | SomaInto:
    from genept_fast.soma import is_soma_uri

    soma_in, soma_out = _is_soma(args), is_soma_uri(args.into)
    if soma_in != soma_out:
        msg = (
            "--into with a SOMA experiment input takes a SOMA experiment URI; use -o for a file"
            if soma_in
            else f"--into {args.into} is a SOMA experiment; encode a SOMA input into it"
        )
        raise InputError(msg)
    if soma_in:
        from genept_fast.soma import check_into as check_soma

        measurement = args.measurement or "RNA"
        check_soma(args.into, key=_key(args), measurement=measurement, overwrite=args.overwrite)
        return SomaInto(args.into, measurement, _key(args), args.overwrite)
    from genept_fast._into import check_into

    return check_into(args.into, input=args.input, key=_key(args), overwrite=args.overwrite)


def _check_output(args: argparse.Namespace, plan: IntoPlan | SomaInto | None) -> None:
    from genept_fast.stream import check_output_args

    check_output_args(
        args.input,
        _output(args, plan),
        key=_key(args),
        output_dtype=args.dtype,
        overwrite=args.overwrite or plan is not None,  # --into: the work file is ours
        inputs=[args.genes],
    )


def _key(args: argparse.Namespace) -> str:
    return args.key_added or ("X_genept_w" if args.method == "w" else "X_genept_s")


def _output(args: argparse.Namespace, plan: IntoPlan | SomaInto | None) -> Path:
    """Where the stream writes: ``-o``, or for ``--into`` a hidden ``.npy`` beside the store
    (named by store and key, so that a killed job resumes), moved into the store at the end."""
    if plan is None:
        return Path(args.output)
    if isinstance(plan, SomaInto):
        return plan.work
    return plan.store.with_name(f".{plan.store.name}.{plan.key}.genept-into.npy")


def run(args: argparse.Namespace) -> int:
    plan = _check_args(args)
    if _is_soma(args):
        with _open_soma(args) as source:  # the X layer is the source's: no layer= below
            return _encode(args, plan, source, layer=None)
    return _encode(args, plan, args.input, layer=args.layer)


def _encode(
    args: argparse.Namespace, plan: IntoPlan | SomaInto | None, data: Any, *, layer: str | None
) -> int:
    from genept_fast import stream

    common: dict[str, Any] = {
        "layer": layer,
        "use_raw": args.use_raw,
        "chunk_size": args.chunk_size,
        "gene_key": args.gene_key,
        "gene_key_flag": "--gene-key ",
    }
    written: dict[str, Any] = {
        "output_dtype": args.dtype,
        "key": _key(args),
        "progress": not args.no_progress,
        "resume": not args.no_resume,
        "overwrite": args.overwrite or plan is not None,
    }
    if args.method == "w":
        if args.dry_run:
            from genept_fast.encode import start_weighted

            with start_weighted(data, args.genes, preprocess=args.preprocess, **common) as job:
                print(job.summary, file=sys.stderr)
            return 0
        report = stream.encode_weighted(
            data,
            _output(args, plan),
            args.genes,
            n_threads=args.threads,
            preprocess=args.preprocess,
            **common,
            **written,
        )
        print(report.summary, file=sys.stderr)
    else:
        emb = build_embedder(args)
        options: dict[str, Any] = {
            "top_n": args.top_n,
            "max_input_tokens": args.max_input_tokens,
            "n_threads": args.threads,
            **({} if args.prefix is None else {"prefix": args.prefix}),
        }
        if args.dry_run or emb.is_paid:
            est = stream.estimate_sentences(data, emb, **common, **options)
            print(f"GenePT-s with {emb.model_id}: {est}", file=sys.stderr)
            if args.dry_run:
                return 0
        report = stream.encode_sentences(
            data, _output(args, plan), emb, **common, **options, **written
        )
    where = str(report.output)
    if isinstance(plan, SomaInto):
        where = _write_soma_into(plan, Path(report.output), report.uns)
    elif plan is not None:
        where = _write_into(plan, Path(report.output), report.uns)
    print(
        f"wrote {where}: {report.cells_encoded:,} cells encoded from"
        f" {report.uns['params']['matrix']} in {report.seconds:.2f} s"
        f" ({report.chunks_resumed} of {report.n_chunks} chunks resumed from earlier work)",
        file=sys.stderr,
    )
    stats = report.encoder_stats
    if stats.get("n_cells"):
        limit = int(stats["max_input_tokens"])
        cut = (
            "no token limit"
            if limit >= 2**31 - 1
            else f"{stats['n_cut']:,} of {stats['n_cells']:,} cut at the {limit}-token limit"
        )
        print(
            f"sentences: {cut}; {stats['n_empty']:,} without genes (zero vectors)",
            file=sys.stderr,
        )
    return 0


def _write_into(plan: IntoPlan, work: Path, uns: dict[str, Any]) -> str:
    """Move the finished embedding (the work ``.npy``) into ``plan.store``; say where."""
    import numpy as np

    from genept_fast._into import write_into

    embedding = np.load(work, mmap_mode="r")
    write_into(plan, embedding, uns)
    del embedding
    work.unlink()
    return f"obsm[{plan.key!r}] and uns[{plan.key!r}] into {plan.store}"


def _write_soma_into(plan: SomaInto, work: Path, uns: dict[str, Any]) -> str:
    """Write the finished embedding (the work ``.npy`` and its ``soma_joinid`` file) into the
    experiment; say where."""
    import numpy as np

    from genept_fast.soma import write_into
    from genept_fast.stream.sinks import joinid_sidecar

    side = joinid_sidecar(work)
    embedding = np.load(work, mmap_mode="r")
    write_into(
        plan.uri,
        embedding,
        np.load(side),
        key=plan.key,
        measurement=plan.measurement,
        info=uns,
        overwrite=plan.overwrite,
    )
    del embedding
    work.unlink()
    side.unlink()
    return f"ms[{plan.measurement!r}].obsm[{plan.key!r}] of {plan.uri}"
