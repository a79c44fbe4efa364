"""Head proportions that hold whatever the silhouette says: a head, hair included, is not much wider than
it is deep, so a wider silhouette (hair spread flat, an arm raised to the head, a neighbour's hair beside the
face) is not followed all the way; nor much deeper than it is wide, so a narrow silhouette does not leave a
long skull behind it. Used by init's silhouette warp and by the fast sculpt.

Widths and depths are measured as the head stands in the exported head (``standing``: the rotation of
export's levelling, :func:`.camera.standing_rotation`), x across, z front to back, the head centre at the
origin.
"""

from __future__ import annotations

import numpy as np

BREADTH_KNEE = 0.85  # a side too wide for the head's depth is narrowed from this share of its room out
BREADTH_BISECTIONS = 20  # steps of the search for the share of a move that keeps a side within the breadth


def limit_breadth(
    start: np.ndarray, end: np.ndarray, max_breadth: float, face: np.ndarray, standing: np.ndarray | None = None
) -> np.ndarray:
    """The move of vertices ``(N, 3)`` from ``start`` to ``end`` taken, by side of the head, only as far as
    keeps the head at most ``max_breadth`` times as wide as deep as it stands (:func:`narrow_to_breadth`'s
    measure): on a side that ``end`` makes too wide, each vertex moves the largest share of its way that
    keeps the side within the breadth (bisection), all of its way at the midline, fading to that share at
    the ``face (N,)`` bool vertices' reach and beyond. What is then still too wide is narrowed.

    Example:
        >>> start = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0.0, 0, -1.0], [0.0, 0, 1.0]])
        >>> end = start + [[0, 0, 0], [1.5, 0, 0], [0, 0, 0], [0, 0, 0]]  # the right side pushed out to 2.0
        >>> limit_breadth(start, end, 1.0, np.zeros(4, bool))[:, 0].round(3).tolist()  # width 2.0: 1.5 is left
        [-0.5, 1.5, 0.0, 0.0]
    """
    R = np.eye(3) if standing is None else standing
    ps, pe = start @ R.T, end @ R.T
    out = end.copy()
    for side, room in zip((-1.0, 1.0), side_room(pe[:, 0], max_breadth * float(np.ptp(pe[:, 2]))), strict=True):
        if float((side * pe[:, 0]).max()) <= room:
            continue
        knee = max(face_reach(side * ps[:, 0], face), 1e-9)
        ramp = np.clip(side * ps[:, 0] / knee, 0.0, 1.0)[:, None]
        lo, hi = 0.0, 1.0
        for _ in range(BREADTH_BISECTIONS):
            t = (lo + hi) / 2
            if float((side * partway(ps[:, :1], pe[:, :1], ramp, t)).max()) <= room:
                lo = t
            else:
                hi = t
        moved = ramp[:, 0] > 0
        out[moved] = partway(ps, pe, ramp, lo)[moved] @ R
    return narrow_to_breadth(out, max_breadth, face, standing)


def side_room(x: np.ndarray, width: float) -> tuple[float, float]:
    """How far the head's sides (-x, +x) may reach from its centre, given coordinates ``x (N,)`` and the
    width allowed: as far as they do when the head is within it; else half of it each, and a side that
    reaches less leaves the rest to the other.

    Example:
        >>> side_room(np.array([-0.5, 2.0]), 2.0), side_room(np.array([-1.5, 2.0]), 2.0)
        ((0.5, 1.5), (1.0, 1.0))
    """
    left, right = float(-x.min()), float(x.max())
    if left + right <= width:
        return left, right
    half = width / 2
    if left < half:
        return left, width - left
    if right < half:
        return width - right, right
    return half, half


def face_reach(s: np.ndarray, face: np.ndarray) -> float:
    """How far the ``face (N,)`` bool vertices reach along the coordinates ``s (N,)``; 0 without a face."""
    return float(s[face].max()) if face.any() else 0.0


def partway(start: np.ndarray, end: np.ndarray, ramp: np.ndarray, share: float) -> np.ndarray:
    """Points ``(N, D)`` on the way from ``start`` to ``end`` ``(N, D)``: all of it where ``ramp (N, 1)`` is 0,
    ``share`` of it where the ramp is 1, linearly between."""
    return start + (end - start) * (1 - (1 - share) * ramp)


def narrow_to_breadth(
    verts: np.ndarray, max_breadth: float, face: np.ndarray, standing: np.ndarray | None = None
) -> np.ndarray:
    """Vertices ``(N, 3)`` (head frame, centre at the origin) with each side of the head narrowed so that the
    head is at most ``max_breadth`` times as wide (x) as it is deep (z), both as it stands (turned by the
    rotation ``standing (3, 3)``, export's levelling; None: as it is). By side (each side's room:
    :func:`side_room`), the part beyond ``BREADTH_KNEE`` of that room and beyond the ``face (N,)`` bool
    vertices is scaled toward that knee; a side that would need the face itself narrowed is left as it is.

    Example:
        >>> v = np.array([[-1.0, 0, 0], [0.95, 0, 0], [1.5, 0, 0], [2.0, 0, 0], [0, 0, -1.0], [0, 0, 1.0]])
        >>> face = np.array([True, True, False, False, False, False])
        >>> narrow_to_breadth(v, 1.0, face)[:, 0].round(3).tolist()  # right side's room 1.0, from the face on
        [-1.0, 0.95, 0.976, 1.0, 0.0, 0.0]
        >>> narrow_to_breadth(v, 1.0, np.zeros(6, bool))[:, 0].round(3).tolist()  # from 0.85 of it
        [-1.0, 0.863, 0.935, 1.0, 0.0, 0.0]
    """
    R = np.eye(3) if standing is None else standing
    p = verts @ R.T
    out = verts.copy()
    for side, room in zip((-1.0, 1.0), side_room(p[:, 0], max_breadth * float(np.ptp(p[:, 2]))), strict=True):
        s = side * p[:, 0]
        reach = float(s.max())
        knee = max(face_reach(s, face), BREADTH_KNEE * room)
        if reach <= room or room <= knee:
            continue
        beyond = s > knee
        p[beyond, 0] = side * (knee + (s[beyond] - knee) * (room - knee) / (reach - knee))
        out[beyond] = p[beyond] @ R  # the rest keep their coordinates bit for bit
    return out


def limit_depth(verts: np.ndarray, max_depth: float, standing: np.ndarray | None = None) -> np.ndarray:
    """Vertices ``(N, 3)`` (head frame, centre at the origin) with the part behind the centre (z < 0, as the
    head stands: ``standing (3, 3)`` as in :func:`narrow_to_breadth`) scaled toward it so that the head is at
    most ``max_depth`` times as deep (z) as it is wide (x), the back at most halved. The face and the front
    half keep their coordinates bit for bit; a head within the limit is returned as it is.

    Example:
        >>> v = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0, 0.6], [0, 0, -0.3], [0, 0, -0.9]])
        >>> limit_depth(v, 1.2, None)[:, 2].round(3).tolist()  # depth 1.5 -> 1.2: the back 0.9 -> 0.6
        [0.0, 0.0, 0.6, -0.2, -0.6]
    """
    R = np.eye(3) if standing is None else standing
    p = verts @ R.T
    back = p[:, 2] < 0
    reach = -float(p[:, 2].min())
    room = max_depth * float(np.ptp(p[:, 0])) - float(p[:, 2].max())
    out = verts.copy()
    if reach <= 0 or room >= reach:
        return out
    p[back, 2] *= max(room / reach, 0.5)
    out[back] = p[back] @ R
    return out
