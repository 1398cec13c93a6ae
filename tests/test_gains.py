"""Tests for steps.science.gains."""

import numpy as np
import pytest

from steps.science.gains import (
    apply_gains,
    draw_phases,
    equations,
    solve,
    solve_gains,
    unobserved,
)
from steps.science.layout import baselines

NST, NT = 30, 4


def _sky(seed: int, ntimes: int = NT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random model visibilities (ntimes, nbaselines) for NST stations."""
    rng = np.random.default_rng(seed)
    ant1, ant2 = baselines(NST)
    model = rng.normal(size=(ntimes, ant1.size)) + 1j * rng.normal(size=(ntimes, ant1.size))
    return model, ant1, ant2


def _relative_phase(g: np.ndarray) -> np.ndarray:
    return np.angle(g * np.conj(g[:, :1]))


def test_draw_order() -> None:
    phases = draw_phases(180555, 1.0, 3, 5, 7)
    assert phases.shape == (3, 5, 7)
    draws = np.random.default_rng(180555).normal(0.0, 1.0, size=3 * 5 * 7)
    assert phases[0, 0, 0] == np.random.default_rng(180555).normal(0.0, 1.0)
    assert phases[0, 0, 1] == draws[1]
    assert phases[0, 1, 0] == draws[7]
    assert phases[1, 0, 0] == draws[35]
    assert draw_phases(180555, 0.5, 3, 5, 7)[2, 4, 6] == pytest.approx(0.5 * draws[-1])


def test_apply_and_invert() -> None:
    model, ant1, ant2 = _sky(1)
    g = np.exp(1j * draw_phases(2, 1.0, 1, NT, NST)[0]) * np.exp(
        np.random.default_rng(3).normal(0.0, 0.2, (NT, NST))
    )
    vis = apply_gains(model, g, ant1, ant2)
    p, q = ant1[5], ant2[5]
    assert vis[2, 5] == pytest.approx(g[2, p] * np.conj(g[2, q]) * model[2, 5], rel=1e-14)
    np.testing.assert_allclose(apply_gains(vis, g, ant1, ant2, inverse=True), model, atol=1e-10)
    # trailing channel axis broadcasts
    cube = np.stack([model, 2.0 * model], axis=-1)
    np.testing.assert_allclose(apply_gains(cube, g, ant1, ant2)[..., 1], 2.0 * vis, rtol=1e-14)


def test_conjugate_gains_do_not_correct() -> None:
    model, ant1, ant2 = _sky(4)
    g = np.exp(1j * draw_phases(5, 1.0, 1, NT, NST)[0])
    vis = apply_gains(model, g, ant1, ant2)
    wrong = apply_gains(vis, np.conj(g), ant1, ant2, inverse=True)
    assert np.max(np.abs(wrong - model)) > 0.1


@pytest.mark.parametrize("interval", [1, 2])
def test_phase_only_solution(interval: int) -> None:
    model, ant1, ant2 = _sky(6)
    phases = draw_phases(7, 1.0, 1, NT // interval, NST)[0]
    g = np.repeat(np.exp(1j * phases), interval, axis=0)
    vis = apply_gains(model, g, ant1, ant2)
    result = solve_gains(vis, model, np.ones(vis.shape), ant1, ant2, NST, interval=interval)
    assert result.gains.shape == (NT // interval, NST)
    np.testing.assert_array_equal(result.slot, np.arange(NT) // interval)
    err = _relative_phase(result.gains[result.slot]) - _relative_phase(g)
    assert np.max(np.abs(np.angle(np.exp(1j * err)))) < 1e-6
    assert np.all(result.residual < 1e-8)
    assert np.allclose(np.abs(result.gains), 1.0)
    assert np.allclose(result.gains[:, 0].imag, 0.0) and np.all(result.gains[:, 0].real > 0)
    np.testing.assert_allclose(
        apply_gains(vis, result.gains[result.slot], ant1, ant2, inverse=True), model, atol=1e-6
    )
    # the conjugate of the true gains is not the solution
    bad = _relative_phase(result.gains[result.slot]) + _relative_phase(g)
    assert np.max(np.abs(np.angle(np.exp(1j * bad)))) > 0.1


def test_amplitude_and_phase_solution() -> None:
    model, ant1, ant2 = _sky(8)
    rng = np.random.default_rng(9)
    g = np.exp(rng.normal(0.0, 0.2, (NT, NST)) + 1j * draw_phases(10, 1.0, 1, NT, NST)[0])
    vis = apply_gains(model, g, ant1, ant2)
    result = solve_gains(vis, model, np.ones(vis.shape), ant1, ant2, NST, phase_only=False)
    assert np.max(np.abs(np.abs(result.gains) - np.abs(g))) < 1e-6
    err = _relative_phase(result.gains) - _relative_phase(g)
    assert np.max(np.abs(np.angle(np.exp(1j * err)))) < 1e-6


def test_zero_weight_rows_ignored() -> None:
    model, ant1, ant2 = _sky(11)
    g = np.exp(1j * draw_phases(12, 1.0, 1, NT, NST)[0])
    vis = apply_gains(model, g, ant1, ant2)
    weight = np.ones(vis.shape)
    vis[:, :20] = 100.0  # garbage on flagged baselines
    weight[:, :20] = 0.0
    result = solve_gains(vis, model, weight, ant1, ant2, NST)
    err = _relative_phase(result.gains) - _relative_phase(g)
    assert np.max(np.abs(np.angle(np.exp(1j * err)))) < 1e-6
    assert np.all(result.iterations < 100)


@pytest.mark.parametrize("station", [0, 7])
def test_a_station_without_data_keeps_a_unit_gain(station: int) -> None:
    """A station all of whose baselines are flagged has nothing to solve from: its gain stays
    1 (the damping does not shrink it), the others are recovered, referenced to station 0 or,
    if that one has no data, to the first station with data; amplitudes too."""
    model, ant1, ant2 = _sky(13)
    rng = np.random.default_rng(14)
    g = np.exp(rng.normal(0.0, 0.2, (NT, NST)) + 1j * draw_phases(15, 1.0, 1, NT, NST)[0])
    weight = np.ones(model.shape)
    weight[1:, (ant1 == station) | (ant2 == station)] = 0.0  # from the second time on
    expected = np.zeros((NT, NST), dtype=bool)
    expected[1:, station] = True
    np.testing.assert_array_equal(unobserved(weight, ant1, ant2, NST), expected)
    for phase_only, truth in ((True, np.exp(1j * np.angle(g))), (False, g)):
        data = apply_gains(model, truth, ant1, ant2)
        result = solve_gains(data, model, weight, ant1, ant2, NST, phase_only=phase_only)
        np.testing.assert_array_equal(result.solved, ~expected)
        assert np.all(result.gains[expected] == 1.0)
        ref = 1 if station == 0 else 0
        for t in range(NT):
            keep = ~expected[t]
            r = ref if t else 0
            sol, true = result.gains[t, keep], truth[t, keep]
            rel = sol * np.conj(result.gains[t, r]) / (true * np.conj(truth[t, r]))
            assert np.max(np.abs(np.angle(rel))) < 1e-6
            assert result.gains[t, r].imag == pytest.approx(0.0, abs=1e-12)
            if not phase_only:
                np.testing.assert_allclose(np.abs(sol), np.abs(true), rtol=1e-6)


def test_summed_equations_are_the_joint_solution() -> None:
    """Two windows' equations summed = one solve over both windows' baselines together."""
    model_a, ant1, ant2 = _sky(21)
    model_b, _, _ = _sky(22)
    g = np.exp(1j * draw_phases(23, 1.0, 1, NT, NST)[0])
    vis_a, vis_b = apply_gains(model_a, g, ant1, ant2), apply_gains(model_b, g, ant1, ant2)
    vis_b[:, :30] += 0.3  # make the windows disagree, so the sum is not a trivial one
    ones = np.ones(vis_a.shape)
    summed = solve(
        equations(vis_a, model_a, ones, ant1, ant2, NST)
        + equations(vis_b, model_b, ones, ant1, ant2, NST)
    )
    joint = solve_gains(
        np.concatenate([vis_a, vis_b], axis=1),
        np.concatenate([model_a, model_b], axis=1),
        np.concatenate([ones, ones], axis=1),
        np.concatenate([ant1, ant1]),
        np.concatenate([ant2, ant2]),
        NST,
    )
    np.testing.assert_allclose(summed.gains, joint.gains, atol=1e-12)
    np.testing.assert_allclose(summed.residual, joint.residual, rtol=1e-10)
    assert np.all(summed.residual > 1e-3)  # the disagreement shows
    clean = solve(
        equations(vis_a, model_a, ones, ant1, ant2, NST)
        + equations(apply_gains(model_b, g, ant1, ant2), model_b, ones, ant1, ant2, NST)
    )
    err = _relative_phase(clean.gains) - _relative_phase(g)
    assert np.max(np.abs(np.angle(np.exp(1j * err)))) < 1e-6
