"""Station gain corruption and antenna-based gain calibration.

Convention (project-wide): for baseline (p, q) = (ant1, ant2),
V_pq = g_p g_q^* M_pq. Visibilities of one frequency window have shape
(ntimes, nbaselines[, ...]) and gains (ntimes, nstations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class SolveResult:
    """Gain solutions (nslots, nstations), iterations and weighted rms residual (nslots,).

    ``slot`` (ntimes,) maps each time to its solution row: ``gains[slot]`` is per time.
    ``solved`` (nslots, nstations) says which stations had data to solve from; the others
    keep a unit gain.
    """

    gains: np.ndarray
    iterations: np.ndarray
    residual: np.ndarray
    slot: np.ndarray
    solved: np.ndarray


def draw_phases(
    seed: int, sigma_rad: float, nwindows: int, ntimes: int, nstations: int
) -> np.ndarray:
    """Gaussian phase errors (nwindows, ntimes, nstations) rad.

    One call ``default_rng(seed).normal(0, sigma, size)``: draws fill window,
    then time, then station (C order), so element [0, 0, 0] is the first draw.
    Gains are ``exp(1j * phases)``.
    """
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, sigma_rad, size=(nwindows, ntimes, nstations))


def apply_gains(
    vis: np.ndarray,
    gains: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    inverse: bool = False,
) -> np.ndarray:
    """Return ``g_p g_q^* V_pq`` (or ``V_pq / (g_p g_q^*)`` if ``inverse``).

    ``vis`` (ntimes, nbaselines, ...) complex, ``gains`` (ntimes, nstations).
    """
    factor = gains[:, ant1] * np.conj(gains[:, ant2])
    factor = factor.reshape(factor.shape + (1,) * (vis.ndim - 2))
    return vis / factor if inverse else vis * factor


def unobserved(
    weight: np.ndarray, ant1: np.ndarray, ant2: np.ndarray, nstations: int
) -> np.ndarray:
    """Where a station has no weight on any of its baselines: (ntimes, nstations) bool from
    ``weight`` (ntimes, nbaselines)."""
    seen = np.zeros((weight.shape[0], nstations))
    positive = (weight > 0).astype(float)
    np.add.at(seen.T, ant1, positive.T)
    np.add.at(seen.T, ant2, positive.T)
    return seen == 0


@dataclass(frozen=True, eq=False)
class Equations:
    """Data of one solution reduced to station pairs, per slot: ``xw`` = sum w V M^*, ``w`` =
    sum w |M|^2 (nslots, nstations, nstations), Hermitian and symmetric with both triangles.

    Additive: the equations of several frequency windows sum to those of a global
    (all-window) solution.
    """

    xw: np.ndarray
    w: np.ndarray
    slot: np.ndarray

    def __add__(self, other: Equations) -> Equations:
        return Equations(self.xw + other.xw, self.w + other.w, self.slot)


def equations(
    vis: np.ndarray,
    model: np.ndarray,
    weight: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    nstations: int,
    interval: int = 1,
) -> Equations:
    """The equations of ``vis`` against ``model`` (ntimes, nbaselines) with ``weight``;
    ``interval`` consecutive times share one slot (one solution)."""
    ntimes = vis.shape[0]
    slot = np.arange(ntimes) // interval
    nslots = int(slot[-1]) + 1
    starts = np.arange(0, ntimes, interval)
    num = np.add.reduceat(weight * vis * np.conj(model), starts, axis=0)
    den = np.add.reduceat(weight * np.abs(model) ** 2, starts, axis=0)
    # each baseline adds to both (p, q) and (q, p): flat indices into (nslots, nst, nst)
    cells = np.concatenate([ant1 * nstations + ant2, ant2 * nstations + ant1])
    index = (np.arange(nslots)[:, None] * nstations**2 + cells).ravel()
    shape = (nslots, nstations, nstations)

    def pairs(values: np.ndarray) -> np.ndarray:
        return np.bincount(index, values.ravel(), nslots * nstations**2).reshape(shape)

    xw = pairs(np.hstack([num.real, num.real])) + 1j * pairs(np.hstack([num.imag, -num.imag]))
    w = pairs(np.hstack([den, den]))
    return Equations(xw, w, slot)


def solve(
    eq: Equations,
    phase_only: bool = True,
    niter: int = 100,
    tol: float = 1e-10,
    damping: float = 0.5,
    ref: int = 0,
    initial: np.ndarray | None = None,
) -> SolveResult:
    """Solve the equations for g (V_pq = g_p g_q^* M_pq) by damped iterative substitution.

    Each iteration sets g_p <- sum_q XW_pq g_q / sum_q W_pq |g_q|^2, normalises to unit
    modulus if ``phase_only``, rotates so that g_ref is real positive and keeps the fraction
    ``damping`` of the previous estimate. All slots iterate together; a slot stops once
    max|g - g_old| < tol. ``initial`` is (nslots, nstations). A station with no data in a
    slot keeps a unit gain there, and the slot's reference is then the first station with
    data if ``ref`` has none. The residual is the weighted rms of X - g_p g_q^* over the
    pairs, X = XW / W (the data averaged over the slot).
    """
    nslots, nstations = eq.w.shape[:2]
    solved = eq.w.sum(axis=2) > 0
    refs = np.where(solved[:, ref], ref, np.argmax(solved, axis=1))
    g = np.ones((nslots, nstations), dtype=complex) if initial is None else initial.astype(complex)
    g = np.where(solved, g, 1.0)
    iterations = np.zeros(nslots, dtype=int)
    active = np.ones(nslots, dtype=bool)
    for _ in range(niter):
        if not active.any():
            break
        numer = (eq.xw @ g[:, :, None])[:, :, 0]
        denom = (eq.w @ (np.abs(g) ** 2)[:, :, None])[:, :, 0]
        new = numer / np.where(denom > 0, denom, 1.0)
        new = damping * g + (1.0 - damping) * _normalise(new, phase_only, refs)
        new = np.where(solved, _normalise(new, phase_only, refs), 1.0)
        change = np.max(np.abs(new - g), axis=1)
        g = np.where(active[:, None], new, g)
        iterations += active
        active &= change >= tol

    x = np.divide(eq.xw, eq.w, out=np.zeros_like(eq.xw), where=eq.w > 0)
    misfit = eq.w * np.abs(x - g[:, :, None] * np.conj(g[:, None, :])) ** 2
    total = eq.w.sum(axis=(1, 2))
    resid = misfit.sum(axis=(1, 2))
    residual = np.sqrt(np.divide(resid, total, out=np.zeros_like(resid), where=total > 0))
    return SolveResult(g, iterations, residual, eq.slot, solved)


def solve_gains(
    vis: np.ndarray,
    model: np.ndarray,
    weight: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    nstations: int,
    interval: int = 1,
    **options: Any,
) -> SolveResult:
    """Solve V_pq = g_p g_q^* M_pq per solution slot (``interval`` times each) from the
    visibilities ``vis``, ``model`` and ``weight`` (ntimes, nbaselines); ``options`` are
    those of :func:`solve`."""
    return solve(equations(vis, model, weight, ant1, ant2, nstations, interval), **options)


def _normalise(g: np.ndarray, phase_only: bool, refs: np.ndarray) -> np.ndarray:
    """Unit modulus if phase-only; rotate so that each slot's g[slot, refs[slot]] is real
    positive."""
    mag = np.abs(g)
    if phase_only:
        g = np.divide(g, mag, out=np.ones_like(g), where=mag > 0)
    gref = np.take_along_axis(g, refs[:, None], axis=1)
    ref_mag = np.abs(gref)
    rot = np.divide(np.conj(gref), ref_mag, out=np.ones_like(gref), where=ref_mag > 0)
    return g * rot
