"""simulate: SKA1-Low visibilities of the GLEAM sky, attenuated by the station beam."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import zarr

from steps import store
from steps.buffers import Buffers
from steps.dask_ee import engine, map_windows
from steps.log import LOG
from steps.params import Params
from steps.science import layout, predict, sky

OUTPUTS = ("model", "components")


def observation(params: Params) -> tuple[layout.Stations, store.Layout]:
    """Stations within rmax and the store coordinates of the observation."""
    stations = layout.select_within(layout.load_stations(params.configuration), params.rmax)
    hour_angles = np.radians(params.hour_angles_deg())
    ant1, ant2 = layout.baselines(len(stations.names))
    times = layout.observation_times(params.ra, hour_angles, stations.lon_deg)
    return stations, store.Layout(
        times=times,
        frequencies=np.asarray(params.frequencies()),
        channel_width=params.channel_width(),
        antenna1=ant1,
        antenna2=ant2,
        antenna_names=list(stations.names),
        uvw=layout.uvw(stations, hour_angles, math.radians(params.dec)),
        integration_time=layout.integration_time(hour_angles),
    )


def field_components(params: Params) -> tuple[sky.Components, np.ndarray]:
    """GLEAM components inside the image and their apparent fluxes (nsrc, nwindow)."""
    half_width = math.degrees(params.npixel * params.cellsize / 2)
    components = sky.load_gleam(params.flux_limit, params.ra, params.dec, 2 * half_width)
    l, m, _ = sky.lmn(components.ra_deg, components.dec_deg, params.ra, params.dec)
    inside = (np.abs(np.arcsin(l)) < params.npixel * params.cellsize / 2) & (
        np.abs(np.arcsin(m)) < params.npixel * params.cellsize / 2
    )
    components = components.select(inside)
    apparent = sky.apparent_flux(
        components, np.asarray(params.frequencies()), params.ra, params.dec, sky.StationBeam()
    )
    return components, apparent


def write_sky(path: Path, components: sky.Components, apparent: np.ndarray, freqs) -> None:
    """The simulated sky as CSV: position, intrinsic and apparent flux per window."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["name", "ra_deg", "dec_deg", "flux_151mhz_jy", "alpha"]
            + [f"apparent_{f / 1e6:.4f}mhz_jy" for f in freqs]
        )
        for i, name in enumerate(components.names):
            writer.writerow(
                [name, f"{components.ra_deg[i]:.6f}", f"{components.dec_deg[i]:.6f}"]
                + [f"{components.flux_ref_jy[i]:.6f}", f"{components.alpha[i]:.3f}"]
                + [f"{a:.9g}" for a in apparent[i]]
            )
    tmp.replace(path)


def predict_window(index: int, path: Path, lmn: np.ndarray, flux: np.ndarray) -> None:
    """Predict one window by direct DFT of the components and write it (a Dask task)."""
    group = zarr.open_group(path, mode="r")
    uvw = group["UVW"][:]
    freq = group["frequency"][index : index + 1]
    ntime, nbl, _ = uvw.shape
    vis = predict.dft(uvw.reshape(-1, 3), freq, *lmn, flux[:, index : index + 1])
    store.write_window(
        path,
        index,
        vis.reshape(ntime, nbl),
        np.ones((ntime, nbl), np.float32),
        np.zeros((ntime, nbl), bool),
    )


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    stations, obs = observation(params)
    components, apparent = field_components(params)
    LOG.info(
        "Simulating %d stations, %d baselines, %d times, %d windows, %d GLEAM components",
        len(stations.names),
        len(obs.antenna1),
        len(obs.times),
        len(obs.frequencies),
        len(components.names),
    )
    attrs = {
        "antenna_names": list(stations.names),
        "antenna_itrf_m": stations.itrf.round(4).tolist(),
        "antenna_diameter_m": stations.diameter_m,
        "configuration": stations.name,
        "configuration_provenance": stations.provenance,
        "phase_centre": {"ra_deg": params.ra, "dec_deg": params.dec, "frame": "icrs"},
        "hour_angles_deg": params.hour_angles_deg(),
        "sky_model": "gleam",
        "sky_model_provenance": "GLEAM EGC (Hurley-Walker et al. 2017) subset, steps/data",
        "pb_id": params.pb_id,
        "creator": "batch-imaging simulate",
    }
    tmp = store.create(buffers.model, obs, attrs)
    lmn = np.stack(sky.lmn(components.ra_deg, components.dec_deg, params.ra, params.dec))
    write_sky(buffers.sky, components, apparent, obs.frequencies)
    with engine(params.n_workers) as client:
        LOG.info("Running simulation pipeline")
        map_windows(client, "simulate", predict_window, len(obs.frequencies), tmp, lmn, apparent)
    store.finalize(tmp, buffers.model)
    return {"model": str(buffers.model), "components": str(len(components.names))}
