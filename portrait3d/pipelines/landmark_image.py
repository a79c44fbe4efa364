"""The landmark ControlNet's input: the 3D face landmarks projected at a camera, drawn as LAION-Face
annotations (the format ControlNetMediaPipeFace was trained on).

On black, mediapipe's face-mesh contour sets are drawn as 2-px lines, one colour per region (face
oval, each eye, each eyebrow, lips), and the iris centres (468, 473) as small squares. When the face
is turned away from the camera only the oval is drawn, as the annotation of a head seen from behind.

Example:
    >>> img = landmark_image(analysis.landmarks_3d, Camera.orbit(30, 0, 1.0, 28, 512))  # doctest: +SKIP
    >>> img.shape, img.dtype                                                             # doctest: +SKIP
    ((512, 512, 3), dtype('uint8'))
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .camera import Camera

# RGB colours of the LAION-Face annotations (the subject's left and right).
COLOURS = {
    "oval": (10, 200, 10),
    "lips": (10, 180, 10),
    "left_eye": (180, 200, 10),
    "left_eyebrow": (180, 220, 10),
    "right_eye": (10, 200, 180),
    "right_eyebrow": (10, 220, 180),
}
IRIS_COLOURS = {473: (250, 200, 10), 468: (10, 200, 250)}  # left, right iris centre
THICKNESS = 2
IRIS_HALFWIDTH = 2


@lru_cache(maxsize=1)
def connections() -> dict[str, tuple[tuple[int, int], ...]]:
    """Landmark index pairs per region, from mediapipe's face-mesh connection sets."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    sets = {
        "oval": fmc.FACEMESH_FACE_OVAL,
        "lips": fmc.FACEMESH_LIPS,
        "left_eye": fmc.FACEMESH_LEFT_EYE,
        "left_eyebrow": fmc.FACEMESH_LEFT_EYEBROW,
        "right_eye": fmc.FACEMESH_RIGHT_EYE,
        "right_eyebrow": fmc.FACEMESH_RIGHT_EYEBROW,
    }
    return {k: tuple(sorted(v)) for k, v in sets.items()}


def face_visible(landmarks_3d: np.ndarray, camera: Camera) -> bool:
    """Whether the camera sees the front of the face (the face looks toward +Z in the head frame)."""
    to_cam = camera.center - landmarks_3d.mean(0)
    return float(to_cam[2]) > 0.0


def landmark_image(landmarks_3d: np.ndarray, camera: Camera) -> np.ndarray:
    """``(478, 3)`` head-frame landmarks -> ``(H, W, 3)`` uint8 RGB annotation at ``camera``'s size."""
    uv, z = camera.project(np.asarray(landmarks_3d, np.float64))
    img = np.zeros((camera.height, camera.width, 3), np.uint8)
    front = face_visible(landmarks_3d, camera)
    shift = 4  # sub-pixel line ends: cv2 takes fixed-point coordinates
    pts = np.round((uv - 0.5) * (1 << shift)).astype(np.int64)
    for region, pairs in connections().items():
        if not front and region != "oval":
            continue
        colour = COLOURS[region]
        for a, b in pairs:
            if z[a] > 0 and z[b] > 0:
                cv2.line(
                    img,
                    tuple(int(v) for v in pts[a]),
                    tuple(int(v) for v in pts[b]),
                    colour,
                    THICKNESS,
                    cv2.LINE_8,
                    shift,
                )
    if front and len(landmarks_3d) > max(IRIS_COLOURS):
        for i, colour in IRIS_COLOURS.items():
            x, y = (int(round(v - 0.5)) for v in uv[i])
            img[
                max(y - IRIS_HALFWIDTH, 0) : max(y + IRIS_HALFWIDTH + 1, 0),
                max(x - IRIS_HALFWIDTH, 0) : max(x + IRIS_HALFWIDTH + 1, 0),
            ] = colour
    return img
