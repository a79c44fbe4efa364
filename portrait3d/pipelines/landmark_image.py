"""The landmark ControlNet's input: the 3D face landmarks projected at a camera, drawn as LAION-Face
annotations (the format ControlNetMediaPipeFace was trained on).

The annotation is drawn as LAION-Face's own tool draws it (``controlnet_aux``'s MediaPipe face
annotator, and the authors' release): mediapipe's ``draw_landmarks`` puts the face-mesh contour sets
on black as 2-px lines, one ``DrawingSpec`` colour per region (face oval, each eye, each eyebrow,
lips); the iris centres (468, 473) become 4x4 squares; and the whole image is then reversed from
BGR to RGB, so the colours in the image are the specs' tuples reversed. When the face is turned away
from the camera only the oval is drawn, as the annotation of a head seen from behind.

Example:
    >>> img = landmark_image(analysis.landmarks_3d, Camera.orbit(30, 0, 1.0, 28, 512))  # doctest: +SKIP
    >>> img.shape, img.dtype                                                             # doctest: +SKIP
    ((512, 512, 3), dtype('uint8'))
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .camera import Camera

# LAION-Face's DrawingSpec colours, as passed to mediapipe (the image is reversed afterwards).
SPEC_COLOURS = {
    "oval": (10, 200, 10),
    "left_eye": (180, 200, 10),
    "left_eyebrow": (180, 220, 10),
    "right_eye": (10, 200, 180),
    "right_eyebrow": (10, 220, 180),
    "lips": (10, 180, 10),
}
IRIS_SPEC_COLOURS = {468: (10, 200, 250), 473: (250, 200, 10)}  # right, left iris centre
THICKNESS = 2
IRIS_HALFWIDTH = 2  # LAION-Face's squares span [c - 2, c + 2): 4x4 pixels


@lru_cache(maxsize=1)
def connection_specs() -> tuple[dict, dict]:
    """(edge -> DrawingSpec, in LAION-Face's drawing order; front-only regions drawn after the oval),
    and the oval's edges alone (the back view)."""
    from mediapipe.python.solutions import drawing_styles
    from mediapipe.python.solutions import face_mesh_connections as fmc

    sets = {
        "oval": fmc.FACEMESH_FACE_OVAL,
        "left_eye": fmc.FACEMESH_LEFT_EYE,
        "left_eyebrow": fmc.FACEMESH_LEFT_EYEBROW,
        "right_eye": fmc.FACEMESH_RIGHT_EYE,
        "right_eyebrow": fmc.FACEMESH_RIGHT_EYEBROW,
        "lips": fmc.FACEMESH_LIPS,
    }
    front = {}
    for region, edges in sets.items():
        spec = drawing_styles.DrawingSpec(color=SPEC_COLOURS[region], thickness=THICKNESS, circle_radius=1)
        for edge in edges:
            front[edge] = spec
    back = {edge: spec for edge, spec in front.items() if edge in sets["oval"]}
    return front, back


def face_visible(landmarks_3d: np.ndarray, camera: Camera) -> bool:
    """Whether the camera sees the front of the face (the face looks toward +Z in the head frame)."""
    to_cam = camera.center - landmarks_3d.mean(0)
    return float(to_cam[2]) > 0.0


def draw_laion_face(xy: np.ndarray, height: int, width: int, front: bool = True) -> np.ndarray:
    """``(N, 2)`` landmarks in normalized image coordinates (x, y in [0, 1]; outside: not drawn) ->
    ``(H, W, 3)`` uint8 RGB LAION-Face annotation."""
    from mediapipe.framework.formats import landmark_pb2
    from mediapipe.python.solutions import drawing_utils

    img = np.zeros((height, width, 3), np.uint8)
    landmarks = landmark_pb2.NormalizedLandmarkList(
        landmark=[landmark_pb2.NormalizedLandmark(x=float(x), y=float(y)) for x, y in xy]
    )
    specs, back = connection_specs()
    spec = specs if front else back
    drawing_utils.draw_landmarks(
        img, landmarks, connections=spec.keys(), landmark_drawing_spec=None, connection_drawing_spec=spec
    )
    if front:
        for i, colour in IRIS_SPEC_COLOURS.items():
            if i >= len(landmarks.landmark):
                continue
            lm = landmarks.landmark[i]
            if not (0 <= lm.x < 1.0 and 0 <= lm.y < 1.0):
                continue
            x, y = int(width * lm.x), int(height * lm.y)
            img[y - IRIS_HALFWIDTH : y + IRIS_HALFWIDTH, x - IRIS_HALFWIDTH : x + IRIS_HALFWIDTH] = colour
    return np.ascontiguousarray(img[:, :, ::-1])


def landmark_image(landmarks_3d: np.ndarray, camera: Camera) -> np.ndarray:
    """``(478, 3)`` head-frame landmarks -> ``(H, W, 3)`` uint8 RGB annotation at ``camera``'s size."""
    uv, z = camera.project(np.asarray(landmarks_3d, np.float64))
    xy = uv / np.array([camera.width, camera.height], np.float64)
    xy[z <= 0] = -1.0  # behind the camera: not drawn
    return draw_laion_face(xy, camera.height, camera.width, face_visible(landmarks_3d, camera))
