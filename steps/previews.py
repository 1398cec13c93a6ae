"""Preview PNGs of a run (matplotlib, WCS axes via astropy), written to ``<image buffer>/previews``.

Each preview is drawn from stored products only (the report step makes them once the image
step has succeeded; `write_all` can also be called on the buffers of any run, and skips a
preview whose inputs are missing, with a warning).  Every PNG is
``FIGSIZE`` at ``DPI`` (``PIXELS``), without tight cropping, so its size is known.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import zarr
from astropy.visualization import AsinhStretch, ImageNormalize
from astropy.wcs import WCS
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from steps import atomic, store
from steps.buffers import PREVIEWS, Buffers
from steps.log import LOG
from steps.metrics import referenced
from steps.params import Params
from steps.processes import cores
from steps.science import C_M_S, fitsio, imaging

FIGSIZE = (7.0, 6.0)  # inches
DPI = 100
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # width, height
CONVERGENCE_SERIES = ("phase_rms_rad", "residual_rms_jy")  # plotted per major cycle
MAX_UV_POINTS = 200_000
MAX_STATIONS = 6
PSF_ZOOM_PX = 32  # half-width of the PSF preview


def _figure(wcs: WCS | None = None) -> tuple[Figure, Axes]:
    """A figure of the preview size; with ``wcs``, sky axes labelled in RA and Dec."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    if wcs is None:
        return fig, fig.add_subplot()
    ax = fig.add_subplot(projection=wcs)
    ax.set_xlabel("Right ascension (ICRS)")
    ax.set_ylabel("Declination (ICRS)")
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _mfs(path: Path) -> tuple[np.ndarray, WCS, str]:
    """An MFS image (one plane), its celestial WCS and its frequency as a label."""
    data, header = fitsio.read_image(path)
    label = f"MFS, {header['CRVAL4'] / 1e6:.1f} MHz"
    return data.reshape(data.shape[-2], data.shape[-1]), WCS(header).celestial, label


def _sky_image(image: np.ndarray, wcs: WCS, title: str, unit: str, symmetric: bool) -> Figure:
    fig, ax = _figure(wcs)
    if symmetric:
        limit = float(np.percentile(np.abs(image), 99.9)) or 1.0
        shown = ax.imshow(image, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
    else:
        norm = ImageNormalize(
            image, vmin=float(np.percentile(image, 1)), vmax=float(image.max()),
            stretch=AsinhStretch(0.02),
        )  # fmt: skip
        shown = ax.imshow(image, origin="lower", cmap="inferno", norm=norm)
    ax.coords.grid(color="white" if not symmetric else "grey", alpha=0.3, linestyle=":")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, label=unit, fraction=0.046, pad=0.04)
    return fig


def restored(buffers: Buffers, out: Path) -> Path:
    """The MFS restored image, asinh stretch."""
    image, wcs, label = _mfs(buffers.image("mfs_restored"))
    title = f"Restored image ({label})"
    return _save(_sky_image(image, wcs, title, "Jy/beam", symmetric=False), out)


def residual(buffers: Buffers, out: Path) -> Path:
    """The MFS residual image, symmetric colour scale."""
    image, wcs, label = _mfs(buffers.image("mfs_residual"))
    rms = float(np.sqrt(np.mean(image**2)))
    title = f"Residual ({label}), rms {rms:.3g} Jy/beam"
    return _save(_sky_image(image, wcs, title, "Jy/beam", symmetric=True), out)


def spectral_index(buffers: Buffers, out: Path) -> Path:
    """The MFS apparent spectral index where the signal allows it (NaN elsewhere)."""
    data, header = fitsio.read_image(buffers.image("mfs_alpha"))
    alpha = data.reshape(data.shape[-2], data.shape[-1])
    finite = alpha[np.isfinite(alpha)]
    fig, ax = _figure(WCS(header).celestial)
    low, high = np.percentile(finite, [2, 98]) if finite.size else (-1.0, 1.0)
    limit = max(abs(float(low)), abs(float(high)), 0.1)
    shown = ax.imshow(alpha, origin="lower", cmap="coolwarm", vmin=-limit, vmax=limit)
    ax.set_facecolor("0.85")  # where the signal does not allow an index
    above = f" above {header['ALPHASNR']:g} rms" if "ALPHASNR" in header else ""
    ax.set_title(f"Apparent spectral index ({finite.size} pixels{above})")
    fig.colorbar(shown, ax=ax, label="alpha (S ~ nu^alpha)", fraction=0.046, pad=0.04)
    return _save(fig, out)


def write_psf(params: Params, buffers: Buffers) -> Path:
    """PSF of the centre window as FITS (``psf.fits`` in the image buffer, as the image step
    writes it), from the calibrated store's uvw and weights; an existing one is kept."""
    path = buffers.psf
    if path.exists():
        return path
    from steps.image import observation

    ds = store.open_store(buffers.calibrated)
    obs = store.layout_of(ds)
    centre = len(obs.frequencies) // 2
    _, weight, flag = store.read_window(buffers.calibrated, centre)
    uvw, freq = obs.uvw.reshape(-1, 3), obs.frequencies[centre : centre + 1]
    natural = np.where(flag, 0.0, weight).reshape(-1, 1).astype(np.float64)
    imaging_weights = imaging.weights(
        uvw, freq, natural, params.npixel, params.cellsize, params.weighting, params.robust
    )
    psf, _ = imaging.make_psf(
        uvw, freq, imaging_weights, params.npixel, params.cellsize, params.epsilon
    )
    fitsio.write_image(
        path, psf, freqs_hz=freq, channel_width_hz=obs.channel_width, bunit="",
        **observation(ds, params),
    )  # fmt: skip
    return path


def psf(params: Params, buffers: Buffers, out: Path) -> Path:
    """The centre window's PSF, zoomed on the main lobe."""
    data, header = fitsio.read_image(write_psf(params, buffers))
    image = data.reshape(-1, data.shape[-2], data.shape[-1])[0]
    freq = header.get("CRVAL4", 0.0)
    fig, ax = _figure(WCS(header).celestial)
    shown = ax.imshow(image, origin="lower", cmap="viridis", vmin=-0.2, vmax=1.0)
    centre = image.shape[0] // 2
    half = min(PSF_ZOOM_PX, centre)
    ax.set_xlim(centre - half, centre + half)
    ax.set_ylim(centre - half, centre + half)
    weights = header.get("WEIGHTNG", "natural")
    ax.set_title(f"PSF at {freq / 1e6:.2f} MHz ({weights} weighting)")
    fig.colorbar(shown, ax=ax, label="relative response", fraction=0.046, pad=0.04)
    return _save(fig, out)


def uv_coverage(buffers: Buffers, out: Path) -> Path:
    """uv coverage in wavelengths of every window, with the conjugate points."""
    data = buffers.calibrated if buffers.calibrated.exists() else buffers.model
    store.open_store(data)  # refuses an incomplete store
    group = zarr.open_group(data, mode="r")
    uvw = group["UVW"][:].reshape(-1, 3)
    freqs = group["frequency"][:]
    uv = (uvw[np.newaxis, :, :2] * (freqs[:, np.newaxis, np.newaxis] / C_M_S)).reshape(-1, 2)
    step = max(1, len(uv) // MAX_UV_POINTS)
    uv = uv[::step] / 1e3
    fig, ax = _figure()
    for sign in (1, -1):
        ax.scatter(sign * uv[:, 0], sign * uv[:, 1], s=0.3, color="tab:blue", rasterized=True)
    ax.set_aspect("equal")
    ax.set_xlabel("u (kλ)")
    ax.set_ylabel("v (kλ)")
    ax.set_title(f"uv coverage: {len(freqs)} windows, {len(uvw)} baseline samples")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def gain_phases(buffers: Buffers, out: Path) -> Path:
    """True and solved gain phases (centre window, relative to station 0) over time; none
    where a station had no data (relative to the first station with data where station 0
    had none)."""
    true = store.open_dataset(buffers.true_gains)
    solved = store.open_dataset(buffers.solved_gains)
    names = [str(n) for n in true["antenna_name"].values]
    centre = true.sizes["frequency"] // 2
    flags = solved["FLAG"].values[min(centre, solved.sizes["frequency"] - 1)]
    stations = np.linspace(1, len(names) - 1, min(MAX_STATIONS, len(names) - 1)).astype(int)
    t0 = float(true["time"].values[0])
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    axes = fig.subplots(
        (len(stations) + 1) // 2, 2, sharex=True, sharey=True, squeeze=False
    ).ravel()
    for ax, station in zip(axes, stations, strict=False):
        for ds, style, label in ((true, "-", "true"), (solved, "o", "solved")):
            gains = ds["GAIN"].values[min(centre, ds.sizes["frequency"] - 1)]
            phase = np.degrees(np.angle(referenced(gains, flags)[:, station]))
            hours = (ds["time"].values - t0) / 3600
            ax.plot(hours, phase, style, label=label, markerfacecolor="none")
        ax.set_title(names[station], fontsize=9)
        ax.set_ylim(-180, 180)
        ax.grid(alpha=0.3)
    for ax in axes[len(stations) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.supxlabel("time since first sample (h)")
    fig.supylabel(f"phase relative to {names[0]} (deg)")
    fig.suptitle(f"Gain phases at {float(true['frequency'].values[centre]) / 1e6:.2f} MHz")
    return _save(fig, out)


def convergence_series(data: object) -> dict[str, list[float]]:
    """The ``CONVERGENCE_SERIES`` of ``ical_convergence.json`` (``{"cycles": [record per
    cycle]}``, as calibrate writes it) that every cycle records as a number."""
    cycles = data.get("cycles") if isinstance(data, dict) else None
    rows = [row for row in cycles if isinstance(row, dict)] if isinstance(cycles, list) else []
    series = {key: [row.get(key) for row in rows] for key in CONVERGENCE_SERIES}
    return {
        key: [float(v) for v in values]
        for key, values in series.items()
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    }


def convergence_title(data: dict) -> str:
    """The convergence preview's title: says so when ICAL stopped before ``nmajor``
    (converged or diverged)."""
    rows = [row for row in data["cycles"] if isinstance(row, dict)]
    last, nmajor = rows[-1].get("cycle") if rows else None, data.get("nmajor")
    if type(last) is not int or type(nmajor) is not int:
        return "ICAL convergence"
    stopped = data.get("stopped", "converged" if last < nmajor else "nmajor")  # older records
    if stopped == "converged":
        return f"ICAL convergence (converged at cycle {last} of {nmajor})"
    if stopped == "diverged":
        return f"ICAL convergence (diverged at cycle {last} of {nmajor})"
    return "ICAL convergence"


def ical_convergence(buffers: Buffers, out: Path) -> Path:
    """Gain phase rms (rad) and MFS residual rms (Jy/beam) per major cycle."""
    data = json.loads(buffers.convergence.read_text())
    series = convergence_series(data)
    if not series:
        raise ValueError(f"{buffers.convergence.name} holds no per-cycle series")
    fig, ax = _figure()
    for key, values in sorted(series.items()):
        ax.plot(np.arange(len(values)), values, "o-", label=key)
    if all(v > 0 for values in series.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("major cycle")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("rad (phase) or Jy/beam (residual)")
    ax.set_title(convergence_title(data))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def write_all(params: Params, buffers: Buffers) -> dict[str, Path]:
    """Write every preview whose input products exist (a failed run may lack some, a run
    with one Taylor term has no spectral index), drawn side by side in forked processes, one
    per core, and remove an earlier run's of those not drawn; return name -> path of those
    written.  A product that exists but is damaged is an error."""
    makers: dict[str, tuple[Path, Callable[[Path], Path]]] = {
        "restored": (buffers.image("mfs_restored"), partial(restored, buffers)),
        "residual": (buffers.image("mfs_residual"), partial(residual, buffers)),
        "spectral_index": (buffers.image("mfs_alpha"), partial(spectral_index, buffers)),
        "psf": (buffers.calibrated, partial(psf, params, buffers)),
        "uv_coverage": (buffers.model, partial(uv_coverage, buffers)),
        "gain_phases": (buffers.solved_gains, partial(gain_phases, buffers)),
        "ical_convergence": (buffers.convergence, partial(ical_convergence, buffers)),
    }
    todo = {}
    for name in PREVIEWS:
        source, make = makers[name]
        if source.exists():
            todo[name] = make
        else:
            LOG.info("preview %s skipped: %s does not exist", name, source.name)
            buffers.preview(name).unlink(missing_ok=True)
    if not todo:
        return {}
    fork = multiprocessing.get_context("fork")  # matplotlib is imported here already
    with ProcessPoolExecutor(min(cores(), len(todo)), mp_context=fork) as pool:
        drawn = {name: pool.submit(make, buffers.preview(name)) for name, make in todo.items()}
        return {name: future.result() for name, future in drawn.items()}
