"""The simulated sky as CSV (``sky_model.csv`` in the visibility buffer): the truth behind
the metrics, written by simulate and read by image."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steps import atomic
from steps.science import sky

SKY_COLUMNS = ("name", "ra_deg", "dec_deg", "flux_ref_jy", "alpha")
SHAPE_COLUMNS = ("ref_freq_hz", "curvature", "major_arcsec", "minor_arcsec", "pa_deg")
APPARENT = re.compile(r"^apparent_([0-9.]+)mhz_jy$")
MFS_APPARENT = re.compile(r"^mfs_apparent_([0-9.]+)mhz_jy$")


@dataclass(frozen=True, eq=False)
class SkyTruth:
    """The components simulated and their apparent (station-beam-attenuated) flux, Jy: in
    each window and at the MFS reference frequency (the windows' mean, where the MFS image's
    Taylor term 0 is)."""

    components: sky.Components
    freqs_hz: np.ndarray
    apparent_jy: np.ndarray  # (nsrc, nwindow)
    mfs_freq_hz: float
    mfs_apparent_jy: np.ndarray  # (nsrc,)


def write_sky(path: Path, truth: SkyTruth, origin: str) -> None:
    """The simulated sky as CSV, the truth for the metrics (read it with ``read_sky``).

    Columns: name, position, reference flux and spectral index; the apparent (beam-attenuated)
    flux per window and at the MFS reference frequency; reference frequency, curvature,
    Gaussian shape (0 for points) and the origin (``sky_model``) of each component.
    """
    components = truth.components
    count = len(components.names)
    ref = np.broadcast_to(np.asarray(components.ref_freq_hz, dtype=float), (count,))
    curvature = np.zeros(count) if components.curvature is None else components.curvature
    shapes = components.shapes()
    with atomic.replacing(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        apparent_columns = [f"apparent_{f / 1e6:.4f}mhz_jy" for f in truth.freqs_hz]
        mfs_column = f"mfs_apparent_{truth.mfs_freq_hz / 1e6:.4f}mhz_jy"
        writer.writerow([*SKY_COLUMNS, *apparent_columns, mfs_column, *SHAPE_COLUMNS, "origin"])
        for i, name in enumerate(components.names):
            writer.writerow(
                [name, f"{components.ra_deg[i]:.8f}", f"{components.dec_deg[i]:.8f}"]
                + [f"{components.flux_ref_jy[i]:.9g}", f"{components.alpha[i]:.6g}"]
                + [f"{a:.9g}" for a in truth.apparent_jy[i]]
                + [f"{truth.mfs_apparent_jy[i]:.9g}"]
                + [f"{ref[i]:.9g}", f"{curvature[i]:.6g}"]
                + [f"{np.degrees(shapes[i, 0]) * 3600:.6g}"]
                + [f"{np.degrees(shapes[i, 1]) * 3600:.6g}", f"{np.degrees(shapes[i, 2]):.6g}"]
                + [origin]
            )


def read_sky(path: Path) -> SkyTruth:
    """The sky a run simulated (``sky_model.csv``); frequencies to 100 Hz."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
        handle.seek(0)
        header = next(csv.reader(handle))
    columns = [c for c in header if APPARENT.match(c)]
    freqs = np.array([float(APPARENT.match(c).group(1)) * 1e6 for c in columns])
    mfs_column = next((c for c in header if MFS_APPARENT.match(c)), None)
    if mfs_column is None:
        raise ValueError(
            f"{path} has no mfs_apparent_<MHz>mhz_jy column (an earlier version of "
            "simulate wrote it): simulate again"
        )

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) for r in rows], dtype=float)

    components = sky.Components(
        names=[r["name"] for r in rows],
        ra_deg=column("ra_deg"),
        dec_deg=column("dec_deg"),
        flux_ref_jy=column("flux_ref_jy"),
        ref_freq_hz=column("ref_freq_hz"),
        alpha=column("alpha"),
        curvature=column("curvature"),
        major_arcsec=column("major_arcsec"),
        minor_arcsec=column("minor_arcsec"),
        pa_deg=column("pa_deg"),
    )
    apparent = np.array([[float(r[c]) for c in columns] for r in rows]).reshape(len(rows), -1)
    return SkyTruth(
        components,
        freqs,
        apparent,
        float(MFS_APPARENT.match(mfs_column).group(1)) * 1e6,
        column(mfs_column),
    )
