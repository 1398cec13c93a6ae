"""Zarr visibility stores with MSv4 names, written atomically and one frequency window at a time.

Layout: ``VISIBILITY``/``WEIGHT``/``FLAG`` (time, baseline_id, frequency, polarization) and
``UVW`` (time, baseline_id, uvw_label), chunked one frequency window by ``time_chunk``
integrations per chunk (about ``CHUNK_BYTES`` of visibilities unless given), so that each
Dask task, over a (window, time chunk), reads and writes only its own chunk.  A store is
built under a temporary name and renamed into place by :func:`finalize`; readers refuse
anything that is not complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from steps import atomic

SCHEMA_VERSION = 1
COMPLETE = "batch_imaging_complete"
VIS_DTYPE = np.complex64
CHUNK_BYTES = 16 * 2**20  # visibilities per chunk when the time chunk is not given


class StoreError(RuntimeError):
    """A visibility store is missing, incomplete or of an incompatible schema."""


@dataclass(frozen=True)
class Layout:
    """Coordinates that define a visibility store."""

    times: np.ndarray  # MJD seconds (UTC)
    frequencies: np.ndarray  # Hz
    channel_width: float  # Hz
    antenna1: np.ndarray  # station index of each baseline
    antenna2: np.ndarray
    antenna_names: list[str]
    uvw: np.ndarray  # (time, baseline, 3) metres, antenna2 - antenna1
    integration_time: float  # s

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.times), len(self.antenna1), len(self.frequencies), 1


def default_time_chunk(ntime: int, nbl: int) -> int:
    """Integrations per chunk: about ``CHUNK_BYTES`` of visibilities, at least one."""
    per_time = nbl * np.dtype(VIS_DTYPE).itemsize
    return int(min(ntime, max(1, CHUNK_BYTES // per_time)))


def create(
    path: Path, layout: Layout, attrs: Mapping[str, Any], time_chunk: int | None = None
) -> Path:
    """Create an empty store under a temporary name beside ``path``; return that name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temporary_name(path)
    ntime, nbl, _, npol = layout.shape
    tc = min(ntime, time_chunk or default_time_chunk(ntime, nbl))
    dims = ("time", "baseline_id", "frequency", "polarization")
    chunks = (tc, nbl, 1, npol)
    names = np.asarray(layout.antenna_names, dtype=object)
    ds = xr.Dataset(
        coords={
            "time": ("time", layout.times, {"units": "s", "scale": "utc", "format": "mjd"}),
            "baseline_id": np.arange(nbl),
            "frequency": ("frequency", layout.frequencies, {"units": "Hz", "frame": "TOPO"}),
            "polarization": np.array(["I"], dtype=object),
            "uvw_label": np.array(["u", "v", "w"], dtype=object),
            "baseline_antenna1_name": ("baseline_id", names[layout.antenna1]),
            "baseline_antenna2_name": ("baseline_id", names[layout.antenna2]),
            "baseline_antenna1": ("baseline_id", layout.antenna1.astype(np.int32)),
            "baseline_antenna2": ("baseline_id", layout.antenna2.astype(np.int32)),
        },
        data_vars={"UVW": (("time", "baseline_id", "uvw_label"), layout.uvw, {"units": "m"})},
        attrs={
            **attrs,
            "type": "visibility",
            "schema_version": SCHEMA_VERSION,
            "channel_width_hz": float(layout.channel_width),
            "integration_time_s": float(layout.integration_time),
            COMPLETE: False,
        },
    )
    ds.to_zarr(
        tmp,
        mode="w-",
        consolidated=False,
        zarr_format=3,
        encoding={"UVW": {"chunks": (tc, nbl, 3)}},
    )
    group = zarr.open_group(tmp, mode="r+")
    for name, dtype, fill in (
        ("VISIBILITY", VIS_DTYPE, 0),
        ("WEIGHT", np.float32, 0),
        ("FLAG", np.bool_, True),
    ):
        array = group.create_array(
            name,
            shape=layout.shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=dims,
        )
        if name == "VISIBILITY":
            array.attrs["units"] = "Jy"
    return tmp


def write_window(
    path: Path,
    index: int,
    vis: np.ndarray,
    weight: np.ndarray,
    flag: np.ndarray,
    times: slice = slice(None),
) -> None:
    """Write one frequency window (time, baseline), or its ``times``, into a store being built."""
    group = zarr.open_group(path, mode="r+")
    group["VISIBILITY"][times, :, index, 0] = vis.astype(VIS_DTYPE, copy=False)
    group["WEIGHT"][times, :, index, 0] = weight
    group["FLAG"][times, :, index, 0] = flag


def time_chunks(path: Path) -> list[slice]:
    """The time chunks of a store: a task per (window, time chunk) touches only its chunk."""
    array = zarr.open_group(path, mode="r")["VISIBILITY"]
    ntime, step = array.shape[0], array.chunks[0]
    return [slice(start, min(start + step, ntime)) for start in range(0, ntime, step)]


def finalize(tmp: Path, path: Path) -> Path:
    """Mark a fully written store complete and move it to its final name (replacing any)."""
    group = zarr.open_group(tmp, mode="r+")
    group.attrs[COMPLETE] = True
    return atomic.replace_dir(tmp, path)


def write_dataset(ds: xr.Dataset, path: Path) -> Path:
    """Write a small dataset (a gain table) atomically as a complete store."""
    tmp = atomic.temporary_name(Path(path))
    ds.assign_attrs(schema_version=SCHEMA_VERSION, **{COMPLETE: False}).to_zarr(
        tmp, mode="w-", consolidated=False, zarr_format=3
    )
    return finalize(tmp, path)


def create_cubes(path: Path, ds: xr.Dataset, npixel: int, cubes: Mapping[str, Any]) -> Path:
    """Create an image store under a temporary name beside ``path``: ``ds`` (coordinate
    ``frequency``, small variables, attributes) and empty (frequency, y, x) cubes of the
    given dtypes, one chunk per plane, NaN until written (``write_plane``); return that name.
    """
    tmp = atomic.temporary_name(Path(path))
    ds.assign_attrs(schema_version=SCHEMA_VERSION, **{COMPLETE: False}).to_zarr(
        tmp, mode="w-", consolidated=False, zarr_format=3
    )
    group = zarr.open_group(tmp, mode="r+")
    for name, dtype in cubes.items():
        group.create_array(
            name,
            shape=(ds.sizes["frequency"], npixel, npixel),
            chunks=(1, npixel, npixel),
            dtype=dtype,
            fill_value=np.nan,
            dimension_names=("frequency", "y", "x"),
        )
    return tmp


def write_plane(path: Path, name: str, index: int, plane: np.ndarray) -> None:
    """Write one frequency plane of cube ``name`` into an image store being built."""
    zarr.open_group(path, mode="r+")[name][index] = plane


def gain_table(
    gains: np.ndarray, times: np.ndarray, frequencies: np.ndarray, names: list[str], **attrs: Any
) -> xr.Dataset:
    """A gain table: ``GAIN`` (frequency, time, antenna), complex, V_pq = g_p conj(g_q) M_pq."""
    return xr.Dataset(
        {"GAIN": (("frequency", "time", "antenna_name"), gains)},
        coords={
            "frequency": frequencies,
            "time": times,
            "antenna_name": np.asarray(names, dtype=object),
        },
        attrs={"type": "gain", **attrs},
    )


def open_store(path: Path) -> xr.Dataset:
    """Open a complete visibility store lazily; raise StoreError naming the problem otherwise."""
    ds = open_dataset(path, "visibility store")
    if ds.attrs.get("type") != "visibility":
        raise StoreError(f"{path} is not a visibility store (type {ds.attrs.get('type')!r})")
    return ds


def open_dataset(path: Path, kind: str = "store") -> xr.Dataset:
    """Open any complete store of this project (visibilities, gains, images), lazily: a
    variable is read from its Zarr chunks when indexed (no Dask graph: the steps read whole
    windows or small tables, and Dask's import and scheduling cost more than the reads);
    ``kind`` names what was expected where ``path`` is a file."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    if not path.is_dir():
        raise StoreError(f"{path} is not a {kind} (a file, not a Zarr directory)")
    try:
        ds = xr.open_zarr(path, consolidated=False, zarr_format=3, chunks=None)
    except Exception as exc:  # zarr raises several types for damaged stores
        raise StoreError(f"store {path} is unreadable: {exc}") from None
    if ds.attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {ds.attrs.get('schema_version')!r}; "
            f"this version reads {SCHEMA_VERSION}"
        )
    if ds.attrs.get(COMPLETE) is not True:
        raise StoreError(f"store {path} is incomplete (its writer did not finish)")
    return ds


def layout_of(ds: xr.Dataset) -> Layout:
    """The coordinates of an open store."""
    return Layout(
        times=ds["time"].values,
        frequencies=ds["frequency"].values,
        channel_width=ds.attrs["channel_width_hz"],
        antenna1=ds["baseline_antenna1"].values,
        antenna2=ds["baseline_antenna2"].values,
        antenna_names=list(ds.attrs["antenna_names"]),
        uvw=ds["UVW"].values,
        integration_time=ds.attrs["integration_time_s"],
    )


def read_window(
    path: Path, index: int, times: slice = slice(None)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visibilities, weights and flags (time, baseline) of one frequency window (or ``times``)."""
    group = zarr.open_group(path, mode="r")
    return (
        group["VISIBILITY"][times, :, index, 0],
        group["WEIGHT"][times, :, index, 0],
        group["FLAG"][times, :, index, 0],
    )
