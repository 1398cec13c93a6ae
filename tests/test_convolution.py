"""Linear convolution by FFT against a direct sum and the analytic delta case."""

import numpy as np
import pytest

from steps.science.convolution import Smoother, convolve


def direct(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution by its definition: out[i + k, j + l] += a[i, j] * h[k, l]."""
    (ny, nx), (ky, kx) = image.shape, kernel.shape
    out = np.zeros((ny + ky - 1, nx + kx - 1))
    for k in range(ky):
        for m in range(kx):
            out[k : k + ny, m : m + nx] += kernel[k, m] * image
    return out


@pytest.mark.parametrize("kshape", [(1, 1), (3, 5), (4, 6), (11, 7)])
def test_full_and_same_match_the_direct_sum(kshape):
    rng = np.random.default_rng(4)
    image, kernel = rng.normal(size=(23, 17)), rng.normal(size=kshape)
    full = direct(image, kernel)
    np.testing.assert_allclose(convolve(image, kernel, same=False), full, atol=1e-12)
    y0, x0 = (kshape[0] - 1) // 2, (kshape[1] - 1) // 2
    same = full[y0 : y0 + 23, x0 : x0 + 17]
    np.testing.assert_allclose(convolve(image, kernel), same, atol=1e-12)


def test_a_delta_places_the_kernel_unflipped_at_its_position_in_every_plane():
    kernel = np.arange(15.0).reshape(3, 5)  # asymmetric: a flip or shift would show
    cube = np.zeros((2, 12, 10))
    cube[0, 4, 6], cube[1, 7, 2] = 1.0, -2.0
    out = convolve(cube, kernel)
    assert out.shape == cube.shape
    np.testing.assert_allclose(out[0, 3:6, 4:9], kernel, atol=1e-12)
    np.testing.assert_allclose(out[1, 6:9, 0:5], -2.0 * kernel, atol=1e-12)
    np.testing.assert_allclose(out[0].sum() + out[1].sum(), -kernel.sum(), atol=1e-12)


def test_nothing_wraps_around_the_edges():
    image = np.zeros((8, 8))
    image[0, 0] = 1.0
    out = convolve(image, np.ones((5, 5)))
    assert out[0:3, 0:3].sum() == pytest.approx(9.0) and out.sum() == pytest.approx(9.0)


def test_the_smoother_gives_each_kernels_same_convolution_call_after_call():
    """One forward transform per image, the kernels' spectra made once and the grids reused:
    every call still gives what the direct sum does, with nothing left of the one before."""
    rng = np.random.default_rng(7)
    kernels = [np.array([[2.0]]), rng.normal(size=(3, 5)), rng.normal(size=(11, 7))]
    smooth = Smoother(kernels, (23, 17))
    out = np.empty((3, 2, 23, 17))
    for _ in range(2):
        cube = rng.normal(size=(2, 23, 17))
        assert smooth(cube, out) is out
        for kernel, planes in zip(kernels, out, strict=True):
            y0, x0 = kernel.shape[0] // 2, kernel.shape[1] // 2
            for image, found in zip(cube, planes, strict=True):
                same = direct(image, kernel)[y0 : y0 + 23, x0 : x0 + 17]
                np.testing.assert_allclose(found, same, atol=1e-12)
    with pytest.raises(ValueError, match="odd-sized"):
        Smoother([np.ones((4, 3))], (23, 17))
