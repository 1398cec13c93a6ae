"""SKA1-Low station layouts (shipped or a user's CSV), baselines, uvw and observation times.

Frames
------
* ``itrf``: geocentric Earth-fixed (ECEF) metres on the WGS84 ellipsoid.
* ``enu``: local East/North/Up tangent-plane metres about the array reference point.
* ``xyz`` ("local celestial", used for uvw): ECEF rotated about the z axis by
  ``-lon_ref``. Z lies along Earth's rotation axis (north), X points to hour
  angle 0 (the reference meridian) in the equatorial plane and Y to hour angle
  -6 h (east). uvw then follow Thompson, Moran & Swenson eq. 4.1.
* celestial (J2000): the GCRS, to which ITRF baselines are rotated by the IAU 2006/2000A
  precession-nutation and the Earth's rotation (``celestial_uvw``): the frame of a
  Measurement Set's ``UVW`` for a J2000 phase centre.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import erfa
import numpy as np

from steps.science.catalogue import CatalogueError, number

DATA_DIR = Path(__file__).parent.parent / "data"

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
SIDEREAL_DAY_S = 86164.0905
SOLAR_DAY_S = 86400.0
MJD_JD = 2400000.5  # JD of MJD 0
TRANSIT_SEARCH_MJD = 58849.0  # 2020-01-01T00:00:00 UTC
# UT1 - UTC then (IERS EOP 14 C04, as bundled with astropy; it drifts by < 0.5 ms over a day):
# given, so that no IERS table is parsed (astropy's sidereal_time took 1-2 s for that)
DUT1_2020_01_01_S = -0.1772
SINGLE_INTEGRATION_S = 600.0

CONFIGURATIONS = ("ska1-low", "lowbd2")
SKA1_LOW_REF = (116.7644482, -26.82472208, 365.0)
LOWBD2_REF = (116.76444824, -26.824722084, 300.0)
DEFAULT_DIAMETER_M = 38.0
LAYOUT_FRAMES = {  # a user layout's coordinate columns, by frame
    "wgs84": ("lon_deg", "lat_deg", "height_m"),
    "itrf": ("itrf_x_m", "itrf_y_m", "itrf_z_m"),
    "enu": ("east_m", "north_m", "up_m"),
}
LAYOUT_KEYS = ("centre_lon_deg", "centre_lat_deg", "centre_height_m", "diameter_m")


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
    lines: list[int] | None = None  # file line of each station (user layouts)


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


def ecef_to_geodetic(xyz: np.ndarray) -> tuple[float, float, float]:
    """ECEF (3,) metres -> WGS84 longitude, latitude (deg) and ellipsoidal height (m)."""
    x, y, z = (float(c) for c in xyz)
    e2 = WGS84_F * (2.0 - WGS84_F)
    p = np.hypot(x, y)
    lat = np.arctan2(z, p * (1.0 - e2))
    for _ in range(8):  # fixed-point iteration; converges to < 1 mm within a few steps
        n = WGS84_A / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
        height = p / np.cos(lat) - n
        lat = np.arctan2(z, p * (1.0 - e2 * n / (n + height)))
    n = WGS84_A / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    return float(np.degrees(np.arctan2(y, x))), float(np.degrees(lat)), float(p / np.cos(lat) - n)


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
    """Load ``ska1-low`` (current layout, WGS84), ``lowbd2`` (RASCIL's LOWBD2) or a layout CSV."""
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
    elif Path(configuration).is_file():
        return read_layout(Path(configuration))
    else:
        raise ValueError(
            f"unknown configuration {configuration!r}; allowed: {', '.join(CONFIGURATIONS)} "
            "or a layout CSV file"
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


def read_layout(path: Path) -> Stations:
    """A user's layout CSV, validated row by row (errors name file, line and field).

    Leading ``# key = value`` lines may give ``centre_lon_deg``, ``centre_lat_deg``,
    ``centre_height_m`` (the WGS84 array reference point; required for ENU) and
    ``diameter_m`` (default 38).  The header row has ``name`` and the columns of one frame:
    ``lon_deg, lat_deg, height_m`` (WGS84 geodetic, ellipsoidal height),
    ``itrf_x_m, itrf_y_m, itrf_z_m`` (ITRF/ECEF) or ``east_m, north_m, up_m`` (local
    tangent plane about the centre).  Other columns are ignored.  Without a centre, WGS84
    and ITRF layouts are referred to their mean position.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(path, 0, "file", f"cannot read: {exc}") from None
    meta: dict[str, float] = {}
    meta_lines: dict[str, int] = {}
    body: list[tuple[int, list[str]]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip().startswith("#"):
            key, sep, value = raw.lstrip()[1:].partition("=")
            key = key.strip()
            if sep and key in LAYOUT_KEYS:
                meta[key] = number(
                    path, line, key, value, _META_RANGES[key][0], _META_RANGES[key][1]
                )
                meta_lines[key] = line
        elif raw.strip():
            body.append((line, [c.strip() for c in raw.split(",")]))
    if not body:
        raise CatalogueError(path, 1, "header", "no header row")
    (header_line, header), rows = body[0], body[1:]
    frame = max(LAYOUT_FRAMES, key=lambda f: sum(c in header for c in LAYOUT_FRAMES[f]))
    for column in ("name", *LAYOUT_FRAMES[frame]):
        if column not in header:
            options = "; ".join(", ".join(c) for c in LAYOUT_FRAMES.values())
            raise CatalogueError(
                path, header_line, column, f"missing column (name plus one of: {options})"
            )
    columns = [header.index(c) for c in LAYOUT_FRAMES[frame]]
    names: list[str] = []
    lines: list[int] = []
    coords = np.zeros((len(rows), 3))
    for i, (line, cells) in enumerate(rows):
        if len(cells) != len(header):
            raise CatalogueError(path, line, "row", f"{len(cells)} cells for {len(header)} columns")
        name = cells[header.index("name")]
        if not name:
            raise CatalogueError(path, line, "name", "is empty")
        if name in names:
            first = lines[names.index(name)]
            raise CatalogueError(path, line, "name", f"station {name!r} repeats line {first}")
        for j, column in enumerate(columns):
            check, allowed = _COORD_RANGES[LAYOUT_FRAMES[frame][j]]
            coords[i, j] = number(path, line, header[column], cells[column], check, allowed)
        names.append(name)
        lines.append(line)
    if len(names) < 2:
        raise CatalogueError(
            path, header_line, "rows", f"{len(names)} station(s); at least 2 needed"
        )
    centre = [meta.get(k) for k in LAYOUT_KEYS[:3]]
    if frame == "wgs84":
        itrf = geodetic_to_ecef(coords[:, 0], coords[:, 1], coords[:, 2])
    elif frame == "itrf":
        itrf = coords
        radius = np.linalg.norm(itrf, axis=1)
        bad = np.flatnonzero(np.abs(radius - 6.37e6) > 5e4)
        if bad.size:
            raise CatalogueError(
                path,
                lines[bad[0]],
                "itrf_x_m",
                f"geocentric distance {radius[bad[0]]:.0f} m is "
                "not on the Earth's surface (ITRF metres expected)",
            )
    else:
        missing = [k for k, v in zip(LAYOUT_KEYS[:3], centre, strict=True) if v is None]
        if missing:
            raise CatalogueError(
                path,
                header_line,
                missing[0],
                "an ENU layout needs '# centre_lon_deg = ...', "
                "'# centre_lat_deg = ...' and '# centre_height_m = ...' lines before the header",
            )
        ref0 = geodetic_to_ecef(*centre)
        itrf = ref0 + coords @ _enu_matrix(centre[0], centre[1])
    if any(v is None for v in centre):
        lon, lat, height = ecef_to_geodetic(itrf.mean(axis=0))
        provenance_centre = "mean station position"
    else:
        lon, lat, height = centre
        provenance_centre = f"centre from line {meta_lines['centre_lon_deg']}"
    enu = (itrf - geodetic_to_ecef(lon, lat, height)) @ _enu_matrix(lon, lat).T
    return Stations(
        names=names,
        xyz=_celestial_xyz(itrf, lon),
        lon_deg=lon,
        lat_deg=lat,
        height_m=height,
        diameter_m=meta.get("diameter_m", DEFAULT_DIAMETER_M),
        enu=enu,
        itrf=itrf,
        name=str(path),
        provenance=f"{path} ({frame}, {len(names)} stations, reference: {provenance_centre})",
        lines=lines,
    )


_META_RANGES = {
    "centre_lon_deg": (lambda x: -180.0 <= x <= 360.0, "-180 .. 360 deg"),
    "centre_lat_deg": (lambda x: -90.0 <= x <= 90.0, "-90 .. 90 deg"),
    "centre_height_m": (lambda x: -1e4 <= x <= 1e5, "-10 km .. 100 km"),
    "diameter_m": (lambda x: 0.0 < x <= 1e3, "0 < diameter <= 1000 m"),
}
_COORD_RANGES = {
    "lon_deg": _META_RANGES["centre_lon_deg"],
    "lat_deg": _META_RANGES["centre_lat_deg"],
    "height_m": _META_RANGES["centre_height_m"],
    **{c: (lambda x: abs(x) <= 1e7, "|x| <= 1e7 m") for c in LAYOUT_FRAMES["itrf"]},
    **{c: (lambda x: abs(x) <= 1e6, "|x| <= 1000 km") for c in LAYOUT_FRAMES["enu"]},
}


def select_within(stations: Stations, rmax_m: float) -> Stations:
    """Keep stations within ``rmax_m``.

    ``lowbd2``: RASCIL's rule, 3-D distance from the mean position < rmax.
    Otherwise: horizontal distance from the reference point <= rmax.
    """
    keep = np.flatnonzero(_inside(stations, rmax_m))
    return replace(
        stations,
        names=[stations.names[i] for i in keep],
        xyz=stations.xyz[keep],
        enu=stations.enu[keep],
        itrf=stations.itrf[keep],
        provenance=f"{stations.provenance}; rmax={rmax_m:g} m",
        lines=None if stations.lines is None else [stations.lines[i] for i in keep],
    )


def _distances(stations: Stations) -> np.ndarray:
    """The distance each layout's rmax rule compares (see ``select_within``)."""
    if stations.name == "lowbd2":
        return np.linalg.norm(stations.enu - stations.enu.mean(axis=0), axis=1)
    return np.hypot(stations.enu[:, 0], stations.enu[:, 1])


def _inside(stations: Stations, rmax_m: float) -> np.ndarray:
    distance = _distances(stations)
    return distance < rmax_m if stations.name == "lowbd2" else distance <= rmax_m


def check_rmax(stations: Stations, rmax_m: float) -> None:
    """Raise CatalogueError (file, line, field ``rmax``) if fewer than 2 stations are in rmax."""
    distance = _distances(stations)
    if np.count_nonzero(_inside(stations, rmax_m)) >= 2:
        return
    nearest = np.argsort(distance)[:2]
    lines = stations.lines or list(range(1, len(stations.names) + 1))
    listed = ", ".join(
        f"line {lines[i]} ({stations.names[i]}, {distance[i]:.1f} m)" for i in nearest
    )
    raise CatalogueError(
        stations.name,
        lines[nearest[1]],
        "rmax",
        f"rmax = {rmax_m:g} m selects fewer than 2 stations; the nearest to the reference point "
        f"are {listed}, so rmax must be >= {distance[nearest[1]]:.1f} m",
    )


def baselines(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Antenna index pairs (p, q), p < q, ordered (0,1), (0,2), ..., (1,2), ..."""
    ant1, ant2 = np.triu_indices(n, k=1)
    return ant1, ant2


def uvw(stations: Stations, hour_angles_rad: np.ndarray, dec_rad: float) -> np.ndarray:
    """Baseline uvw (ntimes, nbaselines, 3) metres; baseline (p, q) = station q - station p.

    u east, v north, w toward the source (TMS eq. 4.1), for the hour angle (at the reference
    longitude) and declination of date: the geometry without precession, as RASCIL's
    simulations take it.  An observation of a J2000 phase centre uses ``celestial_uvw``.
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


def celestial_uvw(
    stations: Stations, times_s: np.ndarray, ra_deg: float, dec_deg: float
) -> np.ndarray:
    """Baseline uvw (ntimes, nbaselines, 3) metres at UTC ``times_s`` (MJD seconds) for the
    J2000 (ICRS) phase centre ``ra_deg``, ``dec_deg``, in its frame, as a Measurement Set
    holds them: each ITRF baseline (station q - station p) rotated to the GCRS (ERFA's
    ``c2t06a``: IAU 2006/2000A precession-nutation and Earth rotation, polar motion
    neglected) and projected on the phase centre's u (east), v (north) and w axes.
    """
    ant1, ant2 = baselines(len(stations.names))
    b_itrf = stations.itrf[ant2] - stations.itrf[ant1]
    ut1, tt = _ut1_tt(np.atleast_1d(np.asarray(times_s, dtype=float)) / SOLAR_DAY_S)
    c2t = erfa.c2t06a(*tt, *ut1, 0.0, 0.0)  # (ntimes, 3, 3), celestial -> terrestrial
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    sr, cr, sd, cd = np.sin(ra), np.cos(ra), np.sin(dec), np.cos(dec)
    axes = np.array([[-sr, cr, 0.0], [-sd * cr, -sd * sr, cd], [cd * cr, cd * sr, sd]])
    # terrestrial b = C b_cel, so b_cel = C^T b and uvw = axes C^T b
    return np.einsum("ij,tkj,bk->tbi", axes, c2t, b_itrf)


def observation_times(
    ra_deg: float, dec_deg: float, hour_angles_rad: np.ndarray, lon_deg: float
) -> np.ndarray:
    """UTC times (MJD seconds) at which the J2000 phase centre has the given hour angles.

    Transit is the first time on 2020-01-01 UTC when the apparent local sidereal time at
    ``lon_deg`` equals the phase centre's apparent right ascension of date (``apparent_ra_deg``);
    hour angle H is reached H * 86164.0905 / (2 pi) s later (the times are evenly spaced, so
    the apparent RA's drift moves the other hour angles of -30..+30 deg by < 10 ms of time at
    |dec| < 80 deg, more towards the poles, where the RA of date drifts fastest).
    """
    sidereal_day = SIDEREAL_DAY_S / SOLAR_DAY_S

    def to_transit(mjd: float) -> float:
        """Degrees of the Earth's rotation from UTC ``mjd`` to the phase centre's transit."""
        return apparent_ra_deg(ra_deg, dec_deg, mjd) - apparent_lst_deg(mjd, lon_deg)

    mjd = TRANSIT_SEARCH_MJD
    mjd += to_transit(mjd) % 360.0 / 360.0 * sidereal_day  # the first transit that day
    for _ in range(2):  # with the apparent RA at transit
        mjd += ((to_transit(mjd) + 180.0) % 360.0 - 180.0) / 360.0 * sidereal_day
    h = np.asarray(hour_angles_rad, dtype=float)
    return mjd * SOLAR_DAY_S + h * SIDEREAL_DAY_S / (2.0 * np.pi)


def _ut1_tt(mjd_utc: np.ndarray | float) -> tuple[tuple, tuple]:
    """UT1 and TT (two-part Julian dates) of UTC ``mjd_utc`` near 2020-01-01."""
    ut1 = erfa.utcut1(MJD_JD, mjd_utc, DUT1_2020_01_01_S)
    tt = erfa.taitt(*erfa.utctai(MJD_JD, mjd_utc))
    return ut1, tt


def apparent_lst_deg(mjd_utc: float, lon_deg: float) -> float:
    """Apparent local sidereal time (deg, IAU 2006/2000A, ERFA's ``gst06a``) at UTC
    ``mjd_utc`` near 2020-01-01, polar motion neglected (< 1 ms of time)."""
    ut1, tt = _ut1_tt(mjd_utc)
    return float((np.degrees(erfa.gst06a(*ut1, *tt)) + lon_deg) % 360.0)


def apparent_ra_deg(ra_deg: float, dec_deg: float, mjd_utc: float) -> float:
    """The geocentric apparent right ascension (deg, true equinox of date) of the ICRS
    direction ``ra_deg``, ``dec_deg`` at UTC ``mjd_utc``: ERFA's ``atci13`` (precession,
    nutation, aberration, light deflection) to the CIRS, less the equation of the origins."""
    _, tt = _ut1_tt(mjd_utc)
    ri, _, eo = erfa.atci13(np.radians(ra_deg), np.radians(dec_deg), 0.0, 0.0, 0.0, 0.0, *tt)
    return float(np.degrees(erfa.anp(ri - eo)))


def integration_time(hour_angles_rad: np.ndarray) -> float:
    """Integration time (s): the uniform spacing of the times; 600 s for a single time."""
    h = np.atleast_1d(np.asarray(hour_angles_rad, dtype=float))
    if h.size == 1:
        return SINGLE_INTEGRATION_S
    dt = np.diff(h) * SIDEREAL_DAY_S / (2.0 * np.pi)
    if not np.allclose(dt, dt[0], rtol=1e-9, atol=0.0) or dt[0] <= 0:
        raise ValueError("hour angles must be increasing and uniformly spaced")
    return float(dt[0])
