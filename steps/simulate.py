"""simulate: SKA1-Low visibilities of the chosen sky, attenuated by the station beam.

The sky is the shipped GLEAM subset, a synthetic GLEAM-like population or a user catalogue
(``sky_model``); the layout a shipped one or a user's CSV (``configuration``).  The sky
actually simulated is written to the visibility buffer (``sky_model.csv``, see
``steps.skyfile``) and both choices, with provenance, go into the store's attributes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr

from steps import store
from steps.buffers import Buffers, resolve
from steps.dask_ee import engine, map_tasks
from steps.log import LOG
from steps.params import Params
from steps.science import (
    C_M_S,
    beam,
    catalogue,
    layout,
    predict,
    reference_frequency,
    sky,
    synthetic,
)
from steps.skyfile import SkyTruth, write_sky

LOW_ELEVATION_DEG = 20.0  # a phase centre lower than this at some hour angle is warned of


def observation(params: Params) -> tuple[layout.Stations, store.Layout]:
    """Stations within rmax and the store coordinates of the observation."""
    stations = load_layout(params.configuration)
    if stations.lines is not None:  # a user layout: name the file's lines if rmax is too small
        layout.check_rmax(stations, params.rmax)
    stations = layout.select_within(stations, params.rmax)
    hour_angles = np.radians(params.hour_angles_deg())
    ant1, ant2 = layout.baselines(len(stations.names))
    times = layout.observation_times(params.ra, params.dec, hour_angles, stations.lon_deg)
    return stations, store.Layout(
        times=times,
        frequencies=np.asarray(params.frequencies()),
        channel_width=params.channel_width(),
        antenna1=ant1,
        antenna2=ant2,
        antenna_names=list(stations.names),
        uvw=layout.celestial_uvw(stations, times, params.ra, params.dec),
        integration_time=layout.integration_time(hour_angles),
    )


def load_layout(configuration: str) -> layout.Stations:
    """A shipped layout by name or a layout CSV (path or ``buffer:<name>/<file>``)."""
    if configuration in layout.CONFIGURATIONS:
        return layout.load_stations(configuration)
    path = resolve(configuration)
    stations = layout.read_layout(path)
    return replace(stations, provenance=f"{stations.provenance}, sha256 {_sha256(path)}")


def sky_components(params: Params) -> tuple[sky.Components, str]:
    """All components of the chosen sky model around the field, and their provenance."""
    radius = sky.image_radius_deg(params.npixel, params.cellsize)
    if params.sky_model == "gleam":  # its coverage of the field: checked with the parameters
        return sky.load_gleam(params.flux_limit, params.ra, params.dec, radius), (
            "GLEAM EGC (Hurley-Walker et al. 2017) subset within 10 deg of RA 0, Dec -30 "
            f"(steps/data/gleam_ra0_dec-30.csv), S151 > {params.flux_limit:g} Jy"
        )
    if params.sky_model == "synthetic":
        return synthetic.population(
            params.seed, params.flux_limit, params.ra, params.dec, radius
        ), (
            f"synthetic GLEAM-like population, seed {params.seed} (stream "
            f"{synthetic.SKY_STREAM}): N(>S) = {synthetic.COUNTS_PER_SR_ABOVE_1JY:g} sr^-1 "
            f"(S / 1 Jy)^-{synthetic.COUNTS_SLOPE:g} at 151 MHz, S151 > {params.flux_limit:g} Jy, "
            f"alpha ~ N({synthetic.ALPHA_MEAN:g}, {synthetic.ALPHA_SCATTER:g}), "
            f"within {radius:.3f} deg of the phase centre"
        )
    path = resolve(params.sky_model)
    components = catalogue.read_catalogue(path)
    return components, f"catalogue {path} ({len(components.names)} sources, sha256 {_sha256(path)})"


def field_components(params: Params) -> tuple[SkyTruth, str]:
    """Components inside the image with their apparent fluxes, and their provenance.

    An empty sky is an error (a field not covered by the chosen model, or a flux limit above
    every source).
    """
    components, provenance = sky_components(params)
    inside = sky.inside_image(components, params.ra, params.dec, params.npixel, params.cellsize)
    if not inside.any():
        near = len(components.names)
        limited = params.sky_model in ("gleam", "synthetic")  # a catalogue is taken whole
        raise ValueError(
            f"sky_model = {params.sky_model!r}: no component lies inside the {params.npixel} "
            f"x {params.npixel} image at RA {params.ra:g}, Dec {params.dec:g} ("
            + (f"{near} lie outside it" if near else "none is near it")
            + (f"; flux_limit = {params.flux_limit:g} Jy)" if limited else ")")
        )
    components = components.select(inside)
    freqs = np.asarray(params.frequencies())
    mfs_freq = reference_frequency(freqs)
    apparent = sky.apparent_flux(
        components, np.append(freqs, mfs_freq), params.ra, params.dec, beam.StationBeam()
    )
    return SkyTruth(components, freqs, apparent[:, :-1], mfs_freq, apparent[:, -1]), provenance


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def predict_window(
    index: int, times: slice, path: Path, lmn: np.ndarray, flux: np.ndarray, shape: np.ndarray
) -> None:
    """Predict one (window, time chunk) by direct DFT of the components and write it (a task)."""
    group = zarr.open_group(path, mode="r")
    uvw = group["UVW"][times]
    freq = group["frequency"][index : index + 1]
    ntime, nbl, _ = uvw.shape
    vis = predict.dft(uvw.reshape(-1, 3), freq, *lmn, flux[:, index : index + 1], shape)
    store.write_window(
        path,
        index,
        vis.reshape(ntime, nbl),
        np.ones((ntime, nbl), np.float32),
        np.zeros((ntime, nbl), bool),
        times,
    )


def single_window(params: Params) -> str | None:
    """What one window leaves of the band asked for (the original's ``linspace`` gives
    ``freq_min`` alone), or None."""
    if params.nfreqwin > 1 or params.freq_max == params.freq_min:
        return None
    return (
        f"nfreqwin = 1: one window at freq_min = {params.freq_min / 1e6:g} MHz, "
        f"{params.channel_width() / 1e6:.3g} MHz wide; freq_max = {params.freq_max / 1e6:g} "
        "MHz is not used (as the original's linspace)"
    )


def low_elevation(lat_deg: float, dec_deg: float, hour_angles_deg: list[float]) -> str | None:
    """How low the phase centre goes when below ``LOW_ELEVATION_DEG`` at some hour angle
    (the station beam here is not foreshortened, as a real station's is there), or None."""
    lat, dec = math.radians(lat_deg), math.radians(dec_deg)
    ha = math.radians(max(abs(h) for h in hour_angles_deg))
    lowest = math.degrees(
        math.asin(math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(ha))
    )
    if lowest >= LOW_ELEVATION_DEG:
        return None
    return (
        f"dec = {dec_deg:g}: the phase centre is at {lowest:.1f} deg elevation at hour angle "
        f"+-{math.degrees(ha):g} deg (below {LOW_ELEVATION_DEG:g} deg the simulated station "
        "beam, which is not foreshortened, is far from a real station's)"
    )


def undersampled(cell_rad: float, uvw: np.ndarray, freqs_hz: np.ndarray) -> str | None:
    """Why ``cell_rad`` is too coarse for the longest projected baseline at the highest
    frequency (more than its Nyquist cell ``1 / (2 u_max)``), or None."""
    u_max = float(np.max(np.hypot(uvw[..., 0], uvw[..., 1]))) * float(np.max(freqs_hz)) / C_M_S
    nyquist = 1.0 / (2.0 * u_max) if u_max > 0 else math.inf
    if cell_rad <= nyquist:
        return None
    return (
        f"cellsize = {cell_rad:g} rad is coarser than the longest baseline's Nyquist cell "
        f"({nyquist:.2g} rad: {u_max:.0f} wavelengths at {np.max(freqs_hz) / 1e6:.0f} MHz): "
        f"the PSF is undersampled and sources off pixel centres are modelled poorly, which "
        f"self-calibration then absorbs; {nyquist / 1.5:.2g} rad gives 3 pixels per beam"
    )


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    stations, obs = observation(params)
    truth, sky_provenance = field_components(params)
    components, apparent = truth.components, truth.apparent_jy
    LOG.info(
        "Simulating %d stations, %d baselines, %d times, %d windows, %d components (%s sky)",
        len(stations.names),
        len(obs.antenna1),
        len(obs.times),
        len(obs.frequencies),
        len(components.names),
        params.sky_model,
    )
    notes = (
        single_window(params),
        undersampled(params.cellsize, obs.uvw, obs.frequencies),
        low_elevation(stations.lat_deg, params.dec, params.hour_angles_deg()),
    )
    for note in notes:
        if note:
            LOG.warning("%s", note)
    attrs = {
        "antenna_names": list(stations.names),
        "antenna_itrf_m": stations.itrf.round(4).tolist(),
        "antenna_diameter_m": stations.diameter_m,
        "configuration": stations.name,
        "configuration_provenance": stations.provenance,
        "phase_centre": {"ra_deg": params.ra, "dec_deg": params.dec, "frame": "icrs"},
        "hour_angles_deg": params.hour_angles_deg(),
        "sky_model": params.sky_model,
        "sky_model_provenance": sky_provenance,
        "sky_components": len(components.names),
        "pb_id": params.pb_id,
        "creator": "batch-imaging simulate",
    }
    tmp = store.create(buffers.model, obs, attrs)
    lmn = np.stack(sky.lmn(components.ra_deg, components.dec_deg, params.ra, params.dec))
    write_sky(buffers.sky, truth, params.sky_model)
    chunks = [(i, t) for i in range(len(obs.frequencies)) for t in store.time_chunks(tmp)]
    with engine(params.n_workers, [__name__]) as client:
        LOG.info("Running simulation pipeline")
        map_tasks(
            client,
            "simulate",
            predict_window,
            chunks,
            tmp,
            lmn,
            apparent,
            components.shapes(),
        )
    store.finalize(tmp, buffers.model)
    if params.export_ms:
        from steps.msexport import ms_path, write_ms

        write_ms(ms_path(buffers.model), buffers.model)
    return {"model": str(buffers.model), "components": str(len(components.names))}
