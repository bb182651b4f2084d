"""One vocabulary across the ``genept-fast`` commands (issue 22 item 4).

The parser is inspected as built (every subcommand, every option), so a command added later
is held to the same words: ``-o/--output`` on every writing command, the embedder options
spelled the same, a default shown for every option that has one, old spellings that still
work without showing in ``--help``.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

import pytest

from genept_fast.cli import build_parser, main
from genept_fast.commands._args import EMBEDDER_FLAGS, respell

if TYPE_CHECKING:
    from pathlib import Path

#: Commands that write a file or a report (all but the demo, which writes into a folder it
#: names itself).
WRITERS = (
    "gene-text",
    "embed-genes",
    "fetch-genept",
    "encode",
    "build-reference",
    "annotate",
    "evaluate",
    "evaluate-genes",
)

#: Old spelling -> new, per command: each must still parse to the same value, out of --help.
OLD = {
    "evaluate": {"--out": "--output", "--knn-k": "--k", "--batch": "--batch-key"},
    "evaluate-genes": {"--out": "--output"},
    "encode": {"--key": "--key-added"},
    "embed-genes": {"--batch": "--batch-api"},
    "gene-text": {"--retries": "--max-retries", "--workers": "--max-concurrency"},
    "fetch-genept": {"--retries": "--max-retries"},
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("command", WRITERS)
def test_every_writing_command_takes_dash_o_output(command: str) -> None:
    opts = options(subparsers()[command])
    assert opts["-o"] is opts["--output"]
    assert "--out" not in opts  # the old spelling is not an option any more (respelled)


def test_the_embedder_options_are_one_group_on_encode_and_embed_genes() -> None:
    parsers = subparsers()
    seen = []
    for command in ("encode", "embed-genes"):
        p = parsers[command]
        group = next(g for g in p._action_groups if g.title == "text embedder")
        flags = [s for a in group._group_actions for s in a.option_strings]
        assert [f for f in flags if f in EMBEDDER_FLAGS] == list(EMBEDDER_FLAGS)
        seen.append(
            {f: (options(p)[f].default, options(p)[f].type) for f in EMBEDDER_FLAGS}
        )  # same defaults, same types
    assert seen[0].keys() == seen[1].keys()
    for flag in EMBEDDER_FLAGS:
        assert seen[0][flag][0] == seen[1][flag][0], flag


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_help_shows_every_default(command: str) -> None:
    p = subparsers()[command]
    text = "".join(p.format_help().split())  # wrapping may break a long default (a URL)
    missing = []
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        if a.default in (None, False, argparse.SUPPRESS) or isinstance(a, argparse._HelpAction):
            continue
        shown = a.default if not isinstance(a.default, (list, tuple)) else " ".join(a.default)
        line = " ".join(str(a.help or "").split())
        if f"(default:{shown})".replace(" ", "") not in text and "default" not in line.lower():
            missing.append(a.option_strings[-1])
    assert missing == []


@pytest.mark.parametrize(
    ("command", "old", "new"), [(c, o, n) for c, m in OLD.items() for o, n in m.items()]
)
def test_old_spellings_still_work_and_stay_out_of_help(command: str, old: str, new: str) -> None:
    p = subparsers()[command]
    assert re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", p.format_help()) is None
    assert respell(p, [old, "x", f"{old}=y", "--", old]) == [new, "x", f"{new}=y", "--", old]


def test_an_ambiguous_old_spelling_says_it_is_deprecated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["evaluate", str(tmp_path / "missing.h5ad"), "--label", "x", "--batch", "b", "-o", "r"]
    )
    assert rc == 2  # the input is missing; the note came first
    err = capsys.readouterr().err
    assert "genept-fast evaluate: note: --batch is deprecated; use --batch-key" in err
    rc = main(["evaluate", str(tmp_path / "missing.h5ad"), "--label", "x", "--out", "r"])
    assert "deprecated" not in capsys.readouterr().err  # a plain alias says nothing


def test_usage_errors_name_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "in.h5ad", "--label", "x"]) == 2
    err = capsys.readouterr().err
    assert "-o/--output" in err and "--out " not in err
    assert main(["encode", "in.h5ad", "--genes", "g.parquet"]) == 2
    assert "one of the arguments -o/--output --into is required" in capsys.readouterr().err
    assert main(["evaluate", "in.h5ad", "--label", "x", "--knn-k", "0", "-o", "r"]) == 2
    assert "argument --k: 0 is out of range" in capsys.readouterr().err
    assert main(["evaluate", "in.h5ad", "--label", "x", "--test-size", "1", "-o", "r"]) == 2
    assert "argument --test-size: 1 is not a number between 0 and 1" in capsys.readouterr().err


def test_an_embedder_option_that_does_not_apply_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import polars as pl

    texts = tmp_path / "texts.parquet"
    pl.DataFrame({"gene": ["A"], "text": ["a gene"]}).write_parquet(texts)
    argv = ["embed-genes", str(texts), "-o", str(tmp_path / "o.parquet"), "--no-cache"]
    assert main([*argv, "--dimensions", "8"]) == 2
    err = capsys.readouterr().err
    assert "--dimensions apply only to --embedder openai:MODEL, not 'local'" in err
    assert main([*argv, "--embedder", "openai:text-embedding-3-small", "--batch-size", "4096"]) == 2
    assert "--batch-size 4096: an OpenAI embeddings request takes at most 2,048" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--batch"]) == 2
    err = capsys.readouterr().err
    assert "note: --batch is deprecated; use --batch-api" in err
    assert "--batch-api apply only to --embedder openai:MODEL" in err
    assert "use_batch" not in err and "base_url" not in err


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import scanpy as sc

    path = tmp_path_factory.mktemp("pbmc") / "pbmc.h5ad"
    sc.datasets.pbmc68k_reduced()[:40].copy().write_h5ad(path)
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate", "{f}", "--label", "nope", "-o", "{t}/r"], "--label nope: {f} has no such"),
        (
            ["evaluate", "{f}", "--label", "bulk_labels", "--batch-key", "nope", "-o", "{t}/r"],
            "--batch-key nope: {f} has no such obs column",
        ),
        (
            [
                "evaluate",
                "{f}",
                "--label",
                "bulk_labels",
                "--obsm",
                "X_pca",
                "X_pca",
                "-o",
                "{t}/r",
            ],
            "--obsm lists a key twice",
        ),
        (
            ["evaluate", "{f}", "--label", "bulk_labels", "--obsm", "X_no", "-o", "{t}/r"],
            "--obsm X_no: the input's obsm has no such key",
        ),
        (
            [
                "evaluate",
                "{f}",
                "--label",
                "bulk_labels",
                "--obsm",
                "X_pca",
                "--ensemble",
                "-o",
                "{t}/r",
            ],
            "--ensemble needs two or more --obsm keys",
        ),
        (
            ["annotate", "{f}", "--reference", "{f}", "--obsm", "X_pca", "-o", "{t}/a.h5ad"],
            "give --label COLUMN",
        ),
        (
            [
                "annotate",
                "{f}",
                "--reference",
                "{f}",
                "--label",
                "bulk_labels",
                "--obsm",
                "X_pca",
                "X_pca",
                "-o",
                "{t}/a.h5ad",
            ],
            "--obsm lists a key twice",
        ),
        (
            [
                "build-reference",
                "{f}",
                "--label",
                "bulk_labels",
                "--obsm",
                "X_pca",
                "X_pca",
                "-o",
                "{t}/r.index",
            ],
            "--obsm lists a key twice",
        ),
        (
            [
                "encode",
                "{f}",
                "--method",
                "s",
                "--embedder",
                "wordllama",
                "--gene-key",
                "nope",
                "-o",
                "{t}/s.npy",
            ],
            "--gene-key 'nope' is not a column of var",
        ),
    ],
)
def test_messages_name_flags_not_python_arguments(
    pbmc: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    subst = {"{f}": str(pbmc), "{t}": str(tmp_path)}

    def fill(text: str) -> str:
        for k, v in subst.items():
            text = text.replace(k, v)
        return text

    assert main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert fill(expected) in err
    for name in ("label_key", "obsm_key", "batch_key", "api_key", "knn_k", "gene_key"):
        assert name not in err


def test_a_missing_api_key_is_said_in_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import polars as pl

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    texts = tmp_path / "texts.parquet"
    pl.DataFrame({"gene": ["A"], "text": ["a gene"]}).write_parquet(texts)
    out = str(tmp_path / "o.parquet")
    emb = ["--embedder", "openai:text-embedding-3-small", "--no-cache"]
    assert main(["embed-genes", str(texts), "-o", out, *emb]) == 2
    err = capsys.readouterr().err
    assert "--embedder openai:text-embedding-3-small needs an API key: set OPENAI_API_KEY" in err
    assert main(["embed-genes", str(texts), *emb, "--dry-run"]) == 0  # no key needed
    capsys.readouterr()
    assert main(["gene-text", "TP53", "--source", "llm", "-o", out, "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "--source llm needs an API key" in err and "--base-url" in err
    assert "api_key" not in err and "base_url=" not in err and "source=" not in err


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_help_fits_the_terminal(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = subparsers()[command].format_help()
    assert [line for line in text.splitlines() if len(line) > 100] == []
