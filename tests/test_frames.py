"""genept_fast._frames against anndata.io.read_elem, on dataframes anndata itself writes."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import TYPE_CHECKING, Any

import anndata as ad
import h5py
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
import zarr
from anndata.io import read_elem, write_elem
from hypothesis import HealthCheck, given, settings

from genept_fast._frames import columns, read_column, read_frame
from genept_fast.errors import InputError
from genept_fast.genes.match import SYMBOL_COLUMNS, dataset_identifiers, var_columns

if TYPE_CHECKING:
    from pathlib import Path

KINDS = ("float", "int", "bool", "str", "cat", "cat_ordered", "Int", "boolean", "string")
text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6
)
#: Column names: no "/" (a path separator in both stores), not the index's name
names_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00/"),
    min_size=1,
    max_size=6,
).filter(lambda s: s not in ("_index", "gene") and not s.startswith(".") and s.strip() == s)


def _column(kind: str, n: int, data: st.DataObject) -> Any:
    def draw(elements: st.SearchStrategy[Any]) -> list[Any]:
        return data.draw(st.lists(elements, min_size=n, max_size=n))

    if kind == "float":
        return np.array(draw(st.floats(width=32, allow_nan=True)), dtype=np.float32)
    if kind == "int":
        return np.array(draw(st.integers(-(2**40), 2**40)), dtype=np.int64)
    if kind == "bool":
        return np.array(draw(st.booleans()), dtype=bool)
    if kind == "str":
        return np.array(draw(text), dtype=object)
    if kind in ("cat", "cat_ordered"):
        cats = data.draw(st.lists(text, min_size=1, max_size=5, unique=True))
        codes = draw(st.integers(-1, len(cats) - 1))
        return pd.Categorical.from_codes(codes, pd.Index(cats), ordered=kind == "cat_ordered")
    if kind == "Int":
        return pd.array(draw(st.none() | st.integers(-(2**31), 2**31 - 1)), dtype="Int32")
    if kind == "boolean":
        return pd.array(draw(st.none() | st.booleans()), dtype="boolean")
    return pd.array(draw(st.none() | text), dtype="string")


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    data = draw(st.data())
    n = draw(st.integers(0, 8))
    kinds = draw(st.lists(st.sampled_from(KINDS), max_size=6))
    names = draw(st.lists(names_text, min_size=len(kinds), max_size=len(kinds), unique=True))
    index = draw(st.lists(text, min_size=n, max_size=n, unique=True))
    frame = pd.DataFrame(
        {name: _column(kind, n, data) for name, kind in zip(names, kinds, strict=True)},
        index=pd.Index(index, dtype=object),
    )
    frame.index.name = draw(st.sampled_from([None, "gene"]))
    return frame


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> Any:
    with ad.settings.override(allow_write_nullable_strings=True):
        if fmt == "h5ad":
            root: Any = h5py.File(path / "f.h5", "w")
        else:
            root = zarr.open_group(path / "f.zarr", mode="w")
        write_elem(root, "var", frame)
    if fmt == "h5ad":
        root.close()
        return h5py.File(path / "f.h5", "r")
    return zarr.open_group(path / "f.zarr", mode="r")


def _same(ours: Any, theirs: Any) -> None:
    assert type(ours) is type(theirs)
    if isinstance(theirs, pd.DataFrame):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
        assert list(ours.columns) == list(theirs.columns)
        assert ours.index.name == theirs.index.name
        for c in range(theirs.shape[1]):
            assert type(ours.iloc[:, c].array) is type(theirs.iloc[:, c].array)
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert ours.dtype == theirs.dtype
        pd.testing.assert_extension_array_equal(ours, theirs, check_exact=True)


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=frames(), data=st.data())
def test_frames_read_as_anndata_reads_them(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, frame: pd.DataFrame, data: st.DataObject
) -> None:
    root = _write(frame, tmp_path_factory.mktemp("f"), fmt)
    group = root["var"]
    theirs = read_elem(group)
    _same(read_frame(group), theirs)
    for name in theirs.columns:
        _same(read_column(group[name]), read_elem(group[name]))
    some = data.draw(
        st.lists(st.sampled_from(list(theirs.columns)), unique=True)
        if len(theirs.columns)
        else st.just([])
    )
    _same(read_frame(group, some), theirs[some])
    _same_for_matching(group, theirs, data)
    if isinstance(root, h5py.File):
        root.close()


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _same_values(ours: list[Any], theirs: list[Any]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert type(a) is type(b), (a, b)
        assert (_missing(a) and _missing(b)) or a == b, (a, b)


def _ids(var_names: list[str], var: Any, gene_key: str | None) -> Any:
    """What the gene matching makes of ``var`` (or the message it refuses it with)."""
    try:
        ids = dataset_identifiers(var_names, var, gene_key=gene_key)
    except InputError as e:
        return type(e), str(e)
    return ids.primary, ids.alternatives, ids.description


def _same_for_matching(group: Any, theirs: pd.DataFrame, data: st.DataObject) -> None:
    """:func:`columns` against the DataFrame for what gene matching reads of it: the column
    names, each column's values as objects, whether it is text, and the identifiers."""
    ours = columns(group)
    assert ours is not None
    assert ours.columns == list(theirs.columns)
    text_kinds = ("object", "category", "string", "str")
    for name in theirs.columns:
        assert name in ours
        _same_values(ours[name].astype(object).tolist(), theirs[name].astype(object).tolist())
        assert (str(ours[name].dtype) in text_kinds) == (str(theirs[name].dtype) in text_kinds)
    assert "_no such column_" not in ours
    with pytest.raises(KeyError):
        ours["_no such column_"]
    frame = columns(group)  # a fresh one: nothing read yet
    assert var_columns(frame) == var_columns(theirs)  # type: ignore[arg-type]
    var_names = list(theirs.index)
    keys = [None, *theirs.columns, "_no such column_"]
    key = data.draw(st.sampled_from(keys))
    assert _ids(var_names, columns(group), key) == _ids(var_names, theirs, key)
    # a symbol column found by its name, as the matching does without gene_key
    if len(theirs.columns):
        renamed = theirs.rename(columns={theirs.columns[0]: SYMBOL_COLUMNS[0]})
        fake = _Renamed(columns(group), theirs.columns[0], SYMBOL_COLUMNS[0])
        assert _ids(var_names, fake, None) == _ids(var_names, renamed, None)


class _Renamed:
    """Columns with one column under another name (a symbol column without writing one)."""

    def __init__(self, inner: Any, old: str, new: str) -> None:
        self.inner, self.old, self.new = inner, old, new
        self.columns = [new if c == old else c for c in inner.columns]

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> Any:
        return self.inner[self.old if name == self.new else name]


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_every_encoding_is_read_without_anndata(tmp_path: Path, fmt: str) -> None:
    """Each kind of column anndata writes has its own encoding, and none is read by anndata."""
    n = 4
    frame = pd.DataFrame(
        {
            "f": np.arange(n, dtype=np.float32),
            "i": np.arange(n),
            "b": np.array([True, False, True, True]),
            "s": np.array(list("abcd"), dtype=object),
            "c": pd.Categorical(list("xyxz"), ordered=True),
            "ni": pd.array([1, None, 3, 4], dtype="Int64"),
            "nb": pd.array([True, None, False, True], dtype="boolean"),
            "ns": pd.array(["a", None, "c", "d"], dtype="string"),
        },
        index=[f"g{i}" for i in range(n)],
    )
    root = _write(frame, tmp_path, fmt)
    group = root["var"]
    kinds = {str(group[c].attrs["encoding-type"]) for c in group}
    assert kinds == {
        "array",
        "string-array",
        "categorical",
        "nullable-integer",
        "nullable-boolean",
        "nullable-string-array",
    }
    import genept_fast._frames as frames_module

    def refuse(elem: Any) -> Any:
        raise AssertionError(f"anndata asked to read {elem.name}")

    original = frames_module._anndata_read
    frames_module._anndata_read = refuse
    try:
        ours = read_frame(group)
    finally:
        frames_module._anndata_read = original
    _same(ours, read_elem(group))


def test_unknown_elements_are_read_by_anndata(tmp_path: Path) -> None:
    """A column written without encoding metadata, and a frame of the 0.1.0 layout: anndata's
    result, not a guess."""
    frame = pd.DataFrame({"a": np.arange(3.0), "b": list("xyz")}, index=["p", "q", "r"])
    root = _write(frame, tmp_path, "h5ad")
    root.close()
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        del f["var/a"].attrs["encoding-type"]
        del f["var/a"].attrs["encoding-version"]
    with h5py.File(tmp_path / "f.h5", "r") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(read_frame(f["var"]), read_elem(f["var"]))
        _same(read_column(f["var/a"]), read_elem(f["var/a"]))
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        f["var"].attrs["encoding-version"] = "0.1.0"
    with h5py.File(tmp_path / "f.h5", "r") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(read_frame(f["var"]), read_elem(f["var"]))


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    root = _write(pd.DataFrame({"a": [1.0]}, index=["g"]), tmp_path, "zarr")
    with pytest.raises(KeyError, match="nope"):
        read_frame(root["var"], ["a", "nope"])


def _open_both(frame: pd.DataFrame, tmp_path: Path, reader: str) -> str:
    """Writes ``frame`` as the var of an .h5ad and a .zarr; the code that reads them in a
    fresh interpreter with ``reader`` as ``h`` and ``z``."""
    for fmt in ("h5ad", "zarr"):
        root = _write(frame, tmp_path, fmt)
        if fmt == "h5ad":
            root.close()
    return (
        "import h5py, zarr\n"
        f"h = {reader}(h5py.File({str(tmp_path / 'f.h5')!r}, 'r')['var'])\n"
        f"z = {reader}(zarr.open_group({str(tmp_path / 'f.zarr')!r}, mode='r')['var'])\n"
    )


def test_reading_a_frame_does_not_import_anndata(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"sym": list("ab"), "c": pd.Categorical(["u", "v"])}, index=["ENSG1", "ENSG2"]
    )
    code = (
        "import sys\n"
        "from genept_fast._frames import read_frame\n"
        f"{_open_both(frame, tmp_path, 'read_frame')}"
        "assert h.equals(z) and list(h['sym']) == ['a', 'b'], (h, z)\n"
        "print('anndata' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_columns_of_legacy_or_unknown_frames_are_none(tmp_path: Path) -> None:
    """Where read_frame hands the frame to anndata, columns() says so (the caller reads the
    frame) instead of guessing."""
    frame = pd.DataFrame({"a": np.arange(3.0), "b": list("xyz")}, index=["p", "q", "r"])
    root = _write(frame, tmp_path, "h5ad")
    root.close()
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        f["var"].attrs["encoding-version"] = "0.1.0"
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert columns(f["var"]) is None
        assert columns(f["var/a"]) is None


def test_columns_read_without_pandas_and_only_when_asked(tmp_path: Path) -> None:
    n = 4
    frame = pd.DataFrame(
        {
            "sym": np.array(["A", "B", "C", "D"], dtype=object),
            "cat": pd.Categorical(["u", None, "v", "u"]),
            "num": np.arange(n, dtype=np.int64),
            "ns": pd.array(["a", None, "c", "d"], dtype="string"),
        },
        index=[f"ENSG{i}" for i in range(n)],
    )
    code = (
        "import sys, math\n"
        "from genept_fast._frames import columns\n"
        f"{_open_both(frame, tmp_path, 'columns')}"
        "for c in (h, z):\n"
        "    assert c.columns == ['sym', 'cat', 'num', 'ns'], c.columns\n"
        "    assert c['sym'].tolist() == ['A', 'B', 'C', 'D']\n"
        "    cat = c['cat'].tolist()\n"
        "    assert cat[0] == 'u' and math.isnan(cat[1]) and cat[2:] == ['v', 'u'], cat\n"
        "    assert c['num'].tolist() == [0, 1, 2, 3]\n"
        "print('pandas' in sys.modules, 'anndata' in sys.modules)\n"
        "h['ns']\n"  # a nullable string column needs pandas: read as read_column reads it
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
