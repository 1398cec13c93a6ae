"""buffer-reserve: create the visibility and image buffers and record them in the PB state."""

from __future__ import annotations

from steps.buffers import Buffers
from steps.configdb import ConfigDB, connect
from steps.log import LOG
from steps.params import Params

OUTPUTS = ("buffer_vis", "buffer_img")


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    LOG.info("Creating buffer reservations")
    for path in (buffers.vis, buffers.img):
        path.mkdir(parents=True, exist_ok=True)
        LOG.info("Buffer %s at %s", path.name, path)
    reservations = {
        name: {"type": "buffer", "path": str(path)}
        for name, path in ((params.buffer_vis, buffers.vis), (params.buffer_img, buffers.img))
    }
    with ConfigDB(connect(params.config_db or None)) as db:
        db.run(lambda txn: txn.update_state(params.pb_id, deployments=reservations))
    return {"buffer_vis": str(buffers.vis), "buffer_img": str(buffers.img)}
