"""ICAL: self-calibration from an empty model with major/minor cycles (the loop's pure parts).

Cycle 0 images the uncalibrated data and deconvolves it.  Each major cycle ``k = 1..nmajor``
then predicts the model (ducc0), solves the calibration chain term by term (a term solves
only when ``k >= first_selfcal``, starting from its previous solution, against the data
corrected by the terms before it), applies the product of the solved terms, images the
residual ``calibrated - model`` and deconvolves it, adding to the model.  Windows are solved
independently, or, with ``global_solution``, each term once for all windows: the windows'
normal equations are summed on the coordinator, which solves and hands the gains back.

The windows are processed in bands of consecutive windows, each through a ``mapper`` where
its data lives: a band predicts its model with one ducc0 call per model image over all its
windows (the Taylor terms of MS-MFS: ``I(nu_c) = sum_t x_c^t I_t``), solves and applies each
window's gains, and images the residuals with one call per image (the adjoint: weights
``x_c^t``), so the gridder's FFTs are shared by the band's windows; a band with no more
windows than images (one window, or per-window models) grids window by window, and so does
a final cycle (the last, or one after which ICAL may stop), whose window images are kept:
they are the final residuals unless its deconvolution changes the model.  The bands'
residual moments are summed on the caller (the coordinator), which runs MS-MFS CLEAN; per-window
algorithms (Hogbom, multi-scale) deconvolve each window in its band instead.

ICAL stops before ``nmajor`` once a final cycle adds no component while no term starts
later and every solve converged: the cycles left would solve the same terms against the same
model and data from the same solutions, and repeat it (to the solver's tolerance).  It stops
as well when a cycle diverges (the rms of its residual visibilities grows past
``DIVERGENCE`` times the lowest so far, see ``diverging``): its gains and the last cycle's
components are dropped, and the result is the last cycle's gains and the model they were
solved against.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from steps.metrics import phase_rms
from steps.science import clean, deconvolve, gains, imaging, reference_frequency

# a mapper calls fn(band, *args_i) for every band (args_i per band) and returns the results
# in band order, as an iterable: one band's result at a time need be in memory
Mapper = Callable[[Callable[..., Any], Sequence[tuple]], Iterable[Any]]
# a band holds at most this many bytes of visibilities (complex128)
BAND_BYTES = 64 * 2**20
# a cycle whose residual visibilities' rms exceeds the lowest before it this many times diverges
DIVERGENCE = 2.0


@dataclass(frozen=True)
class Term:
    """One calibration term: solved from cycle ``first_selfcal`` every ``interval`` integrations."""

    name: str
    first_selfcal: int
    phase_only: bool
    interval: int


@dataclass(frozen=True)
class Settings:
    """Imaging, deconvolution and calibration settings of one ICAL run."""

    npixel: int
    cell_rad: float
    epsilon: float = 1e-6
    weighting: str = "natural"
    robust: float = 0.0
    algorithm: str = "mmclean"
    scales: tuple[float, ...] = (0.0, 3.0, 10.0)
    nmoment: int = 2
    niter: int = 1000
    gain: float = 0.25
    threshold: float = 0.1
    fractional_threshold: float = 0.1
    psf_support: int = 128
    window_shape: str = "none"
    nmajor: int = 5
    terms: tuple[Term, ...] = ()
    solver_niter: int = 50
    solver_tol: float = 1e-10
    global_solution: bool = False
    band_windows: int = 4
    nthreads: int = 1

    def grid(self) -> dict[str, Any]:
        return {"npixel": self.npixel, "cell_rad": self.cell_rad, "epsilon": self.epsilon}


def terms_from(
    context: str,
    first_selfcal: dict[str, int],
    phase_only: dict[str, bool],
    interval_s: dict[str, float],
    integration_time_s: float,
) -> tuple[Term, ...]:
    """The chain's terms in context order; an interval of 0 s means one per integration."""
    out = []
    for name in context:
        seconds = interval_s[name]
        per = 1 if seconds <= 0 else max(1, round(seconds / integration_time_s))
        out.append(Term(name, first_selfcal[name], phase_only[name], per))
    return tuple(out)


class VersionCache:
    """An array of a window made from a model (its prediction, its residual image), kept in
    memory with the model's version."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._array: np.ndarray | None = None

    def load(self, version: int) -> np.ndarray | None:
        """The array made from model ``version``, if it is the one kept."""
        return self._array if self._version == version else None

    def store(self, version: int, array: np.ndarray) -> None:
        self._version, self._array = version, array


@dataclass(eq=False)
class Window:
    """One frequency window's data where it is processed (calibrate reads it for each task).

    ``vis``, ``weight`` (solver weights, 0 where flagged) and ``imaging_weight`` are
    (ntimes, nbaselines); ``uvw`` (ntimes * nbaselines, 3) metres.  ``cache`` keeps the last
    model prediction and ``final`` the last final cycle's residual image (Jy/beam), each with its
    model version (in memory, or in calibrate's scratch directory).
    """

    index: int
    freq_hz: float
    uvw: np.ndarray
    vis: np.ndarray
    weight: np.ndarray
    imaging_weight: np.ndarray
    ant1: np.ndarray
    ant2: np.ndarray
    nstations: int
    psf: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sumwt: float = 0.0
    psf_s: float = 0.0
    cache: VersionCache = field(default_factory=VersionCache)
    final: VersionCache = field(default_factory=VersionCache)


def make_window(
    index: int,
    freq_hz: float,
    uvw: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    nstations: int,
    settings: Settings,
    psf: tuple[np.ndarray, float] | None = None,
) -> Window:
    """A window with its imaging weights and PSF: ``psf`` (the PSF and its sum of weights)
    if given, else made here (``psf_s``: the PSF's gridder time)."""
    uvw2 = np.ascontiguousarray(uvw, dtype=np.float64).reshape(-1, 3)
    freq = np.array([freq_hz])
    wgt = np.asarray(weight, dtype=np.float64)
    iw = imaging.weights(
        uvw2,
        freq,
        wgt.reshape(-1, 1),
        settings.npixel,
        settings.cell_rad,
        settings.weighting,  # type: ignore[arg-type]
        settings.robust,
    ).reshape(wgt.shape)
    win = Window(
        index,
        float(freq_hz),
        uvw2,
        np.asarray(vis, dtype=np.complex128),
        wgt,
        iw,
        np.asarray(ant1),
        np.asarray(ant2),
        nstations,
    )
    if psf is not None:
        win.psf, win.sumwt = psf
        return win
    t0 = time.perf_counter()
    win.psf, win.sumwt = imaging.make_psf(
        uvw2, freq, iw.reshape(-1, 1), nthreads=settings.nthreads, **settings.grid()
    )
    win.psf_s = time.perf_counter() - t0
    return win


@dataclass(frozen=True)
class SolveReport:
    """A term's solution in one window and cycle: max iterations and mean weighted residual."""

    term: str
    iterations: int
    residual: float


def active_terms(terms: Sequence[Term], cycle: int) -> list[Term]:
    """The terms solved in major cycle ``cycle``, in chain order."""
    return [term for term in terms if cycle >= term.first_selfcal]


def term_equations(
    win: Window,
    model_vis: np.ndarray,
    tables: dict[str, np.ndarray],
    active: Sequence[Term],
    term: Term,
) -> gains.Equations:
    """The window's equations for ``term``: its data corrected by the active terms solved
    before it in the chain (their ``tables``), against the model prediction."""
    data = win.vis
    for before in active[: list(active).index(term)]:
        data = gains.apply_gains(data, tables[before.name], win.ant1, win.ant2, inverse=True)
    return gains.equations(
        data, model_vis, win.weight, win.ant1, win.ant2, win.nstations, term.interval
    )


def solve_term(
    eq: gains.Equations, term: Term, previous: np.ndarray, niter: int, tol: float
) -> tuple[np.ndarray, SolveReport]:
    """Solve one term from ``previous`` (per time); return its gains per time and report.

    Amplitude solutions are normalised to unit mean modulus per solution (over the stations
    with data), since the overall scale is degenerate with the model flux."""
    first = np.arange(0, previous.shape[0], term.interval)
    result = gains.solve(eq, term.phase_only, niter, tol, initial=previous[first])
    g = result.gains
    if not term.phase_only:
        n = np.maximum(result.solved.sum(axis=1, keepdims=True), 1)
        mean = np.sum(np.abs(g) * result.solved, axis=1, keepdims=True) / n
        g = np.where(result.solved, g / np.where(mean > 0, mean, 1.0), g)
    report = SolveReport(term.name, int(result.iterations.max()), float(result.residual.mean()))
    return g[result.slot], report


def solve_chain(
    win: Window,
    model_vis: np.ndarray,
    tables: dict[str, np.ndarray],
    terms: Sequence[Term],
    cycle: int,
    niter: int,
    tol: float,
) -> tuple[dict[str, np.ndarray], list[SolveReport]]:
    """Solve the active terms of one window in order; return the tables (per time) and
    reports. ``tables`` maps term name to gains (ntimes, nstations); inactive terms stay as
    they are (unity before their first solution)."""
    new = dict(tables)
    reports = []
    active = active_terms(terms, cycle)
    for term in active:
        eq = term_equations(win, model_vis, new, active, term)
        new[term.name], report = solve_term(eq, term, tables[term.name], niter, tol)
        reports.append(report)
    return new, reports


def uvw_of(band: Sequence[Window]) -> np.ndarray:
    """The band's baseline coordinates (metres): the same for all its windows."""
    return band[0].uvw


def joint_calls(coeff: np.ndarray) -> bool:
    """Whether a band grids one call per image over all its windows (else one per window):
    the cheaper when it has more windows than images, since a call's cost grows slowly
    with its channels (the FFTs are shared)."""
    return coeff.shape[0] > coeff.shape[1]


def window_model(images: np.ndarray, coeff: np.ndarray, c: int) -> np.ndarray:
    """Window ``c``'s model image ``sum_j coeff[c, j] images[j]`` (Jy/pixel)."""
    return np.tensordot(coeff[c], images, axes=1)


def predict_band(
    band: Sequence[Window], images: np.ndarray, coeff: np.ndarray, settings: Settings
) -> list[np.ndarray]:
    """Each window's visibilities (ntimes, nbaselines) of its model ``sum_j coeff[c, j]
    images[j]`` (Jy/pixel; Taylor terms for MS-MFS, the windows' own models otherwise),
    with one gridder call per image over the windows using it, or one per window."""
    freqs = np.array([w.freq_hz for w in band])
    out = [np.zeros(w.vis.shape, dtype=np.complex128) for w in band]
    grid = (settings.cell_rad, settings.epsilon, settings.nthreads)
    if not joint_calls(coeff):
        for c, win in enumerate(band):
            image = window_model(images, coeff, c)
            if np.any(image):
                vis = imaging.predict(image, win.uvw, freqs[c : c + 1], *grid)
                out[c] = vis.reshape(out[c].shape)
        return out
    for j, image in enumerate(images):
        used = np.flatnonzero(coeff[:, j])
        if not used.size or not np.any(image):
            continue
        vis = imaging.predict(image, uvw_of(band), freqs[used], *grid)
        for k, c in enumerate(used):
            out[c] += coeff[c, j] * vis[:, k].reshape(out[c].shape)
    return out


def image_band(
    band: Sequence[Window], vis: Sequence[np.ndarray], coeff: np.ndarray, settings: Settings
) -> np.ndarray:
    """The adjoint of ``predict_band``: ``sum_c coeff[c, j] dirty_c`` for each image ``j``,
    where ``dirty_c`` is window c's imaging-weighted sum (not normalised), with the same
    gridder calls: (nimage, npixel, npixel) in the gridder's precision."""
    if not joint_calls(coeff):
        return combined(window_images(band, vis, settings), coeff)
    freqs = np.array([w.freq_hz for w in band])
    shape = (coeff.shape[1], settings.npixel, settings.npixel)
    out = np.zeros(shape, dtype=imaging.real_type(settings.epsilon))
    for j in range(coeff.shape[1]):
        used = np.flatnonzero(coeff[:, j])
        if not used.size:
            continue
        out[j] = imaging.dirty(
            uvw_of(band),
            freqs[used],
            np.stack([vis[c].reshape(-1) for c in used], axis=1),
            np.stack([band[c].imaging_weight.reshape(-1) * coeff[c, j] for c in used], axis=1),
            nthreads=settings.nthreads,
            **settings.grid(),
        )
    return out


def window_images(
    band: Sequence[Window], vis: Sequence[np.ndarray], settings: Settings
) -> list[np.ndarray]:
    """Each window's imaging-weighted sum of ``vis`` (not normalised), one gridder call per
    window, in the gridder's precision."""
    return [
        imaging.dirty(
            win.uvw,
            np.array([win.freq_hz]),
            v.reshape(-1, 1),
            win.imaging_weight.reshape(-1, 1),
            nthreads=settings.nthreads,
            **settings.grid(),
        )
        for win, v in zip(band, vis, strict=True)
    ]


def combined(images: Sequence[np.ndarray], coeff: np.ndarray) -> np.ndarray:
    """``sum_c coeff[c, j] images[c]`` for each image ``j``, in the images' precision."""
    out = np.zeros((coeff.shape[1], *images[0].shape), dtype=images[0].dtype)
    for c, image in enumerate(images):
        for j in np.flatnonzero(coeff[c]):
            out[j] += coeff[c, j] * image
    return out


class Model(NamedTuple):
    """A band's model: window ``c``'s image is ``sum_j coeff[c, j] images[j]``; ``images`` is
    None while the model is empty; ``version`` changes whenever the images do.

    Tasks take it as its three parts (``*model``), so that the images all bands share (the
    Taylor terms) travel to each worker once."""

    images: np.ndarray | None
    coeff: np.ndarray
    version: int


def band_prediction(
    band: Sequence[Window], model: Model, settings: Settings
) -> tuple[list[np.ndarray], float]:
    """The model's visibilities for each window (cached per model version) and the gridder
    seconds spent."""
    if model.images is None or not np.any(model.images):
        return [np.zeros(w.vis.shape, dtype=np.complex128) for w in band], 0.0
    cached = [w.cache.load(model.version) for w in band]
    if all(v is not None for v in cached):
        return cached, 0.0  # type: ignore[return-value]
    t0 = time.perf_counter()
    model_vis = predict_band(band, model.images, model.coeff, settings)
    for win, vis in zip(band, model_vis, strict=True):
        win.cache.store(model.version, vis)
    return model_vis, time.perf_counter() - t0


def band_equations(
    band: Sequence[Window],
    images: np.ndarray | None,
    coeff: np.ndarray,
    version: int,
    tables: Sequence[dict[str, np.ndarray]],
    term_name: str,
    cycle: int,
    settings: Settings,
) -> tuple[gains.Equations, float]:
    """The band's share of a global solution of ``term_name`` (its windows' equations
    summed) and the gridder seconds spent."""
    model_vis, gridder_s = band_prediction(band, Model(images, coeff, version), settings)
    active = active_terms(settings.terms, cycle)
    term = next(t for t in active if t.name == term_name)
    shares = [
        term_equations(win, vis, table, active, term)
        for win, vis, table in zip(band, model_vis, tables, strict=True)
    ]
    total = shares[0]
    for eq in shares[1:]:
        total = total + eq
    return total, gridder_s


def solve_global(
    models: Sequence[Model],
    tables: list[list[dict[str, np.ndarray]]],
    cycle: int,
    settings: Settings,
    mapper: Mapper,
) -> tuple[list[list[dict[str, np.ndarray]]], list[SolveReport], float]:
    """Solve each active term once for all windows (summed equations); return the bands'
    tables, the reports and the gridder seconds spent predicting."""
    reports, gridder = [], 0.0
    for term in active_terms(settings.terms, cycle):
        args = [(*m, t, term.name, cycle, settings) for m, t in zip(models, tables, strict=True)]
        total = None
        for eq, seconds in mapper(band_equations, args):
            total = eq if total is None else total + eq
            gridder += seconds
        table, report = solve_term(
            total, term, tables[0][0][term.name], settings.solver_niter, settings.solver_tol
        )
        tables = [[{**t, term.name: table} for t in band] for band in tables]
        reports.append(report)
    return tables, reports, gridder


@dataclass(frozen=True, eq=False)
class CycleResult:
    """What one band returns from a major cycle: its residual images (``image_band`` of the
    residual visibilities, not normalised), the weighted sum of the residual visibilities'
    squared moduli and the sum of their weights, its windows' tables, gains and reports, and
    (per window algorithms) their model increments."""

    residual: np.ndarray
    misfit: float
    weight: float
    tables: list[dict[str, np.ndarray]]
    gains: list[np.ndarray]
    reports: list[SolveReport]
    increments: list[np.ndarray] | None
    ncomponents: int
    gridder_s: float
    busy_s: float


def schedule_complete(terms: Sequence[Term], cycle: int, nmajor: int) -> bool:
    """True when no term starts after ``cycle``: later cycles solve the terms it solves."""
    return active_terms(terms, cycle) == active_terms(terms, nmajor)


def may_be_last(record: Sequence[dict[str, Any]], cycle: int, settings: Settings) -> bool:
    """A guess whether ICAL may stop after cycle ``cycle`` (see ``converged``): no term
    starts later, and the previous cycle cleaned down to the absolute threshold.  Such a
    cycle grids window by window to keep its final residuals, which costs more than the joint
    images of a cycle that goes on; a wrong guess costs time, never a result."""
    return (
        bool(record)
        and schedule_complete(settings.terms, cycle, settings.nmajor)
        and settings.fractional_threshold * record[-1]["residual_peak_jy"] <= settings.threshold
    )


def converged(entry: dict[str, Any], cycle: int, settings: Settings) -> bool:
    """Whether the cycles after ``cycle`` (recorded as ``entry``) would repeat it: it added
    no component, no term starts later, and every solve converged (stopped before
    ``solver_niter``).  The next cycle would then solve the same terms against the same model
    and data from the same solutions, to the solver's tolerance."""
    return (
        entry["components"] == 0
        and entry["solver_iterations"] < settings.solver_niter
        and schedule_complete(settings.terms, cycle, settings.nmajor)
    )


def diverging(vis_rms: float, record: Sequence[dict[str, Any]]) -> bool:
    """Whether a cycle whose residual visibilities (calibrated data less the model's
    prediction) have the weighted rms ``vis_rms`` diverges: more than ``DIVERGENCE`` times the
    lowest of the cycles before it.  ICAL that converges lowers that misfit: a phase solve
    minimises it for the model (an amplitude solve the misfit of the uncalibrated data, much
    the same while the gains stay near unity), and each component CLEAN adds lowers it as
    far as its PSF is right.  It grows when CLEAN's components follow a PSF patch too small
    for the array's sidelobes, or when amplitude gains, solved against a model too poor to
    constrain them (an array of a few stations), shrink towards zero and scale the
    calibrated data up.  A diverging cycle's record is the cycle as it measured: its gains'
    phase error, the model it predicted, no component."""
    if not record:
        return False
    lowest = min(e["residual_vis_rms_jy"] for e in record)
    return not vis_rms <= DIVERGENCE * lowest  # a NaN misfit diverges too


def band_cycle(
    band: Sequence[Window],
    images: np.ndarray | None,
    coeff: np.ndarray,
    version: int,
    tables: Sequence[dict[str, np.ndarray]],
    cycle: int,
    final: bool,
    settings: Settings,
) -> CycleResult:
    """Predict, solve (unless solved globally), apply, image the residual and (per-window
    algorithms) deconvolve it, for each window of the band (model: ``Model``'s parts).
    A ``final`` cycle (the last, or one ICAL may stop after) images window by window and keeps
    each window's image as its final residual."""
    t_start = time.perf_counter()
    model = Model(images, coeff, version)
    model_vis, gridder = band_prediction(band, model, settings)
    new_tables, gain_list, residual_vis = [], [], []
    reports: list[SolveReport] = []
    for win, vis, table in zip(band, model_vis, tables, strict=True):
        if np.any(vis) and not settings.global_solution:
            table, solved = solve_chain(
                win, vis, table, settings.terms, cycle, settings.solver_niter,
                settings.solver_tol,
            )  # fmt: skip
            reports += solved
        gain = combined_gain(table, win.vis.shape[0], win.nstations)
        corrected = gains.apply_gains(win.vis, gain, win.ant1, win.ant2, inverse=True)
        residual_vis.append(corrected - vis)
        new_tables.append(table)
        gain_list.append(gain)
    t0 = time.perf_counter()
    if final:
        images = window_images(band, residual_vis, settings)
        for win, image in zip(band, images, strict=True):
            win.final.store(model.version, normalised(image, win.sumwt))
        residual = combined(images, model.coeff)
    else:
        residual = image_band(band, residual_vis, model.coeff, settings)
    gridder += time.perf_counter() - t0
    increments, ncomp = None, 0
    if settings.algorithm != "mmclean":  # the band's model images are its windows' own
        increments = []
        for win, image in zip(band, residual, strict=True):
            found, _, n = deconvolve_single(
                normalised(image.astype(np.float64), win.sumwt), win.psf, settings
            )
            increments.append(found)
            ncomp += n
    misfit = sum(
        float(np.sum(w.weight * np.abs(r) ** 2)) for w, r in zip(band, residual_vis, strict=True)
    )
    weight = sum(float(np.sum(w.weight)) for w in band)
    return CycleResult(
        residual, misfit, weight, new_tables, gain_list, reports, increments, ncomp, gridder,
        time.perf_counter() - t_start,
    )  # fmt: skip


def combined_gain(tables: dict[str, np.ndarray], ntimes: int, nstations: int) -> np.ndarray:
    """Product of all terms' gains (ntimes, nstations)."""
    total = np.ones((ntimes, nstations), dtype=np.complex128)
    for table in tables.values():
        total = total * table
    return total


def corrected_vis(win: Window, tables: dict[str, np.ndarray]) -> np.ndarray:
    """The window's data corrected by the product of its solved terms."""
    total = combined_gain(tables, win.vis.shape[0], win.nstations)
    return gains.apply_gains(win.vis, total, win.ant1, win.ant2, inverse=True)


def normalised(image: np.ndarray, sumwt: float) -> np.ndarray:
    """A window's image divided by its sum of imaging weights (Jy/beam), in its precision;
    a window without weight keeps its zero image."""
    return image / image.dtype.type(sumwt) if sumwt > 0 else image


def final_residuals(
    band: Sequence[Window], corrected: Sequence[np.ndarray], model: Model, settings: Settings
) -> list[np.ndarray]:
    """Each window's residual image (Jy/beam, in the gridder's precision) of its corrected
    data less the prediction of the final model: the last cycle's, unless its deconvolution
    changed the model (the data, the gains and the model are then those of the last cycle)."""
    kept = [win.final.load(model.version) for win in band]
    if all(image is not None for image in kept):
        return kept  # type: ignore[return-value]
    model_vis, _ = band_prediction(band, model, settings)
    residual_vis = [data - vis for data, vis in zip(corrected, model_vis, strict=True)]
    images = window_images(band, residual_vis, settings)
    return [normalised(image, win.sumwt) for win, image in zip(band, images, strict=True)]


def deconvolve_single(
    residual: np.ndarray, psf: np.ndarray, settings: Settings
) -> tuple[np.ndarray, np.ndarray, int]:
    """Hogbom or multi-scale CLEAN of one window: (model increment, residual, components)."""
    window = deconvolve.clean_window(settings.npixel, settings.window_shape)  # type: ignore[arg-type]
    common = {
        "gain": settings.gain,
        "niter": settings.niter,
        "threshold": settings.threshold,
        "fractional_threshold": settings.fractional_threshold,
        "window": window,
        "psf_support": settings.psf_support,
    }
    if settings.algorithm == "hogbom":
        return clean.hogbom(residual, psf, **common)
    if settings.algorithm == "msclean":
        return deconvolve.msclean(residual, psf, scales=settings.scales, **common)
    raise ValueError(f"unknown algorithm {settings.algorithm!r}")


def deconvolve_joint(
    residual_moments: np.ndarray, clean: deconvolve.Cleaner, settings: Settings
) -> deconvolve.CleanResult:
    """MS-MFS CLEAN of the residual moments reduced across windows (coordinator side)."""
    return clean(
        residual_moments,
        gain=settings.gain,
        niter=settings.niter,
        threshold=settings.threshold,
        fractional_threshold=settings.fractional_threshold,
        window=deconvolve.clean_window(settings.npixel, settings.window_shape),  # type: ignore[arg-type]
    )


def band_members(nwin: int, rows: int, settings: Settings) -> list[np.ndarray]:
    """Windows of each band: consecutive windows, at most ``settings.band_windows`` and at
    most ``BAND_BYTES`` of visibilities (``rows`` per window) per band, bands as even as
    possible.  Depends only on the data's shape, so the products do not depend on the
    number of workers."""
    size = max(1, min(settings.band_windows, BAND_BYTES // max(16 * rows, 1)))
    return np.array_split(np.arange(nwin), -(-nwin // size))


@dataclass
class IcalResult:
    """Final Taylor model, per-window tables and the convergence record; ``models`` are the
    bands' final models (their windows' model images and final residuals)."""

    taylor: np.ndarray
    tables: list[dict[str, np.ndarray]]
    gains: np.ndarray
    models: list[Model]
    convergence: list[dict[str, Any]]
    stopped: str  # "nmajor", "converged" or "diverged" (see ``diverging``)
    gridder_s: float
    minor_s: float
    busy_s: float


def run_ical(
    bands: Sequence[Any],
    members: Sequence[np.ndarray],
    freqs_hz: np.ndarray,
    psfs: Iterable[np.ndarray],
    sumwt: np.ndarray,
    ntimes: int,
    nstations: int,
    settings: Settings,
    mapper: Mapper,
    truth: tuple[np.ndarray, np.ndarray | None] | None = None,
    log: Callable[..., None] | None = None,
) -> IcalResult:
    """The ICAL loop over ``bands`` (objects or handles the mapper understands) holding the
    windows ``members[b]``.

    ``psfs`` are the windows' PSFs in window order (any iterable, read once, for the moments
    MS-MFS needs), ``sumwt`` their sums of imaging weights.

    ``truth``, the true gains (nwindow, ntimes, nstations) and the flags of the stations
    without data (or None), if given, adds the phase error against the truth to each
    cycle's convergence record; ``log`` receives a line per cycle.
    """
    nwin = len(freqs_hz)
    npix = settings.npixel
    freqs = np.asarray(freqs_hz, dtype=np.float64)
    joint = settings.algorithm == "mmclean"
    nt = min(settings.nmoment, nwin) if joint else 1
    taylor_w = deconvolve.taylor_weights(freqs, reference_frequency(freqs), 2 * nt - 1)
    clean = (  # MS-MFS with its PSF side and working memory, the same for every minor cycle
        deconvolve.Cleaner(
            deconvolve.couplings_of(
                deconvolve.moments(psfs, taylor_w, sumwt),
                (npix, npix),
                settings.scales,
                settings.psf_support,
            ),
            (npix, npix),
        )
        if joint
        else None
    )
    # per-window models: the state of per-window algorithms; MS-MFS keeps Taylor terms only
    model = np.zeros((0 if joint else nwin, npix, npix))
    taylor = np.zeros((nt, npix, npix))
    unit = np.ones((ntimes, nstations), dtype=np.complex128)
    tables = [[{t.name: unit.copy() for t in settings.terms} for _ in m] for m in members]
    gain_all = np.ones((nwin, ntimes, nstations), dtype=np.complex128)
    record: list[dict[str, Any]] = []
    gridder = minor = busy = 0.0
    version = 0  # bumped whenever the model changes

    def models(empty: bool) -> list[Model]:
        """Each band's model: the Taylor images (MS-MFS) or its windows' own images."""
        if joint:
            return [Model(None if empty else taylor, taylor_w[:nt, m].T, version) for m in members]
        return [Model(None if empty else model[m], np.eye(len(m)), version) for m in members]

    stopped = "nmajor"
    # the last deconvolution's undo: the Taylor images before it (MS-MFS) or its increments
    undo: Any = taylor.copy() if joint else []
    for cycle in range(settings.nmajor + 1):
        t_cycle = time.perf_counter()
        current = models(cycle == 0)
        kept = tables, gain_all  # the last cycle's gains, what a diverging cycle falls back to
        solved: list[SolveReport] = []
        if settings.global_solution and version > 0:  # a model to solve against
            tables, solved, seconds = solve_global(current, tables, cycle, settings, mapper)
            gridder += seconds
        final = cycle == settings.nmajor or may_be_last(record, cycle, settings)
        args = [(*m, t, cycle, final, settings) for m, t in zip(current, tables, strict=True)]
        # the bands' residual images, summed: the moments (MS-MFS) or the MFS image
        residual = np.zeros((nt, npix, npix))
        tables, gain_list, reports, increments = [], [], list(solved), []
        misfit = weight = 0.0
        r: CycleResult
        for m, r in zip(members, mapper(band_cycle, args), strict=True):
            misfit, weight = misfit + r.misfit, weight + r.weight
            tables.append(r.tables)
            gain_list += r.gains
            reports += r.reports
            residual += r.residual if joint else r.residual.sum(0, dtype=np.float64)
            gridder += r.gridder_s
            busy += r.busy_s
            if not joint:
                increments.append((m, r.increments, r.ncomponents))
        gain_all = np.stack(gain_list)
        residual /= sumwt.sum()
        mfs_residual = residual[0]
        vis_rms = float(np.sqrt(misfit / weight)) if weight > 0 else 0.0
        diverged = diverging(vis_rms, record)
        t0 = time.perf_counter()
        ncomp = 0
        if diverged:
            pass  # nothing deconvolved: the cycle is recorded as measured, then undone below
        elif joint:  # MS-MFS
            found = deconvolve_joint(residual, clean, settings)
            undo = taylor.copy()
            taylor += found.model
            ncomp = found.ncomponents
        else:
            undo = increments
            for m, added, n in increments:
                model[m] += added
                ncomp += n
            taylor = deconvolve.moments(model, taylor_w[:nt], sumwt)
        minor += time.perf_counter() - t0
        version += ncomp > 0
        solved_now = {rep.term for rep in reports}
        entry: dict[str, Any] = {
            "cycle": cycle,
            "solved_terms": [t.name for t in settings.terms if t.name in solved_now],
            "residual_rms_jy": float(np.sqrt(np.mean(mfs_residual**2))),
            "residual_vis_rms_jy": vis_rms,
            "residual_peak_jy": float(np.max(np.abs(mfs_residual))),
            "model_flux_jy": float(taylor[0].sum()),
            "components": int(ncomp),
            "solver_iterations": max((rep.iterations for rep in reports), default=0),
            "time_s": round(time.perf_counter() - t_cycle, 3),
        }
        if truth is not None:
            entry["phase_rms_rad"] = phase_rms(truth[0], gain_all, truth[1])
        if diverged:
            entry["diverged"] = True
        record.append(entry)
        if log is not None:
            log(
                "ICAL cycle %d: terms %s, residual rms %.3g Jy/beam, peak %.3g, %d components%s",
                cycle,
                "".join(entry["solved_terms"]) or "-",
                entry["residual_rms_jy"],
                entry["residual_peak_jy"],
                entry["components"],
                f", phase error {entry['phase_rms_rad']:.3g} rad" if truth is not None else "",
            )
        if diverged:  # back to the last cycle's gains and the model they were solved against
            tables, gain_all = kept
            if joint:
                taylor = undo
            else:
                for m, added, _ in undo:
                    model[m] -= added
                taylor = deconvolve.moments(model, taylor_w[:nt], sumwt)
            version += 1  # the final residuals of the model kept are made anew
            stopped = "diverged"
            break
        if final and cycle < settings.nmajor and converged(entry, cycle, settings):
            stopped = "converged"
            break
    window_tables = [t for band in tables for t in band]
    return IcalResult(
        taylor,
        window_tables,
        gain_all,
        models(False),
        record,
        stopped,
        gridder,
        minor,
        busy,
    )


def serial_mapper(bands: Sequence[Sequence[Window]]) -> Mapper:
    """A mapper that runs every band here, in order, as its result is asked for."""

    def run(fn: Callable[..., Any], args: Sequence[tuple]) -> Iterator[Any]:
        return (fn(b, *a) for b, a in zip(bands, args, strict=True))

    return run
