"""The science of the workflow: layouts, sky models, prediction, gridding, calibration,
deconvolution and restoring, written from the algorithms (no RASCIL)."""

C_M_S = 299792458.0  # speed of light in vacuum, m/s (exact by the SI's definition)
# the telescope's name in products (FITS TELESCOP, MS TELESCOPE_NAME): the one casacore's
# observatory table knows ("SKA1-Low" it does not), so that CASA finds the site by name
TELESCOPE = "SKA-LOW"
