"""Stage 2, ID-aware initialization (``fast``: a full-head prior fitted to the person).

The head is a star-shaped surface around the head centre: a mirror-symmetric icosphere whose radius
per direction is
1. a head prior scaled by the person's face width and height: an egg-shaped cranium with a hair
   layer, ear regions and a neck, the union of star-shaped parts being the max of their radii;
2. inside the face, the person's own 3D landmark surface (rays from the centre hit the landmark mesh);
   eyes, mouth and the rim of the face are filled harmonically between face and prior;
3. then warped in the reference view so that its silhouette follows the head mask (per image angle,
   the ratio of mask radius to rendered radius scales the non-face part of the head);
4. where that warp would make a side of the head wider than ``max_breadth`` times its depth, that side
   takes only the share of the warp that keeps it within (:func:`.proportions.limit_breadth`);
5. where the head is deeper than ``max_depth`` times its width (a narrow silhouette before the prior's
   cranium), the back of the head is shortened to that (:func:`.proportions.limit_depth`).

Being star-shaped and built on a closed sphere, the result is watertight by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .camera import Camera, standing_rotation
from .face_geometry import CHIN, FACE_SIDES, FOREHEAD, MESH_POINTS, face_mesh_topology
from .image_io import mask_coverage
from .mesh import adjacency, harmonic_fill, rays_from_origin, symmetric_sphere
from .proportions import limit_breadth, limit_depth
from .registry import register
from .render import get_rasterizer
from .settings import setting
from .stage import Reporter
from .types import HeadMesh, InitInput

# Proportions of the head prior that are not settings: in face widths unless said otherwise.
CRANIUM_FRONT_MIN = 0.3  # the cranium reaches at least this far in front of the head centre
CRANIUM_FRONT_MARGIN = 0.02  # and a little further than the forehead landmark
HAIR_FADE_BELOW = 0.25  # hair fades in from this far below the centre's horizon (unit direction y)
HAIR_FADE_HEIGHT = 0.5  # over this rise of direction y
HAIR_FADE_FRONT = 0.6  # and out toward the face from direction z = 0.6
HAIR_FADE_DEPTH = 0.8  # over this change of direction z
EAR_DIRECTION = (-0.12, -0.15)  # (y, z) of the ear centres' direction, x = +-1 before normalising
EAR_WIDTH_RAD = 0.22  # angular radius of the ear bulge
NAPE_SLOPE_FADE = 0.5  # the nape slope fades in behind the ears, full from direction z = -0.5 (horizontal)
FACE_MIN_FORWARD = -0.2  # directions this far behind the centre are never face
RING_DECAY = 0.7  # face weight kept per vertex ring outside the face
SILHOUETTE_SCALE = (0.6, 1.8)  # the silhouette warp scales each image angle within this range
SILHOUETTE_SMOOTHING = 3.0  # Gaussian smoothing of the warp over image angle, in 1-degree bins
EDGE_REACH_BINS = 10.0  # past the photo's edge the outline's scale beside it fades over this many bins


def _angles(d: np.ndarray) -> np.ndarray:
    """Directions ``(N, 3)`` -> (azimuth about +Y from +Z, elevation) ``(N, 2)``, radians."""
    return np.stack([np.arctan2(d[:, 0], d[:, 2]), np.arcsin(np.clip(d[:, 1], -1, 1))], 1)


def _inside_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path

    return Path(poly).contains_points(pts)


@register("init", "head_prior")
class HeadPriorInit:
    @dataclass(frozen=True)
    class Config:
        subdivisions: int = setting(5, "icosphere subdivisions (5: 10242 vertices)", ge=1, le=7)
        skull_breadth: float = setting(0.56, "cranium half-breadth, in face widths", gt=0, le=2)
        skull_top: float = setting(0.64, "cranium height above the head centre, in face heights", gt=0, le=2)
        skull_bottom: float = setting(0.42, "cranium extent below the head centre, in face heights", gt=0, le=2)
        skull_back: float = setting(0.78, "cranium extent behind the head centre, in face widths", gt=0, le=2)
        hair_thickness: float = setting(0.06, "hair layer on top and back, in face widths", ge=0, le=1)
        neck_radius: float = setting(0.36, "neck radius, in face widths", gt=0, le=1)
        nape_slope: float = setting(
            1.0,
            "behind the ears, how far the back of the head (hair included) runs down in a straight slope to the "
            "neck at the chin's height, instead of curving in under the cranium (0: an egg on a neck column)",
            ge=0,
            le=1,
        )
        neck_length: float = setting(0.5, "neck below the chin, in face heights", ge=0, le=2)
        ear_size: float = setting(0.09, "ear region bulge, in face widths", ge=0, le=0.5)
        blend_rings: int = setting(
            8,
            "vertex rings over which the face blends harmonically into the prior (4 left a groove around the face "
            "that crossed the cheek at yaw 30-60)",
            ge=0,
            le=32,
        )
        silhouette_fit: bool = setting(True, "warp the prior to the head mask at the reference view")
        neck_max_scale: float = setting(1.1, "largest silhouette-warp scale below the chin", ge=0.5, le=2)
        depth_follow: float = setting(0.35, "how much depth follows the silhouette warp", ge=0, le=1)
        max_breadth: float = setting(
            1.15,
            "the head, hair included, is at most this many times as wide as it is deep (as it stands, levelled as "
            "export levels it): on a side where the silhouette is wider (hair spread flat, an arm raised to the "
            "head, a neighbour's hair beside the face) the warp to it goes only that far (real heads: 0.75-0.9 "
            "without hair and ears)",
            ge=0.5,
            le=3,
        )
        max_depth: float = setting(
            1.28,
            "the head, hair included, is at most this many times as deep as it is wide (as it stands): behind a "
            "narrow silhouette the back of the head is shortened to that (real heads with hair and ears: about "
            "1.0-1.25)",
            ge=0.5,
            le=3,
        )

    def __init__(self, cfg: HeadPriorInit.Config) -> None:
        self.cfg = cfg
        self.raster = get_rasterizer("torch")
        face_mesh_topology()  # imports mediapipe (~1 s): at load time, not in the first head

    def close(self) -> None:
        pass

    def __call__(self, inputs: InitInput, report: Reporter) -> HeadMesh:
        cfg = self.cfg
        a = inputs.analysis
        dirs, faces, mirror = symmetric_sphere(cfg.subdivisions)
        lm = a.landmarks_3d
        fw = float(np.linalg.norm(lm[FACE_SIDES[1]] - lm[FACE_SIDES[0]]))
        fh = float(np.linalg.norm(lm[FOREHEAD] - lm[CHIN]))
        r_prior = self.prior_radius(dirs, lm, fw, fh)
        report(0.1, "head prior")
        r, face_w = self.fit_face(dirs, faces, r_prior, lm)
        report(0.6, "face fitted")
        prior = verts = dirs * r[:, None]
        if cfg.silhouette_fit:
            verts = self.fit_silhouette(
                prior,
                faces,
                face_w,
                a.camera,
                a.head_mask,
                chin_y=float(lm[CHIN, 1]),
                known=a.photo_pixels(),
                report=report.span(0.6, 1.0),
            )
        standing = standing_rotation(a.camera.center)
        verts = limit_breadth(prior, verts, cfg.max_breadth, face_w >= 0.5, standing)
        verts = limit_depth(verts, cfg.max_depth, standing)
        return HeadMesh(
            vertices=verts.astype(np.float32),
            faces=faces.copy(),
            mirror=mirror.copy(),
            face_weight=face_w.astype(np.float32),
        )

    def prior_radius(self, d: np.ndarray, lm: np.ndarray, fw: float, fh: float) -> np.ndarray:
        """Radius ``(N,)`` of the head prior along unit directions ``(N, 3)``."""
        cfg = self.cfg
        r = self.cranium_radius(d, lm, fw, fh)
        if cfg.nape_slope > 0:
            drop = max(-float(lm[CHIN, 1]), 0.1 * fh)
            top = self.cranium_radius(horizontal(d), lm, fw, fh)
            r = np.maximum(r, cfg.nape_slope * nape_radius(d, top, np.minimum(cfg.neck_radius * fw, top), drop))
        # Ear regions on both sides, slightly behind and below the centre.
        for sx in (-1.0, 1.0):
            c = np.array([sx, *EAR_DIRECTION])
            c /= np.linalg.norm(c)
            ang = np.arccos(np.clip(d @ c, -1, 1))
            r = r + cfg.ear_size * fw * np.exp(-((ang / EAR_WIDTH_RAD) ** 2))
        # Neck: a vertical cylinder from the centre down to below the chin.
        bottom = -float(lm[CHIN, 1]) + cfg.neck_length * fh
        horiz = np.linalg.norm(d[:, [0, 2]], axis=1)
        down = np.clip(-d[:, 1], 1e-9, None)
        r_neck = np.where(d[:, 1] < 0, np.minimum(cfg.neck_radius * fw / np.maximum(horiz, 1e-9), bottom / down), 0)
        return np.maximum(r, r_neck)

    def cranium_radius(self, d: np.ndarray, lm: np.ndarray, fw: float, fh: float) -> np.ndarray:
        """Radius ``(N,)`` of the egg-shaped cranium with its hair layer over the top and back."""
        cfg = self.cfg
        front = max(float(lm[FOREHEAD, 2]), CRANIUM_FRONT_MIN * fw) + CRANIUM_FRONT_MARGIN * fw
        ax = cfg.skull_breadth * fw
        ay = np.where(d[:, 1] > 0, cfg.skull_top * fh, cfg.skull_bottom * fh)
        az = np.where(d[:, 2] > 0, front, cfg.skull_back * fw)
        r = 1.0 / np.sqrt((d[:, 0] / ax) ** 2 + (d[:, 1] / ay) ** 2 + (d[:, 2] / az) ** 2)
        # The hair fades toward the face and the nape.
        hair = np.clip((d[:, 1] + HAIR_FADE_BELOW) / HAIR_FADE_HEIGHT, 0, 1) * np.clip(
            (HAIR_FADE_FRONT - d[:, 2]) / HAIR_FADE_DEPTH, 0, 1
        )
        return r + cfg.hair_thickness * fw * hair

    def fit_face(
        self, dirs: np.ndarray, faces: np.ndarray, r_prior: np.ndarray, lm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Put the landmark surface into the radius field; returns (radius, face weight) ``(N,)``."""
        tris, oval = face_mesh_topology()
        r_face = rays_from_origin(dirs, lm[:MESH_POINTS], tris)
        # Directions inside the face oval (in azimuth/elevation) are face, hit or not (eyes, mouth).
        ang = _angles(dirs)
        oval_ang = _angles(lm[oval] / np.linalg.norm(lm[oval], axis=1, keepdims=True))
        inside = _inside_polygon(ang, oval_ang) & (dirs[:, 2] > FACE_MIN_FORWARD)
        hit = ~np.isnan(r_face) & inside
        # Rings around the face are free; beyond them the prior holds.
        adj = adjacency(faces, len(dirs))
        ring = inside.copy()
        for _ in range(self.cfg.blend_rings):
            ring = ring | (adj @ ring.astype(float) > 0)
        fixed = hit | ~ring
        values = np.where(hit, r_face, r_prior)
        r = harmonic_fill(values, fixed, faces)
        face_w = np.where(inside, 1.0, 0.0)
        # A soft weight over the rings, for the silhouette warp and the symmetry prior.
        w = face_w.copy()
        for _ in range(self.cfg.blend_rings):
            w = np.maximum(w, RING_DECAY * (adj @ w) / np.maximum(adj.sum(1).A1, 1))
        return r, w

    def fit_silhouette(
        self,
        verts: np.ndarray,
        faces: np.ndarray,
        face_w: np.ndarray,
        cam: Camera,
        mask: np.ndarray,
        chin_y: float,
        known: np.ndarray | None = None,
        iterations: int = 2,
        res: int = 256,
        report: Reporter | None = None,
    ) -> np.ndarray:
        """Scale the non-face part of the head, per image angle about the head centre, so its
        reference-view silhouette follows ``mask``. Below the chin (the neck, where masks also hold
        collars and hair) the scale may shrink but grows by at most ``neck_max_scale``. Where the mask
        runs to the edge of the ``known`` pixels (the photo's edge, the crop's) the head goes on past
        it: there the scale only grows."""
        small = cam.resized(res)
        m = mask_coverage(mask, res) > 0.5
        center_uv, _ = small.project(np.zeros((1, 3)))
        r_mask = polar_radius(m, center_uv[0])
        if r_mask is None:
            return verts
        seen = np.ones_like(m) if known is None else mask_coverage(known, res) > 0.5
        r_seen = polar_radius(seen, center_uv[0])
        cut = r_mask >= r_seen - 1.0 if r_seen is not None else np.zeros(len(r_mask), bool)
        tri = torch.tensor(faces)
        for it in range(iterations):
            if report is not None:
                report(it / iterations, "silhouette")
            pos = small.clip(torch.tensor(verts, dtype=torch.float64))
            sil = self.raster.rasterize(pos.float(), tri, (res, res)).mask.numpy()
            r_sil = polar_radius(sil, center_uv[0])
            if r_sil is None:
                return verts
            k = np.clip(r_mask / np.maximum(r_sil, 1.0), *SILHOUETTE_SCALE)
            k = past_edge_scale(k, cut)
            k = _smooth_circular(k, SILHOUETTE_SMOOTHING)
            uv, _ = small.project(verts)
            theta = np.arctan2(uv[:, 1] - center_uv[0, 1], uv[:, 0] - center_uv[0, 0])
            kv = np.interp(theta, np.linspace(-np.pi, np.pi, len(k), endpoint=False), k, period=2 * np.pi)
            kv = np.where(verts[:, 1] < chin_y, np.minimum(kv, self.cfg.neck_max_scale), kv)
            kv = 1 + (kv - 1) * (1 - face_w)
            off = verts @ small.R.T  # camera-aligned offsets from the head centre
            off[:, :2] *= kv[:, None]
            off[:, 2] *= 1 + (kv - 1) * self.cfg.depth_follow
            verts = off @ small.R
        return verts


def horizontal(d: np.ndarray) -> np.ndarray:
    """Unit directions ``(N, 3)`` -> the horizontal unit directions of their azimuths ``(N, 3)`` (+Z at the poles)."""
    h = d * [1.0, 0.0, 1.0]
    n = np.linalg.norm(h, axis=1, keepdims=True)
    return np.where(n > 1e-6, h / np.maximum(n, 1e-12), [0.0, 0.0, 1.0])


def nape_radius(d: np.ndarray, top: np.ndarray, neck: np.ndarray, drop: float) -> np.ndarray:
    """Radius ``(N,)`` along unit directions ``(N, 3)`` of the slope behind the ears: at each azimuth a
    straight line from the head's radius ``top`` at the horizon down to radius ``neck`` at ``drop``
    below the centre, fading out toward the ears; 0 in front, above the horizon and below ``drop``.

    Example:
        >>> d = np.array([[0.0, -0.6, -0.8]])  # straight back, below the horizon
        >>> float(nape_radius(d, top=np.array([1.0]), neck=np.array([0.8]), drop=0.6)[0])  # at (0, -0.6, -0.8)
        1.0
    """
    hz = horizontal(d)[:, 2]
    h = np.linalg.norm(d[:, [0, 2]], axis=1)
    down = np.clip(-d[:, 1], 0, None)
    t = top / np.maximum(h + (top - neck) * down / drop, 1e-12)
    behind = np.clip(-hz / NAPE_SLOPE_FADE, 0, 1)
    return np.where((d[:, 1] <= 0) & (t * down <= drop), t * behind, 0.0)


def polar_radius(mask: np.ndarray, center: np.ndarray, bins: int = 360) -> np.ndarray | None:
    """Per angle ``(bins,)``, the distance from ``center`` (pixels) to the end of the mask's run that
    starts at the centre; None when the centre is outside the mask."""
    H, W = mask.shape
    cx, cy = center
    if not (0 <= int(cy) < H and 0 <= int(cx) < W) or not mask[int(cy), int(cx)]:
        return None
    theta = np.linspace(-np.pi, np.pi, bins, endpoint=False)
    steps = np.arange(0, 1.5 * max(H, W), 0.5)
    xs = cx + np.cos(theta)[:, None] * steps[None]
    ys = cy + np.sin(theta)[:, None] * steps[None]
    ok = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    inside = np.zeros_like(ok)
    inside[ok] = mask[ys[ok].astype(int), xs[ok].astype(int)]
    first_out = np.argmax(~inside, axis=1)
    first_out[inside.all(1)] = len(steps) - 1
    return steps[first_out]


def past_edge_scale(k: np.ndarray, cut: np.ndarray, reach: float = EDGE_REACH_BINS) -> np.ndarray:
    """Silhouette scales per image angle ``k (B,)`` where the angles ``cut (B,)`` bool end at the photo's
    edge: there the head goes on (never shrunk to an edge that is not its outline) at the scale its
    outline shows, the median over the angles that show it, or, next to those angles, at theirs, fading
    from it over ``reach`` bins (Gaussian). With no outline anywhere, at the prior's own scale.

    Example:
        >>> cut = np.arange(12) >= 4                          # bins 4-11 end at the photo's edge
        >>> past_edge_scale(np.array([1.3, 1.1, 1.1, 1.3] + [0.5] * 8), cut, reach=2).round(2).tolist()
        [1.3, 1.1, 1.1, 1.3, 1.29, 1.26, 1.23, 1.21, 1.21, 1.23, 1.26, 1.29]
    """
    if not cut.any() or cut.all():
        return np.where(cut, np.maximum(k, 1.0), k)
    i = np.arange(len(k))
    seen = i[~cut]
    gap = np.abs(i[:, None] - seen[None, :])
    gap = np.minimum(gap, len(k) - gap)  # circular
    near = seen[np.argmin(gap, axis=1)]
    fade = np.exp(-0.5 * (gap.min(1) / reach) ** 2)
    own = float(np.median(k[seen]))
    return np.where(cut, np.maximum(k, own + (k[near] - own) * fade), k)


def _smooth_circular(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, mode="wrap")
