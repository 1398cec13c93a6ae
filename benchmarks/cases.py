"""The RASCIL-like LOWBD2 point-source case, simulated in memory and run through ICAL.

LOWBD2 stations within ``rmax``, windows over 90-110 MHz, HA -30..+30 deg, Dec -30 deg,
``nsrc`` point sources of 0.5-10 Jy (power-law spectra, index -1..0) within 2 deg of the
phase centre and at least ``min_separation_deg`` apart, no beam, no noise; phases drawn per
(window, time, station) with sigma ``phase_error``.  ``on_grid`` puts the sources on pixel
centres (as the original's model-image simulation did), otherwise anywhere.  Predicted by
exact DFT.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from steps.metrics import peak_near, phase_rms, shift_removed_phase_rms, station_uvw
from steps.science import gains, ical, layout, predict, restore


@dataclass(frozen=True, eq=False)
class Case:
    """A simulated observation and its truth."""

    uvw: np.ndarray  # (time, baseline, 3) m
    ant1: np.ndarray
    ant2: np.ndarray
    nstations: int
    freqs: np.ndarray
    vis: np.ndarray  # (window, time, baseline) corrupted
    true_gains: np.ndarray  # (window, time, station)
    l: np.ndarray  # noqa: E741
    m: np.ndarray
    flux: np.ndarray  # (source, window)
    npixel: int
    cell_rad: float


def lowbd2_case(
    rmax: float = 750.0,
    nwin: int = 8,
    ntimes: int = 5,
    npixel: int = 1024,
    cell_rad: float = 0.0005,
    nsrc: int = 30,
    phase_error: float = 1.0,
    seed: int = 180555,
    on_grid: bool = True,
    min_separation_deg: float = 0.25,
    chromatic: bool = True,
) -> Case:
    """Simulate the case (see the module docstring); ``chromatic`` False gives every window
    the same gains (window 0's draw)."""
    stations = layout.select_within(layout.load_stations("lowbd2"), rmax)
    nst = len(stations.names)
    hour_angles = np.radians(np.linspace(-30.0, 30.0, ntimes))
    ant1, ant2 = layout.baselines(nst)
    uvw = layout.uvw(stations, hour_angles, math.radians(-30.0))
    freqs = np.linspace(0.9e8, 1.1e8, nwin)
    rng = np.random.default_rng(seed)
    points: list[tuple[float, float]] = []
    for _ in range(1000 * nsrc):
        if len(points) == nsrc:
            break
        r, theta = math.radians(2.0) * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        p = (r * math.sin(theta), r * math.cos(theta))
        if on_grid:
            p = (round(p[0] / cell_rad) * cell_rad, round(p[1] / cell_rad) * cell_rad)
        if all(
            math.hypot(p[0] - q[0], p[1] - q[1]) > math.radians(min_separation_deg) for q in points
        ):
            points.append(p)
    else:
        raise ValueError(f"cannot place {nsrc} sources {min_separation_deg} deg apart within 2 deg")
    l, m = np.array(points).T  # noqa: E741
    n = np.sqrt(1.0 - l**2 - m**2)
    flux0 = rng.uniform(0.5, 10.0, nsrc)
    alpha = rng.uniform(-1.0, 0.0, nsrc)
    flux = flux0[:, None] * (freqs[None, :] / freqs.mean()) ** alpha[:, None]
    true_gains = np.exp(1j * gains.draw_phases(seed, phase_error, nwin, ntimes, nst))
    if not chromatic:
        true_gains = np.repeat(true_gains[:1], nwin, axis=0)
    vis = np.stack(
        [
            gains.apply_gains(
                predict.dft(
                    uvw.reshape(-1, 3), freqs[c : c + 1], l, m, n, flux[:, c : c + 1]
                ).reshape(ntimes, -1),
                true_gains[c],
                ant1,
                ant2,
            )
            for c in range(nwin)
        ]
    )
    return Case(uvw, ant1, ant2, nst, freqs, vis, true_gains, l, m, flux, npixel, cell_rad)


def settings_for(case: Case, **overrides: Any) -> ical.Settings:
    """The original's ICAL settings (T from cycle 1, G from 3, B from 4) for this case."""
    integration = 3600.0 * 4 / max(case.vis.shape[1] - 1, 1)
    terms = ical.terms_from(
        "TGB",
        {"T": 1, "G": 3, "B": 4},
        {"T": True, "G": False, "B": False},
        {"T": 0.0, "G": 0.0, "B": 1e5},
        integration,
    )
    return ical.Settings(npixel=case.npixel, cell_rad=case.cell_rad, terms=terms, **overrides)


def case_window(case: Case, c: int, settings: ical.Settings) -> ical.Window:
    """Window ``c`` of a case, with natural weights, ready for the ICAL loop."""
    return ical.make_window(
        c,
        case.freqs[c],
        case.uvw,
        case.vis[c],
        np.ones(case.vis[c].shape),
        case.ant1,
        case.ant2,
        case.nstations,
        settings,
    )


def run_case(case: Case, settings: ical.Settings) -> dict[str, Any]:
    """ICAL in this process, then the centre window's final residual and restored image.

    Returns the figures of merit: phase error (station-0 referenced, and with the position
    degeneracy removed), centre-window peak, residual rms and dynamic range, the 10
    brightest sources' flux ratio and offset, and timings.
    """
    started = time.perf_counter()
    windows = [case_window(case, c, settings) for c in range(len(case.freqs))]
    members = ical.band_members(len(windows), windows[0].vis.size, settings)
    bands = [[windows[i] for i in m] for m in members]
    result = ical.run_ical(
        bands,
        members,
        case.freqs,
        np.stack([w.psf for w in windows]),
        np.array([w.sumwt for w in windows]),
        case.vis.shape[1],
        case.nstations,
        settings,
        ical.serial_mapper(bands),
        (case.true_gains, None),
    )
    ical_s = time.perf_counter() - started
    centre = len(windows) // 2
    win = windows[centre]
    band = next(b for b, m in enumerate(members) if centre in m)
    at = list(members[band]).index(centre)
    model = result.models[band]
    model = ical.Model(model.images, model.coeff[at : at + 1], model.version)  # centre only
    t0 = time.perf_counter()
    (residual,) = ical.final_residuals(
        [win], [ical.corrected_vis(win, result.tables[centre])], model, settings
    )
    final_gridder = time.perf_counter() - t0
    beam = restore.fit_clean_beam(win.psf, case.cell_rad)
    restored = restore.restore(ical.window_model(model.images, model.coeff, 0), residual, beam)
    rms = float(np.sqrt(np.mean(residual**2)))
    peak = float(restored.max())
    sources = []
    c = case.npixel // 2
    for i in np.argsort(case.flux[:, centre])[::-1][:10]:
        x, y = c - case.l[i] / case.cell_rad, c + case.m[i] / case.cell_rad
        measured, px, py = peak_near(restored, x, y)
        sources.append(
            {
                "true_flux_jy": float(case.flux[i, centre]),
                "flux_ratio": measured / float(case.flux[i, centre]),
                "offset_px": float(math.hypot(px - x, py - y)),
            }
        )
    uvw0 = station_uvw(case.uvw, case.ant1, case.ant2, case.nstations)
    shifted = shift_removed_phase_rms(case.true_gains, result.gains, uvw0, case.freqs)
    return {
        "phase_rms_rad": phase_rms(case.true_gains, result.gains),
        "phase_rms_shift_removed_rad": shifted["rms_rad"],
        "position_offset_px": shifted["offset_rad"] / case.cell_rad,
        "restored_peak_jy": peak,
        "residual_rms_jy": rms,
        "dynamic_range": peak / rms,
        "sources": sources,
        "cycles": result.convergence,
        "ical_s": ical_s,
        "gridder_s": result.gridder_s + sum(w.psf_s for w in windows),
        "minor_cycle_s": result.minor_s,
        "final_image_gridder_s": final_gridder,
    }
