"""Where each product lives: ``<buffer root>/<buffer name>/...`` (``/buffer/<name>`` in a pod)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from steps.params import Params

BUFFER_ROOT_ENV = "BATCH_IMAGING_BUFFER_ROOT"
DEFAULT_BUFFER_ROOT = "/buffer"
BUFFER_PREFIX = "buffer:"
PREVIEWS = {  # name -> caption of each preview PNG the report step draws
    "restored": "Restored image",
    "residual": "Residual image",
    "spectral_index": "Apparent spectral index (sky times station beam)",
    "psf": "Point spread function",
    "uv_coverage": "uv coverage",
    "gain_phases": "Gain phases, true and solved",
    "ical_convergence": "ICAL convergence",
}


def buffer_root() -> Path:
    """The directory holding the buffers: the PVC mount root in a pod, any directory locally."""
    return Path(os.environ.get(BUFFER_ROOT_ENV, DEFAULT_BUFFER_ROOT))


def resolve(reference: str, root: Path | None = None) -> Path:
    """The file a ``sky_model``/``configuration`` value names: ``buffer:<name>/<file>`` lies
    inside buffer ``<name>`` under the buffer root (``root``, else this pod's); anything else
    is a path (relative paths against the working directory)."""
    if reference.startswith(BUFFER_PREFIX):
        return (root or buffer_root()) / reference.removeprefix(BUFFER_PREFIX)
    return Path(reference)


@dataclass(frozen=True)
class Buffers:
    """Paths of the products of one run."""

    vis: Path
    img: Path

    @classmethod
    def of(cls, params: Params, root: Path | None = None) -> Buffers:
        root = buffer_root() if root is None else Path(root)
        return cls(vis=root / params.buffer_vis, img=root / params.buffer_img)

    @property
    def model(self) -> Path:
        """Simulated (true, uncorrupted) visibilities."""
        return self.vis / "model.zarr"

    @property
    def corrupted(self) -> Path:
        return self.vis / "corrupted.zarr"

    @property
    def calibrated(self) -> Path:
        return self.vis / "calibrated.zarr"

    @property
    def sky(self) -> Path:
        """The sky actually simulated (catalogue; apparent fluxes per window and at the MFS
        reference frequency)."""
        return self.vis / "sky_model.csv"

    @property
    def true_gains(self) -> Path:
        return self.vis / "gains_true.zarr"

    @property
    def solved_gains(self) -> Path:
        return self.vis / "gains_solved.zarr"

    def image(self, kind: str) -> Path:
        """``deconvolved``, ``residual`` or ``restored`` FITS cube."""
        return self.img / f"{kind}.fits"

    @property
    def psf(self) -> Path:
        """PSF of the centre window (FITS)."""
        return self.img / "psf.fits"

    @property
    def ical_model(self) -> Path:
        """ICAL's model, PSFs and final residuals (Zarr), written by calibrate for image."""
        return self.img / "ical_model.zarr"

    @property
    def convergence(self) -> Path:
        """ICAL's record per major cycle (phase and residual rms)."""
        return self.img / "ical_convergence.json"

    @property
    def metrics(self) -> Path:
        return self.img / "metrics.json"

    @property
    def previews(self) -> Path:
        """Directory of the preview PNGs."""
        return self.img / "previews"

    def preview(self, name: str) -> Path:
        """One preview PNG (a key of ``PREVIEWS``)."""
        return self.previews / f"{name}.png"

    @property
    def report(self) -> Path:
        """The self-contained run report (HTML)."""
        return self.img / "report.html"
