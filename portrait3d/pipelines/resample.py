"""Crops and warps that average the pixels they shrink instead of sampling them.

``cv2.warpAffine`` samples the source at one point per output pixel whatever ``flags`` says
(``INTER_AREA`` acts as bilinear there), so a crop that shrinks a large photo keeps every n-th
pixel: fine texture (hair, fabric, skin) aliases into moire and jagged edges. :func:`shrink_crop`
cuts a square on whole pixels and area-averages it in one step (``cv2.resize(INTER_AREA)``);
:func:`warp_affine_area` (turned warps) averages blocks first and interpolates the rest.

Example:
    >>> import numpy as np
    >>> stripes = np.zeros((800, 800, 3), np.uint8); stripes[:, ::2] = 255   # 1-pixel stripes
    >>> M = np.array([[0.25, 0, 0], [0, 0.25, 0]])                              # shrink 4x
    >>> int(cv2.warpAffine(stripes, M, (200, 200), flags=cv2.INTER_AREA).mean())   # every 4th column: white
    255
    >>> out = warp_affine_area(stripes, M, (200, 200))                            # their average: grey
    >>> int(out.mean()), int(out.std())
    (128, 0)
"""

from __future__ import annotations

import cv2
import numpy as np


def shrink_crop(img: np.ndarray, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """The square ``img[y0:y0 + side, x0:x0 + side]`` of ``img (H, W[, C])``, its edge pixels repeated where
    it leaves the image, area-averaged to ``size x size`` (``side >= size``): each output pixel is the
    mean of the ``side / size`` square of source pixels it covers.

    Example:
        >>> img = np.arange(16, dtype=np.float32).reshape(4, 4)
        >>> shrink_crop(img, 0, 0, 4, 2)
        array([[ 2.5,  4.5],
               [10.5, 12.5]], dtype=float32)
        >>> shrink_crop(img, 2, 2, 4, 2)      # the bottom-right 2 x 2, its last row and column repeated
        array([[12.5, 13. ],
               [14.5, 15. ]], dtype=float32)
    """
    if side < size:
        raise ValueError(f"shrink_crop enlarges {side} px to {size}: use a warp")
    H, W = img.shape[:2]
    region = img[max(y0, 0) : max(min(y0 + side, H), 0), max(x0, 0) : max(min(x0 + side, W), 0)]
    if region.size == 0:
        raise ValueError(f"the square at ({x0}, {y0}), {side} px, lies outside the {W} x {H} image")
    pad = (max(-y0, 0), max(y0 + side - H, 0), max(-x0, 0), max(x0 + side - W, 0))
    if any(pad):
        region = cv2.copyMakeBorder(region, *pad, cv2.BORDER_REPLICATE)
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)


#: Source pixels kept around the region a shrinking warp reads (interpolation support and rounding).
MARGIN_PX = 4


def warp_affine_area(
    img: np.ndarray,
    M: np.ndarray,
    size: tuple[int, int],
    upscale: int = cv2.INTER_CUBIC,
    border: int = cv2.BORDER_REPLICATE,
) -> np.ndarray:
    """``cv2.warpAffine(img, M, size)`` for ``img (H, W[, C])`` and ``M (2, 3)`` (source -> output pixels),
    ``size = (width, height)``. Where ``M`` shrinks by 2 or more (scale ``sqrt(|det|)``), the source region it
    reads is first averaged over blocks of ``n x n`` pixels, ``n = floor(1 / scale)``, and the rest
    (a shrink by less than 2) is bilinear; where it enlarges, ``upscale`` interpolates. Outside the
    image, ``border`` as in OpenCV."""
    M = np.asarray(M, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    if scale >= 1.0:
        return cv2.warpAffine(img, M, size, flags=upscale, borderMode=border)
    n = int(np.floor(1.0 / scale + 1e-9))
    x0, y0, x1, y1 = _source_region(M, size, img.shape[1], img.shape[0])
    if n < 2 or x1 - x0 < n or y1 - y0 < n:
        return cv2.warpAffine(img, M, size, flags=cv2.INTER_LINEAR, borderMode=border)
    w, h = (x1 - x0) // n, (y1 - y0) // n
    small = cv2.resize(img[y0 : y0 + h * n, x0 : x0 + w * n], (w, h), interpolation=cv2.INTER_AREA)
    # Block u's centre is source x0 + n u + (n - 1) / 2; compose that with M.
    to_source = np.array([[n, 0, x0 + (n - 1) / 2], [0, n, y0 + (n - 1) / 2], [0, 0, 1]])
    return cv2.warpAffine(small, M @ to_source, size, flags=cv2.INTER_LINEAR, borderMode=border)


def _source_region(M: np.ndarray, size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The part of a ``width x height`` image that the output's ``size`` reads through ``M``, with a margin,
    clipped to the image: ``(x0, y0, x1, y1)``, x1 and y1 exclusive."""
    inv = cv2.invertAffineTransform(M)
    w, h = size
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ inv.T
    lo = np.floor(corners.min(0)).astype(int) - MARGIN_PX
    hi = np.ceil(corners.max(0)).astype(int) + MARGIN_PX
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], width), min(hi[1], height)


def inside_photo(box: tuple[float, float, float, float], size: int, width: int, height: int) -> np.ndarray:
    """``(size, size)`` bool: the pixels of the square crop of ``box = (x0, y0, x1, y1)`` (photo pixels) at
    ``size`` whose centre lies on the ``width x height`` photo. The others hold repeated edge pixels:
    nothing of the subject is known there.

    Example:
        >>> inside_photo((-2.0, 0.0, 6.0, 8.0), 4, 10, 10)[0].tolist()   # the first column is left of the photo
        [False, True, True, True]
    """
    x0, y0, x1, y1 = box
    centre = (np.arange(size) + 0.5) / size
    x, y = x0 + centre * (x1 - x0), y0 + centre * (y1 - y0)
    return ((y >= 0) & (y <= height))[:, None] & ((x >= 0) & (x <= width))[None, :]
