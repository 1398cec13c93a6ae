"""The gain phase figures of merit, against direct loops over windows, times and stations."""

import numpy as np
import pytest

from steps.metrics import phase_rms, shift_removed_phase_rms
from steps.science import C_M_S

NWIN, NT, NST = 2, 3, 6


def _flags() -> np.ndarray:
    """Station 0 without data at one (window, time), station 4 at another."""
    flags = np.zeros((NWIN, NT, NST), dtype=bool)
    flags[1, 2, 0] = flags[0, 1, 4] = True
    return flags


def _direct_rms(true: np.ndarray, solved: np.ndarray, flags: np.ndarray) -> float:
    """Phase differences referenced to the first station with data, summed in loops."""
    total, count = 0.0, 0
    for w in range(NWIN):
        for t in range(NT):
            ref = next(p for p in range(NST) if not flags[w, t, p])
            for p in range(NST):
                if flags[w, t, p]:
                    continue
                solved_rel = np.angle(solved[w, t, p]) - np.angle(solved[w, t, ref])
                true_rel = np.angle(true[w, t, p]) - np.angle(true[w, t, ref])
                d = np.angle(np.exp(1j * (solved_rel - true_rel)))
                total, count = total + d * d, count + 1
    return float(np.sqrt(total / count))


def test_phase_rms_leaves_out_stations_without_data() -> None:
    rng = np.random.default_rng(1)
    true = np.exp(1j * rng.normal(0, 1, (NWIN, NT, NST)))
    solved = true * np.exp(1j * rng.normal(0, 0.01, true.shape))
    flags = _flags()
    solved[flags] = np.exp(2j)  # an arbitrary gain where nothing was solved
    assert phase_rms(true, solved, flags) == pytest.approx(_direct_rms(true, solved, flags), 1e-12)
    assert phase_rms(true, solved) > 5 * phase_rms(true, solved, flags)
    unflagged = np.zeros_like(flags)
    assert phase_rms(true, solved, unflagged) == pytest.approx(phase_rms(true, solved), 1e-12)


def test_shift_removed_with_a_reference_station_without_data() -> None:
    """A sky shift (dl, dm) is a phase gradient over the stations' (u, v): it is found and
    removed whichever station the phases are referenced to."""
    rng = np.random.default_rng(2)
    freqs = np.array([1.0e8, 1.1e8])
    uvw0 = rng.uniform(-500, 500, (NT, NST, 3))
    uvw0[:, 0] = 0.0  # positions relative to station 0
    dl, dm = 3e-4, -2e-4
    k = 2 * np.pi * freqs[:, None, None] / C_M_S
    true = np.exp(1j * rng.normal(0, 1, (NWIN, NT, NST)))
    noise = rng.normal(0, 1e-3, true.shape)
    solved = true * np.exp(1j * (k * (uvw0[None, ..., 0] * dl + uvw0[None, ..., 1] * dm) + noise))
    flags = _flags()
    solved[flags] = np.exp(2j)
    figures = shift_removed_phase_rms(true, solved, uvw0, freqs, flags)
    assert figures["offset_rad"] == pytest.approx(np.hypot(dl, dm), rel=1e-2)
    assert figures["rms_rad"] < 2e-3
    assert shift_removed_phase_rms(true, solved, uvw0, freqs)["rms_rad"] > 0.1


def test_the_worst_station_is_the_one_whose_phases_are_off() -> None:
    """Every other station within 1 mrad, station 17 off by 50 mrad rms: found, with its rms
    (what the shift fit takes of one station among forty is small)."""
    rng = np.random.default_rng(3)
    nst, freqs = 40, np.array([1.0e8, 1.1e8])
    uvw0 = rng.uniform(-500, 500, (NT, nst, 3))
    uvw0[:, 0] = 0.0
    true = np.exp(1j * rng.normal(0, 1, (NWIN, NT, nst)))
    error = rng.normal(0, 1e-3, true.shape)
    error[..., 17] = rng.normal(0, 0.05, (NWIN, NT))
    figures = shift_removed_phase_rms(true, true * np.exp(1j * error), uvw0, freqs)
    assert figures["worst_station"] == 17
    expected = np.sqrt(np.mean((error[..., 17] - error[..., 0]) ** 2))  # station 0 referenced
    assert figures["worst_station_rms_rad"] == pytest.approx(expected, rel=0.05)
    assert figures["rms_rad"] < figures["worst_station_rms_rad"]
