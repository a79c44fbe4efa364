"""mediapipe's face mesh: landmark indices, its triangles, and from its 478 pseudo-3D landmarks to a
head pose, a reference camera, and metric 3D landmarks in the head frame.

mediapipe gives ``x, y`` in pixels and a relative depth ``z`` in the same scale (smaller is closer).
The head's axes come from the landmarks themselves: left/right from mirror-symmetric pairs, up from
chin to forehead. Scale is set by a prior on the outer eye-corner distance; the camera distance
follows from the field of view, so that a face of that size appears at the photographed size.
Landmark depths are then unprojected through the camera exactly, so each 3D landmark projects back
onto its pixel.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from .camera import CV_TO_GL, Camera, pixel_index, ypr_from_rotation
from .mesh import mirror_map, vertex_normals

#: Landmarks of the face mesh proper; the 10 after them (468-477) outline the irises.
MESH_POINTS = 468
#: The iris centres: the subject's right (468) and left (473).
IRIS_CENTRES = (468, 473)
# mediapipe face-mesh indices: the subject's right side (image left in a frontal photo) and the
# mirrored points on the left side.
RIGHT_SIDE = [33, 133, 234, 61, 159, 145, 70, 127, 93]
LEFT_SIDE = [263, 362, 454, 291, 386, 374, 300, 356, 323]
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1
#: A point on the ridge of the nose: inside the face's region of every mask.
NOSE_RIDGE = 4
EYE_OUTER = (33, 263)
#: The subject's right eye's contour (its mirror partners outline the left eye).
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
FACE_SIDES = (234, 454)
#: The base of the nose: below it a face may be beard, moustache or lips.
NOSE_BASE = 2
#: Eye spans about each iris centre that are eye or brow, not bare skin.
EYE_RADIUS = 0.3
#: Sunglasses cover a face this far (eye spans) above and below the irises' height, from temple to temple.
EYEWEAR_BAND = 0.25
#: mediapipe's metric canonical face (Apache-2.0, see the file's header).
CANONICAL_FACE_FILE = Path(__file__).parent / "data" / "mediapipe_canonical_face.txt"
# A side turned this much less toward the camera (cos) than its mirror side starts taking the mirror's
# shape, fully at HIDDEN_SIDE_START + HIDDEN_SIDE_SPAN.
HIDDEN_SIDE_START, HIDDEN_SIDE_SPAN = 0.1, 0.4


@lru_cache(maxsize=1)
def canonical_face() -> np.ndarray:
    """mediapipe's canonical face: the 468 face-mesh vertices ``(468, 3)`` in landmark order, centimetres,
    x right, y up, z toward the viewer; exactly mirror-symmetric about x = 0."""
    return np.loadtxt(CANONICAL_FACE_FILE)


@lru_cache(maxsize=1)
def mirror_landmarks() -> np.ndarray:
    """``(468,)`` int: each face-mesh landmark's left/right mirror partner (itself on the midline).

    Example:
        >>> m = mirror_landmarks()
        >>> int(m[EYE_OUTER[0]]), int(m[FACE_SIDES[1]]), int(m[NOSE_TIP]), bool((m[m] == np.arange(468)).all())
        (263, 234, 1, True)
    """
    _, idx = mirror_map(canonical_face())
    return idx


@lru_cache(maxsize=1)
def face_mesh_topology() -> tuple[np.ndarray, np.ndarray]:
    """mediapipe's face-mesh triangles ``(T, 3)`` (from its tessellation edges) and its ordered
    face-oval loop ``(K,)``."""
    import mediapipe as mp

    fm = mp.solutions.face_mesh
    nbr: dict[int, set[int]] = {}
    for a, b in fm.FACEMESH_TESSELATION:
        nbr.setdefault(a, set()).add(b)
        nbr.setdefault(b, set()).add(a)
    tris = sorted({tuple(sorted((a, b, c))) for a, b in fm.FACEMESH_TESSELATION for c in nbr[a] & nbr[b]})
    oval_nbr: dict[int, list[int]] = {}
    for a, b in fm.FACEMESH_FACE_OVAL:
        oval_nbr.setdefault(a, []).append(b)
        oval_nbr.setdefault(b, []).append(a)
    loop = [FOREHEAD]
    while len(loop) < len(oval_nbr):
        nxt = [n for n in oval_nbr[loop[-1]] if n not in loop]
        if not nxt:
            break
        loop.append(nxt[0])
    return np.array(tris, np.int64), np.array(loop, np.int64)


def oriented_face_triangles(lm3d: np.ndarray) -> np.ndarray:
    """Face-mesh triangles ``(T, 3)`` wound so that normals point away from the head centre."""
    tris, _ = face_mesh_topology()
    a, b, c = lm3d[tris[:, 0]], lm3d[tris[:, 1]], lm3d[tris[:, 2]]
    outward = (np.cross(b - a, c - a) * (a + b + c)).sum(1) > 0
    return np.where(outward[:, None], tris, tris[:, [0, 2, 1]])


def head_rotation(lm_px: np.ndarray) -> np.ndarray:
    """``(478, 3)`` landmarks -> ``(3, 3)`` rotation from the head frame to the camera frame with
    axes x right, y up, z toward the viewer (columns: head +X, +Y, +Z seen in that frame)."""
    P = lm_px * np.array([1.0, -1.0, -1.0])
    x = (P[LEFT_SIDE] - P[RIGHT_SIDE]).mean(0)
    x /= np.linalg.norm(x)
    up = P[FOREHEAD] - P[CHIN]
    y = up - x * (up @ x)
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=1)


def lift_landmarks(
    lm_px: np.ndarray, size: int, fovy_deg: float, eye_width_m: float, center_depth: float, depth_scale: float = 1.0
) -> tuple[np.ndarray, tuple[float, float, float], Camera, np.ndarray]:
    """Landmarks in an ``size x size`` crop -> (rotation, yaw/pitch/roll, reference camera, 3D landmarks).

    ``center_depth``: how far behind the face's side points (234/454) the head centre lies, in face
    widths. ``depth_scale`` multiplies mediapipe's relative depth ``z`` before anything else (the pose
    too, which the depth of the mirror pairs sets). The 3D landmarks ``(478, 3)`` are in metres in the
    head frame.
    """
    lm_px = lm_px * np.array([1.0, 1.0, depth_scale])
    R = head_rotation(lm_px)
    P = lm_px * np.array([1.0, -1.0, -1.0])
    s = eye_width_m / np.linalg.norm(P[EYE_OUTER[1]] - P[EYE_OUTER[0]])  # metres per pixel
    sides = P[list(FACE_SIDES)].mean(0)
    C = (P - sides) @ R  # head frame, pixel units
    face_w = np.linalg.norm(C[FACE_SIDES[1]] - C[FACE_SIDES[0]])
    eye_y = C[list(EYE_OUTER)].mean(0)[1]
    center = np.array([C[[FOREHEAD, CHIN]].mean(0)[0], eye_y, -center_depth * face_w])
    center_px = sides + R @ center  # x right, y up, z toward viewer

    K = Camera.intrinsics(fovy_deg, size, size)
    f = K[1, 1]
    dist = f * s
    R_w2c = CV_TO_GL @ R  # head frame -> OpenCV camera frame
    uv_c = np.array([center_px[0], -center_px[1], 1.0])
    t = dist * (np.linalg.inv(K) @ uv_c)
    cam = Camera(K=K, R=R_w2c, t=t, width=size, height=size)

    # Exact unprojection: camera depth of each landmark = centre depth + its relative depth.
    depth = dist + (center_px[2] - P[:, 2]) * s
    world = cam.unproject(lm_px[:, :2], depth)
    return R, ypr_from_rotation(R), cam, world


def mirror_hidden_side(lm3d: np.ndarray, cam: Camera) -> np.ndarray:
    """3D landmarks ``(478, 3)`` (head frame) -> the same with the face's side turned away from ``cam`` moved
    toward the mirror image of the side facing it, by how much better that side faces the camera.

    In a turned face mediapipe puts the hidden side's outline on the silhouette it sees, so that side comes
    out narrower than the other (by 0.2 face widths at the face's sides in a 43-degree view); a frontal face
    is unchanged. Irises and midline points stay.

    Example:
        >>> lm = np.zeros((478, 3)); lm[:MESH_POINTS] = canonical_face() * 0.01
        >>> lm[FACE_SIDES[0], 0] *= 0.7  # the subject's right side pulled in
        >>> out = mirror_hidden_side(lm, Camera.orbit(60, 0, 1.0, 30, 256))  # seen from the left
        >>> right, left = FACE_SIDES
        >>> bool(np.allclose(out[right], lm[left] * [-1, 1, 1])), bool((out[left] == lm[left]).all())
        (True, True)
    """
    pts = np.asarray(lm3d[:MESH_POINTS], dtype=np.float64)
    n = vertex_normals(torch.from_numpy(pts), torch.from_numpy(oriented_face_triangles(pts))).numpy()
    view = cam.center - pts
    cos = (n * view).sum(1) / np.linalg.norm(view, axis=1)
    m = mirror_landmarks()
    w = np.clip((cos[m] - cos - HIDDEN_SIDE_START) / HIDDEN_SIDE_SPAN, 0, 1)
    out = np.array(lm3d, dtype=np.float64)
    out[:MESH_POINTS] = pts + w[:, None] * (pts[m] * [-1.0, 1.0, 1.0] - pts)
    return out


def within_outline(lm3d: np.ndarray, cam: Camera, mask: np.ndarray, spread: float = 0.08) -> np.ndarray:
    """3D landmarks ``(478, 3)`` (head frame) -> the same with the face moved, parallel to the image plane
    of ``cam`` and toward the face's centre, where its projection reaches past the head ``mask (H, W)``:
    the photo's outline is what the reference view sees, and :func:`mirror_hidden_side` can widen a turned
    face's far cheek past it. Each landmark outside moves by as much as brings it inside; the others by the
    shift of the landmarks outside near them, fading over ``spread`` face widths (Gaussian), so the cheek
    bends in rather than kinks while the eye and brow a quarter of a face width in keep their places (a
    wider fade moved them too: on the dev set's turned faces +-30 0.351 at 0.15, 0.374 at 0.3, 0.344 at
    0.08). A face inside the mask is unchanged.

    Example:
        >>> lm = np.zeros((478, 3)); lm[:MESH_POINTS] = canonical_face() * 0.01
        >>> cam = Camera.orbit(0, 0, 1.0, 30, 256)
        >>> uv, _ = cam.project(lm[:MESH_POINTS])
        >>> mask = np.zeros((256, 256), bool); mask[:, : int(uv[:, 0].max()) - 3] = True  # 3 px too narrow
        >>> out = within_outline(lm, cam, mask)
        >>> bool(cam.project(out[:MESH_POINTS])[0][:, 0].max() < uv[:, 0].max() - 2)
        True
        >>> bool(np.array_equal(within_outline(lm, cam, np.ones((256, 256), bool)), lm))
        True
    """
    pts = np.array(lm3d[:MESH_POINTS], dtype=np.float64)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    H, W = mask.shape
    centre = cam.project(pts.mean(0)[None])[0][0]
    face_w = float(np.linalg.norm(pts[FACE_SIDES[1]] - pts[FACE_SIDES[0]]))
    fx, fy = cam.K[0, 0], cam.K[1, 1]
    for _ in range(3):  # a shift toward the centre is not the shortest way in: look again
        uv, z = cam.project(pts)
        d = outside[pixel_index(uv, W, H)]
        out = d > 0
        if not out.any():
            break
        toward = centre - uv[out]
        px = toward / np.maximum(np.linalg.norm(toward, axis=1, keepdims=True), 1e-9) * (d[out, None] + 1)
        move = (px * z[out, None] / [fx, fy]) @ cam.R[:2]  # image-plane shifts at each depth, head frame
        gap = np.linalg.norm(pts[:, None] - pts[None, out], axis=2) / (spread * face_w)
        w = np.exp(-0.5 * gap**2)
        nearest = w.argmax(1)  # each landmark follows its nearest landmark outside, faded by distance
        pts += move[nearest] * w[np.arange(len(pts)), nearest, None]
    result = np.array(lm3d, dtype=np.float64)
    result[:MESH_POINTS] = pts
    return result


def landmark_face_mask(lm_px: np.ndarray, size: int) -> np.ndarray:
    """The face as the landmarks outline it: their convex hull, ``(S, S)`` bool."""
    m = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(lm_px[:MESH_POINTS, :2].astype(np.float32))
    cv2.fillConvexPoly(m, np.round(hull).astype(np.int32), 1)
    return m.astype(bool)


def eye_cut_side(lm3d: np.ndarray, lm_px: np.ndarray, in_photo: np.ndarray | None) -> int:
    """The side (the sign of the head frame's x: +1 the subject's left, -1 the right) of the one eye whose
    contour the photo's edge cuts, or 0: ``lm3d (478, 3)`` head frame, ``lm_px (478, 2+)`` crop pixels,
    ``in_photo (S, S)`` bool, where the crop shows the photo (None: all of it).

    Beyond the edge mediapipe guesses the face; a seam between the photo's part of an eye and the mirror's
    rest of it shows two eyes' worth of corners, where the mirror's whole eye does not.

    Example:
        >>> lm = np.zeros((478, 3)); lm[:MESH_POINTS] = canonical_face() * 0.01
        >>> px = lm[:, :2] * [1000, -1000] + 64
        >>> photo = np.ones((128, 128), bool); photo[:, 64 + 35 :] = False   # cut through the image-right eye
        >>> eye_cut_side(lm, px, photo), eye_cut_side(lm, px, None), eye_cut_side(lm, px, photo[:, ::-1])
        (1, 0, -1)
    """
    if in_photo is None:
        return 0
    on = on_photo(lm_px, in_photo)
    right = np.array(RIGHT_EYE)
    left = mirror_landmarks()[right]
    if on[right].all() == on[left].all():
        return 0
    eye = left if on[right].all() else right
    return int(np.sign(lm3d[eye, 0].mean()))


def mirror_past_edge(lm3d: np.ndarray, lm_px: np.ndarray, in_photo: np.ndarray | None) -> np.ndarray:
    """3D landmarks ``(478, 3)`` (head frame) -> the same with each face-mesh landmark past the photo's edge
    (``lm_px (478, 2+)`` crop pixels; ``in_photo (S, S)`` bool, None: no edge) moved to the mirror image of
    its partner, where the partner is on the photo: beyond the edge mediapipe guesses the face, and the
    texture there is the mirror's.

    Example:
        >>> lm = np.zeros((478, 3)); lm[:MESH_POINTS] = canonical_face() * 0.01
        >>> px = lm[:, :2] * [500, -500] + 64                                 # the face 77 px wide
        >>> photo = np.ones((128, 128), bool); photo[:, 64 + 30 :] = False
        >>> bent = lm.copy(); bent[FACE_SIDES[1], 2] += 0.01                # a guess past the edge
        >>> out = mirror_past_edge(bent, px, photo)
        >>> bool(np.allclose(out[FACE_SIDES[1]], lm[FACE_SIDES[1]])), bool((out[:, 0] == bent[:, 0]).sum() > 400)
        (True, True)
    """
    if in_photo is None:
        return lm3d
    on = on_photo(lm_px, in_photo)
    m = mirror_landmarks()
    move = ~on & on[m]
    out = np.array(lm3d, dtype=np.float64)
    out[:MESH_POINTS][move] = out[:MESH_POINTS][m[move]] * [-1.0, 1.0, 1.0]
    return out


def on_photo(lm_px: np.ndarray, in_photo: np.ndarray) -> np.ndarray:
    """``(468,)`` bool: which face-mesh landmarks ``lm_px (478, 2+)`` (crop pixels) lie on the photo's part
    of the crop, ``in_photo (S, S)`` bool.

    Example:
        >>> px = np.zeros((478, 2)); px[1] = (5.0, 2.0); px[2] = (-1.0, 2.0)
        >>> photo = np.ones((8, 8), bool); photo[:, 4:] = False
        >>> on_photo(px, photo)[:3].tolist()
        [True, False, False]
    """
    S = in_photo.shape[0]
    px = np.asarray(lm_px[:MESH_POINTS, :2], np.float64)
    inside = (px >= 0).all(1) & (px < S).all(1)
    return inside & in_photo[pixel_index(px, S, S)]


def eye_span(lm3d: np.ndarray) -> float:
    """The distance between the eyes' outer corners of ``lm3d (478, 3)``: the face's unit for eye regions."""
    return float(np.linalg.norm(lm3d[EYE_OUTER[1]] - lm3d[EYE_OUTER[0]]))


def eye_distance(pts: np.ndarray, lm3d: np.ndarray) -> np.ndarray:
    """How far surface points ``(P, 3)`` are from the nearer iris centre of ``lm3d (478, 3)`` (same frame),
    in eye spans (:func:`eye_span`). ``(P,)``.

    >>> lm = np.zeros((478, 3)); lm[263, 0] = 0.1; lm[468, 0], lm[473, 0] = -0.03, 0.03
    >>> eye_distance(np.array([[0.03, 0.0, 0.0], [0.0, 0.05, 0.0]]), lm).round(2).tolist()
    [0.0, 0.58]
    """
    return np.sqrt(np.min([((pts - lm3d[i]) ** 2).sum(1) for i in IRIS_CENTRES], 0)) / eye_span(lm3d)


def bare_skin(pts: np.ndarray, lm3d: np.ndarray, eye_radius: float = EYE_RADIUS) -> np.ndarray:
    """Which surface points ``(P, 3)`` of a face are where it is bare skin on nearly everyone: above the
    base of the nose (no beard, moustache or lips) and farther than ``eye_radius`` eye spans (outer
    corners) from either iris centre (no eyes or brows), ``lm3d (478, 3)`` in the same frame. ``(P,)``
    bool. Forehead, temples, cheekbones and nose keep the face's range of shading.

    >>> lm = np.zeros((478, 3)); lm[263, 0] = 0.1; lm[[468, 473], 1] = 0.03
    >>> bare_skin(np.array([[0.0, 0.01, 0], [0.0, -0.01, 0], [0.0, 0.08, 0], [0.07, 0.04, 0]]), lm).tolist()
    [False, False, True, True]
    """
    return (pts[:, 1] > lm3d[NOSE_BASE, 1]) & (eye_distance(pts, lm3d) >= eye_radius)


def sunglasses_band(pts: np.ndarray, lm3d: np.ndarray) -> np.ndarray:
    """Which surface points ``(P, 3)`` sunglasses would cover: within ``EYEWEAR_BAND`` eye spans of the
    irises' height, temple to temple (lenses and arms), ``lm3d (478, 3)`` in the same frame. ``(P,)`` bool.

    >>> lm = np.zeros((478, 3)); lm[263, 0] = 0.1; lm[[468, 473], 1] = 0.03
    >>> sunglasses_band(np.array([[0.07, 0.04, 0], [0.0, 0.08, 0]]), lm).tolist()
    [True, False]
    """
    return np.abs(pts[:, 1] - lm3d[list(IRIS_CENTRES), 1].mean()) < EYEWEAR_BAND * eye_span(lm3d)
