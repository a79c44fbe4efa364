"""Stage 2, ID-aware initialization (``fast``: a full-head prior fitted to the person).

The head is a star-shaped surface around the head centre: a mirror-symmetric icosphere whose radius
per direction is
1. a head prior scaled by the person's face width and height: an egg-shaped cranium with a hair
   layer, ear regions and a neck, the union of star-shaped parts being the max of their radii;
2. inside the face, the person's own 3D landmark surface (rays from the centre hit the landmark mesh);
   eyes, mouth and the rim of the face are filled harmonically between face and prior;
3. then warped in the reference view so that its silhouette follows the head mask (per image angle,
   the ratio of mask radius to rendered radius scales the non-face part of the head).

Being star-shaped and built on a closed sphere, the result is watertight by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .camera import Camera
from .config import register
from .face_geometry import CHIN, FACE_SIDES, FOREHEAD
from .image_io import mask_coverage
from .mesh import adjacency, harmonic_fill, symmetric_sphere
from .render import get_rasterizer
from .types import HeadMesh, PortraitAnalysis


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


def _angles(d: np.ndarray) -> np.ndarray:
    """Directions ``(N, 3)`` -> (azimuth about +Y from +Z, elevation) ``(N, 2)``, radians."""
    return np.stack([np.arctan2(d[:, 0], d[:, 2]), np.arcsin(np.clip(d[:, 1], -1, 1))], 1)


def _inside_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path

    return Path(poly).contains_points(pts)


@register("init", "head_prior")
class HeadPriorInit:
    @dataclass
    class Config:
        subdivisions: int = field(default=5, metadata={"help": "icosphere subdivisions (5: 10242 vertices)"})
        skull_breadth: float = field(default=0.56, metadata={"help": "cranium half-breadth, in face widths"})
        skull_top: float = field(
            default=0.64, metadata={"help": "cranium height above the head centre, in face heights"}
        )
        skull_bottom: float = field(
            default=0.42, metadata={"help": "cranium extent below the head centre, in face heights"}
        )
        skull_back: float = field(
            default=0.78, metadata={"help": "cranium extent behind the head centre, in face widths"}
        )
        hair_thickness: float = field(default=0.06, metadata={"help": "hair layer on top and back, in face widths"})
        neck_radius: float = field(default=0.36, metadata={"help": "neck radius, in face widths"})
        neck_length: float = field(default=0.5, metadata={"help": "neck below the chin, in face heights"})
        ear_size: float = field(default=0.09, metadata={"help": "ear region bulge, in face widths"})
        blend_rings: int = field(default=4, metadata={"help": "vertex rings blending face and prior"})
        silhouette_fit: bool = field(
            default=True, metadata={"help": "warp the prior to the head mask at the reference view"}
        )
        neck_max_scale: float = field(default=1.1, metadata={"help": "largest silhouette-warp scale below the chin"})
        depth_follow: float = field(
            default=0.35, metadata={"help": "how much depth follows the silhouette warp (0..1)"}
        )

    def __init__(self, cfg: "HeadPriorInit.Config"):
        self.cfg = cfg
        self.raster = get_rasterizer("torch")
        face_mesh_topology()  # imports mediapipe (~1 s): at load time, not in the first head

    def __call__(self, a: PortraitAnalysis) -> HeadMesh:
        cfg = self.cfg
        dirs, faces, mirror = symmetric_sphere(cfg.subdivisions)
        lm = a.landmarks_3d
        fw = float(np.linalg.norm(lm[FACE_SIDES[1]] - lm[FACE_SIDES[0]]))
        fh = float(np.linalg.norm(lm[FOREHEAD] - lm[CHIN]))
        r_prior = self.prior_radius(dirs, lm, fw, fh)
        r, face_w = self.fit_face(dirs, faces, r_prior, lm)
        verts = dirs * r[:, None]
        if cfg.silhouette_fit:
            verts = self.fit_silhouette(verts, faces, face_w, a.camera, a.head_mask, chin_y=float(lm[CHIN, 1]))
        return HeadMesh(
            vertices=verts.astype(np.float32),
            faces=faces.copy(),
            mirror=mirror.copy(),
            face_weight=face_w.astype(np.float32),
        )

    def prior_radius(self, d: np.ndarray, lm: np.ndarray, fw: float, fh: float) -> np.ndarray:
        """Radius ``(N,)`` of the head prior along unit directions ``(N, 3)``."""
        cfg = self.cfg
        front = max(float(lm[FOREHEAD, 2]), 0.3 * fw) + 0.02 * fw
        ax = cfg.skull_breadth * fw
        ay = np.where(d[:, 1] > 0, cfg.skull_top * fh, cfg.skull_bottom * fh)
        az = np.where(d[:, 2] > 0, front, cfg.skull_back * fw)
        r = 1.0 / np.sqrt((d[:, 0] / ax) ** 2 + (d[:, 1] / ay) ** 2 + (d[:, 2] / az) ** 2)
        # Hair layer over the top and back, fading toward the face and the nape.
        hair = np.clip((d[:, 1] + 0.25) / 0.5, 0, 1) * np.clip((0.6 - d[:, 2]) / 0.8, 0, 1)
        r = r + cfg.hair_thickness * fw * hair
        # Ear regions on both sides, slightly behind and below the centre.
        for sx in (-1.0, 1.0):
            c = np.array([sx, -0.12, -0.15])
            c /= np.linalg.norm(c)
            ang = np.arccos(np.clip(d @ c, -1, 1))
            r = r + cfg.ear_size * fw * np.exp(-((ang / 0.22) ** 2))
        # Neck: a vertical cylinder from the centre down to below the chin.
        bottom = -float(lm[CHIN, 1]) + cfg.neck_length * fh
        horiz = np.linalg.norm(d[:, [0, 2]], axis=1)
        down = np.clip(-d[:, 1], 1e-9, None)
        r_neck = np.where(d[:, 1] < 0, np.minimum(cfg.neck_radius * fw / np.maximum(horiz, 1e-9), bottom / down), 0)
        return np.maximum(r, r_neck)

    def fit_face(self, dirs: np.ndarray, faces: np.ndarray, r_prior: np.ndarray, lm: np.ndarray):
        """Put the landmark surface into the radius field; returns (radius, face weight) ``(N,)``."""
        tris, oval = face_mesh_topology()
        r_face = rays_from_origin(dirs, lm[:468], tris)
        # Directions inside the face oval (in azimuth/elevation) are face, hit or not (eyes, mouth).
        ang = _angles(dirs)
        oval_ang = _angles(lm[oval] / np.linalg.norm(lm[oval], axis=1, keepdims=True))
        inside = _inside_polygon(ang, oval_ang) & (dirs[:, 2] > -0.2)
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
            w = np.maximum(w, 0.7 * (adj @ w) / np.maximum(adj.sum(1).A1, 1))
        return r, w

    def fit_silhouette(
        self,
        verts: np.ndarray,
        faces: np.ndarray,
        face_w: np.ndarray,
        cam: Camera,
        mask: np.ndarray,
        chin_y: float,
        iterations: int = 2,
        res: int = 256,
    ) -> np.ndarray:
        """Scale the non-face part of the head, per image angle about the head centre, so its
        reference-view silhouette follows ``mask``. Below the chin (the neck, where masks also hold
        collars and hair) the scale may shrink but grows by at most ``neck_max_scale``."""
        small = cam.resized(res)
        m = mask_coverage(mask, res) > 0.5
        center_uv, _ = small.project(np.zeros((1, 3)))
        r_mask = polar_radius(m, center_uv[0])
        if r_mask is None:
            return verts
        tri = torch.tensor(faces)
        for _ in range(iterations):
            pos = small.clip(torch.tensor(verts, dtype=torch.float64))
            sil = self.raster.rasterize(pos.float(), tri, (res, res)).mask.numpy()
            r_sil = polar_radius(sil, center_uv[0])
            if r_sil is None:
                return verts
            k = np.clip(r_mask / np.maximum(r_sil, 1.0), 0.6, 1.8)
            k = _smooth_circular(k, 3.0)
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


def rays_from_origin(dirs: np.ndarray, verts: np.ndarray, tris: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Distance ``(N,)`` along unit rays from the origin to the nearest triangle hit, NaN for a miss
    (Moller-Trumbore, vectorized over rays x triangles)."""
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    e1, e2 = b - a, c - a
    out = np.full(len(dirs), np.nan)
    for s in range(0, len(dirs), chunk):
        d = dirs[s : s + chunk, None, :]
        p = np.cross(d, e2[None])
        det = (p * e1[None]).sum(-1)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tvec = -a[None]
        u = (tvec * p).sum(-1) * inv
        q = np.cross(tvec, e1[None])
        v = (d * q).sum(-1) * inv
        t = (q * e2[None]).sum(-1) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        t = np.where(hit, t, np.inf).min(1)
        out[s : s + chunk] = np.where(np.isfinite(t), t, np.nan)
    return out


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


def _smooth_circular(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x, sigma, mode="wrap")
