"""corrupt: random station phase errors, V_pq <- g_p conj(g_q) V_pq, and the true gain table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steps import store
from steps.buffers import Buffers
from steps.dask_ee import engine, map_windows
from steps.log import LOG
from steps.params import Params
from steps.science import gains

OUTPUTS = ("corrupted", "gains")


def corrupt_window(index: int, source: Path, target: Path, window_gains: np.ndarray) -> None:
    """Apply one window's gains (time, station) to its visibilities (a Dask task)."""
    ds = store.open_store(source)
    vis, weight, flag = store.read_window(source, index)
    ant1, ant2 = ds["baseline_antenna1"].values, ds["baseline_antenna2"].values
    corrupted = gains.apply_gains(vis.astype(np.complex128), window_gains[index], ant1, ant2)
    store.write_window(target, index, corrupted, weight, flag)


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    LOG.info("Corrupting visibilities: station phase errors, sigma %g rad", params.phase_error)
    model = store.open_store(buffers.model)
    obs = store.layout_of(model)
    phases = gains.draw_phases(
        params.seed,
        params.phase_error,
        len(obs.frequencies),
        len(obs.times),
        len(obs.antenna_names),
    )
    true_gains = np.exp(1j * phases)
    tmp = store.create(buffers.corrupted, obs, {**model.attrs, "creator": "batch-imaging corrupt"})
    with engine(params.n_workers) as client:
        map_windows(
            client, "corrupt", corrupt_window, len(obs.frequencies), buffers.model, tmp, true_gains
        )
    table = store.gain_table(
        true_gains,
        obs.times,
        obs.frequencies,
        obs.antenna_names,
        seed=params.seed,
        phase_error_rad=params.phase_error,
        draw_order="numpy default_rng(seed).normal(0, sigma, (window, time, station))",
    )
    store.write_dataset(table, buffers.true_gains)
    store.finalize(tmp, buffers.corrupted)
    return {"corrupted": str(buffers.corrupted), "gains": str(buffers.true_gains)}
