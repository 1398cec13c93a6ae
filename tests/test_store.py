"""Zarr stores: per-window and per-plane writes, atomic completion, refusal of bad stores."""

import numpy as np
import pytest
import xarray as xr
import zarr

from steps import store


def layout(nfreq: int = 3) -> store.Layout:
    rng = np.random.default_rng(1)
    return store.Layout(
        times=5e9 + 600.0 * np.arange(4),
        frequencies=1e8 + 1e6 * np.arange(nfreq),
        channel_width=1e6,
        antenna1=np.array([0, 0, 1]),
        antenna2=np.array([1, 2, 2]),
        antenna_names=["s0", "s1", "s2"],
        uvw=rng.normal(size=(4, 3, 3)),
        integration_time=600.0,
    )


def test_windows_round_trip_and_attrs(tmp_path):
    target = tmp_path / "v.zarr"
    tmp = store.create(target, layout(), {"antenna_names": ["s0", "s1", "s2"], "pb_id": "pb-x"})
    rng = np.random.default_rng(2)
    written = {}
    for index in (2, 0, 1):  # any order, as Dask tasks finish
        vis = (rng.normal(size=(4, 3)) + 1j * rng.normal(size=(4, 3))).astype(np.complex64)
        store.write_window(tmp, index, vis, np.full((4, 3), 2.0), np.zeros((4, 3), bool))
        written[index] = vis
    store.finalize(tmp, target)
    assert not tmp.exists()
    ds = store.open_store(target)
    assert dict(ds.sizes) == {
        "time": 4,
        "baseline_id": 3,
        "frequency": 3,
        "polarization": 1,
        "uvw_label": 3,
    }
    assert ds.attrs["pb_id"] == "pb-x"
    assert list(ds["baseline_antenna2_name"].values) == ["s1", "s2", "s2"]
    for index, vis in written.items():
        got, weight, flag = store.read_window(target, index)
        np.testing.assert_array_equal(got, vis)
        assert (weight == 2.0).all() and not flag.any()
    np.testing.assert_array_equal(store.layout_of(ds).uvw, layout().uvw)
    assert zarr.open_group(target)["VISIBILITY"].chunks == (4, 3, 1, 1)


def test_incomplete_and_foreign_stores_are_refused(tmp_path):
    tmp = store.create(tmp_path / "v.zarr", layout(), {"antenna_names": ["s0", "s1", "s2"]})
    with pytest.raises(store.StoreError, match="incomplete"):
        store.open_store(tmp)
    with pytest.raises(store.StoreError, match="does not exist"):
        store.open_store(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(store.StoreError, match="unreadable"):
        store.open_store(tmp_path / "empty.zarr")
    group = zarr.open_group(tmp, mode="r+")
    group.attrs["schema_version"] = 99
    group.attrs[store.COMPLETE] = True
    with pytest.raises(store.StoreError, match="schema version 99"):
        store.open_store(tmp)


def test_finalize_replaces_a_previous_store(tmp_path):
    target = tmp_path / "v.zarr"
    names = {"antenna_names": ["s0", "s1", "s2"]}
    store.finalize(store.create(target, layout(2), names), target)
    store.finalize(store.create(target, layout(3), names), target)
    assert store.open_store(target).sizes["frequency"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr"]


def test_gain_tables(tmp_path):
    gains = np.exp(1j * np.arange(24.0)).reshape(2, 4, 3)
    table = store.gain_table(gains, 5e9 + np.arange(4.0), np.array([1e8, 1.1e8]), ["a", "b", "c"])
    path = store.write_dataset(table, tmp_path / "g.zarr")
    np.testing.assert_array_equal(store.open_dataset(path)["GAIN"].values, gains)
    with pytest.raises(store.StoreError, match="not a visibility store"):
        store.open_store(path)


def test_image_cubes_filled_plane_by_plane(tmp_path):
    """An image store's cubes are one chunk per plane, written by index in any order (as
    calibrate's tasks finish) and read back as written, zeros included; a plane never
    written reads NaN, and the store is refused until finalized."""
    freqs = np.array([1e8, 1.1e8, 1.2e8])
    small = xr.Dataset({"SUMWT": (("frequency",), [1.0, 2.0, 3.0])}, coords={"frequency": freqs})
    target = tmp_path / "m.zarr"
    tmp = store.create_cubes(target, small, 4, {"MODEL": np.float64, "PSF": np.float32})
    planes = np.random.default_rng(3).normal(size=(3, 4, 4))
    planes[1] = 0.0
    for index in (2, 0, 1):
        store.write_plane(tmp, "MODEL", index, planes[index])
    store.write_plane(tmp, "PSF", 0, planes[0])
    with pytest.raises(store.StoreError, match="incomplete"):
        store.open_dataset(tmp)
    store.finalize(tmp, target)
    ds = store.open_dataset(target)
    np.testing.assert_array_equal(ds["MODEL"].values, planes)
    assert ds["PSF"].dtype == np.float32 and np.isnan(ds["PSF"].values[1:]).all()
    np.testing.assert_array_equal(ds["SUMWT"].values, [1.0, 2.0, 3.0])
    assert zarr.open_group(target)["MODEL"].chunks == (1, 4, 4)
