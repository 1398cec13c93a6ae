"""Imaging operators against a direct DFT written here, independently of ducc0."""

import numpy as np
import pytest

from steps.science.imaging import MIN_SIDE, dirty, invert, make_psf, predict, support, weights

C = 299792458.0
NPIX = 256
CELL = np.deg2rad(0.1)  # 256 px x 0.1 deg: sources up to ~12 deg off-centre
FREQS = np.array([95e6, 100e6, 105e6])
# (y, x, flux): one source ~10 deg away so that n and w matter
SOURCES = [(NPIX // 2, NPIX // 2, 1.0), (150, 101, 2.5), (NPIX // 2 + 70, NPIX // 2 - 72, 4.0)]


def _lmn(y: int, x: int) -> tuple[float, float, float]:
    l_ = -(x - NPIX // 2) * CELL
    m = (y - NPIX // 2) * CELL
    return l_, m, np.sqrt(1.0 - l_ * l_ - m * m)


def _uvw(nrow: int = 50, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # |u|, |v| below the Nyquist limit of the grid; |w| up to 400 m
    return rng.uniform(-1.0, 1.0, (nrow, 3)) * [150.0, 150.0, 400.0]


def _dft(uvw: np.ndarray, sources: list[tuple[int, int, float]]) -> np.ndarray:
    vis = np.zeros((uvw.shape[0], FREQS.size), complex)
    for y, x, flux in sources:
        l_, m, n = _lmn(y, x)
        phase = (uvw[:, 0:1] * l_ + uvw[:, 1:2] * m + uvw[:, 2:3] * (n - 1)) * FREQS / C
        vis += flux * np.exp(-2j * np.pi * phase)
    return vis


def _adjoint_pixel(uvw: np.ndarray, vis: np.ndarray, wgt: np.ndarray, y: int, x: int) -> float:
    l_, m, n = _lmn(y, x)
    phase = (uvw[:, 0:1] * l_ + uvw[:, 1:2] * m + uvw[:, 2:3] * (n - 1)) * FREQS / C
    return float(np.real(np.sum(wgt * vis * np.exp(2j * np.pi * phase))) / wgt.sum())


def _model() -> np.ndarray:
    model = np.zeros((NPIX, NPIX))
    for y, x, flux in SOURCES:
        model[y, x] = flux
    return model


def test_predict_matches_dft() -> None:
    uvw = _uvw()
    vis = predict(_model(), uvw, FREQS, CELL, epsilon=1e-7)
    ref = _dft(uvw, SOURCES)
    assert vis.shape == ref.shape
    assert np.max(np.abs(vis - ref)) / np.max(np.abs(ref)) < 1e-5


@pytest.mark.parametrize("epsilon", [1e-4, 1e-5])
def test_single_precision_predict_within_epsilon(epsilon: float) -> None:
    """epsilon >= 1e-5 grids in float32: still the DFT to the kernel's accuracy, in float64."""
    uvw = _uvw()
    vis = predict(_model(), uvw, FREQS, CELL, epsilon=epsilon)
    ref = _dft(uvw, SOURCES)
    assert vis.dtype == np.complex128
    assert np.max(np.abs(vis - ref)) / np.max(np.abs(ref)) < 3 * epsilon


def test_dirty_is_the_weighted_unnormalised_adjoint_in_single_precision() -> None:
    """Weights of any sign (Taylor moments) enter the sum; no normalisation."""
    uvw = _uvw()
    vis = _dft(uvw, SOURCES)
    wgt = np.random.default_rng(5).uniform(-1.0, 2.0, vis.shape)
    image = dirty(uvw, FREQS, vis, wgt, NPIX, CELL, epsilon=1e-5)
    assert image.dtype == np.float32  # the gridder's precision
    for y, x_ in [(y, x_) for y, x_, _ in SOURCES] + [(10, 250), (200, 31)]:
        l_, m, n = _lmn(y, x_)
        phase = (uvw[:, 0:1] * l_ + uvw[:, 1:2] * m + uvw[:, 2:3] * (n - 1)) * FREQS / C
        ref = float(np.real(np.sum(wgt * vis * np.exp(2j * np.pi * phase))))
        assert image[y, x_] == pytest.approx(ref, abs=1e-4 * np.abs(wgt * vis).sum())


@pytest.mark.parametrize(
    "sources",
    [
        [(3, 250, 2.0)],  # one pixel in a corner: the least box, pushed inside the image
        [(40, 5, 1.0), (41, 200, -0.5), (60, 90, 3.0)],  # a wide, low box of odd height
        [(0, 0, 1.0), (NPIX - 1, NPIX - 1, 2.0)],  # the whole image
    ],
)
def test_predict_of_a_model_confined_anywhere_matches_dft(
    sources: list[tuple[int, int, float]],
) -> None:
    """Only the model's support is gridded: it must land where it lies in the image."""
    uvw = _uvw()
    model = np.zeros((NPIX, NPIX))
    for y, x, flux in sources:
        model[y, x] = flux
    vis = predict(model, uvw, FREQS, CELL, epsilon=1e-7)
    ref = _dft(uvw, sources)
    assert np.max(np.abs(vis - ref)) / np.max(np.abs(ref)) < 1e-5


def test_support_is_the_least_even_box_inside_the_image() -> None:
    model = np.zeros((NPIX, NPIX))
    model[40, 5], model[60, 200] = 1.0, -1.0
    rows, cols = support(model)
    assert (rows.start, rows.stop) == (34, 34 + MIN_SIDE)  # 21 rows: widened, centred
    assert (cols.start, cols.stop) == (5, 5 + 196)  # 196 columns from the first used
    model[:] = 0.0
    model[2, 254] = 1.0
    assert support(model) == (slice(0, MIN_SIDE), slice(NPIX - MIN_SIDE, NPIX))
    assert support(np.zeros((NPIX, NPIX))) == (slice(0, 0), slice(0, 0))


def test_predict_of_an_empty_model_is_zero() -> None:
    vis = predict(np.zeros((NPIX, NPIX)), _uvw(), FREQS, CELL)
    assert vis.shape == (50, FREQS.size) and vis.dtype == np.complex128 and not np.any(vis)


def test_predict_point_amplitude_is_flux() -> None:
    uvw = _uvw()
    y, x, flux = SOURCES[2]
    model = np.zeros((NPIX, NPIX))
    model[y, x] = flux
    vis = predict(model, uvw, FREQS, CELL, epsilon=1e-7)
    np.testing.assert_allclose(np.abs(vis), flux, rtol=1e-5)


def test_invert_matches_direct_adjoint() -> None:
    uvw = _uvw()
    rng = np.random.default_rng(7)
    vis = _dft(uvw, SOURCES)
    wgt = rng.uniform(0.5, 2.0, vis.shape)
    dirty, sumwt = invert(uvw, FREQS, vis, wgt, NPIX, CELL, epsilon=1e-7)
    assert sumwt == pytest.approx(wgt.sum())
    pixels = [(y, x) for y, x, _ in SOURCES] + [(10, 250), (200, 31), (129, 127)]
    for y, x in pixels:
        assert dirty[y, x] == pytest.approx(_adjoint_pixel(uvw, vis, wgt, y, x), abs=1e-6)


def test_psf_peak_is_one_at_centre() -> None:
    uvw = _uvw(200)
    psf, _ = make_psf(uvw, FREQS, np.ones((200, FREQS.size)), NPIX, CELL)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (NPIX // 2, NPIX // 2)
    assert psf[NPIX // 2, NPIX // 2] == pytest.approx(1.0, abs=1e-6)


def test_point_source_dirty_peak() -> None:
    uvw = _uvw(300)
    y, x, flux = SOURCES[1]
    vis = _dft(uvw, [(y, x, flux)])
    dirty, _ = invert(uvw, FREQS, vis, np.ones(vis.shape), NPIX, CELL)
    assert np.unravel_index(np.argmax(dirty), dirty.shape) == (y, x)
    assert dirty[y, x] == pytest.approx(flux, rel=1e-5)


def test_adjoint_identity() -> None:
    uvw = _uvw()
    rng = np.random.default_rng(11)
    image = rng.standard_normal((NPIX, NPIX))
    vis = rng.standard_normal((uvw.shape[0], FREQS.size)) + 1j * rng.standard_normal(
        (uvw.shape[0], FREQS.size)
    )
    ones = np.ones(vis.shape)
    lhs = np.vdot(predict(image, uvw, FREQS, CELL, epsilon=1e-7), vis).real
    dirty, sumwt = invert(uvw, FREQS, vis, ones, NPIX, CELL, epsilon=1e-7)
    rhs = np.sum(image * dirty * sumwt)
    assert lhs == pytest.approx(rhs, rel=1e-6)


def test_weights_schemes() -> None:
    uvw = _uvw(400)
    wgt = np.ones((400, FREQS.size))
    wgt[0, 0] = 0.0
    natural = weights(uvw, FREQS, wgt, NPIX, CELL)
    np.testing.assert_array_equal(natural, wgt)
    uniform = weights(uvw, FREQS, wgt, NPIX, CELL, "uniform")
    assert uniform[0, 0] == 0.0
    assert np.all(uniform[wgt > 0] <= 1.0)
    # duplicated samples share a cell: uniform weighting halves each of them
    dup = np.concatenate([uvw[:1], uvw[:1]])
    np.testing.assert_allclose(weights(dup, FREQS[:1], np.ones((2, 1)), NPIX, CELL, "uniform"), 0.5)
    # a baseline longer than the image's grid holds (|u| > NPIX / 2 cells) has a cell of its
    # own: not folded onto the one NPIX cells away
    cell = C / FREQS[0] / (NPIX * CELL)  # metres per uv cell at FREQS[0]
    far = np.array([[10 * cell, 0.0, 0.0], [(10 - NPIX) * cell, 0.0, 0.0]])
    np.testing.assert_array_equal(
        weights(far, FREQS[:1], np.ones((2, 1)), NPIX, CELL, "uniform"), 1
    )
    # Briggs against the formula, cell by cell
    r = 0.5
    cells = np.rint(uvw[:, None, :2] * FREQS[None, :, None] / C * NPIX * CELL).astype(int)
    density: dict[tuple[int, int], float] = {}
    for (u, v), w in zip(cells.reshape(-1, 2), wgt.ravel(), strict=True):
        for key in ((u, v), (-u, -v)):
            density[key] = density.get(key, 0.0) + w
    sums = np.array(list(density.values()))
    f2 = (5 * 10**-r) ** 2 / (np.sum(sums**2) / np.sum(sums))
    expected = [
        w / (1 + f2 * density[(u, v)])
        for (u, v), w in zip(cells.reshape(-1, 2), wgt.ravel(), strict=True)
    ]
    np.testing.assert_allclose(
        weights(uvw, FREQS, wgt, NPIX, CELL, "robust", robust=r).ravel(), expected, rtol=1e-12
    )
    # Briggs limits: large R -> natural (up to a constant), small R -> uniform
    for r, ref in ((6.0, natural), (-6.0, uniform)):
        robust = weights(uvw, FREQS, wgt, NPIX, CELL, "robust", robust=r)
        good = wgt > 0
        ratio = robust[good] / ref[good]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3)
