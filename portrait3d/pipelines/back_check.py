"""No face on the back of the head: look at the textured head from behind, and smooth its hair where a
face detector sees one.

The back of the head is painted from the photo's outermost seen ring (hair, headwear, collar),
continued around the head and mirrored across its midline. Two dark patches of that ring, mirrored,
can read as a pair of eyes: mediapipe then finds a face where the person has hair. So the texture
stage renders the back from :data:`BACK_YAWS` x :data:`BACK_PITCHES` (the whole head in view, as a
person turning it round would see it), runs mediapipe's full-range face detector on each view, and
while it finds a face, smooths the painted texels behind the ears (:func:`smooth_back`): first to one
colour per height (the hair's bands, without the patches), then halfway to one colour, then one
colour, then a cap of the hair's colour down to the nape; of these it keeps the least face-like
(:func:`face_likeness`).

Example:
    >>> pts = np.array([[0.0, 0.05, -0.1], [0.02, 0.05, -0.1], [0.0, -0.05, -0.1], [0.0, 0.0, 0.1]])
    >>> colors = np.array([[0, 0, 0], [200, 200, 200], [90, 60, 30], [255, 0, 0]], np.float32)
    >>> weight = back_weight(pts, np.ones(4, bool))
    >>> weight.round(2).tolist()                      # the face (yaw 0) is not behind the ears
    [1.0, 1.0, 1.0, 0.0]
    >>> smooth_back(pts, colors, weight, 1)[:2].round().tolist()   # one colour per height
    [[100.0, 100.0, 100.0], [100.0, 100.0, 100.0]]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .camera import Camera
from .types import TexturedHead
from .views import render_textured

BACK_YAWS = (160, 170, 180, 190, 200)
BACK_PITCHES = (-25, -20, -15, -10, -5, 0, 5, 10, 15)
VIEW_FOVY = 30.0  # degrees; the head's bounding sphere fills VIEW_FILL of the view's height
VIEW_FILL = 0.9
BEHIND_DEG = (90.0, 120.0)  # azimuth from the face: smoothing ramps from 0 to full between these
HEIGHT_BIN_DEG = 2.0  # elevation bins of the hair's bands
HEIGHT_SIGMA_BINS = 2.0  # the bands are smoothed across this many bins
BACK_LEVELS = 3  # by height; halfway to one colour; one colour (and a fourth, a cap of hair, given its colour)

#: ``(H, W, 3)`` uint8 -> the detector's face scores (empty: no face).
Detector = Callable[[np.ndarray], list[float]]


def mediapipe_detector(confidence: float = 0.5) -> tuple[Detector, Callable[[], None]]:
    """mediapipe's full-range face detector (the model the analysis finds faces with) and its ``close``."""
    import mediapipe as mp

    det = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=confidence)

    def detect(image: np.ndarray) -> list[float]:
        return [float(d.score[0]) for d in det.process(np.ascontiguousarray(image)).detections or []]

    return detect, det.close


def back_cameras(vertices: np.ndarray, size: int) -> list[tuple[int, int, Camera]]:
    """``[(yaw, pitch, camera)]``: cameras ``size`` px square around the centre of ``vertices (N, 3)``'s
    bounding box, from behind (:data:`BACK_YAWS` x :data:`BACK_PITCHES`, degrees), the bounding sphere
    filling :data:`VIEW_FILL` of the view."""
    lo, hi = vertices.min(0), vertices.max(0)
    radius = float(np.linalg.norm(hi - lo)) / 2
    dist = radius / (VIEW_FILL * math.tan(math.radians(VIEW_FOVY) / 2))
    centre = (lo + hi) / 2
    return [(y, p, Camera.orbit(y, p, dist, VIEW_FOVY, size, centre)) for p in BACK_PITCHES for y in BACK_YAWS]


def faces_behind(
    head: TexturedHead, detect: Detector, size: int = 256, stand: np.ndarray | None = None
) -> list[tuple[int, int, float]]:
    """``[(yaw, pitch, score)]`` of the back views (:func:`back_cameras`) in which ``detect`` finds a face,
    looking at the head turned by ``stand (3, 3)`` first (the rotation export stands it up with, so
    that yaw 180 at pitch 0 is the file's back view at eye level)."""
    if stand is not None:
        mesh = dataclasses.replace(head.mesh, vertices=head.mesh.vertices @ np.asarray(stand).T)
        head = dataclasses.replace(head, mesh=mesh)
    found = []
    for yaw, pitch, cam in back_cameras(head.mesh.vertices, size):
        scores = detect(render_textured(head, cam)[0])
        if scores:
            found.append((yaw, pitch, max(scores)))
    return found


def face_likeness(found: list[tuple[int, int, float]]) -> tuple[int, float]:
    """How face-like a back is, from :func:`faces_behind`'s views with a face: (how many, the sum of their
    scores, to 3 decimals), to compare by."""
    return len(found), round(sum(score for _, _, score in found), 3)


def back_weight(pts: np.ndarray, paintable: np.ndarray) -> np.ndarray:
    """How much each texel at ``pts (P, 3)`` (head frame: face toward +Z, centre at 0) may be smoothed,
    ``(P,)`` in [0, 1]: 0 before :data:`BEHIND_DEG` ``[0]`` of azimuth from the face, 1 past ``[1]``;
    0 where ``paintable (P,)`` is False (texels from the photo)."""
    az = np.degrees(np.abs(np.arctan2(pts[:, 0], pts[:, 2])))
    lo, hi = BEHIND_DEG
    return (np.clip((az - lo) / (hi - lo), 0, 1) * paintable).astype(np.float32)


def smooth_back(
    pts: np.ndarray,
    colors: np.ndarray,
    weight: np.ndarray,
    level: int,
    cap: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    """``colors (P, 3)`` with the texels of ``weight (P,) > 0`` moved toward their hair's bands: level 1,
    the median colour of their height (2-degree bins of elevation, smoothed); level 2, halfway from that
    to the median of them all; level 3, that median; level 4, with ``cap`` (the hair's colour ``(3,)``
    and lowest height): level 1, and that colour above that height (a cap of hair, as on most heads,
    where a band of skin or collar colour had wrapped round). Blended by ``weight``; the others are kept."""
    out = colors.copy()
    sel = weight > 0
    if not sel.any():
        return out
    p, c = pts[sel], colors[sel]
    elev = np.degrees(np.arcsin(np.clip(p[:, 1] / np.maximum(np.linalg.norm(p, axis=1), 1e-9), -1, 1)))
    bins = np.clip(((elev + 90) / HEIGHT_BIN_DEG).astype(int), 0, int(180 / HEIGHT_BIN_DEG) - 1)
    n = int(180 / HEIGHT_BIN_DEG)
    bands = np.zeros((n, 3), np.float64)
    count = np.bincount(bins, minlength=n).astype(np.float64)
    for b in np.unique(bins):
        bands[b] = np.median(c[bins == b], 0)
    # Smooth across heights, counting only the bins that have texels.
    w = gaussian_filter1d(count.clip(0, 1), HEIGHT_SIGMA_BINS, mode="nearest")
    bands = gaussian_filter1d(bands * count.clip(0, 1)[:, None], HEIGHT_SIGMA_BINS, axis=0, mode="nearest")
    bands /= np.maximum(w, 1e-9)[:, None]
    target = bands[bins]
    flat = np.median(c, 0)
    if level in (2, 3):
        target = flat + (target - flat) * (0.5 if level == 2 else 0.0)
    if level == 4 and cap is not None:
        target = np.where((p[:, 1] > cap[1])[:, None], np.asarray(cap[0], np.float64)[None], target)
    k = weight[sel, None]
    out[sel] = c * (1 - k) + target * k
    return out
