"""The science of the workflow: layouts, sky models, prediction, gridding, calibration,
deconvolution and restoring, written from the algorithms (no RASCIL)."""

from collections.abc import Sequence

import numpy as np

C_M_S = 299792458.0  # speed of light in vacuum, m/s (exact by the SI's definition)
# the telescope's name in products (FITS TELESCOP, MS TELESCOPE_NAME): the one casacore's
# observatory table knows ("SKA1-Low" it does not), so that CASA finds the site by name
TELESCOPE = "SKA-LOW"


def reference_frequency(freqs_hz: Sequence[float] | np.ndarray) -> float:
    """The MS-MFS reference frequency of windows ``freqs_hz`` (Hz): their mean, as RASCIL's.
    Taylor term 0, the MFS image, is the intensity there."""
    return float(np.mean(freqs_hz))
