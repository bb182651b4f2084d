"""GenePT-s through an OpenAI-compatible server: client throughput of ``genept-fast encode -s``.

    python benches/bench_sentences_client.py                  # the issue-13/21 measurement
    python benches/bench_sentences_client.py --cells 2000     # a quick look
    python benches/bench_sentences_client.py --before none    # only the current tree

The measurement of issues 13 and 21 (goal 4): ``genept-fast encode --method s --embedder
openai:text-embedding-3-small --base-url <server> --top-n 1000`` on 20,000 synthetic cells with
~1,500 expressed genes each, against a loopback server that answers at once, so what is timed
is the client: ranking, sentence building, token counting, hashing, the cache, requests and
response parsing. Goal: at least 2,000 cells/s on 2 cores, with exact token counts.

The server runs in its own process (this script with ``--serve``) and speaks the embeddings
wire format of ``POST /v1/embeddings`` (``float`` or ``base64`` bodies, ``index`` per item,
``usage``); each input gets one of 64 precomputed unit vectors, picked by the CRC-32 of its
text (so a run's embeddings depend on every sentence and its place, and runs can be compared
bit for bit); each answer goes out in one write with Nagle off (written in two parts, each
answer would wait ~40 ms for the client's delayed ACK), so it costs the server one ``orjson``
parse of the request and a CRC-32 per input. The synthetic cells come from :mod:`synthetic`,
with gene symbols shaped like HGNC's (``RPL13A``, ``HLA-DRB1``, ``LINC01234``, ``AC012345.1``,
``C1orf112``).

Each variant runs the real CLI in a subprocess with an empty cache directory, interleaved
round by round (so load changes hit both alike):

- ``after``: this tree;
- ``before``: ``--before``: a ``python/`` folder run with ``PYTHONPATH`` (default
  ``/work/before/python``, the worktree of main before this work, with its own ``_core``,
  when it exists), or a git revision (default db49104), extracted with ``git archive`` and run
  with this tree's compiled ``_core``; ``--before none`` skips it;
- ``after, cached rerun``: the same job again on the cache the first run filled.

Reported per variant and run: cells/s from the encode time the CLI prints (open, rank, build,
embed, write), the wall time of the whole process, the CPU seconds of the client process and
of the server during it, and the load average before the run (the machine may be shared:
CPU seconds say more than wall time under load); then best and worst over ``--repeat``
rounds, the ratio after/before (best against best, and per round) and the least client CPU of
each. Then a stage breakdown of one chunk (``--stage-cells``; 0 skips it) in this process,
wall and CPU: start-up token counts of every symbol, ranking and sentence building,
tokenizing sentences, hashing, parsing float bodies, the requests, storing in the cache; the
'before' column runs the steps main took before issue 13 with the same primitives (two
tokenizations and two hashes per sentence, ``json`` parsing item by item, the first cache
layout). With ``--profile`` each variant also runs under ``cProfile`` in every thread, timed
with each thread's CPU clock (indicative only: the clock call inflates call-heavy code such as
the HTTP client). Last, GenePT-s with the local model on ``--local-cells`` cells, before and
after (model-bound: it must not slow down).

Correctness sits next to the timing: for the first cells (``--check-cells``) the script builds
the sentences and checks that the token count handed to the embedder for each equals the
tokenizer's count of the whole sentence (tiktoken; and the local WordPiece model) and that
every sentence fits the limit; that before and after build the same sentences with the same
token counts; and that every run's embeddings (before, after, the cached rerun) equal the
first run's bit for bit.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402

DATA = HERE / "data"
MODEL = "text-embedding-3-small"
DIM = 1536
#: main before the GenePT-s client work of issue 21 (goal 4): the worktree of it when there is
#: one (with the ``_core`` built then), else the revision
BEFORE_REV = "db49104"
DEFAULT_BEFORE = "/work/before/python" if Path("/work/before/python").is_dir() else BEFORE_REV


def _default_format() -> str:
    from genept_fast.embed.openai_api import OpenAIEmbedder

    return OpenAIEmbedder(MODEL, base_url="http://127.0.0.1:9/v1").encoding_format


# -- the server ---------------------------------------------------------------------------------
#: Distinct unit vectors the server answers with, one picked by each input's CRC-32: so the
#: embeddings of a run depend on every sentence and its place, and two runs can be compared.
N_VECTORS = 64


def _pool(fmt: str) -> list[bytes]:
    """The JSON ``embedding`` values of the server's vectors, in format ``fmt``."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(N_VECTORS):
        v = rng.standard_normal(DIM)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        if fmt == "base64":
            emb: object = base64.b64encode(v.astype("<f4").tobytes()).decode()
        else:
            emb = [float(x) for x in v]  # float32 values printed as Python floats, like vLLM
        out.append(json.dumps(emb).encode())
    return out


def _item_bytes(fmt: str) -> bytes:
    return _pool(fmt)[0]


def serve() -> None:
    """Answer ``POST /v1/embeddings`` at once; print the port on stdout, run until killed."""
    import zlib

    import orjson

    vectors = {fmt: _pool(fmt) for fmt in ("float", "base64")}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Answer at once: no Nagle delay on the socket, and each answer in one write (headers
        # and body written apart wait ~40 ms for the client's delayed ACK).
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = orjson.loads(raw)
                inputs = body["input"]
                inputs = [inputs] if isinstance(inputs, str) else list(inputs)
                fmt = body.get("encoding_format") or "float"
                pool = vectors[fmt]
            except (ValueError, KeyError, TypeError):
                self._send(400, b'{"error":{"message":"bad request","type":"invalid"}}')
                return
            if not self.path.endswith("/embeddings") or not inputs or "" in inputs:
                self._send(400, b'{"error":{"message":"bad input","type":"invalid"}}')
                return
            n_chars = sum(len(t) for t in inputs)
            items = b",".join(
                b'{"object":"embedding","index":%d,"embedding":%s}'
                % (i, pool[zlib.crc32(t.encode()) % N_VECTORS])
                for i, t in enumerate(inputs)
            )
            usage = b'{"prompt_tokens":%d,"total_tokens":%d}' % (n_chars // 4, n_chars // 4)
            model = json.dumps(body.get("model", MODEL)).encode()
            self._send(
                200,
                b'{"object":"list","data":[%s],"model":%s,"usage":%s}' % (items, model, usage),
            )

        def _send(self, status: int, payload: bytes) -> None:
            reason = b"OK" if status == 200 else b"Bad Request"
            head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status, reason)
            head += b"Content-Length: %d\r\n\r\n" % len(payload)
            self.wfile.write(head + payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


class Server:
    """The server process, started and stopped around the benchmark."""

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


# -- the data -----------------------------------------------------------------------------------
def gene_symbols(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct symbols shaped like HGNC's (letters, digits, ``-``, ``.``, ``orf``)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    out: dict[str, None] = {}
    while len(out) < n:
        kind = rng.random()
        stem = "".join(rng.choice(letters, int(rng.integers(2, 6))))
        num = int(rng.integers(1, 60))
        if kind < 0.55:
            s = f"{stem}{num}" + (str(rng.choice(letters)) if rng.random() < 0.3 else "")
        elif kind < 0.65:
            s = f"{rng.choice(['LINC', 'LOC', 'MIR'])}{int(rng.integers(100, 99999)):05d}"
        elif kind < 0.75:
            s = f"{rng.choice(['HLA', 'MT', 'KRTAP', 'NKX'])}-{stem[:3]}{num}"
        elif kind < 0.85:
            s = f"{stem}{num}-AS1"
        elif kind < 0.93:
            s = f"A{rng.choice(list('CLP'))}{int(rng.integers(0, 999999)):06d}.{num % 9 + 1}"
        else:
            s = f"C{num % 22 + 1}orf{int(rng.integers(1, 200))}"
        out[s] = None
    return list(out)


def make_input(n_cells: int, n_genes: int, nnz: int) -> Path:
    """The synthetic ``.h5ad`` (written once to ``benches/data/``, never committed)."""
    import anndata as ad
    import pandas as pd

    path = DATA / f"sentences_{n_cells}x{n_genes}_{nnz}.h5ad"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    X = synthetic.make_csr(n_cells, n_genes, nnz)
    var = pd.DataFrame(index=pd.Index(gene_symbols(n_genes), name="symbol"))
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ad.AnnData(X=X, obs=obs, var=var).write_h5ad(tmp)
    tmp.replace(path)
    return path


# -- the variants -------------------------------------------------------------------------------
def before_tree(before: str, work: Path) -> Path:
    """The ``python/`` folder of the code to compare with: ``before`` itself when it is a
    folder (``/work/before/python``: a worktree with its own built ``_core``), else that of
    git revision ``before``, extracted, with this tree's compiled ``_core``."""
    if Path(before).is_dir():
        tree = Path(before).resolve()
    else:
        dest = work / f"before-{before}"
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", before, "python"], check=True, capture_output=True
        ).stdout
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        import genept_fast

        pkg = Path(genept_fast.__file__).parent
        for so in pkg.glob("_core*.so"):
            shutil.copy2(so, dest / "python" / "genept_fast" / so.name)
        tree = dest / "python"
    probe = subprocess.run(
        [sys.executable, "-c", "import genept_fast.cli, sys; print(genept_fast.__file__)"],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:  # the Rust core's Python surface moved on since ``before``
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        msg = f"{before}'s Python does not run with this tree's _core ({last}); use --before none"
        raise OSError(msg)
    if not probe.stdout.strip().startswith(str(tree)):
        msg = f"PYTHONPATH={tree} does not import genept_fast from there ({probe.stdout.strip()})"
        raise OSError(msg)
    return tree


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def encode_cmd(h5ad: Path, out: Path, url: str, top_n: int) -> list[str]:
    return [
        "encode",
        str(h5ad),
        "--method",
        "s",
        "--embedder",
        f"openai:{MODEL}",
        "--base-url",
        url,
        "--top-n",
        str(top_n),
        "-o",
        str(out),
        "--no-progress",
    ]


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(
    args: list[str],
    *,
    pythonpath: Path | None,
    cache: Path,
    server: Server | None,
    profile: Path | None = None,
) -> dict[str, float]:
    """Encode time the CLI reports, process wall time, client and server CPU seconds."""
    env = dict(os.environ, GENEPT_FAST_CACHE_DIR=str(cache))
    env.pop("OPENAI_API_KEY", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(pythonpath) if pythonpath else "", env.get("PYTHONPATH", "")) if p
    )
    cmd = [sys.executable, __file__]
    cmd += ["--profile-child", str(profile), "--"] if profile else ["--cli-child", "--"]
    err = Path(tempfile.mkstemp(prefix="genept-bench-stderr-")[1])
    server_cpu = _cpu_of(server.proc.pid) if server else 0.0
    t0 = time.perf_counter()
    with err.open("w") as fh:
        proc = subprocess.Popen(cmd + args, env=env, stdout=subprocess.DEVNULL, stderr=fh)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    server_cpu = _cpu_of(server.proc.pid) - server_cpu if server else 0.0
    stderr = err.read_text()
    err.unlink()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        msg = f"encode failed ({proc.returncode}):\n{stderr[-3000:]}"
        raise RuntimeError(msg)
    m = re.search(r"cells encoded from .* in ([0-9.]+) s", stderr)
    return {
        "encode_s": float(m.group(1)) if m else wall,
        "wall_s": wall,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "server_cpu_s": server_cpu,
    }


def tokens_child(h5ad: str, n_check: int, top_n: int) -> int:
    """Print (JSON) the token counts this tree hands the embedder for the first ``n_check``
    cells' sentences, and a sha256 of the sentences (compared across trees)."""
    import hashlib

    import anndata as ad

    from genept_fast.embed import get_embedder
    from genept_fast.encode import SentenceEncoder
    from genept_fast.kernels import DEFAULT_PREFIX

    a = ad.read_h5ad(h5ad, backed="r")
    emb = get_embedder(f"openai:{MODEL}", base_url="http://127.0.0.1:9/v1", use_cache=False)
    enc = SentenceEncoder(emb, list(map(str, a.var_names)), top_n=top_n, prefix=DEFAULT_PREFIX)
    sentences, tokens = enc.counted_sentences(a.X[:n_check])
    digest = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
    print(json.dumps({"tokens": [int(t) for t in tokens], "sentences": digest}))
    return 0


def compare_tokens(
    h5ad: Path, n_check: int, top_n: int, variants: list[tuple[str, Path | None]]
) -> str:
    """Whether every tree builds the same sentences with the same token counts."""
    seen = {}
    for name, tree in variants:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(tree) if tree else "", env.get("PYTHONPATH", "")) if p
        )
        out = subprocess.run(
            [sys.executable, __file__, "--tokens-child", str(h5ad), str(n_check), str(top_n)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        seen[name] = json.loads(out.stdout.strip().splitlines()[-1])
    first = next(iter(seen.values()))
    same = all(v == first for v in seen.values())
    return (
        f"{' and '.join(seen)}, first {n_check} cells:"
        f" {'the same' if same else 'DIFFERENT'} sentences and token counts"
        f" (sum {sum(first['tokens']):,})"
    )


def cli_child(argv: list[str]) -> int:
    from genept_fast.cli import main

    return int(main(argv) or 0)


def profile_child(out: str, argv: list[str]) -> int:
    """Run the CLI with a cProfile profiler in every thread; merge them into ``out``.

    The profilers time with each thread's CPU clock, so a thread waiting (for the GIL, a lock,
    the server) costs nothing and the merged times are CPU seconds, summed over threads.
    """
    finished: list[cProfile.Profile] = []
    lock = threading.Lock()
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        # Each thread profiles itself and hands its profile over when its work returns.
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        try:
            run(self)
        finally:
            prof.disable()
            with lock:
                finished.append(prof)

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_prof = cProfile.Profile(time.thread_time)
    main_prof.enable()
    try:
        rc = cli_child(argv)
    finally:
        main_prof.disable()
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join(timeout=10)
        stats = pstats.Stats(main_prof)
        with lock:
            for prof in finished:
                if prof.getstats():
                    stats.add(prof)
        print(f"profiled the main thread and {len(finished)} others", file=sys.stderr)
        stats.dump_stats(out)
    return rc


# -- the profile summary ------------------------------------------------------------------------
CATEGORIES = [
    ("tiktoken encode", ("tiktoken", "encode_ordinary")),
    ("sha256", ("openssl_sha256", "hashlib")),
    ("SQLite", ("sqlite3",)),
    ("JSON decode", ("json/decoder", "json.decoder", "raw_decode", "json/__init__.py:299")),
    ("JSON encode", ("json/encoder", "encode of '_json")),
    ("vectors (numpy asarray/stack)", ("numpy.asarray", "numpy.array", "stack")),
    ("HTTP (httpx/httpcore/openai)", ("httpx", "httpcore", "openai", "socket", "ssl")),
    ("ranking + sentences (Rust)", ("top_genes", "cell_sentences")),
    ("file reading (h5py/anndata)", ("h5py", "anndata")),
    ("imports (startup)", ("<frozen importlib", "marshal.loads", "builtins.compile")),
]


def summarize(path: Path, wall: float) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    cats = dict.fromkeys([c for c, _ in CATEGORIES] + ["other"], 0.0)
    calls = dict.fromkeys(cats, 0)
    rows = []
    for (file, line, name), (_cc, nc, tt, _ct, _callers) in raw.items():
        label = f"{file}:{line}({name})"
        rows.append((tt, nc, label))
        for cat, needles in CATEGORIES:
            if any(n in label for n in needles):
                cats[cat] += tt
                calls[cat] += nc
                break
        else:
            cats["other"] += tt
            calls["other"] += nc
    rows.sort(reverse=True)
    specific = {
        "tiktoken encode_ordinary calls": sum(
            nc for tt, nc, label in rows if "encode_ordinary" in label and "tiktoken" in label
        ),
        "sha256 calls": sum(nc for tt, nc, label in rows if "openssl_sha256" in label),
    }
    return {
        "wall_s": wall,
        "categories": {k: (round(v, 2), calls[k]) for k, v in cats.items()},
        "top": [(round(tt, 2), nc, label) for tt, nc, label in rows[:14]],
        **specific,
    }


def print_profile(name: str, summary: dict[str, Any]) -> None:
    print(f"\nprofile of {name}: {summary['wall_s']:.1f} s wall under cProfile; CPU seconds of")
    print("the client process, summed over its threads (waiting costs nothing), by what ran:")
    for cat, (sec, n) in summary["categories"].items():
        print(f"  {cat:34s} {sec:8.2f} s  {n:>10,} calls")
    print(
        f"  tiktoken encode_ordinary: {summary['tiktoken encode_ordinary calls']:,} calls;"
        f" sha256: {summary['sha256 calls']:,} calls"
    )
    print("  top functions by own time:")
    for tt, nc, label in summary["top"]:
        print(f"    {tt:7.2f} s {nc:>9,}  {label[-90:]}")


# -- correctness --------------------------------------------------------------------------------
def check_tokens(h5ad: Path, top_n: int | None, n_check: int, spec: str) -> str:
    """Token counts the client hands over equal the tokenizer's for whole sentences."""
    import anndata as ad

    from genept_fast.embed import get_embedder
    from genept_fast.encode import SentenceEncoder
    from genept_fast.kernels import DEFAULT_PREFIX

    a = ad.read_h5ad(h5ad, backed="r")
    X = a.X[:n_check]
    symbols = list(map(str, a.var_names))
    base_url = "http://127.0.0.1:9/v1" if spec.startswith("openai:") else None
    emb = get_embedder(spec, base_url=base_url, use_cache=False)
    if not emb.tokens_exact:
        return f"{spec}: SKIPPED, its tokenizer is not available offline"
    enc = SentenceEncoder(emb, symbols, top_n=top_n, prefix=DEFAULT_PREFIX)
    sentences, kept, _, used = enc.builder.build_counted(X)
    real = emb.count_tokens(sentences)  # the tokenizer on each whole sentence
    bad = sum(int(u) != r for u, r, s in zip(used, real, sentences, strict=True) if s)
    limit = enc.builder.max_input_tokens
    over = sum(r > limit for r in real)
    return (
        f"{spec}, {n_check} cells: {bad} sentence token counts differ from the tokenizer's,"
        f" {over} over the {limit}-token limit; {float(np.mean(kept)):.0f} genes and"
        f" {float(np.mean(real)):.0f} tokens per sentence"
    )


def local_check(args: argparse.Namespace, variants: list[tuple[str, Path | None]]) -> None:
    """GenePT-s with the local model (model-bound): the client changes must not slow it.

    Compare process times: the ONNX model is now loaded at the first forward pass, inside the
    encode time, where it used to load while the gene symbols were counted, before it.
    """
    h5ad = make_input(args.local_cells, args.genes, args.nnz)
    print(f"tokens: {check_tokens(h5ad, None, args.local_cells, 'local')}")
    print(f"local model, {args.local_cells} cells (sentences up to its 256 tokens):")
    work = Path(tempfile.mkdtemp(prefix="genept-bench-s-local-"))
    try:
        for i, (name, tree) in enumerate(variants):
            out = work / "out.npy"
            cmd = ["encode", str(h5ad), "--method", "s", "-o", str(out), "--no-progress"]
            load = loadavg()
            r = run_cli(cmd, pythonpath=tree, cache=work / f"cache-{i}", server=None)
            print(
                f"  {name:22s} {args.local_cells / r['encode_s']:6.1f} cells/s (encode"
                f" {r['encode_s']:5.1f} s; process {r['wall_s']:5.1f} s, client CPU"
                f" {r['client_cpu_s']:5.1f} s; load {load})",
                flush=True,
            )
            out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Clock:
    """Wall and CPU seconds (this process, all threads) of a block."""

    def __enter__(self) -> _Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def _old_parse(body: bytes, n: int) -> np.ndarray:
    """The response parsing of main before this work (json, then one array per item)."""
    payload = json.loads(body)
    rows = [
        np.asarray(item["embedding"], dtype=np.float64).astype(np.float32)
        for item in payload["data"]
    ]
    assert len(rows) == n and all(np.isfinite(r).all() for r in rows)
    return np.stack(rows)


def _first_layout_put(
    directory: Path, namespace: str, keys: list[bytes], vectors: np.ndarray
) -> None:
    """Store vectors in batches of 32 as the first cache layout did (WITHOUT ROWID, 4 KiB pages)."""
    import sqlite3

    conn = sqlite3.connect(directory / "embeddings.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE embeddings (ns TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL,"
        " vec BLOB NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
    )
    for a in range(0, len(keys), 32):
        rows = [
            (namespace, k, vectors.shape[1], v.tobytes())
            for k, v in zip(keys[a : a + 32], vectors[a : a + 32], strict=True)
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO embeddings (ns, key, dim, vec) VALUES (?, ?, ?, ?)", rows
        )
        conn.execute("COMMIT")
    conn.close()


def stage_breakdown(args: argparse.Namespace, h5ad: Path, server: Server) -> None:
    """Where one chunk's time goes, stage by stage, as main did it and as this tree does.

    Measured in this process on the first ``--stage-cells`` cells with wall and CPU clocks
    (CPU of all threads of this process; the server's separately). The 'before' column runs
    the steps main took with the same primitives: two tokenizations per sentence (to cut it,
    to pack requests), two hashes, ``json`` parsing item by item, the first cache layout.
    """
    import anndata as ad

    from genept_fast.embed import EmbeddingCache, get_embedder
    from genept_fast.embed.cache import text_key
    from genept_fast.embed.tokens import get_token_counter
    from genept_fast.encode import SentenceEncoder
    from genept_fast.kernels import DEFAULT_PREFIX

    n = args.stage_cells
    a = ad.read_h5ad(h5ad, backed="r")
    X = a.X[:n]
    emb = get_embedder(f"openai:{MODEL}", base_url=server.url, use_cache=False)
    counter = get_token_counter()
    rows: list[tuple[str, str, str]] = []

    def cell(c: _Clock) -> str:
        return f"{c.wall:6.2f} s ({c.cpu:5.2f} CPU)"

    with _Clock() as init:
        enc = SentenceEncoder(
            emb, list(map(str, a.var_names)), top_n=args.top_n, prefix=DEFAULT_PREFIX
        )
    rows.append(("tokens of every symbol (start-up)", cell(init), cell(init)))
    with _Clock() as old_build:
        enc.builder.build(X)
    with _Clock() as build:
        sentences, _, _, tokens = enc.builder.build_counted(X)
    rows.append(("rank + build sentences (+ counts)", cell(old_build), cell(build)))
    limit = emb.max_input_tokens
    with _Clock() as old_tok:
        for text in sentences:
            counter.truncate(text, limit)
            counter.bound(text)
    rows.append(("tokenize sentences", cell(old_tok), "  none (summed per gene)"))
    with _Clock() as old_hash:
        for _ in range(2):
            [text_key(t) for t in sentences]
    with _Clock() as new_hash:
        keys = [text_key(t) for t in sentences]
    rows.append(("sha256 of sentences", cell(old_hash), cell(new_hash)))
    body = b'{"object":"list","data":[%s]}' % b",".join(
        b'{"object":"embedding","index":%d,"embedding":%s}' % (i, _item_bytes("float"))
        for i in range(32)
    )
    reps = max(1, n // 32)
    with _Clock() as old_parse:
        for _ in range(reps):
            _old_parse(body, 32)
    with _Clock() as new_parse:
        for _ in range(reps):
            emb._parse(body, 32)
    rows.append((f"parse {reps * 32:,} float vectors", cell(old_parse), cell(new_parse)))
    body64 = b'{"object":"list","data":[%s]}' % b",".join(
        b'{"object":"embedding","index":%d,"embedding":%s}' % (i, _item_bytes("base64"))
        for i in range(32)
    )
    with _Clock() as b64_parse:
        for _ in range(reps):
            emb._parse(body64, 32)
    rows.append((f"parse {reps * 32:,} base64 vectors (default)", "  -", cell(b64_parse)))
    emb.embed(["warm up the client"])
    server_cpu = _cpu_of(server.proc.pid)
    with _Clock() as requests:
        vectors = emb.embed(sentences, token_counts=tokens.tolist())
    server_cpu = _cpu_of(server.proc.pid) - server_cpu
    rows.append(
        ("requests: HTTP, openai client, parse", "  (as after, json parse)", cell(requests))
    )
    work = Path(tempfile.mkdtemp(prefix="genept-bench-s-sql-"))
    try:
        ns = emb.cache_namespace
        (work / "old").mkdir()
        with _Clock() as old_put:
            _first_layout_put(work / "old", ns, keys, vectors)
        cache = EmbeddingCache(work / "new")
        with _Clock() as new_put:
            for i in range(0, len(keys), 32):
                cache.put(ns, keys[i : i + 32], vectors[i : i + 32])
        cache.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append(("cache: store in batches of 32", cell(old_put), cell(new_put)))
    print(
        f"\nstage breakdown on the first {n:,} cells (wall, and CPU of this process;"
        f" load {loadavg()}):"
    )
    print(f"  {'stage':40s} {'before (as main did it)':>26s}   {'after (this tree)':>24s}")
    for name, before, after in rows:
        print(f"  {name:40s} {before:>26s}   {after:>24s}")
    print(f"  (the server used {server_cpu:.2f} s CPU answering the requests)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--nnz", type=int, default=1_500, help="expressed genes per cell")
    p.add_argument("--top-n", type=int, default=1_000)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per variant")
    p.add_argument(
        "--before",
        default=DEFAULT_BEFORE,
        help="the code to compare with: a python/ folder (run with PYTHONPATH), a git revision,"
        " or 'none'",
    )
    p.add_argument(
        "--profile", action="store_true", help="also profile each variant's run with cProfile"
    )
    p.add_argument("--stage-cells", type=int, default=5_000, help="cells of the stage breakdown")
    p.add_argument("--check-cells", type=int, default=500)
    p.add_argument(
        "--local-cells", type=int, default=200, help="cells for the local-model check (0: none)"
    )
    args = p.parse_args(argv)

    h5ad = make_input(args.cells, args.genes, args.nnz)
    work = Path(tempfile.mkdtemp(prefix="genept-bench-s-"))
    variants: list[tuple[str, Path | None]] = [("after", None)]
    if args.before != "none":
        try:
            variants.insert(0, ("before", before_tree(args.before, work)))
            print(f"before: {variants[0][1]} (run with PYTHONPATH), after: this tree")
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"cannot build the 'before' tree: {exc}", file=sys.stderr)
    print(
        f"GenePT-s client: {args.cells:,} cells x {args.genes:,} genes, ~{args.nnz:,} expressed"
        f" per cell, --top-n {args.top_n}, {MODEL} ({DIM}-d, the client's default"
        f" {_default_format()} bodies), {os.cpu_count()} CPUs"
    )
    print(f"tokens: {check_tokens(h5ad, args.top_n, args.check_cells, f'openai:{MODEL}')}")
    if len(variants) > 1:
        print(f"tokens: {compare_tokens(h5ad, args.check_cells, args.top_n, variants)}")
    try:
        measure(args, h5ad, work, variants)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.local_cells:
        local_check(args, variants)
    return 0


def measure(
    args: argparse.Namespace, h5ad: Path, work: Path, variants: list[tuple[str, Path | None]]
) -> None:
    """The timed runs, the summary and the profiles."""
    results: dict[str, list[dict[str, Any]]] = {}
    mismatches: list[str] = []
    with Server() as server:

        def timed(name: str, tree: Path | None, cache: Path) -> None:
            out = work / "out.npy"
            out.unlink(missing_ok=True)
            load = loadavg()
            r = run_cli(
                encode_cmd(h5ad, out, server.url, args.top_n),
                pythonpath=tree,
                cache=cache,
                server=server,
            )
            emb = np.load(out)
            assert emb.shape == (args.cells, DIM), emb.shape
            out.unlink()
            if reference:
                if not np.array_equal(emb, reference[0]):
                    mismatches.append(name)
            else:
                reference.append(emb)
            r["load"] = load
            results.setdefault(name, []).append(r)
            print(
                f"  {name:22s} {args.cells / r['encode_s']:6.0f} cells/s (encode"
                f" {r['encode_s']:5.1f} s; process {r['wall_s']:5.1f} s, CPU: client"
                f" {r['client_cpu_s']:5.1f} s, server {r['server_cpu_s']:4.1f} s; load {load})",
                flush=True,
            )

        reference: list[np.ndarray] = []  # the first run's embeddings: every run must match
        for rep in range(args.repeat):
            print(f"round {rep + 1} of {args.repeat}:")
            for name, tree in variants:  # interleaved, so load changes hit both alike
                cache = work / f"cache-{rep}-{name[:6]}"
                timed(name, tree, cache)
                if name == "after" and rep == 0:
                    timed("after, cached rerun", tree, cache)
                shutil.rmtree(cache, ignore_errors=True)
        print("\ncells/s from the encode time the CLI reports (best, worst over runs), and")
        print("from the whole process (start-up, gene table, tokens of every symbol included):")
        best: dict[str, float] = {}
        for name, runs in results.items():
            rates = [args.cells / r["encode_s"] for r in runs]
            whole = [args.cells / r["wall_s"] for r in runs]
            best[name] = max(rates)
            print(
                f"  {name:22s} encode best {max(rates):6.0f} worst {min(rates):6.0f};"
                f" process best {max(whole):6.0f} worst {min(whole):6.0f}  ({len(runs)} runs)"
            )
        if len(variants) == 2:
            before = variants[0][0]
            b, a = best[before], best["after"]
            cpu_b = min(r["client_cpu_s"] for r in results[before])
            cpu_a = min(r["client_cpu_s"] for r in results["after"])
            pairs = [
                r_b["encode_s"] / r_a["encode_s"]
                for r_b, r_a in zip(results[before], results["after"], strict=False)
            ]
            print(
                f"  after/before: {a / b:.2f}x (best against best), per round"
                f" {', '.join(f'{x:.2f}x' for x in pairs)}; client CPU {cpu_b:.1f} -> {cpu_a:.1f} s"
                f" (least)   goal: >= 2,000 cells/s"
            )
        n_runs = sum(len(r) for r in results.values())
        verdict = f"DIFFER in {', '.join(mismatches)}" if mismatches else f"all {n_runs} identical"
        print(
            f"embeddings: {verdict} ({args.cells:,} x {DIM} float32 per run, compared bit for"
            " bit with the first run's)"
        )
        if mismatches:
            raise SystemExit("the variants' embeddings differ")
        if args.stage_cells:
            stage_breakdown(args, h5ad, server)
        if args.profile:
            for name, tree in variants:
                cache = work / f"cache-prof-{name[:6]}"
                out = work / "out.npy"
                out.unlink(missing_ok=True)
                prof = work / f"{name[:6]}.prof"
                r = run_cli(
                    encode_cmd(h5ad, out, server.url, args.top_n),
                    pythonpath=tree,
                    cache=cache,
                    server=server,
                    profile=prof,
                )
                print_profile(name, summarize(prof, r["wall_s"]))
                shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    elif sys.argv[1:2] == ["--tokens-child"]:
        sys.exit(tokens_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif sys.argv[1:2] == ["--cli-child"]:
        sys.exit(cli_child(sys.argv[3:]))
    elif sys.argv[1:2] == ["--profile-child"]:
        sys.exit(profile_child(sys.argv[2], sys.argv[4:]))
    else:
        sys.exit(main())
