"""ICAL's pure parts: the calibration chain, the schedule and a small end-to-end loop."""

import numpy as np
import pytest

from benchmarks.cases import case_window, lowbd2_case, run_case, settings_for
from steps.metrics import phase_rms, shift_removed_phase_rms, station_uvw
from steps.science import deconvolve, ical, imaging


@pytest.fixture(scope="module")
def tiny():
    """LOWBD2 within 300 m (94 stations), 3 windows, 3 times, 6 sources, 128 px."""
    return lowbd2_case(rmax=300.0, nwin=3, ntimes=3, npixel=128, cell_rad=0.001, nsrc=6)


def test_terms_from_schedule() -> None:
    terms = ical.terms_from(
        "TGB",
        {"T": 1, "G": 3, "B": 4},
        {"T": True, "G": False, "B": False},
        {"T": 0.0, "G": 120.0, "B": 1e5},
        60.0,
    )
    assert [(t.name, t.first_selfcal, t.phase_only, t.interval) for t in terms] == [
        ("T", 1, True, 1),
        ("G", 3, False, 2),
        ("B", 4, False, 1667),
    ]


def test_chain_recovers_true_phases_with_true_model(tiny) -> None:
    """Noise-free data and the true model: phases to < 1e-6 rad, only active terms solve."""
    settings = settings_for(tiny)
    win = case_window(tiny, 0, settings)
    true_model = np.asarray(win.vis) / (
        tiny.true_gains[0][:, win.ant1] * np.conj(tiny.true_gains[0][:, win.ant2])
    )
    unit = {t.name: np.ones((3, tiny.nstations), complex) for t in settings.terms}
    tables, reports = ical.solve_chain(win, true_model, unit, settings.terms, 1, 200, 1e-12)
    assert [r.term for r in reports] == ["T"]
    assert np.all(tables["G"] == 1.0)
    gain = ical.combined_gain(tables, 3, tiny.nstations)
    assert phase_rms(tiny.true_gains[0], gain) < 1e-6
    tables, reports = ical.solve_chain(win, true_model, tables, settings.terms, 4, 200, 1e-12)
    assert [r.term for r in reports] == ["T", "G", "B"]
    gain = ical.combined_gain(tables, 3, tiny.nstations)
    assert phase_rms(tiny.true_gains[0], gain) < 1e-6
    assert np.max(np.abs(np.abs(gain) - 1.0)) < 1e-6
    np.testing.assert_allclose(ical.corrected_vis(win, tables), true_model, atol=1e-5)


def test_chain_with_a_station_without_data(tiny) -> None:
    """Station 0 fully flagged (garbage on its baselines): the other stations' gains come
    back to < 1e-6 rad, and amplitudes to 1e-6, referenced to the first station with data;
    the flagged one keeps a unit gain and leaves the amplitude scale alone."""
    settings = settings_for(tiny)
    win = case_window(tiny, 0, settings)
    flagged = (win.ant1 == 0) | (win.ant2 == 0)
    true_model = np.asarray(win.vis) / (
        tiny.true_gains[0][:, win.ant1] * np.conj(tiny.true_gains[0][:, win.ant2])
    )
    win.weight = np.where(flagged, 0.0, win.weight)
    win.vis = np.where(flagged, 1e3, win.vis)
    unit = {t.name: np.ones((3, tiny.nstations), complex) for t in settings.terms}
    tables, reports = ical.solve_chain(win, true_model, unit, settings.terms, 4, 200, 1e-12)
    assert [r.term for r in reports] == ["T", "G", "B"]
    gain = ical.combined_gain(tables, 3, tiny.nstations)
    flags = np.zeros(gain.shape, dtype=bool)
    flags[:, 0] = True
    assert np.all(gain[:, 0] == 1.0)
    assert phase_rms(tiny.true_gains[0], gain, flags) < 1e-6
    assert np.max(np.abs(np.abs(gain[:, 1:]) - 1.0)) < 1e-6
    corrected = ical.corrected_vis(win, tables)
    np.testing.assert_allclose(corrected[:, ~flagged], true_model[:, ~flagged], atol=1e-5)


@pytest.mark.parametrize(
    ("algorithm", "phase_rad", "dynamic_range", "offset_px"),
    [  # measured: 0.059 rad, 893, 0.146 px; 0.058 rad, 924, 0.146 px; 0.00067 rad, 1474, 0.01 px
        ("hogbom", 0.1, 600, 0.2),
        ("msclean", 0.1, 600, 0.2),
        ("mmclean", 0.002, 1000, 0.03),
    ],
)
def test_ical_loop_converges(
    tiny, algorithm: str, phase_rad: float, dynamic_range: float, offset_px: float
) -> None:
    """Three cycles on the tiny case reach the figures measured, with margins that a sign or
    scale error, or a tenfold regression of MS-MFS, would not pass."""
    settings = settings_for(tiny, algorithm=algorithm, nmajor=3, niter=300, psf_support=64)
    figures = run_case(tiny, settings)
    cycles = figures["cycles"]
    assert [c["cycle"] for c in cycles] == [0, 1, 2, 3]
    assert cycles[0]["solved_terms"] == [] and cycles[1]["solved_terms"] == ["T"]
    assert cycles[3]["solved_terms"] == ["T", "G"]  # in the chain's order
    assert cycles[-1]["phase_rms_rad"] < 0.2 * cycles[0]["phase_rms_rad"]
    assert figures["phase_rms_shift_removed_rad"] < phase_rad
    assert figures["dynamic_range"] > dynamic_range
    for source in figures["sources"][:5]:
        assert abs(source["flux_ratio"] - 1) < 0.003 and source["offset_px"] < offset_px


def test_band_prediction_is_each_windows_model_and_its_adjoint(tiny) -> None:
    """One gridder call per Taylor term gives each window the visibilities of its own model
    image (a direct per-window prediction), and ``image_band`` is its exact adjoint."""
    settings = settings_for(tiny, epsilon=1e-7)
    band = [case_window(tiny, c, settings) for c in range(3)]
    rng = np.random.default_rng(4)
    taylor = np.zeros((2, 128, 128))
    taylor[:, rng.integers(10, 118, 8), rng.integers(10, 118, 8)] = rng.uniform(-1, 2, (2, 8))
    coeff = deconvolve.taylor_weights(tiny.freqs, tiny.freqs.mean(), 2).T
    vis = ical.predict_band(band, taylor, coeff, settings)
    for c, win in enumerate(band):
        own = coeff[c, 0] * taylor[0] + coeff[c, 1] * taylor[1]
        direct = imaging.predict(own, win.uvw, np.array([win.freq_hz]), settings.cell_rad, 1e-7)
        np.testing.assert_allclose(vis[c], direct.reshape(vis[c].shape), atol=1e-6)
    data = [rng.standard_normal(w.vis.shape) + 1j * rng.standard_normal(w.vis.shape) for w in band]
    weighted = [d * w.imaging_weight for d, w in zip(data, band, strict=True)]
    lhs = sum(np.vdot(v, d).real for v, d in zip(vis, weighted, strict=True))
    rhs = np.sum(taylor * ical.image_band(band, data, coeff, settings))
    assert lhs == pytest.approx(rhs, rel=1e-6)
    # a band of two windows (no more windows than images) grids window by window: the same
    assert not ical.joint_calls(coeff[:2])
    pair = ical.predict_band(band[:2], taylor, coeff[:2], settings)
    for c in range(2):
        np.testing.assert_allclose(pair[c], vis[c], atol=1e-6)
    images = ical.image_band(band[:2], data[:2], coeff[:2], settings)
    for j in range(2):  # against one call over both windows, weights scaled by coeff
        joint = imaging.dirty(
            band[0].uvw,
            tiny.freqs[:2],
            np.stack([d.reshape(-1) for d in data[:2]], axis=1),
            np.stack(
                [w.imaging_weight.reshape(-1) * coeff[c, j] for c, w in enumerate(band[:2])], 1
            ),
            128,
            settings.cell_rad,
            1e-7,
        )
        np.testing.assert_allclose(images[j], joint, atol=1e-6 * np.abs(joint).max())


def test_bands_do_not_change_the_result(tiny) -> None:
    """Windows gridded together (one band) or one by one give the same ICAL to the
    gridder's accuracy."""
    figures = [
        run_case(tiny, settings_for(tiny, nmajor=3, niter=300, psf_support=64, band_windows=n))
        for n in (1, 3)
    ]
    for key in ("phase_rms_rad", "dynamic_range", "residual_rms_jy", "restored_peak_jy"):
        assert figures[1][key] == pytest.approx(figures[0][key], rel=1e-3), key
    assert figures[1]["cycles"][-1]["components"] == figures[0]["cycles"][-1]["components"]


def test_band_members_bounded_by_count_and_bytes() -> None:
    settings = ical.Settings(npixel=64, cell_rad=1e-3, band_windows=4)
    assert [list(m) for m in ical.band_members(8, 1000, settings)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [len(m) for m in ical.band_members(7, 1000, settings)] == [4, 3]
    rows = ical.BAND_BYTES // 16 // 2  # two windows fill a band
    assert [len(m) for m in ical.band_members(5, rows, settings)] == [2, 2, 1]
    assert [len(m) for m in ical.band_members(3, 10 * rows, settings)] == [1, 1, 1]


def test_global_solution_shares_one_gain_across_windows() -> None:
    """Achromatic phase errors: solving each term once for all windows recovers them (one
    table for every window), as well as per-window solutions do."""
    case = lowbd2_case(
        rmax=300.0, nwin=3, ntimes=3, npixel=128, cell_rad=0.001, nsrc=6, chromatic=False
    )
    figures = {}
    for global_solution in (False, True):
        settings = settings_for(
            case, nmajor=3, niter=300, psf_support=64, global_solution=global_solution
        )
        windows = [case_window(case, i, settings) for i in range(3)]
        bands = [windows[:2], windows[2:]]
        result = ical.run_ical(
            bands,
            [np.arange(2), np.arange(2, 3)],
            case.freqs,
            np.stack([w.psf for w in windows]),
            np.array([w.sumwt for w in windows]),
            3,
            case.nstations,
            settings,
            ical.serial_mapper(bands),
            (case.true_gains, None),
        )
        uvw0 = station_uvw(case.uvw, case.ant1, case.ant2, case.nstations)
        shifted = shift_removed_phase_rms(case.true_gains, result.gains, uvw0, case.freqs)
        figures[global_solution] = (result.convergence[-1]["phase_rms_rad"], shifted["rms_rad"])
        if global_solution:
            for tables in result.tables[1:]:
                for name, table in tables.items():
                    np.testing.assert_array_equal(table, result.tables[0][name])
            assert result.convergence[1]["solved_terms"] == ["T"]
            assert result.convergence[-1]["solver_iterations"] > 0
    # station-0 referenced (dominated by the position shift selfcal from an empty model may
    # take: chromatic per window, one compromise for a global solution) and shift removed
    assert figures[True][0] < 1.1 * figures[False][0]
    assert figures[True][1] < 0.01 and figures[False][1] < 0.01


def _run(case, settings: ical.Settings) -> tuple[list, list, ical.IcalResult]:
    """ICAL on a case's windows, in this process: bands, members and result."""
    nwin, ntimes = case.vis.shape[:2]
    windows = [case_window(case, c, settings) for c in range(nwin)]
    members = ical.band_members(nwin, windows[0].vis.size, settings)
    bands = [[windows[i] for i in m] for m in members]
    result = ical.run_ical(
        bands, members, case.freqs, np.stack([w.psf for w in windows]),
        np.array([w.sumwt for w in windows]), ntimes, case.nstations, settings,
        ical.serial_mapper(bands),
    )  # fmt: skip
    return bands, members, result


def test_ical_stops_when_the_cycles_left_would_repeat_the_last(tiny) -> None:
    """Once every term is solved, every solve converged and a cycle adds no component, ICAL
    stops: solving again against the final model gives the same gains, and the final
    residuals are those kept."""
    settings = settings_for(tiny, nmajor=9, niter=300, psf_support=64)
    bands, members, result = _run(tiny, settings)
    last = result.convergence[-1]
    assert 4 <= last["cycle"] < settings.nmajor  # B, the last term, starts at cycle 4
    assert last["components"] == 0 and last["solved_terms"] == ["T", "G", "B"]
    assert last["solver_iterations"] < settings.solver_niter
    for band, model, m in zip(bands, result.models, members, strict=True):
        assert all(win.final.load(model.version) is not None for win in band)
        predicted, _ = ical.band_prediction(band, model, settings)
        for win, vis, i in zip(band, predicted, m, strict=True):
            again, _ = ical.solve_chain(
                win, vis, result.tables[i], settings.terms, settings.nmajor,
                settings.solver_niter, settings.solver_tol,
            )  # fmt: skip
            for name, table in again.items():
                np.testing.assert_allclose(table, result.tables[i][name], rtol=0, atol=1e-7)


def test_ical_goes_on_while_a_solve_has_not_converged(tiny) -> None:
    """Solves stopped by ``solver_niter`` would move on in the next cycle: no early stop."""
    settings = settings_for(tiny, nmajor=6, niter=300, psf_support=64, solver_niter=2)
    _, _, result = _run(tiny, settings)
    cycles = result.convergence
    assert cycles[-1]["cycle"] == settings.nmajor
    assert cycles[-1]["components"] == 0 and cycles[-1]["solver_iterations"] == 2


def test_diverging_is_a_residual_visibility_rms_past_twice_the_lowest_before() -> None:
    record = [{"residual_vis_rms_jy": r} for r in (1.0, 0.5, 0.8)]
    assert not ical.diverging(1e9, [])  # cycle 0 has nothing to compare with
    assert not ical.diverging(1.0, record)
    assert ical.diverging(1.01, record)


@pytest.mark.parametrize("algorithm", ["mmclean", "hogbom"])
def test_diverging_ical_keeps_the_last_cycles_gains_and_their_model(algorithm: str) -> None:
    """Five stations (LOWBD2 within 80 m): cycle 0 cleans its components into the PSF's
    sidelobes, and cycle 1's residual grows past twice cycle 0's.  ICAL stops there and keeps
    the state whose residual cycle 0 measured: cycle 0's gains (unit) and the model before its
    deconvolution (empty), dropping cycle 1's gains and cycle 0's components."""
    case = lowbd2_case(rmax=80.0, nwin=4, ntimes=3, npixel=64, cell_rad=0.004, nsrc=6)
    assert case.nstations == 5
    settings = settings_for(case, algorithm=algorithm)
    bands, members, result = _run(case, settings)
    assert result.stopped == "diverged"
    first, last = result.convergence
    assert last == {**last, "cycle": 1, "diverged": True, "solved_terms": ["T"]}
    assert last["residual_vis_rms_jy"] > ical.DIVERGENCE * first["residual_vis_rms_jy"]
    assert first["components"] > 0 and first["model_flux_jy"] != 0.0
    assert (
        last["components"] == 0 and last["model_flux_jy"] == first["model_flux_jy"]
    )  # as measured
    assert not np.any(result.taylor)
    np.testing.assert_array_equal(result.gains, 1.0)
    mfs = np.zeros((case.npixel, case.npixel))
    for band, model, m in zip(bands, result.models, members, strict=True):
        assert not np.any(ical.window_model(model.images, model.coeff, 0))
        corrected = [ical.corrected_vis(w, result.tables[i]) for w, i in zip(band, m, strict=True)]
        for win, image in zip(
            band, ical.final_residuals(band, corrected, model, settings), strict=True
        ):
            mfs += win.sumwt * image
    mfs /= sum(win.sumwt for band in bands for win in band)
    assert np.sqrt(np.mean(mfs**2)) == pytest.approx(first["residual_rms_jy"], rel=1e-4)


@pytest.mark.parametrize(
    ("algorithm", "global_solution"), [("mmclean", False), ("mmclean", True), ("hogbom", False)]
)
def test_a_later_diverging_cycle_keeps_the_cycle_before_it(
    monkeypatch: pytest.MonkeyPatch, algorithm: str, global_solution: bool
) -> None:
    """Made to diverge at cycle 3, ICAL's result is cycle 2's gain tables (those a run of
    two cycles ends with) and the model they were solved against (that of a run of one)."""
    case = lowbd2_case(rmax=300.0, nwin=3, ntimes=3, npixel=64, cell_rad=0.002, nsrc=6)
    kw = {"algorithm": algorithm, "niter": 100, "psf_support": 32}
    settings = {
        n: settings_for(case, nmajor=n, global_solution=global_solution, **kw) for n in (1, 2, 5)
    }
    _, _, one = _run(case, settings[1])
    _, _, two = _run(case, settings[2])
    assert one.stopped == two.stopped == "nmajor"
    monkeypatch.setattr(ical, "diverging", lambda vis_rms, record: len(record) == 3)
    bands, _, forced = _run(case, settings[5])
    assert forced.stopped == "diverged" and forced.convergence[-1]["cycle"] == 3
    for got, want in zip(forced.tables, two.tables, strict=True):
        for name, table in want.items():
            np.testing.assert_allclose(got[name], table, rtol=0, atol=1e-9)
    np.testing.assert_allclose(forced.gains, two.gains, rtol=0, atol=1e-9)
    np.testing.assert_allclose(forced.taylor, one.taylor, atol=1e-6 * np.abs(one.taylor).max())
    for band, model in zip(bands, forced.models, strict=True):  # its residuals made anew
        assert all(win.final.load(model.version) is None for win in band)


def test_final_residuals_are_the_last_cycles_while_the_model_is_unchanged(tiny) -> None:
    """The last cycle grids window by window and keeps each window's residual image: while
    the model is that cycle's, the final residuals are those (bit for bit what gridding them
    anew gives); a changed model has its residuals made anew."""
    settings = settings_for(tiny, nmajor=4, niter=300, psf_support=64)
    bands, members, result = _run(tiny, settings)
    assert result.convergence[-1]["components"] == 0  # the last cycle left the model as it was
    for band, model, m in zip(bands, result.models, members, strict=True):
        corrected = [ical.corrected_vis(w, result.tables[i]) for w, i in zip(band, m, strict=True)]
        assert all(win.final.load(model.version) is not None for win in band)
        kept = ical.final_residuals(band, corrected, model, settings)
        changed = ical.Model(1.5 * model.images, model.coeff, model.version + 1)
        other = ical.final_residuals(band, corrected, changed, settings)
        for win in band:
            win.final = ical.VersionCache()  # forget the last cycle's images
        fresh = ical.final_residuals(band, corrected, model, settings)
        for a, b, c in zip(kept, fresh, other, strict=True):
            np.testing.assert_array_equal(a, b)
            assert np.abs(c - a).max() > 1e-3 * np.abs(a).max()


def test_settings_that_cannot_work_on_the_data_are_said_before_ical() -> None:
    """One solution for all windows against per-window phase errors, and more Taylor terms
    than windows."""
    from steps.calibrate import setting_notes
    from steps.params import Params

    assert setting_notes(Params(), 8) == []
    (note,) = setting_notes(Params(global_solution=True), 8)
    assert "draws each window's phases independently" in note and "1 rad" in note
    assert setting_notes(Params(global_solution=True, phase_error=0.0), 8) == []
    (note,) = setting_notes(Params(nmoment=3, nfreqwin=2), 2)
    assert note.startswith("nmoment = 3 with 2 window(s): 2 Taylor term(s) are fitted")
    assert setting_notes(Params(nmoment=3, nfreqwin=2, algorithm="msclean"), 2) == []
