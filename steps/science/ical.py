"""ICAL: self-calibration from an empty model with major/minor cycles (the loop's pure parts).

Cycle 0 images the uncalibrated data and deconvolves it.  Each major cycle ``k = 1..nmajor``
then predicts the model (ducc0), solves the calibration chain term by term (a term solves
only when ``k >= first_selfcal``, starting from its previous solution, against the data
corrected by the terms before it), applies the product of the solved terms, images the
residual ``calibrated - model`` and deconvolves it, adding to the model.  Windows are solved
independently, or, with ``global_solution``, each term once for all windows: the windows'
normal equations are summed on the coordinator, which solves and hands the gains back.

Per-window work (predict, solve, apply, invert, and per-window CLEAN) runs where the window
lives, through a ``mapper``; MS-MFS CLEAN reduces the windows' residuals to Taylor moments
and runs on the caller (the coordinator).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steps.metrics import phase_rms
from steps.science import clean, deconvolve, gains, imaging

# a mapper calls fn(window, *args_i) for every window (args_i per window) and returns results
Mapper = Callable[[Callable[..., Any], Sequence[tuple]], list]


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


class PredictionCache:
    """A window's last model prediction, kept in memory with its model version."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._vis: np.ndarray | None = None

    def load(self, version: int) -> np.ndarray | None:
        """The prediction of model ``version``, if it is the one kept."""
        return self._vis if self._version == version else None

    def store(self, version: int, vis: np.ndarray) -> None:
        self._version, self._vis = version, vis


@dataclass(eq=False)
class Window:
    """One frequency window's data where it is processed (calibrate reads it for each task).

    ``vis``, ``weight`` (solver weights, 0 where flagged) and ``imaging_weight`` are
    (ntimes, nbaselines); ``uvw`` (ntimes * nbaselines, 3) metres.  ``cache`` keeps the last
    model prediction with its model version (in memory, or in calibrate's scratch directory).
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
    cache: PredictionCache = field(default_factory=PredictionCache)


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

    Amplitude solutions are normalised to unit mean modulus per solution, since the overall
    scale is degenerate with the model flux."""
    first = np.arange(0, previous.shape[0], term.interval)
    result = gains.solve(eq, term.phase_only, niter, tol, initial=previous[first])
    g = result.gains
    if not term.phase_only:
        g = g / np.mean(np.abs(g), axis=1, keepdims=True)
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


def predict_window(win: Window, model: np.ndarray, settings: Settings) -> np.ndarray:
    """Visibilities (ntimes, nbaselines) of a model image (Jy/pixel) for the window."""
    return imaging.predict(
        model, win.uvw, np.array([win.freq_hz]), settings.cell_rad, settings.epsilon,
        settings.nthreads,
    ).reshape(win.vis.shape)  # fmt: skip


def residual_image(win: Window, vis: np.ndarray, settings: Settings) -> np.ndarray:
    """Image (Jy/beam) of residual visibilities (ntimes, nbaselines) of the window."""
    image, _ = imaging.invert(
        win.uvw,
        np.array([win.freq_hz]),
        vis.reshape(-1, 1),
        win.imaging_weight.reshape(-1, 1),
        nthreads=settings.nthreads,
        **settings.grid(),
    )
    return image


def model_prediction(
    win: Window, model: np.ndarray | None, version: int, settings: Settings
) -> tuple[np.ndarray, float]:
    """The model's visibilities for the window (cached per model ``version``) and the
    gridder seconds spent."""
    if model is None or not np.any(model):
        return np.zeros(win.vis.shape, dtype=np.complex128), 0.0
    cached = win.cache.load(version)
    if cached is not None:
        return cached, 0.0
    t0 = time.perf_counter()
    model_vis = predict_window(win, model, settings)
    win.cache.store(version, model_vis)
    return model_vis, time.perf_counter() - t0


def window_equations(
    win: Window,
    model: np.ndarray,
    version: int,
    tables: dict[str, np.ndarray],
    term_name: str,
    cycle: int,
    settings: Settings,
) -> tuple[gains.Equations, float]:
    """One window's share of a global solution of ``term_name`` (and its gridder seconds)."""
    model_vis, gridder_s = model_prediction(win, model, version, settings)
    active = active_terms(settings.terms, cycle)
    term = next(t for t in active if t.name == term_name)
    return term_equations(win, model_vis, tables, active, term), gridder_s


def solve_global(
    model: np.ndarray,
    version: int,
    tables: list[dict[str, np.ndarray]],
    cycle: int,
    settings: Settings,
    mapper: Mapper,
) -> tuple[list[dict[str, np.ndarray]], list[SolveReport], float]:
    """Solve each active term once for all windows (summed equations); return the windows'
    tables, the reports and the gridder seconds spent predicting."""
    reports, gridder = [], 0.0
    for term in active_terms(settings.terms, cycle):
        args = [
            (model[i], version, tables[i], term.name, cycle, settings) for i in range(len(tables))
        ]
        shares = mapper(window_equations, args)
        gridder += sum(seconds for _, seconds in shares)
        total = shares[0][0]
        for eq, _ in shares[1:]:
            total = total + eq
        table, report = solve_term(
            total, term, tables[0][term.name], settings.solver_niter, settings.solver_tol
        )
        tables = [{**t, term.name: table} for t in tables]
        reports.append(report)
    return tables, reports, gridder


@dataclass(frozen=True, eq=False)
class CycleResult:
    """What one window returns from a major cycle."""

    residual: np.ndarray
    tables: dict[str, np.ndarray]
    gain: np.ndarray
    reports: list[SolveReport]
    model_increment: np.ndarray | None
    ncomponents: int
    gridder_s: float
    busy_s: float


def window_cycle(
    win: Window,
    model: np.ndarray | None,
    version: int,
    tables: dict[str, np.ndarray],
    cycle: int,
    settings: Settings,
) -> CycleResult:
    """Predict, solve (unless solved globally), apply, image the residual and (per-window
    algorithms) deconvolve it.

    ``version`` identifies the model: an unchanged model reuses the cached prediction.
    """
    t_start = time.perf_counter()
    shape = win.vis.shape
    model_vis, gridder = model_prediction(win, model, version, settings)
    reports: list[SolveReport] = []
    if np.any(model_vis) and not settings.global_solution:
        tables, reports = solve_chain(
            win,
            model_vis,
            tables,
            settings.terms,
            cycle,
            settings.solver_niter,
            settings.solver_tol,
        )
    gain = combined_gain(tables, shape[0], win.nstations)
    corrected = gains.apply_gains(win.vis, gain, win.ant1, win.ant2, inverse=True)
    t0 = time.perf_counter()
    residual = residual_image(win, corrected - model_vis, settings)
    gridder += time.perf_counter() - t0
    increment, ncomp = None, 0
    if settings.algorithm != "mmclean":
        increment, _, ncomp = deconvolve_single(residual, win.psf, settings)
    return CycleResult(
        residual, tables, gain, reports, increment, ncomp, gridder, time.perf_counter() - t_start
    )


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


def final_residual(
    win: Window, corrected: np.ndarray, model: np.ndarray, settings: Settings
) -> np.ndarray:
    """Residual image of the corrected data less the prediction of the final model."""
    return residual_image(win, corrected - predict_window(win, model, settings), settings)


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
    residuals: Sequence[np.ndarray],
    psfs: Sequence[np.ndarray],
    freqs_hz: np.ndarray,
    sumwt: np.ndarray,
    settings: Settings,
) -> deconvolve.CleanResult:
    """MS-MFS CLEAN of all windows' residuals (coordinator side)."""
    return deconvolve.msmfs(
        residuals,
        psfs,
        freqs_hz,
        sumwt,
        nmoment=settings.nmoment,
        scales=settings.scales,
        gain=settings.gain,
        niter=settings.niter,
        threshold=settings.threshold,
        fractional_threshold=settings.fractional_threshold,
        window=deconvolve.clean_window(settings.npixel, settings.window_shape),  # type: ignore[arg-type]
        psf_support=settings.psf_support,
    )


@dataclass
class IcalResult:
    """Final per-window models, Taylor model, per-window tables and the convergence record."""

    model: np.ndarray
    taylor: np.ndarray
    tables: list[dict[str, np.ndarray]]
    gains: np.ndarray
    convergence: list[dict[str, Any]]
    gridder_s: float
    minor_s: float
    busy_s: float


def run_ical(
    windows: Sequence[Any],
    freqs_hz: np.ndarray,
    psfs: np.ndarray,
    sumwt: np.ndarray,
    ntimes: int,
    nstations: int,
    settings: Settings,
    mapper: Mapper,
    true_gains: np.ndarray | None = None,
    log: Callable[..., None] | None = None,
) -> IcalResult:
    """The ICAL loop over ``windows`` (objects or handles the mapper understands).

    ``true_gains`` (nwindow, ntimes, nstations), if given, adds the phase error against the
    truth to each cycle's convergence record; ``log`` receives a line per cycle.
    """
    nwin = len(windows)
    npix = settings.npixel
    freqs = np.asarray(freqs_hz, dtype=np.float64)
    ref = float(freqs.mean())
    nt = min(settings.nmoment, nwin) if settings.algorithm == "mmclean" else 1
    taylor_w = deconvolve.taylor_weights(freqs, ref, nt)
    model = np.zeros((nwin, npix, npix))
    taylor = np.zeros((nt, npix, npix))
    unit = np.ones((ntimes, nstations), dtype=np.complex128)
    tables = [{t.name: unit.copy() for t in settings.terms} for _ in range(nwin)]
    gain_all = np.ones((nwin, ntimes, nstations), dtype=np.complex128)
    record: list[dict[str, Any]] = []
    gridder = minor = busy = 0.0
    version = 0  # bumped whenever the model changes
    for cycle in range(settings.nmajor + 1):
        t_cycle = time.perf_counter()
        args = [
            (model[i] if cycle else None, version, tables[i], cycle, settings) for i in range(nwin)
        ]
        solved: list[SolveReport] = []
        if settings.global_solution and cycle and np.any(model):
            tables, solved, seconds = solve_global(model, version, tables, cycle, settings, mapper)
            gridder += seconds
            args = [(model[i], version, tables[i], cycle, settings) for i in range(nwin)]
        results: list[CycleResult] = mapper(window_cycle, args)
        tables = [r.tables for r in results]
        gain_all = np.stack([r.gain for r in results])
        residuals = [r.residual for r in results]
        gridder += sum(r.gridder_s for r in results)
        busy += sum(r.busy_s for r in results)
        t0 = time.perf_counter()
        if settings.algorithm == "mmclean":
            found = deconvolve_joint(residuals, psfs, freqs, sumwt, settings)
            taylor += found.model
            model += deconvolve.cube_from_taylor(found.model, taylor_w)
            ncomp = found.ncomponents
        else:
            for i, r in enumerate(results):
                model[i] += r.model_increment
            taylor = deconvolve.moments(model, taylor_w, sumwt)
            ncomp = sum(r.ncomponents for r in results)
        minor += time.perf_counter() - t0
        version += ncomp > 0
        mfs_residual = deconvolve.moments(residuals, taylor_w[:1], sumwt)[0]
        reports = solved + [rep for r in results for rep in r.reports]
        entry: dict[str, Any] = {
            "cycle": cycle,
            "solved_terms": sorted({rep.term for rep in reports}),
            "residual_rms_jy": float(np.sqrt(np.mean(mfs_residual**2))),
            "residual_peak_jy": float(np.max(np.abs(mfs_residual))),
            "model_flux_jy": float(taylor[0].sum()),
            "components": int(ncomp),
            "solver_iterations": max((rep.iterations for rep in reports), default=0),
            "time_s": round(time.perf_counter() - t_cycle, 3),
        }
        if true_gains is not None:
            entry["phase_rms_rad"] = phase_rms(true_gains, gain_all)
        record.append(entry)
        if log is not None:
            log(
                "ICAL cycle %d: terms %s, residual rms %.3g Jy/beam, peak %.3g, %d components%s",
                cycle,
                "".join(entry["solved_terms"]) or "-",
                entry["residual_rms_jy"],
                entry["residual_peak_jy"],
                entry["components"],
                f", phase error {entry['phase_rms_rad']:.3g} rad" if true_gains is not None else "",
            )
    return IcalResult(model, taylor, tables, gain_all, record, gridder, minor, busy)


def serial_mapper(windows: Sequence[Window]) -> Mapper:
    """A mapper that runs every window here, in order."""

    def run(fn: Callable[..., Any], args: Sequence[tuple]) -> list:
        return [fn(w, *a) for w, a in zip(windows, args, strict=True)]

    return run
