"""corrupt: random station phase errors, V_pq <- g_p conj(g_q) V_pq, and the true gain table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from steps import store
from steps.buffers import Buffers
from steps.dask_ee import engine, map_tasks
from steps.log import LOG
from steps.params import Params
from steps.science import gains


def corrupt_window(
    index: int, times: slice, source: Path, target: Path, true_gains: np.ndarray
) -> None:
    """Apply the gains (time, station) of one (window, time chunk) to it (a Dask task)."""
    group = zarr.open_group(source, mode="r")
    vis, weight, flag = store.read_window(source, index, times)
    ant1, ant2 = group["baseline_antenna1"][:], group["baseline_antenna2"][:]
    corrupted = gains.apply_gains(vis.astype(np.complex128), true_gains[index, times], ant1, ant2)
    store.write_window(target, index, corrupted, weight, flag, times)


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
    chunks = [(i, t) for i in range(len(obs.frequencies)) for t in store.time_chunks(tmp)]
    with engine(params.n_workers, [__name__]) as client:
        table = client.scatter(true_gains, broadcast=True, hash=False)  # once, not per task
        map_tasks(client, "corrupt", corrupt_window, chunks, buffers.model, tmp, table)
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
