"""Tests for steps.science.layout."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import ITRS, TETE, EarthLocation, HADec, SkyCoord
from astropy.time import Time

from steps.science import layout


@pytest.mark.parametrize(
    ("configuration", "rmax", "count"),
    [
        ("ska1-low", 100.0, 11),
        ("ska1-low", 300.0, 106),
        ("ska1-low", 750.0, 242),
        ("ska1-low", 1e6, 512),
        ("lowbd2", 100.0, 13),
        ("lowbd2", 300.0, 94),
        ("lowbd2", 750.0, 236),
        ("lowbd2", 1000.0, 251),
    ],
)
def test_station_counts(configuration: str, rmax: float, count: int) -> None:
    stations = layout.select_within(layout.load_stations(configuration), rmax)
    assert len(stations.names) == count
    assert stations.xyz.shape == stations.enu.shape == stations.itrf.shape == (count, 3)


def test_load_stations_metadata() -> None:
    ska = layout.load_stations()
    assert ska.diameter_m == 38.0 and ska.names[0] == "C1" and len(ska.names) == 512
    assert layout.load_stations("lowbd2").diameter_m == 35.0


def test_unknown_configuration() -> None:
    with pytest.raises(ValueError, match="ska1-low, lowbd2"):
        layout.load_stations("lofar")


def test_enu_matches_file_columns() -> None:
    """Our WGS84 ENU reproduces the file's (mm-rounded) ENU columns."""
    stations = layout.load_stations()
    rows = (layout.DATA_DIR / "ska1_low_stations.csv").read_text().splitlines()[1:]
    enu_file = np.array([[float(v) for v in r.split(",")[4:7]] for r in rows])
    np.testing.assert_allclose(stations.enu, enu_file, atol=1e-3)


def test_lowbd2_local_frame() -> None:
    """LOWBD2 x, y, z are local E, N, U about the RASCIL site."""
    stations = layout.load_stations("lowbd2")
    site = EarthLocation.from_geodetic(116.76444824, -26.824722084, 300.0)
    origin = np.array([site.x.to_value(u.m), site.y.to_value(u.m), site.z.to_value(u.m)])
    up = stations.itrf[0] - origin
    np.testing.assert_allclose(np.linalg.norm(up), np.linalg.norm(stations.enu[0]), rtol=1e-12)


def test_baselines_order() -> None:
    ant1, ant2 = layout.baselines(4)
    assert list(zip(ant1.tolist(), ant2.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    a1, a2 = layout.baselines(242)
    assert a1.size == 242 * 241 // 2 and np.all(a1 < a2)


def test_uvw_antisymmetry_and_shape() -> None:
    stations = layout.select_within(layout.load_stations(), 100.0)
    ha = np.linspace(-np.pi / 6, np.pi / 6, 5)
    uvw = layout.uvw(stations, ha, np.radians(-30.0))
    assert uvw.shape == (5, 55, 3)
    ant1, ant2 = layout.baselines(11)
    # baseline (0, q) minus baseline (0, p) equals baseline (p, q)
    k = {(p, q): i for i, (p, q) in enumerate(zip(ant1, ant2, strict=True))}
    np.testing.assert_allclose(uvw[:, k[(1, 2)]], uvw[:, k[(0, 2)]] - uvw[:, k[(0, 1)]], atol=1e-9)
    # baseline lengths are preserved by the rotation
    length = np.linalg.norm(stations.xyz[ant2] - stations.xyz[ant1], axis=1)
    np.testing.assert_allclose(
        np.linalg.norm(uvw, axis=2), np.broadcast_to(length, (5, 55)), rtol=1e-12
    )


def _astropy_uvw(
    lonlath_p: tuple, lonlath_q: tuple, ref: tuple, ha_rad: float, dec_rad: float
) -> np.ndarray:
    """Independent uvw of baseline q - p from astropy ITRS vectors and the HADec frame."""
    pos = [
        EarthLocation.from_geodetic(*x).get_itrs().cartesian.xyz.to_value(u.m)
        for x in (lonlath_p, lonlath_q)
    ]
    baseline = pos[1] - pos[0]
    location = EarthLocation.from_geodetic(*ref)
    obstime = Time("2020-01-01T00:00:00", scale="utc")
    src = HADec(ha=ha_rad * u.rad, dec=dec_rad * u.rad, location=location, obstime=obstime)
    s = src.transform_to(ITRS(obstime=obstime, location=location)).cartesian.xyz.value
    s = s / np.linalg.norm(s)
    east = np.cross([0.0, 0.0, 1.0], s)
    east /= np.linalg.norm(east)
    north = np.cross(s, east)
    return np.array([baseline @ east, baseline @ north, baseline @ s])


@pytest.mark.parametrize("dec_deg", [-30.0, -60.0])
def test_uvw_against_astropy(dec_deg: float) -> None:
    stations = layout.load_stations()
    rows = (layout.DATA_DIR / "ska1_low_stations.csv").read_text().splitlines()[1:]
    geo = {r.split(",")[0]: tuple(float(v) for v in r.split(",")[1:4]) for r in rows}
    ant1, ant2 = layout.baselines(len(stations.names))
    ref = (stations.lon_deg, stations.lat_deg, stations.height_m)
    has = np.radians([-60.0, -15.0, 0.0, 22.5, 45.0])
    ours = layout.uvw(stations, has, np.radians(dec_deg))
    longest = int(np.argmax(np.linalg.norm(stations.xyz[ant2] - stations.xyz[ant1], axis=1)))
    for k in (0, 3000, longest):
        p, q = stations.names[ant1[k]], stations.names[ant2[k]]
        for t, ha in enumerate(has):
            ref_uvw = _astropy_uvw(geo[p], geo[q], ref, ha, np.radians(dec_deg))
            np.testing.assert_allclose(ours[t, k], ref_uvw, atol=1e-3)


def test_uvw_zenith_is_enu() -> None:
    """For a source at the zenith of a station near the reference point, uvw ~ E, N, U."""
    stations = layout.select_within(layout.load_stations(), 100.0)
    ant1, ant2 = layout.baselines(len(stations.names))
    uvw = layout.uvw(stations, np.array([0.0]), np.radians(stations.lat_deg))[0]
    enu = stations.enu[ant2] - stations.enu[ant1]
    # geodetic vs geocentric vertical differ by ~0.2 deg: allow 0.5 m on 200 m baselines
    np.testing.assert_allclose(uvw, enu, atol=0.5)


@pytest.mark.parametrize(("ra_deg", "dec_deg"), [(0.0, -30.0), (150.0, -70.0), (359.0, 10.0)])
def test_observation_times(ra_deg: float, dec_deg: float) -> None:
    """Against astropy's apparent sidereal time (with its IERS tables and polar motion) and
    apparent right ascension (TETE): transit to 1 ms of time, the other hour angles to 10 ms
    (a sign error in UT1 - UTC would be 0.35 s; the J2000 RA taken as apparent, ≈ 60 s)."""
    ha = np.linspace(-np.pi / 6, np.pi / 6, 5)
    lon = layout.SKA1_LOW_REF[0]
    times = layout.observation_times(ra_deg, dec_deg, ha, lon)
    when = Time(times / 86400.0, format="mjd", scale="utc")
    lst = when.sidereal_time("apparent", longitude=lon)
    ra = SkyCoord(ra_deg * u.deg, dec_deg * u.deg).transform_to(TETE(obstime=when)).ra
    error_s = ((lst.hour - ra.hour - np.degrees(ha) / 15.0 + 12.0) % 24.0 - 12.0) * 3600
    assert abs(error_s[2]) < 1e-3  # transit
    np.testing.assert_allclose(error_s, 0.0, atol=1e-2)  # the apparent RA drifts meanwhile
    assert Time(times[2] / 86400.0, format="mjd").iso.startswith("2020-01-01")
    assert Time("2020-01-01T12:00:00").delta_ut1_utc == pytest.approx(
        layout.DUT1_2020_01_01_S, abs=1e-3
    )
    assert layout.integration_time(ha) == pytest.approx(3590.17, abs=0.01)
    assert layout.integration_time(ha[:1]) == layout.SINGLE_INTEGRATION_S


@pytest.mark.parametrize(("ra_deg", "dec_deg"), [(30.0, -50.0), (200.0, 5.0)])
def test_celestial_uvw_against_astropy(ra_deg: float, dec_deg: float) -> None:
    """J2000 uvw against astropy's GCRS positions of the stations (its own precession-
    nutation, IERS UT1 and polar motion) projected on the phase centre's axes: to 2e-6 of the
    baseline (polar motion, neglected here, is 1.5e-6; the hour angle and declination of date
    used for J2000 ones, 2e-3; a transposed rotation, far more)."""
    stations = layout.select_within(layout.load_stations(), 300.0)
    times = layout.observation_times(ra_deg, dec_deg, np.radians([-30.0, 0.0, 30.0]), 116.76)
    ours = layout.celestial_uvw(stations, times, ra_deg, dec_deg)
    ant1, ant2 = layout.baselines(len(stations.names))
    location = EarthLocation.from_geocentric(*stations.itrf.T, unit=u.m)
    w = SkyCoord(ra_deg * u.deg, dec_deg * u.deg).cartesian.xyz.value
    east = np.cross([0.0, 0.0, 1.0], w)
    east /= np.linalg.norm(east)
    axes = np.array([east, np.cross(w, east), w])  # u east, v north, w to the phase centre
    for t, when in enumerate(Time(times / 86400.0, format="mjd", scale="utc")):
        gcrs = location.get_gcrs_posvel(when)[0].xyz.to_value(u.m).T
        expected = (gcrs[ant2] - gcrs[ant1]) @ axes.T
        error = np.linalg.norm(ours[t] - expected, axis=1)
        assert np.max(error / np.linalg.norm(expected, axis=1)) < 2e-6
