"""Progress in logs: a line about every GENEPT_FAST_PROGRESS_INTERVAL seconds off a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import threading

import polars as pl
import pytest

from genept_fast._progress import INTERVAL_ENV, LogProgress, interval_seconds, progress
from genept_fast.errors import InputError, InvalidArgumentError
from servers.ncbi import NcbiServer, load_genes

LINE = re.compile(
    r"^work: (?P<n>[\d,]+)/10 gene \((?P<pct>\d+)%\), [\d.,]+ gene/s, ~[\dhms.]+ left$"
)
FINAL = re.compile(r"^work: 10/10 gene \(100%\) in [\dhms.]+ \([\d.,]+ gene/s\)$")


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")


def test_a_log_gets_plain_lines_then_a_final_line(every_update):
    log = io.StringIO()
    with progress(10, desc="work", unit="gene", file=log) as bar:
        assert isinstance(bar, LogProgress)
        for _ in range(5):
            bar.update(2)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # the update that reaches the total prints nothing: the final line says it
    assert [LINE.match(x)["n"] for x in lines[:-1]] == ["2", "4", "6", "8"]  # type: ignore[index]
    assert [LINE.match(x)["pct"] for x in lines[:-1]] == ["20", "40", "60", "80"]  # type: ignore[index]
    assert FINAL.match(lines[-1]), lines[-1]


def test_the_interval_spaces_the_lines(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    log = io.StringIO()
    with progress(10, desc="work", unit="gene", file=log) as bar:
        for _ in range(10):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 1  # the final line only
    assert FINAL.match(log.getvalue().strip())


def test_the_default_interval_is_ten_seconds(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert interval_seconds() == 10.0
    monkeypatch.setenv(INTERVAL_ENV, " 2.5 ")
    assert interval_seconds() == 2.5


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_is_named(monkeypatch, value):
    monkeypatch.setenv(INTERVAL_ENV, value)
    with pytest.raises(InvalidArgumentError, match=INTERVAL_ENV) as info:
        progress(3, file=io.StringIO())
    assert isinstance(info.value, InputError) and value in str(info.value)


def test_disabled_prints_nothing_but_counts(every_update):
    log = io.StringIO()
    with progress(10, desc="work", unit="gene", disable=True, file=log) as bar:
        bar.update(4)
    assert log.getvalue() == "" and bar.n == 4


def test_an_inner_step_leaves_no_final_line(every_update):
    log = io.StringIO()
    with progress(10, desc="work", unit="gene", leave=False, file=log) as bar:
        bar.update(3)
        bar.update(7)
    assert len(log.getvalue().splitlines()) == 1 and log.getvalue().startswith("work: 3/10")


def test_unknown_total_and_scaled_units(every_update):
    log = io.StringIO()
    with progress(desc="download", unit="B", unit_scale=True, file=log) as bar:
        bar.update(1_500_000)
        bar.set_postfix_str("mirror 2", refresh=False)
        bar.update(500_000)
    first, second, final = log.getvalue().splitlines()
    assert re.fullmatch(r"download: 1\.50MB, [\d.]+[kMG]?B/s", first), first
    assert re.fullmatch(r"download: 2\.00MB, [\d.]+[kMG]?B/s, mirror 2", second), second
    assert re.fullmatch(r"download: 2\.00MB in [\d.]+s \([\d.]+[kMG]?B/s\), mirror 2", final)


def test_a_restart_sets_n_and_the_rate_counts_from_the_start(every_update):
    # What the resumable download does: n set at each (re)start, then refresh().
    log = io.StringIO()
    bar = progress(100, desc="zip", unit="B", initial=40, file=log)
    bar.n = 10
    bar.refresh()
    bar.close()
    bar.close()  # a second close prints nothing
    lines = log.getvalue().splitlines()
    assert lines[0] == "zip: 10/100 B (10%)"  # fewer than at the start: no rate, no guess
    assert lines[1].startswith("zip: 10/100 B (10%) in ") and len(lines) == 2


def test_threads_count_every_update(every_update):
    log = io.StringIO()
    bar = progress(8_000, desc="work", unit="gene", file=log)

    def work():
        for _ in range(1_000):
            bar.update(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    lines = log.getvalue().splitlines()
    assert bar.n == 8_000 and lines[-1].startswith("work: 8,000/8,000 gene (100%) in ")
    assert all(x.startswith("work: ") for x in lines)  # no line torn by another thread


def test_a_terminal_gets_a_tqdm_bar(every_update):
    from tqdm import tqdm

    main, side = os.openpty()
    with os.fdopen(side, "w") as tty, os.fdopen(main, "rb", buffering=0) as reader:
        with progress(5, desc="work", unit="gene", file=tty) as bar:
            assert isinstance(bar, tqdm)
            bar.update(5)
        tty.flush()
        shown = reader.read(4096).decode()
    assert shown.startswith("\rwork:") and "/5 [" in shown  # tqdm's frames, redrawn with \r


# -- a real step in a subprocess, stderr to a pipe ----------------------------------------------


def _run_logged(args: list[str], interval: float) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with stderr to a pipe (not a terminal) and lines every ``interval`` s."""
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, INTERVAL_ENV: str(interval)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


SCRIPT = textwrap.dedent(
    """
    import sys
    from genept_fast.text import gene_texts

    genes = sys.argv[2].split(",")
    texts = gene_texts(genes, source="ncbi", ncbi_url=sys.argv[1], batch_size=10,
                       fallback=None, cache_dir=sys.argv[3], progress=True, backoff=0.01)
    print(texts.height)
    """
)


def test_a_network_step_prints_lines_when_stderr_is_a_pipe(shared_data, tmp_path):
    """NCBI's loopback server allows 3 requests a second, so 60 genes in batches of 10 (two
    requests each) take about 4 s: with a 0.5 s interval, several lines must appear."""
    genes = load_genes(shared_data)
    symbols = genes["symbol"].head(60).to_list()
    with NcbiServer(genes) as server:
        done = _run_logged(["-c", SCRIPT, server.url, ",".join(symbols), str(tmp_path)], 0.5)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "60"
    lines = [x for x in done.stderr.splitlines() if x.startswith("gene text (ncbi): ")]
    assert "\r" not in done.stderr
    assert len(lines) >= 3, done.stderr
    assert re.fullmatch(
        r"gene text \(ncbi\): \d+/60 gene \(\d+%\), [\d.]+ gene/s, ~\S+ left", lines[0]
    )
    assert lines[-1].startswith("gene text (ncbi): 60/60 gene (100%) in ")


def test_embed_genes_prints_lines_when_stderr_is_a_pipe(shared_data, tmp_path):
    from genept_fast.text import gene_texts

    genes = load_genes(shared_data)["symbol"].head(60)
    texts = tmp_path / "texts.parquet"
    gene_texts(genes.to_list(), source="hgnc").write_parquet(texts)
    embed = ["embed-genes", str(texts), "-o", str(tmp_path / "genes.parquet"), "--no-cache"]
    done = _run_logged(["-m", "genept_fast", *embed, "--batch-size", "4"], 0.2)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("embedding (local:")]
    assert len(lines) >= 2, done.stderr
    assert re.search(r": \d+/\d+ text \(\d+%\), [\d.,]+ text/s", lines[0]), lines[0]
    assert pl.read_parquet(tmp_path / "genes.parquet").height == 60
