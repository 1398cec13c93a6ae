"""Measurement Set v2 export of a visibility store (python-casacore), for CASA, WSClean, DP3.

The Zarr store stays the working format; the MS is written for interoperability.
Conventions (checked in tests/test_msexport.py, WSClean included):

- One row per (time, spectral window, baseline), cross-correlations only, ANTENNA1 < ANTENNA2.
- UVW is the store's uvw unchanged: ANTENNA2 - ANTENNA1 in metres, u east, v north, w toward
  the phase centre, in the J2000 frame of the phase centre (``layout.celestial_uvw``; casacore
  measures recompute them from TIME, ANTENNA POSITION and PHASE_DIR to 1e-4 of the baseline,
  the annual aberration casacore applies and the simulation does not).
- The store holds V = sum S exp(-2 pi i (u l + v m + w (n - 1)) nu / c); the MS's phase sign
  for the same UVW is the opposite, so DATA is the store's visibilities conjugated (exact in
  complex64), and WSClean images the exported data at the catalogue positions.
- Stokes I is one correlation of type I (casacore Stokes code 1); WSClean images it with
  ``-pol i``.
- TIME and TIME_CENTROID are the store's sample times (MJD seconds, UTC), the centre of each
  integration; INTERVAL and EXPOSURE the integration time.
- Evenly spaced windows are the channels of one spectral window; otherwise each window is
  its own spectral window (and DATA_DESCRIPTION row) of one channel.
- WEIGHT_SPECTRUM holds the store weights, WEIGHT their channel mean and SIGMA 1/sqrt(WEIGHT)
  (0 where the weight is 0).
- FIELD directions and UVW are labelled J2000 (the store's frame is ICRS; they differ by
  ~20 mas).
- TELESCOPE_NAME is ``SKA-LOW`` (``steps.science.TELESCOPE``, as the FITS TELESCOP), the name
  casacore's observatory table knows (``SKA1-Low`` is unknown to casacore measures).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr
from casacore import tables

from steps import atomic, store
from steps.science import TELESCOPE

STOKES_I = 1  # casacore Stokes::I
TOPO = 5  # casacore MFrequency::TOPO


def ms_path(data: Path) -> Path:
    """Where the MS of a store is written: beside it, ``<name>.ms``."""
    return Path(data).with_suffix(".ms")


def spectral_windows(frequencies: np.ndarray) -> int:
    """Number of spectral windows: 1 if the windows are evenly spaced, else one per window."""
    if frequencies.size < 3:
        return 1
    steps = np.diff(frequencies)
    return 1 if np.allclose(steps, steps[0], rtol=1e-9, atol=0.0) else frequencies.size


def write_ms(out: Path, data: Path, corrected: Path | None = None) -> Path:
    """Write the store ``data`` as MS ``out`` (replacing it); ``corrected`` fills CORRECTED_DATA.

    ``corrected`` must have the layout of ``data``; its flags and weights are the ones written.
    The main table is written a time chunk of the stores at a time (memory bounded by the
    chunk), under a temporary name, and renamed into place.
    """
    out = Path(out)
    _replaceable(out, [Path(data)] + ([Path(corrected)] if corrected is not None else []))
    ds = store.open_store(data)
    obs = store.layout_of(ds)
    sources = {"DATA": Path(data)}
    if corrected is not None:
        other = store.layout_of(store.open_store(corrected))
        if not (
            np.array_equal(other.times, obs.times)
            and np.array_equal(other.frequencies, obs.frequencies)
            and np.array_equal(other.antenna1, obs.antenna1)
            and np.array_equal(other.antenna2, obs.antenna2)
        ):
            raise store.StoreError(f"{corrected} does not have the layout of {data}")
        sources["CORRECTED_DATA"] = Path(corrected)
    nspw = spectral_windows(obs.frequencies)
    nchan = obs.frequencies.size // nspw
    tmp = atomic.temporary_name(out)
    try:
        _write_main(tmp, obs, sources, nspw, nchan)
        _write_subtables(tmp, ds.attrs, obs, nspw, nchan)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return atomic.replace_dir(tmp, out)


def _replaceable(out: Path, stores: list[Path]) -> None:
    """Refuse an ``out`` that cannot be written (its directory does not exist) or that
    replacing would lose data: a path that exists and is not a Measurement Set (a casacore
    table has ``table.dat``), or one that is, holds or lies inside a store being read."""
    if not out.parent.is_dir():
        problem = "is not a directory" if out.parent.exists() else "does not exist"
        raise store.StoreError(f"out = {out}: its directory {out.parent} {problem}")
    where = out.resolve()
    for source in (s.resolve() for s in stores):
        if where == source or source in where.parents or where in source.parents:
            raise store.StoreError(
                f"out = {out}: would overwrite {source}, which it is written from"
            )
    if out.exists() and not (out / "table.dat").is_file():
        raise store.StoreError(
            f"out = {out}: exists and is not a Measurement Set (no table.dat); not replaced"
        )


def _rows(array: np.ndarray, nspw: int, nchan: int) -> np.ndarray:
    """(time, baseline, frequency, pol) -> rows ordered (time, spw, baseline), (chan, pol)."""
    ntime, nbl, _, npol = array.shape
    blocks = array.reshape(ntime, nbl, nspw, nchan, npol).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(ntime * nspw * nbl, nchan, npol)


def _write_main(
    path: Path, obs: store.Layout, sources: dict[str, Path], nspw: int, nchan: int
) -> None:
    ntime, nbl = obs.times.size, obs.antenna1.size
    nrow = ntime * nspw * nbl
    shape = [nchan, 1]
    columns = [
        tables.makearrcoldesc(
            name, 0j, valuetype="complex", shape=shape, comment=f"{name} column", options=4
        )
        for name in sources
    ]
    columns.append(
        tables.makearrcoldesc(
            "WEIGHT_SPECTRUM", 0.0, valuetype="float", shape=shape, options=4,
            comment="Weight for each channel and correlation",
        )
    )  # fmt: skip
    desc = tables.maketabdesc(columns)
    for name in sources:  # units of the visibility columns, as CASA writes them
        desc[name]["keywords"] = {"QuantumUnits": ["Jy"]}
    groups = {name: zarr.open_group(source, mode="r") for name, source in sources.items()}
    final = groups[list(sources)[-1]]  # its flags and weights are the ones written
    with tables.default_ms(str(path), desc) as ms:
        ms.putcolkeyword("UVW", "MEASINFO", {"type": "uvw", "Ref": "J2000"})  # as CASA writes
        ms.addrows(nrow)
        for times in store.time_chunks(next(iter(sources.values()))):  # one chunk in memory
            _write_rows(ms, obs, groups, final, times, nspw, nchan)


def _write_rows(
    ms: tables.table,
    obs: store.Layout,
    groups: dict[str, zarr.Group],
    final: zarr.Group,
    times: slice,
    nspw: int,
    nchan: int,
) -> None:
    """The main table's rows of the integrations ``times``."""
    ntime, nbl = times.stop - times.start, obs.antenna1.size
    rows = {"startrow": times.start * nspw * nbl, "nrow": ntime * nspw * nbl}
    for name, group in groups.items():
        ms.putcol(name, np.conj(_rows(group["VISIBILITY"][times], nspw, nchan)), **rows)
    flag = _rows(final["FLAG"][times], nspw, nchan)
    weight = _rows(final["WEIGHT"][times], nspw, nchan).astype(np.float32)
    row_weight = weight.mean(axis=1)
    sigma = np.where(row_weight > 0, 1 / np.sqrt(np.maximum(row_weight, 1e-30)), 0.0)
    per_row = np.broadcast_to(obs.uvw[times, np.newaxis], (ntime, nspw, nbl, 3))
    stamps = np.repeat(obs.times[times], nspw * nbl)
    columns = {
        "FLAG": flag,
        "FLAG_ROW": flag.all(axis=(1, 2)),
        "WEIGHT_SPECTRUM": weight,
        "WEIGHT": row_weight,
        "SIGMA": sigma.astype(np.float32),
        "UVW": per_row.reshape(-1, 3),
        "TIME": stamps,
        "TIME_CENTROID": stamps,
        "INTERVAL": np.full(rows["nrow"], obs.integration_time),
        "EXPOSURE": np.full(rows["nrow"], obs.integration_time),
        "ANTENNA1": np.tile(obs.antenna1.astype(np.int32), ntime * nspw),
        "ANTENNA2": np.tile(obs.antenna2.astype(np.int32), ntime * nspw),
        "DATA_DESC_ID": np.tile(np.repeat(np.arange(nspw, dtype=np.int32), nbl), ntime),
        "SCAN_NUMBER": np.ones(rows["nrow"], np.int32),
        "STATE_ID": np.full(rows["nrow"], -1, np.int32),
    }
    for name, values in columns.items():
        ms.putcol(name, values, **rows)


def _subtable(ms: Path, name: str, nrow: int) -> tables.table:
    table = tables.table(f"{ms}/{name}", readonly=False, ack=False)
    table.addrows(nrow)
    return table


def _write_subtables(path: Path, attrs: dict, obs: store.Layout, nspw: int, nchan: int) -> None:
    names = list(attrs["antenna_names"])
    nant = len(names)
    with _subtable(path, "ANTENNA", nant) as table:
        table.putcol("NAME", names)
        table.putcol("STATION", [f"{attrs.get('configuration', '')}:{n}" for n in names])
        table.putcol("TYPE", ["GROUND-BASED"] * nant)
        table.putcol("MOUNT", ["X-Y"] * nant)  # aperture-array stations: fixed, as LOFAR's
        table.putcol("POSITION", np.asarray(attrs["antenna_itrf_m"], dtype=np.float64))
        table.putcol("OFFSET", np.zeros((nant, 3)))
        table.putcol("DISH_DIAMETER", np.full(nant, float(attrs["antenna_diameter_m"])))
    with _subtable(path, "FEED", nant) as table:
        table.putcol("ANTENNA_ID", np.arange(nant, dtype=np.int32))
        table.putcol("BEAM_ID", np.full(nant, -1, np.int32))
        table.putcol("SPECTRAL_WINDOW_ID", np.full(nant, -1, np.int32))
        table.putcol("NUM_RECEPTORS", np.full(nant, 2, np.int32))
        table.putcol("POLARIZATION_TYPE", np.array([["X", "Y"]] * nant))
        table.putcol("POL_RESPONSE", np.tile(np.eye(2, dtype=np.complex64), (nant, 1, 1)))
        table.putcol("RECEPTOR_ANGLE", np.tile([0.0, np.pi / 2], (nant, 1)))
        table.putcol("BEAM_OFFSET", np.zeros((nant, 2, 2)))
        table.putcol("POSITION", np.zeros((nant, 3)))
    centre = attrs["phase_centre"]
    direction = np.radians([[[centre["ra_deg"], centre["dec_deg"]]]])
    with _subtable(path, "FIELD", 1) as table:
        table.putcol("NAME", ["phase_centre"])
        table.putcol("CODE", [""])
        table.putcol("SOURCE_ID", np.array([-1], np.int32))
        table.putcol("TIME", obs.times[:1])
        for column in ("DELAY_DIR", "PHASE_DIR", "REFERENCE_DIR"):
            table.putcol(column, direction)
    freqs = obs.frequencies.reshape(nspw, nchan)
    width = np.full((nspw, nchan), obs.channel_width)
    with _subtable(path, "SPECTRAL_WINDOW", nspw) as table:
        table.putcol("NAME", [f"window {i}" for i in range(nspw)] if nspw > 1 else ["band"])
        table.putcol("NUM_CHAN", np.full(nspw, nchan, np.int32))
        table.putcol("CHAN_FREQ", freqs)
        table.putcol("REF_FREQUENCY", freqs[:, 0])
        for column in ("CHAN_WIDTH", "EFFECTIVE_BW", "RESOLUTION"):
            table.putcol(column, width)
        table.putcol("TOTAL_BANDWIDTH", width.sum(axis=1))
        table.putcol("MEAS_FREQ_REF", np.full(nspw, TOPO, np.int32))
        table.putcol("NET_SIDEBAND", np.ones(nspw, np.int32))
    with _subtable(path, "POLARIZATION", 1) as table:
        table.putcol("NUM_CORR", np.array([1], np.int32))
        table.putcol("CORR_TYPE", np.array([[STOKES_I]], np.int32))
        table.putcol("CORR_PRODUCT", np.zeros((1, 1, 2), np.int32))
    with _subtable(path, "DATA_DESCRIPTION", nspw) as table:
        table.putcol("SPECTRAL_WINDOW_ID", np.arange(nspw, dtype=np.int32))
        table.putcol("POLARIZATION_ID", np.zeros(nspw, np.int32))
    half = obs.integration_time / 2
    with _subtable(path, "OBSERVATION", 1) as table:
        table.putcol("TELESCOPE_NAME", [TELESCOPE])
        table.putcol("TIME_RANGE", np.array([[obs.times[0] - half, obs.times[-1] + half]]))
        table.putcol("OBSERVER", ["batch-imaging"])
        table.putcol("PROJECT", [str(attrs.get("pb_id", ""))])
        table.putcol("SCHEDULE_TYPE", [""])
    with _subtable(path, "PROCESSOR", 1) as table:
        table.putcol("TYPE", ["CORRELATOR"])
        table.putcol("SUB_TYPE", ["batch-imaging simulation"])
        table.putcol("TYPE_ID", np.array([-1], np.int32))
        table.putcol("MODE_ID", np.array([-1], np.int32))
