"""warp_affine_area against brute-force references on a real photo (skimage's astronaut)."""

import cv2
import numpy as np
import pytest
from skimage import data

from portrait3d.pipelines.resample import shrink_crop, warp_affine_area


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()


@pytest.mark.parametrize("shrink", [3, 4, 5])
def test_an_integer_shrink_crop_is_the_block_average(photo, shrink):
    k, n = shrink, 400 // shrink
    out = shrink_crop(photo, 40, 24, n * k, n).astype(float)
    ref = photo[24 : 24 + n * k, 40 : 40 + n * k].astype(float).reshape(n, k, n, k, 3).mean((1, 3))
    assert np.abs(out - ref).max() <= 0.5 + 1e-9  # uint8 rounding
    # OpenCV's warp, asked for INTER_AREA, keeps one pixel of each block instead.
    M = np.array([[1 / k, 0, -40 / k], [0, 1 / k, -24 / k]])
    plain = cv2.warpAffine(photo, M, (n, n), flags=cv2.INTER_AREA).astype(float)
    assert np.abs(plain - ref).mean() > 3


def test_a_fractional_shrink_crop_weighs_pixels_by_the_area_they_share():
    # 300 px -> 200: on a 2x finer grid (each pixel 2 x 2), every output pixel is a 3 x 3 block mean.
    img = np.random.default_rng(3).uniform(0, 255, (310, 310)).astype(np.float32)
    out = shrink_crop(img, 5, 5, 300, 200)
    fine = np.repeat(np.repeat(img[5:305, 5:305], 2, 0), 2, 1)
    assert np.allclose(out, fine.reshape(200, 3, 200, 3).mean((1, 3)), atol=1e-3)


def test_a_shrink_crop_past_the_corner_repeats_the_edge(photo):
    out = shrink_crop(photo, -60, -60, 200, 100).astype(float)
    assert np.abs(out[:29, :29] - photo[0, 0]).max() <= 0.5
    assert np.abs(out[30:, 30:] - shrink_crop(photo, 0, 0, 140, 70)).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="outside"):
        shrink_crop(photo, 600, 0, 100, 50)


def _turned(angle_deg, scale, centre, size):
    """A similarity transform (the arcface alignment's kind): turn and shrink about ``centre`` onto the
    middle of a ``size`` x ``size`` output."""
    a = np.radians(angle_deg)
    R = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([R, (np.array([size / 2, size / 2]) - R @ np.asarray(centre, float))[:, None]])


def test_a_turned_shrink_of_fine_stripes_is_their_grey():
    stripes = np.zeros((600, 600, 3), np.uint8)
    stripes[:, ::2] = 255
    M = _turned(20, 0.2, (300, 300), 80)
    out = warp_affine_area(stripes, M, (80, 80))
    plain = cv2.warpAffine(stripes, M, (80, 80))
    # Measured: std 14.7 (a 5-pixel box passes a little of a 2-pixel period), OpenCV's warp 73.5 (moire);
    # averaging the 5x finer warp gives 2.2.
    assert abs(out.mean() - 127.5) < 3 and out.std() < plain.std() / 4


def test_a_turned_shrink_of_the_photo_is_nearer_a_supersampled_reference(photo):
    M = _turned(20, 0.2, (256, 256), 80)
    out = warp_affine_area(photo, M, (80, 80)).astype(float)
    k = 5  # the same warp on a 5x finer output grid, averaged over each output pixel
    fine = np.diag([k, k]) @ M
    fine[:, 2] += (k - 1) / 2
    ref = cv2.resize(cv2.warpAffine(photo, fine, (80 * k, 80 * k)), (80, 80), interpolation=cv2.INTER_AREA)
    err = np.abs(out - ref).mean()
    plain = np.abs(cv2.warpAffine(photo, M, (80, 80)).astype(float) - ref).mean()
    # Measured 4.5 and 6.0: what is left is the bilinear step after the shrink, a blur, not aliasing.
    assert err < 0.85 * plain, (err, plain)


def test_enlarging_and_the_border_are_opencvs(photo):
    M = np.array([[2.5, 0, -300.0], [0, 2.5, -100.0]])
    assert np.array_equal(
        warp_affine_area(photo, M, (256, 256)),
        cv2.warpAffine(photo, M, (256, 256), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE),
    )
