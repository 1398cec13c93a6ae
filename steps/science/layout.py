"""SKA1-Low station layouts, baselines, uvw coordinates and observation times.

Frames
------
* ``itrf``: geocentric Earth-fixed (ECEF) metres on the WGS84 ellipsoid.
* ``enu``: local East/North/Up tangent-plane metres about the array reference point.
* ``xyz`` ("local celestial", used for uvw): ECEF rotated about the z axis by
  ``-lon_ref``. Z lies along Earth's rotation axis (north), X points to hour
  angle 0 (the reference meridian) in the equatorial plane and Y to hour angle
  -6 h (east). uvw then follow Thompson, Moran & Swenson eq. 4.1.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.time import Time

DATA_DIR = Path(__file__).parent.parent / "data"

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
SIDEREAL_DAY_S = 86164.0905
SOLAR_DAY_S = 86400.0
SINGLE_INTEGRATION_S = 600.0

CONFIGURATIONS = ("ska1-low", "lowbd2")
SKA1_LOW_REF = (116.7644482, -26.82472208, 365.0)
LOWBD2_REF = (116.76444824, -26.824722084, 300.0)


@dataclass(frozen=True, eq=False)
class Stations:
    """Station positions of one array configuration.

    ``xyz``, ``enu`` and ``itrf`` are (N, 3) metres in the frames described in
    the module docstring; ``lon_deg``, ``lat_deg``, ``height_m`` give the array
    reference point (WGS84).
    """

    names: list[str]
    xyz: np.ndarray
    lon_deg: float
    lat_deg: float
    height_m: float
    diameter_m: float
    enu: np.ndarray
    itrf: np.ndarray
    name: str
    provenance: str


def geodetic_to_ecef(lon_deg: np.ndarray, lat_deg: np.ndarray, height_m: np.ndarray) -> np.ndarray:
    """WGS84 geodetic longitude, latitude, ellipsoidal height -> ECEF (..., 3) metres."""
    lon = np.radians(lon_deg)
    lat = np.radians(lat_deg)
    e2 = WGS84_F * (2.0 - WGS84_F)
    n = WGS84_A / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    x = (n + height_m) * np.cos(lat) * np.cos(lon)
    y = (n + height_m) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - e2) + height_m) * np.sin(lat)
    return np.stack(np.broadcast_arrays(x, y, z), axis=-1)


def _enu_matrix(lon_deg: float, lat_deg: float) -> np.ndarray:
    """Rows are the East, North, Up unit vectors in ECEF at a geodetic position."""
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    sl, cl, sp, cp = np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat)
    return np.array([[-sl, cl, 0.0], [-sp * cl, -sp * sl, cp], [cp * cl, cp * sl, sp]])


def _celestial_xyz(itrf: np.ndarray, lon_deg: float) -> np.ndarray:
    """ECEF -> local celestial XYZ: rotate about z by -lon_ref."""
    lon = np.radians(lon_deg)
    c, s = np.cos(lon), np.sin(lon)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return itrf @ rot.T


def _read_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Read a headed CSV whose first column is a name; return names, floats, header."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line.strip()]
    names = [r[0] for r in rows]
    values = np.array([[float(v) for v in r[1:]] for r in rows])
    return names, values, header[1:]


def load_stations(configuration: str = "ska1-low") -> Stations:
    """Load ``ska1-low`` (current layout, WGS84) or ``lowbd2`` (RASCIL's LOWBD2)."""
    if configuration == "ska1-low":
        names, values, cols = _read_csv(DATA_DIR / "ska1_low_stations.csv")
        lon, lat, h = (values[:, cols.index(c)] for c in ("lon_deg", "lat_deg", "height_m"))
        ref, diameter = SKA1_LOW_REF, 38.0
        itrf = geodetic_to_ecef(lon, lat, h)
        enu = (itrf - geodetic_to_ecef(*ref)) @ _enu_matrix(ref[0], ref[1]).T
        provenance = "ska1_low_stations.csv (AtomsForHire/SKA-Low_layout, WGS84 -> ECEF)"
    elif configuration == "lowbd2":
        names, values, cols = _read_csv(DATA_DIR / "ska1_low_lowbd2.csv")
        enu = values[:, [cols.index(c) for c in ("x_m", "y_m", "z_m")]]
        ref, diameter = LOWBD2_REF, 35.0
        itrf = geodetic_to_ecef(*ref) + enu @ _enu_matrix(ref[0], ref[1])
        provenance = "ska1_low_lowbd2.csv (ARL LOWBD2.csv, x,y,z read as local E,N,U as RASCIL)"
    else:
        raise ValueError(
            f"unknown configuration {configuration!r}; allowed: {', '.join(CONFIGURATIONS)}"
        )
    return Stations(
        names=names,
        xyz=_celestial_xyz(itrf, ref[0]),
        lon_deg=ref[0],
        lat_deg=ref[1],
        height_m=ref[2],
        diameter_m=diameter,
        enu=enu,
        itrf=itrf,
        name=configuration,
        provenance=provenance,
    )


def select_within(stations: Stations, rmax_m: float) -> Stations:
    """Keep stations within ``rmax_m``.

    ``ska1-low``: horizontal distance from the reference point <= rmax.
    ``lowbd2``: RASCIL's rule, 3-D distance from the mean position < rmax.
    """
    if stations.name == "lowbd2":
        keep = np.linalg.norm(stations.enu - stations.enu.mean(axis=0), axis=1) < rmax_m
    else:
        keep = np.hypot(stations.enu[:, 0], stations.enu[:, 1]) <= rmax_m
    idx = np.flatnonzero(keep)
    return replace(
        stations,
        names=[stations.names[i] for i in idx],
        xyz=stations.xyz[idx],
        enu=stations.enu[idx],
        itrf=stations.itrf[idx],
        provenance=f"{stations.provenance}; rmax={rmax_m:g} m",
    )


def baselines(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Antenna index pairs (p, q), p < q, ordered (0,1), (0,2), ..., (1,2), ..."""
    ant1, ant2 = np.triu_indices(n, k=1)
    return ant1, ant2


def uvw(stations: Stations, hour_angles_rad: np.ndarray, dec_rad: float) -> np.ndarray:
    """Baseline uvw (ntimes, nbaselines, 3) metres; baseline (p, q) = station q - station p.

    u east, v north, w toward the source (TMS eq. 4.1), hour angle at the
    reference longitude.
    """
    ant1, ant2 = baselines(len(stations.names))
    bxyz = stations.xyz[ant2] - stations.xyz[ant1]
    h = np.atleast_1d(np.asarray(hour_angles_rad, dtype=float))
    sh, ch = np.sin(h), np.cos(h)
    sd, cd = np.sin(dec_rad), np.cos(dec_rad)
    zero = np.zeros_like(h)
    rot = np.stack(
        [
            np.stack([sh, ch, zero], axis=-1),
            np.stack([-sd * ch, sd * sh, np.full_like(h, cd)], axis=-1),
            np.stack([cd * ch, -cd * sh, np.full_like(h, sd)], axis=-1),
        ],
        axis=1,
    )
    return np.einsum("tij,bj->tbi", rot, bxyz)


def observation_times(ra_deg: float, hour_angles_rad: np.ndarray, lon_deg: float) -> np.ndarray:
    """UTC times (MJD seconds) at which the phase centre has the given hour angles.

    Transit is the first time on 2020-01-01 UTC when the apparent local
    sidereal time at ``lon_deg`` equals ``ra_deg`` (the J2000 RA is used
    as is); hour angle H is reached H * 86164.0905 / (2 pi) s later.
    """
    sidereal_day = SIDEREAL_DAY_S / SOLAR_DAY_S
    transit = Time("2020-01-01T00:00:00", scale="utc")
    lst = transit.sidereal_time("apparent", longitude=lon_deg).deg
    transit = transit + (ra_deg - lst) % 360.0 / 360.0 * sidereal_day * u.day
    lst = transit.sidereal_time("apparent", longitude=lon_deg).deg
    transit = transit + ((ra_deg - lst + 180.0) % 360.0 - 180.0) / 360.0 * sidereal_day * u.day
    h = np.asarray(hour_angles_rad, dtype=float)
    return transit.mjd * SOLAR_DAY_S + h * SIDEREAL_DAY_S / (2.0 * np.pi)


def integration_time(hour_angles_rad: np.ndarray) -> float:
    """Integration time (s): the uniform spacing of the times; 600 s for a single time."""
    h = np.atleast_1d(np.asarray(hour_angles_rad, dtype=float))
    if h.size == 1:
        return SINGLE_INTEGRATION_S
    dt = np.diff(h) * SIDEREAL_DAY_S / (2.0 * np.pi)
    if not np.allclose(dt, dt[0], rtol=1e-9, atol=0.0) or dt[0] <= 0:
        raise ValueError("hour angles must be increasing and uniformly spaced")
    return float(dt[0])


def min_elevation_deg(dec_deg: float, lat_deg: float, ha_max_deg: float = 30.0) -> float:
    """Lowest elevation (deg) of a source at ``dec_deg`` for hour angles in [-ha_max, +ha_max]."""
    dec, lat = np.radians(dec_deg), np.radians(lat_deg)
    h = np.radians(min(abs(ha_max_deg), 180.0))
    sin_el = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(h)
    return float(np.degrees(np.arcsin(np.clip(sin_el, -1.0, 1.0))))
