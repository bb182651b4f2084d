"""Annotation you can trust (issue 20, items 2 and 5): a corrupt reference index is an error
(never a hang or a crash), reference cells with an all-zero embedding never vote, a reference
label never poses as the reject label, and a query embedded differently from its reference is
refused unless the user says otherwise.

Every load of a damaged index runs in a child process with a timeout: a hang or a segmentation
fault there fails the test instead of pytest.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.neighbors import KNeighborsClassifier

from genept_fast import InputError
from genept_fast.annotate import (
    ProvenanceMismatchError,
    ReferenceIndex,
    build_reference,
    transfer_labels,
)
from genept_fast.annotate._index import FORMAT, HEADER_BYTES, MAGIC
from genept_fast.annotate._io import EmbeddingSource
from genept_fast.cli import main
from genept_fast.eval import evaluate_transfer
from genept_fast.table import GeneEmbeddings
from test_annotate_cli import shell

#: Seconds a child may take to load a damaged index (a healthy load takes well under one).
LOAD_TIMEOUT = 60.0


def labelled(X: np.ndarray, labels: Any, prefix: str = "c", key: str = "X_genept_w") -> ad.AnnData:
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.asarray(labels, dtype=object))},
        index=[f"{prefix}{i}" for i in range(len(X))],
    )
    a = ad.AnnData(obs=obs)
    a.obsm[key] = np.asarray(X, dtype=np.float32)
    return a


def clustered(n: int, seed: int, dim: int = 8, n_types: int = 3) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).standard_normal((n_types, dim))
    t = rng.integers(0, n_types, n)
    X = centres[t] + 0.7 * rng.standard_normal((n, dim))
    return labelled(X, [f"T{i}" for i in t], prefix=f"s{seed}_")


# -- a corrupt index is an error, never a hang or a crash ----------------------------------------


#: Loads each file named on stdin (JSON: paths, report files, timeout) in its own child, forked
#: from this one process once it has imported genept-fast (a child costs milliseconds, not an
#: interpreter start-up; this process never touches faiss, so its OpenMP is fork-safe). A child
#: exits 2 on an InputError (the message in its report file), 0 after a load (the digest of
#: everything the loaded index answers with in its report file); the parent is told each exit
#: status (negative: killed by that signal) or "timeout".
LOADER = r"""
import hashlib, json, os, signal, sys, time

import numpy as np

from genept_fast.annotate._index import ReferenceIndex
from genept_fast.errors import InputError


def content(index):
    h = hashlib.sha256()
    parts = [index.label_key, index.obsm_keys, index.dims, index.classes, index.obs_names,
             index.backend, index.fingerprint, index.params(), index.provenance,
             index.n_zero_excluded]
    h.update(json.dumps(parts, sort_keys=True).encode())
    h.update(np.ascontiguousarray(index.labels).tobytes())
    h.update(np.ascontiguousarray(index.vectors()).tobytes())
    if index.logreg is not None:
        for name in ("coef", "intercept", "mean", "scale"):
            h.update(np.ascontiguousarray(getattr(index.logreg, name)).tobytes())
    return h.hexdigest()


def child(path, report):
    try:
        index = ReferenceIndex.load(path)
    except InputError as exc:
        with open(report, "w") as fh:
            fh.write(str(exc))
        return 2
    with open(report, "w") as fh:
        fh.write(content(index))
    return 0


job = json.load(sys.stdin)
codes = []
for path, report in job["files"]:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(path, report)
        finally:
            os._exit(code)
    deadline = time.monotonic() + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            codes.append(os.waitstatus_to_exitcode(status))
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes.append("timeout")
            break
        time.sleep(0.002)
print(json.dumps(codes))
"""


def payload_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the numeric datasets' stored chunks (the rest after the header is HDF5
    metadata: superblock, object headers, B-trees, heaps, the variable-length strings)."""
    out: list[tuple[int, int]] = []

    def visit(_: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind == "O":
            return
        if obj.chunks is None:
            start = obj.id.get_offset()
            if start is not None:
                out.append((start, start + obj.id.get_storage_size()))
            return
        for i in range(obj.id.get_num_chunks()):
            info = obj.id.get_chunk_info(i)
            out.append((info.byte_offset, info.byte_offset + info.size))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def sample_bits(path: Path, seed: int) -> dict[str, list[int]]:
    """Bit positions to flip: in the header (magic, JSON line, padding, its own hash), in HDF5
    metadata and in the datasets' payload."""
    size = path.stat().st_size
    in_payload = np.zeros(size, dtype=bool)
    for a, b in payload_ranges(path):
        in_payload[a:b] = True
    meta = np.flatnonzero(~in_payload[HEADER_BYTES:]) + HEADER_BYTES
    payload = np.flatnonzero(in_payload)
    rng = np.random.default_rng(seed)

    def bits(byte_pos: np.ndarray, n: int) -> list[int]:
        chosen = rng.choice(byte_pos, min(n, len(byte_pos)), replace=False)
        return sorted(int(b) * 8 + int(rng.integers(8)) for b in chosen)

    head = np.r_[0 : len(MAGIC), len(MAGIC) : 140, 140:480, 480:HEADER_BYTES]
    return {
        "header": [0, 8 * len(MAGIC) - 1, *bits(head[len(MAGIC) :], 10), 8 * 481, 8 * 511 + 7],
        "metadata": [8 * HEADER_BYTES, *bits(meta, 47)],
        "payload": bits(payload, 16),
    }


def sweep(path: Path, tmp: Path, positions: dict[str, list[int]]) -> list[tuple[Any, ...]]:
    """Flip each bit of ``positions`` in a copy of ``path`` and load each copy in a child
    process with a timeout (:data:`LOADER`); the first load is of the file as saved.

    Returns ``(where, bit, exit status, report)`` of each load.
    """
    original = path.read_bytes()
    jobs = [("none", -1)] + [(where, bit) for where, bits in positions.items() for bit in bits]
    files = []
    for _, bit in jobs:
        data = bytearray(original)
        if bit >= 0:
            data[bit // 8] ^= 1 << (bit % 8)
        flipped = tmp / f"flip_{bit}.index"
        flipped.write_bytes(bytes(data))
        files.append((str(flipped), str(tmp / f"flip_{bit}.txt")))
    proc = subprocess.run(
        [sys.executable, "-c", LOADER],
        input=json.dumps({"files": files, "timeout": LOAD_TIMEOUT}),
        capture_output=True,
        text=True,
        timeout=LOAD_TIMEOUT * 4 + 10 * len(files),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    out = []
    for (where, bit), code, (_, report) in zip(jobs, codes, files, strict=True):
        text = Path(report).read_text() if Path(report).exists() else ""
        out.append((where, bit, code, text))
    return out


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_every_single_bit_flip_is_an_error_or_changes_nothing(tmp_path, backend):
    """The issue's hostile pass: one flip made ``annotate`` spin in HDF5's attribute parser for
    ever, another ended in a segmentation fault. Now the header and the SHA-256 of the whole
    file are checked before HDF5 parses a byte."""
    index = build_reference(clustered(120, seed=1), label_key="cell_type", backend=backend)
    if backend == "exact":
        index.fit_logreg()
    path = index.save(tmp_path / "small.index")
    positions = sample_bits(path, seed=len(backend))
    assert all(len(v) >= 12 for v in positions.values()), positions
    outcomes = sweep(path, tmp_path, positions)
    control = outcomes.pop(0)
    assert control[:3] == ("none", -1, 0) and len(control[3]) == 64, control  # loads in a child
    bad = [o for o in outcomes if o[2] not in (0, 2) or (o[2] == 0 and o[3] != control[3])]
    assert not bad, f"flips that hung, crashed or changed what the index answers: {bad}"
    for where, bit, code, message in outcomes:
        if code == 2:
            assert str(tmp_path / f"flip_{bit}.index") in message, (where, bit, message)
            assert "with `genept-fast build-reference`" in message or (
                "not a genept-fast reference index" in message
            ), (where, bit, message)
    assert len(outcomes) == sum(len(v) for v in positions.values())


def test_a_flip_in_the_hdf5_metadata_is_exit_2_from_the_shell(tmp_path):
    ref, query = clustered(200, seed=3), clustered(40, seed=4)
    index = build_reference(ref, label_key="cell_type").save(tmp_path / "ref.index")
    query.write_h5ad(tmp_path / "q.h5ad")
    data = bytearray(index.read_bytes())
    for name, byte in (("superblock", HEADER_BYTES + 9), ("header", len(MAGIC) + 20)):
        bad = tmp_path / f"{name}.index"
        flipped = bytearray(data)
        flipped[byte] ^= 0x10
        bad.write_bytes(bytes(flipped))
        out = tmp_path / "o.h5ad"
        proc = shell("annotate", str(tmp_path / "q.h5ad"), "--reference", str(bad), "-o", str(out))
        assert proc.returncode == 2, proc.stderr
        assert "corrupted" in proc.stderr and str(bad) in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_damaged_magic_is_still_recognised_as_a_corrupted_index(tmp_path, capsys):
    ref, query = clustered(100, seed=3), clustered(20, seed=4)
    path = build_reference(ref, label_key="cell_type").save(tmp_path / "ref.index")
    query.write_h5ad(tmp_path / "q.h5ad")
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01  # "gene" -> "genf": the HDF5 signature still follows the header
    bad = tmp_path / "ref.h5"  # not named .index: recognised by its layout, not its name
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupted \(its header is damaged\)\. Rebuild it"):
        ReferenceIndex.load(bad)
    out = tmp_path / "o.h5ad"
    argv = ["annotate", str(tmp_path / "q.h5ad"), "--reference", str(bad), "-o", str(out)]
    assert main(argv) == 2 and not out.exists()
    assert "its header is damaged" in capsys.readouterr().err


def test_the_header_is_plain_and_the_payload_checksum_is_sha256(tmp_path):
    index = build_reference(clustered(50, seed=5), label_key="cell_type")
    path = index.save(tmp_path / "r.index")
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    fields = json.loads(raw[len(MAGIC) :].split(b"\n", 1)[0])
    assert fields["format_version"] == 2
    assert fields["payload_bytes"] == len(raw) - HEADER_BYTES
    # `tail -c +513 r.index | sha256sum` checks it without genept-fast
    assert fields["sha256"] == hashlib.sha256(raw[HEADER_BYTES:]).hexdigest()
    assert raw[480:HEADER_BYTES] == hashlib.sha256(raw[:480]).digest()
    with h5py.File(path, "r") as f:  # HDF5 keeps the header as its user block
        assert f.userblock_size == HEADER_BYTES and f.attrs["format"] == FORMAT


def test_an_index_of_format_version_1_is_refused_before_hdf5_reads_it(tmp_path):
    """A version-1 index had no header: its checksum could only be checked after HDF5 had
    parsed the file, so it is refused with the command that rebuilds it."""
    old = tmp_path / "old.index"
    with h5py.File(old, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = 1
        f.attrs["meta"] = "{}"
    with pytest.raises(InputError, match=r"format version 1.*Rebuild such an index with `genept"):
        ReferenceIndex.load(old)
    with pytest.raises(InputError, match="format version 1"):
        transfer_labels(clustered(10, seed=6), old, copy=True)
    for junk in (b"", b"genept-fast", b"\0" * 600):
        bad = tmp_path / "junk.index"
        bad.write_bytes(junk)
        with pytest.raises(InputError, match="not a genept-fast reference index"):
            ReferenceIndex.load(bad)


def test_a_truncated_or_extended_index_is_refused(tmp_path):
    path = build_reference(clustered(50, seed=5), label_key="cell_type").save(tmp_path / "r.index")
    raw = path.read_bytes()
    for name, data in (("short", raw[:-1]), ("long", raw + b"\0"), ("head", raw[:300])):
        bad = tmp_path / f"{name}.index"
        bad.write_bytes(data)
        with pytest.raises(InputError, match=r"corrupted \(.*truncated.*\)\. Rebuild it"):
            ReferenceIndex.load(bad)


# -- reference cells whose embedding is all zero -------------------------------------------------


def zero_reference() -> tuple[ad.AnnData, ad.AnnData]:
    """Two labels in opposite corners and 30 all-zero cells labelled "Z": a query between them
    has cosine 0 with a zero cell and below 0 with half the others, so zero cells would win."""
    rng = np.random.default_rng(0)
    dim = 6
    A = np.eye(dim)[0] + 0.3 * rng.standard_normal((20, dim))
    B = np.eye(dim)[1] + 0.3 * rng.standard_normal((20, dim))
    X = np.vstack([A, B, np.zeros((30, dim)), A[:3] * 0])
    labels = ["A"] * 20 + ["B"] * 20 + ["Z"] * 30 + ["A"] * 3
    query = labelled(rng.standard_normal((200, dim)), ["?"] * 200, prefix="q")
    return labelled(X, labels), query


def numpy_knn(R: np.ndarray, labels: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    unit = R / np.linalg.norm(R, axis=1, keepdims=True).clip(1e-30)
    R16 = unit.astype(np.float16).astype(np.float32)
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    return clf.fit(R16, labels).predict(Q)


def test_zero_reference_cells_are_left_out_with_a_warning(tmp_path):
    ref, query = zero_reference()
    X, labels = ref.obsm["X_genept_w"], ref.obs["cell_type"].astype(str).to_numpy()
    Q = query.obsm["X_genept_w"]
    scores = Q @ X.T  # what the vote saw before: zero cells at cosine 0 beat the negative ones
    top = np.argsort(-scores, axis=1, kind="stable")[:, :15]
    assert ((labels[top] == "Z").sum(axis=1) > 7).sum() >= 10  # the test can fail
    for backend in ("exact", "hnsw"):
        with pytest.warns(UserWarning, match=r"33 of 73 reference cells have an all-zero") as rec:
            index = build_reference(ref, label_key="cell_type", backend=backend)
        assert "labels left without a cell, so never predicted: ['Z']" in str(rec[0].message)
        assert index.n_cells == 40 and index.n_zero_excluded == 33
        assert index.classes == ["A", "B"] and index.label_counts() == {"A": 20, "B": 20}
        assert index.obs_names == [f"c{i}" for i in range(40)]
        out = transfer_labels(query, index, k=15, copy=True)
        assert out is not None
        pred = out.obs["cell_type_pred"].astype(str).to_numpy()
        assert "Z" not in set(pred)
        if backend == "exact":
            np.testing.assert_array_equal(pred, numpy_knn(X[:40], labels[:40], Q, 15))
        assert out.uns["cell_type_pred"]["reference"]["n_zero_embedding_excluded"] == 33
        loaded = ReferenceIndex.load(index.save(tmp_path / f"{backend}.index"))
        assert loaded.n_zero_excluded == 33 and loaded.fingerprint == index.fingerprint
    plain = build_reference(ref[:40].copy(), label_key="cell_type")
    assert plain.fingerprint == index.fingerprint  # the same cells, the same content


def test_zero_reference_cells_that_leave_too_little_are_refused():
    ref, _ = zero_reference()
    only_a = ref[np.r_[0:20, 40:73]].copy()
    with pytest.raises(InputError, match=r"33 of 53 .* 1 label .*'A'.* needs at least 2"):
        build_reference(only_a, label_key="cell_type")
    zeros = ref[40:73].copy()
    zeros.obs["cell_type"] = pd.Categorical(["A", "B"] * 16 + ["A"])
    with pytest.raises(InputError, match=r"33 of 33 .* nothing to search"):
        build_reference(zeros, label_key="cell_type")


def test_build_reference_says_how_many_zero_cells_it_left_out(tmp_path):
    ref, _ = zero_reference()
    ref.write_h5ad(tmp_path / "ref.h5ad")
    out = tmp_path / "ref.index"
    proc = shell(
        "build-reference", str(tmp_path / "ref.h5ad"), "--label", "cell_type", "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "build-reference: warning: 33 of 73 reference cells have an all-zero" in proc.stderr


# -- the reject label ----------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["Unknown", " unknown", "UNKNOWN"])
def test_a_reference_label_like_the_reject_label_is_refused(label):
    ref, query = clustered(150, seed=8), clustered(60, seed=9)
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.rename_categories({"T0": label})
    n = int((ref.obs["cell_type"] == label).sum())
    with pytest.raises(InputError, match=rf"label '{label}' \({n} cells\).*reject label 'Unknown'"):
        transfer_labels(query, ref, label_key="cell_type", min_confidence=0.9)
    with pytest.raises(InputError, match="reads like the reject label"):
        evaluate_transfer(query, ref, label_key="cell_type", query_label_key="cell_type")


def test_another_reject_label_keeps_predictions_and_rejections_apart():
    ref, query = clustered(300, seed=8), clustered(80, seed=9)
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.rename_categories({"T0": "Unknown"})
    query.obsm["X_genept_w"][:3] = 0  # three cells nothing can be said about
    out = transfer_labels(
        query,
        ref,
        label_key="cell_type",
        min_confidence=0.9,
        unknown_label="unassigned",
        copy=True,
    )
    assert out is not None
    pred = out.obs["cell_type_pred"]
    assert list(pred.cat.categories) == ["T1", "T2", "Unknown", "unassigned"]
    conf = out.obs["cell_type_pred_confidence"].to_numpy()
    assert (pred[:3] == "unassigned").all()
    np.testing.assert_array_equal(pred == "unassigned", conf < 0.9)
    assert (pred == "Unknown").sum() > 0 and (conf[pred == "Unknown"] >= 0.9).all()
    uns = out.uns["cell_type_pred"]
    assert uns["params"]["unknown_label"] == "unassigned"
    assert uns["n_unknown"] == int((pred == "unassigned").sum())
    with pytest.raises(InputError, match="unknown_label must be a non-empty label"):
        transfer_labels(query, ref, label_key="cell_type", unknown_label=" ")


def test_the_cli_refuses_the_clash_and_takes_another_reject_label(tmp_path):
    ref, query = clustered(300, seed=8), clustered(80, seed=9)
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.rename_categories({"T0": "Unknown"})
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    argv = [
        "annotate",
        str(tmp_path / "q.h5ad"),
        "--reference",
        str(tmp_path / "ref.h5ad"),
        "--label",
        "cell_type",
        "--min-confidence",
        "0.9",
        "-o",
        str(tmp_path / "p.h5ad"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "p.h5ad").exists()
    assert main([*argv, "--unknown-label", "no call"]) == 0
    got = ad.read_h5ad(tmp_path / "p.h5ad")
    assert {"Unknown", "no call"} <= set(got.obs["cell_type_pred"].cat.categories)
    assert got.uns["cell_type_pred"]["params"]["unknown_label"] == "no call"


# -- provenance: the same gene table, model and method on both sides -----------------------------


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory):
    """Cells encoded with two gene tables of the same genes (another text source, another
    vector for each gene): a reference from one and a query from the other, as files written
    by the streaming encoder (``.h5ad`` and encode's flat ``.zarr`` store)."""
    from genept_fast.stream import encode_weighted

    d = tmp_path_factory.mktemp("tables")
    genes = [f"G{i}" for i in range(40)]
    rng = np.random.default_rng(3)
    tables = {
        "ncbi": GeneEmbeddings(
            genes,
            rng.standard_normal((40, 16)).astype(np.float32),
            {"model_id": "openai:text-embedding-3-small", "text_source": "ncbi"},
        ),
        "symbol": GeneEmbeddings(
            genes,
            rng.standard_normal((40, 16)).astype(np.float32),
            {"model_id": "openai:text-embedding-3-small", "text_source": "symbol"},
        ),
    }
    X = sp.random(300, 40, density=0.3, format="csr", random_state=4, dtype=np.float32)
    X.data = np.ceil(X.data * 5)
    cells = ad.AnnData(X=X, var=pd.DataFrame(index=genes))
    cells.obs["cell_type"] = pd.Categorical(rng.choice(["A", "B", "C"], 300))
    cells.write_h5ad(d / "cells.h5ad")
    encode_weighted(d / "cells.h5ad", d / "ref.h5ad", tables["ncbi"])
    encode_weighted(d / "cells.h5ad", d / "same.zarr", tables["ncbi"])
    encode_weighted(d / "cells.h5ad", d / "other.zarr", tables["symbol"])
    encode_weighted(d / "cells.h5ad", d / "other.h5ad", tables["symbol"])
    return d, tables, cells


def test_provenance_is_read_from_encode_h5ad_and_zarr(two_tables):
    d, _, _ = two_tables
    want = {"method": "GenePT-w", "model": "openai:text-embedding-3-small", "dimension": "16"}
    for name, source in (("ref.h5ad", "ncbi"), ("same.zarr", "ncbi"), ("other.zarr", "symbol")):
        with EmbeddingSource(d / name, ["X_genept_w"]) as src:
            assert src.params["X_genept_w"] == {**want, "text_source": source}, name


def test_a_query_from_another_gene_table_is_refused_naming_both(two_tables, tmp_path):
    d, _, _ = two_tables
    index = tmp_path / "ref.index"
    build = ["build-reference", str(d / "ref.h5ad"), "--label", "cell_type", "-o", str(index)]
    assert main(build) == 0
    for ref in (d / "ref.h5ad", index):
        for query in (d / "other.zarr", d / "other.h5ad"):
            argv = ["annotate", str(query), "--reference", str(ref), "-o", str(tmp_path / "p.h5ad")]
            if ref.suffix == ".h5ad":
                argv += ["--label", "cell_type"]
            proc = shell(*argv)
            assert proc.returncode == 2, proc.stderr
            assert "text_source 'symbol' (query) vs 'ncbi' (reference)" in proc.stderr
            assert "--allow-mismatch" in proc.stderr and "Traceback" not in proc.stderr
            assert not (tmp_path / "p.h5ad").exists()
    argv = ["annotate", str(d / "same.zarr"), "--reference", str(index)]
    assert main([*argv, "-o", str(tmp_path / "p.h5ad")]) == 0  # the same table: annotated


def test_allow_mismatch_annotates_with_a_warning_and_records_it(two_tables, tmp_path):
    d, _, _ = two_tables
    out = tmp_path / "p.parquet"
    argv = ["annotate", str(d / "other.zarr"), "--reference", str(d / "ref.h5ad")]
    argv += ["--label", "cell_type", "--allow-mismatch", "-o", str(out)]
    with pytest.warns(UserWarning, match=r"query and of the reference were made differently"):
        assert main(argv) == 0
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(out).metadata[b"genept_fast"])
    assert meta["cell_type_pred"]["params"]["provenance_mismatch"] == [
        "X_genept_w: text_source 'symbol' (query) vs 'ncbi' (reference)"
    ]


def test_evaluate_with_a_reference_refuses_a_mismatch_unless_allowed(two_tables, tmp_path):
    d, _, _ = two_tables
    argv = ["evaluate", str(d / "other.h5ad"), "--reference", str(d / "ref.h5ad")]
    argv += ["--label", "cell_type", "--methods", "knn", "--no-plots"]
    proc = shell(*argv, "-o", str(tmp_path / "r1"))
    assert proc.returncode == 2, proc.stderr
    assert "text_source 'symbol' (query) vs 'ncbi' (reference)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r1").exists()
    proc = shell(*argv, "--allow-mismatch", "--unknown-label", "none", "-o", str(tmp_path / "r2"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["settings"]["unknown_label"] == "none"
    assert any("provenance differs" in note for note in report["notes"])


def test_the_api_refuses_another_model_with_the_error_carrying_both(two_tables):
    import genept_fast as gf

    _, tables, cells = two_tables
    ref, query = cells.copy(), cells.copy()
    gf.tl.genept_w(ref, tables["ncbi"])
    gf.tl.genept_w(query, tables["ncbi"])
    query.uns["X_genept_w"]["params"]["model"] = "local:minilm"
    with pytest.raises(ProvenanceMismatchError) as exc:
        transfer_labels(query, ref, label_key="cell_type")
    assert exc.value.key == "X_genept_w"
    assert exc.value.differences == {"model": ("local:minilm", "openai:text-embedding-3-small")}
    assert "cell_type_pred" not in query.obs
    with pytest.warns(UserWarning, match="annotating anyway, as allow_mismatch asks"):
        transfer_labels(query, ref, label_key="cell_type", allow_mismatch=True)
    assert query.uns["cell_type_pred"]["params"]["provenance_mismatch"] == [
        "X_genept_w: model 'local:minilm' (query) vs 'openai:text-embedding-3-small' (reference)"
    ]
    with pytest.raises(ProvenanceMismatchError):
        evaluate_transfer(query, ref, label_key="cell_type", methods=["knn"])
    with pytest.warns(UserWarning, match="annotating anyway"):
        rep = evaluate_transfer(
            query, ref, label_key="cell_type", methods=["knn"], allow_mismatch=True
        )
    assert any("provenance differs" in n for n in rep.notes)


def test_provenance_on_one_side_only_is_said(two_tables):
    import genept_fast as gf

    _, tables, cells = two_tables
    ref = cells.copy()
    gf.tl.genept_w(ref, tables["ncbi"])
    query = labelled(ref.obsm["X_genept_w"][:50], ["?"] * 50, prefix="q")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        transfer_labels(query, ref, label_key="cell_type")
    assert any("only the reference records what made it" in str(w.message) for w in rec)


@pytest.mark.parametrize("key", ["", " ", "a/b", ".x"])
def test_an_empty_or_path_like_key_added_is_refused_by_the_api_and_the_cli(key, tmp_path):
    rng = np.random.default_rng(0)
    ref = ad.AnnData(np.zeros((30, 2), dtype=np.float32))
    ref.obsm["X_genept_w"] = rng.standard_normal((30, 8)).astype(np.float32)
    ref.obs["cell_type"] = pd.Categorical(rng.choice(["A", "B"], 30))
    query = ref.copy()
    with pytest.raises(InputError, match="key"):
        transfer_labels(query, ref, label_key="cell_type", key_added=key)
    assert list(query.obs.columns) == ["cell_type"]
    ref.write_h5ad(tmp_path / "ref.h5ad")
    argv = ["annotate", str(tmp_path / "ref.h5ad"), "--reference", str(tmp_path / "ref.h5ad")]
    argv += ["--label", "cell_type", "--key-added", key, "-o", str(tmp_path / "p.h5ad")]
    assert main(argv) == 2
    assert not (tmp_path / "p.h5ad").exists()


def test_an_ivf_reference_of_mostly_zero_cells_says_why_it_cannot_train():
    rng = np.random.default_rng(1)
    ref = ad.AnnData(np.zeros((2000, 2), dtype=np.float32))  # 51 IVF lists
    E = np.zeros((2000, 8), dtype=np.float32)
    E[:20] = rng.standard_normal((20, 8))  # 1,980 cells with no gene embedded
    ref.obsm["X_genept_w"] = E
    ref.obs["cell_type"] = pd.Categorical(rng.choice(["A", "B"], 2000))
    with pytest.raises(InputError, match=r"51 lists needs at least 51 cells with a nonzero") as e:
        build_reference(ref, label_key="cell_type", backend="ivf")
    assert "has 20 (all-zero cells are left out)" in str(e.value)
    assert "backend='exact'" in str(e.value)
