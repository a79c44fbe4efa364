"""Clothes beside the face: a collar or shoulder that rises beside a tilted or turned head up to the ear
is in the person mask there, and the head prior would be warped out to it (a wing of shirt beside the
jaw). What the person wears is seen lower down, on the shoulders; the head is the face and what is above
it. A pixel beside the face whose colour is common on the shoulders and rare on the head is clothes.

Example:
    >>> crop = np.zeros((64, 64, 3), np.uint8); crop[:32] = (200, 150, 120); crop[32:] = (180, 20, 30)
    >>> head, shoulders = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    >>> head[:20], shoulders[50:] = True, True
    >>> zone = np.zeros((64, 64), bool); zone[20:50] = True
    >>> cut = look_like_clothes(crop, zone, shoulders, head)
    >>> bool(cut[20:32].any()), bool(cut[32:50].all())
    (False, True)
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import uniform_filter

BIN = 16  # CIELAB levels (OpenCV's 8-bit scale) per histogram bin; a colour's share counts the bins around it too
RARE_IN_HEAD = 0.1  # a colour shared by fewer of the head's pixels than this is not the head's own
MORE_ON_SHOULDERS = 4.0  # ... and clothes when this many times more common on the shoulders
COMMON_ON_SHOULDERS = 0.05  # ... and at least this common there (a colour on neither is something else)


def look_like_clothes(crop: np.ndarray, zone: np.ndarray, shoulders: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The pixels of ``zone (S, S)`` bool whose colour in ``crop (S, S, 3)`` uint8 RGB is clothes: among the
    ``head`` pixels' colours under ``RARE_IN_HEAD``, and among the ``shoulders`` pixels' ``MORE_ON_SHOULDERS``
    times as common and at least ``COMMON_ON_SHOULDERS`` (both ``(S, S)`` bool; a colour's share: of the
    pixels within a bin of it, in a CIELAB histogram of ``BIN`` levels). Black hair over a black coat, or a
    bare neckline beside the ear, is common on both and stays. ``(S, S)`` bool; none when either region
    is empty."""
    out = np.zeros(zone.shape, bool)
    if not shoulders.any() or not head.any() or not zone.any():
        return out
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).reshape(-1, 3) // BIN
    at = tuple(lab[zone.ravel()].T.astype(np.intp))
    on_head, on_shoulders = (colour_shares(lab[m.ravel()])[at] for m in (head, shoulders))
    common = on_shoulders >= np.maximum(MORE_ON_SHOULDERS * on_head, COMMON_ON_SHOULDERS)
    out[zone] = (on_head < RARE_IN_HEAD) & common
    return out


def colour_shares(bins: np.ndarray) -> np.ndarray:
    """``(N, N, N)``: for each bin of a colour histogram, the share of the colours ``bins (P, 3)`` (bin indices)
    within one bin of it (a 3 x 3 x 3 neighbourhood)."""
    n = 256 // BIN
    hist = np.zeros((n, n, n))
    np.add.at(hist, tuple(bins.T.astype(np.intp)), 1.0)
    return uniform_filter(hist, 3, mode="constant") * 27 / max(len(bins), 1)
