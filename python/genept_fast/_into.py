"""Results into the user's own AnnData: ``genept-fast encode ... --into STORE``.

:func:`check_into` is called before any work (it refuses what :func:`write_into` would refuse),
:func:`write_into` once the embedding is computed. What happens depends on ``STORE``:

- **an existing AnnData ``.zarr`` store** (zarr v2 or v3, as anndata writes them):
  ``obsm[KEY]`` and ``uns[KEY]`` are added in place. Each is written whole under a temporary
  folder beside the store and renamed into it (a crash never leaves a half-written ``KEY``
  visible); an existing ``KEY`` is refused unless ``overwrite``, and then renamed aside, the new
  one renamed in, the old one removed. The store's cells must be the input's cells (same
  ``obs_names`` in the same order). Every other file of the store keeps its bytes, except the
  consolidated metadata (``.zmetadata`` in v2, the root ``zarr.json`` in v3), which is written
  again when the store had it, so that readers using it (anndata's ``read_zarr``) see the new
  keys.
- **``STORE`` does not exist** (``.zarr`` or ``.h5ad``): a new AnnData that is the input plus
  the new keys, written beside and renamed into place (same format: the input is copied and the
  keys added to the copy, in bounded memory; another format: the input is read into memory and
  written by anndata).
- **an existing ``.h5ad`` file**: refused unless ``overwrite``; never when it is the input. With
  ``overwrite`` a copy of it plus the new keys replaces it atomically (its other contents, e.g.
  an embedding added earlier, are kept); its cells must be the input's.

A ``.h5ad`` file is never changed in place: HDF5 cannot make an addition atomic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from genept_fast._atomic import atomic_path
from genept_fast._outputs import OVERWRITE_HINT, check_key, install, remove_path
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["IntoPlan", "check_into", "read_obs_names", "write_into"]

Mode = Literal["zarr-in-place", "new", "h5ad-replace"]

_SUFFIXES = (".zarr", ".h5ad")


@dataclass(frozen=True)
class IntoPlan:
    """What :func:`write_into` will do with ``store`` (from :func:`check_into`)."""

    store: Path
    input: Path
    key: str
    mode: Mode
    overwrite: bool


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("zarr.json", ".zgroup"))


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.samefile(b)
    except OSError:
        return False


def read_obs_names(path: str | os.PathLike[str]) -> np.ndarray:
    """The ``obs_names`` of an AnnData ``.h5ad`` file or ``.zarr`` store, read alone."""
    from anndata.io import read_elem

    p = Path(path)
    try:
        if p.is_dir():
            import zarr

            obs: Any = zarr.open_group(str(p), mode="r")["obs"]
            return np.asarray(read_elem(obs[obs.attrs["_index"]]), dtype=object)
        import h5py

        with h5py.File(p, "r") as f:
            obs = f["obs"]
            return np.asarray(read_elem(obs[obs.attrs["_index"]]), dtype=object)
    except (KeyError, OSError, ValueError, TypeError) as exc:
        msg = f"{p} is not an AnnData file or store whose cells can be read: {exc}"
        raise InputError(msg) from exc


def _check_cells(store: Path, input: Path) -> None:
    if _same(store, input):
        return
    have, want = read_obs_names(store), read_obs_names(input)
    if have.shape != want.shape or not np.array_equal(have.astype(str), want.astype(str)):
        msg = (
            f"{store} holds other cells than the input {input} ({len(have):,} vs {len(want):,}"
            " cells, or other names or order): its obs_names must be the input's"
        )
        raise InputError(msg)


def _existing_keys(store: Path, key: str) -> list[str]:
    """``obsm/KEY`` and ``uns/KEY`` where ``store`` (a zarr store) already has them."""
    return [f"{g}/{key}" for g in ("obsm", "uns") if (store / g / key).exists()]


def check_into(
    store: str | os.PathLike[str],
    *,
    input: str | os.PathLike[str],
    key: str,
    overwrite: bool = False,
) -> IntoPlan:
    """Refuse, before any work, what :func:`write_into` would refuse; say what it will do.

    Raises
    ------
    InputError
        ``store`` is neither an existing ``.zarr`` AnnData store nor a new or existing
        ``.h5ad`` / ``.zarr`` path; it holds other cells than ``input``; it already has ``key``
        (or, for ``.h5ad``, exists) and ``overwrite`` is false; it is the ``.h5ad`` input.
    """
    check_key(key)
    st, inp = Path(store), Path(input)
    if st.is_dir():
        if not _is_zarr_dir(st):
            msg = f"{st} is a folder but not a zarr store; --into takes an AnnData .zarr store"
            raise InputError(msg)
        taken = _existing_keys(st, key)
        if taken and not overwrite:
            msg = f"{st} already has {' and '.join(taken)}; {OVERWRITE_HINT}"
            raise InputError(msg)
        _check_cells(st, inp)
        return IntoPlan(st, inp, key, "zarr-in-place", overwrite)
    if st.suffix.lower() not in _SUFFIXES:
        msg = f"--into takes an AnnData .zarr store or a .h5ad file, not {st}"
        raise InputError(msg)
    if not (st.exists() or st.is_symlink()):
        return IntoPlan(st, inp, key, "new", overwrite)
    if st.suffix.lower() != ".h5ad" or not st.is_file():
        msg = f"{st} exists and is not a .h5ad file or a .zarr store"
        raise InputError(msg)
    if _same(st, inp):
        msg = (
            f"{st} is the input; a .h5ad file is never rewritten in place: give --into a new"
            " file (the input plus the new keys) or a .zarr store"
        )
        raise InputError(msg)
    if not overwrite:
        msg = f"{st} already exists; {OVERWRITE_HINT}"
        raise InputError(msg)
    _check_cells(st, inp)
    return IntoPlan(st, inp, key, "h5ad-replace", overwrite)


def write_into(plan: IntoPlan, embedding: np.ndarray, uns: Mapping[str, Any]) -> Path:
    """Write ``obsm[plan.key] = embedding`` and ``uns[plan.key] = uns`` as ``plan`` says.

    ``embedding`` is a ``(cells, dim)`` array (a memory map is read once, not held twice).
    Returns the store's path.
    """
    n = len(read_obs_names(plan.input))
    if embedding.ndim != 2 or embedding.shape[0] != n:
        msg = f"the embedding has shape {embedding.shape}; the input has {n:,} cells"
        raise InputError(msg)
    if plan.mode == "zarr-in-place":
        _add_to_zarr(plan.store, plan.key, embedding, uns)
    elif plan.mode == "h5ad-replace":
        _copy_and_add(plan.store, plan.store, plan.key, embedding, uns)
    else:
        _copy_and_add(plan.input, plan.store, plan.key, embedding, uns)
    return plan.store


# -- zarr: add in place -------------------------------------------------------------------------


def _zarr_format(store: Path) -> int:
    return 3 if (store / "zarr.json").is_file() else 2


def _consolidated(store: Path) -> bool:
    if _zarr_format(store) == 2:
        return (store / ".zmetadata").is_file()
    import json

    meta = json.loads((store / "zarr.json").read_text())
    return meta.get("consolidated_metadata") is not None


def _ensure_group(store: Path, name: str) -> None:
    """Create ``store/name`` as an anndata ``dict`` group if the store lacks it."""
    if (store / name).exists():
        return
    import zarr
    from anndata.io import write_elem

    write_elem(zarr.open_group(str(store), mode="r+", use_consolidated=False), name, {})


def _add_to_zarr(store: Path, key: str, embedding: np.ndarray, uns: Mapping[str, Any]) -> None:
    import zarr
    from anndata.io import write_elem

    fmt = _zarr_format(store)
    consolidated = _consolidated(store)
    work = store.with_name(f".{store.name}.into-{key}-{os.getpid()}")
    remove_path(work)
    try:
        with _quiet_zarr_warnings():
            group = zarr.open_group(str(work), mode="w", zarr_format=fmt)  # type: ignore[arg-type]
            write_elem(group, "uns", {key: dict(uns)})
            write_elem(group, "obsm", {key: np.asarray(embedding)})
            for name in ("obsm", "uns"):
                _ensure_group(store, name)
            for name in ("uns", "obsm"):  # obsm last: an embedding is never without its record
                _move_in(work / name / key, store / name / key, aside=work / f"old-{name}")
            if consolidated:  # zarr's LocalStore writes it atomically (a temporary, renamed)
                zarr.consolidate_metadata(str(store))
    finally:
        remove_path(work)


def _move_in(src: Path, dst: Path, *, aside: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is renamed to ``aside`` first."""
    if dst.exists():
        dst.replace(aside)
    src.replace(dst)


# -- a new AnnData: the input (or the replaced .h5ad) plus the keys ----------------------------


def _copy_and_add(
    source: Path, dest: Path, key: str, embedding: np.ndarray, uns: Mapping[str, Any]
) -> None:
    src_zarr, dst_zarr = source.is_dir(), dest.suffix.lower() == ".zarr"
    if not dst_zarr:
        with atomic_path(dest) as tmp:
            if src_zarr:
                _convert(source, tmp, "h5ad")
            else:
                shutil.copyfile(source, tmp)
            _add_to_h5ad(tmp, key, embedding, uns)
        return
    tmp_dir = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    remove_path(tmp_dir)
    try:
        if src_zarr:
            shutil.copytree(source, tmp_dir, symlinks=True)
        else:
            _convert(source, tmp_dir, "zarr")
        _add_to_zarr(tmp_dir, key, embedding, uns)
        install(tmp_dir, dest)
    finally:
        remove_path(tmp_dir)


def _convert(source: Path, dest: Path, fmt: Literal["h5ad", "zarr"]) -> None:
    """Write the AnnData at ``source`` to ``dest`` as ``fmt`` (through memory: anndata reads
    it whole)."""
    import anndata as ad

    adata = ad.read_zarr(source) if source.is_dir() else ad.read_h5ad(source)
    if fmt == "h5ad":
        adata.write_h5ad(dest)
    else:
        with _quiet_zarr_warnings():
            adata.write_zarr(dest)


@contextlib.contextmanager
def _quiet_zarr_warnings() -> Iterator[None]:
    """Silence zarr's and anndata's notices about formats the user's store already uses (v2
    going out of default, v3 sharding and consolidated metadata not in the v3 spec)."""
    import warnings

    with warnings.catch_warnings():
        for text in (
            "Writing zarr v2 data",
            "zarr v3 autosharding",
            "Consolidated metadata is currently not part",
        ):
            warnings.filterwarnings("ignore", message=text)
        yield


def _add_to_h5ad(path: Path, key: str, embedding: np.ndarray, uns: Mapping[str, Any]) -> None:
    import h5py
    from anndata.io import write_elem

    with h5py.File(path, "r+") as f:
        for name in ("obsm", "uns"):
            if name not in f:
                write_elem(f, name, {})
            if key in f[name]:
                del f[name][key]
        write_elem(f["uns"], key, dict(uns))
        write_elem(f["obsm"], key, np.asarray(embedding))
