"""buffer-reserve: check the buffers are mounted and writable; record them in the PB state.

The buffers themselves are PVCs that the workflow's ``buffer-pvc`` resource tasks apply
(idempotently) before this step; they outlive the run, as the SDP's buffer reservations did.
This pod mounts them at ``/buffer/<name>`` (locally: ``<buffer root>/<name>``).
"""

from __future__ import annotations

import tempfile

from steps.buffers import Buffers
from steps.configdb import ConfigDB, connect
from steps.log import LOG
from steps.params import Params


class BufferError(RuntimeError):
    """A buffer is not mounted or not writable."""


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    LOG.info("Creating buffer reservations")
    for path in (buffers.vis, buffers.img):
        if not path.is_dir():
            raise BufferError(f"buffer {path.name} is not mounted at {path}")
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise BufferError(f"buffer {path.name} at {path} is not writable: {exc}") from None
        LOG.info("Buffer %s at %s", path.name, path)
    reservations = {
        name: {"type": "buffer", "pvc": name, "size": params.buffer_size, "path": str(path)}
        for name, path in ((params.buffer_vis, buffers.vis), (params.buffer_img, buffers.img))
    }
    with ConfigDB(connect(params.config_db or None)) as db:
        db.run(lambda txn: txn.update_state(params.pb_id, deployments=reservations))
    return {"buffer_vis": str(buffers.vis), "buffer_img": str(buffers.img)}
