"""Stage 5, texture (``fast``: back-projection + mirroring + progressive classical inpainting).

1. UV atlas with xatlas; every texel of the atlas knows its surface point and normal.
2. Back-projection of the photo from the reference view onto visible, camera-facing texels.
3. Mirroring: texels still empty take the colour of their left/right mirror point when that one
   was seen in the photo (the mesh's vertex mirror map gives the mirrored point exactly).
4. Progressive inpainting along the paper's camera trajectory (front, sides, back, then from above):
   each view renders the current texture, fills its empty pixels with a classical inpainter
   (OpenCV Telea), and back-projects the new pixels into the texels that are still empty.
5. Seams: texels no view saw and the atlas gutter are filled by push-pull, and filled regions are
   feathered into the photo region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch
import xatlas

from .camera import Camera
from .config import register
from .mesh import vertex_normals
from .render import get_rasterizer
from .types import HeadMesh, PortraitAnalysis, TexturedHead

Progress = Callable[[float, str], None]

# The paper's 15 inpainting views (elevation, azimuth), in order.
PAPER_TRAJECTORY = (
    (-15, -45),
    (-15, 45),
    (-15, 0),
    (-15, -90),
    (-15, 90),
    (-15, 120),
    (-15, -120),
    (-15, 150),
    (-15, -150),
    (-15, 180),
    (45, 0),
    (45, 90),
    (45, -90),
    (45, 135),
    (45, -135),
)


def unwrap(mesh: HeadMesh, resolution: int, padding: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas atlas -> (uv ``(M, 2)`` in [0, 1] v up, uv faces ``(F, 3)``, uv-to-vertex ``(M,)``).

    Faces keep their order and winding.
    """
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices, mesh.faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = resolution
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, idx, uv = atlas[0]
    return uv.astype(np.float32), idx.astype(np.int64), vmap.astype(np.int64)


def push_pull(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown pixels of ``img (H, W, C)`` float from ``known (H, W)`` bool by a mean pyramid."""
    w = known.astype(np.float32)
    levels = [(img * w[..., None], w)]
    while min(levels[-1][1].shape) > 1:
        c, ww = levels[-1]
        h2, w2 = (c.shape[0] + 1) // 2, (c.shape[1] + 1) // 2
        c = cv2.resize(c, (w2, h2), interpolation=cv2.INTER_AREA)
        ww = cv2.resize(ww, (w2, h2), interpolation=cv2.INTER_AREA)
        levels.append((c.reshape(h2, w2, -1), ww))
    c, ww = levels[-1]
    filled = c / np.maximum(ww, 1e-8)[..., None]
    for c, ww in reversed(levels[:-1]):
        up = cv2.resize(filled, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR).reshape(c.shape)
        a = np.clip(ww, 0, 1)[..., None]
        filled = np.where(ww[..., None] > 1e-6, c / np.maximum(ww, 1e-8)[..., None], up) * a + up * (1 - a)
    return np.where(known[..., None], img, filled)


def _pixel_index(pix: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(P, 2)`` -> clamped (row, col) integer indices."""
    return (np.clip(pix[:, 1].astype(int), 0, height - 1), np.clip(pix[:, 0].astype(int), 0, width - 1))


def ring_prior(pts: np.ndarray, colors: np.ndarray, seen: np.ndarray, min_azimuth_deg: float) -> np.ndarray:
    """Colours ``(P, 3)`` (NaN where none) continuing the outermost seen ring around the head.

    Heads are close to rotationally alike in what covers them at a given height (hair, headwear,
    ears, neck): each texel takes the colour of a seen, non-face texel at its elevation from the
    side it is on, its azimuth reflected back into the seen ring so the ring's variation continues.
    """
    # Contiguous float64 columns: NumPy's float32 arctan2 on strided columns gave last-bit differences
    # between runs on the same input (measured), which changed nearest neighbours below.
    x, y, z = (np.ascontiguousarray(pts[:, i], dtype=np.float64) for i in range(3))
    r = np.sqrt(x * x + y * y + z * z)
    elev = np.arcsin(np.clip(y / np.maximum(r, 1e-9), -1, 1))
    az = np.abs(np.arctan2(x, z))
    side = x >= 0
    out = np.full_like(colors, np.nan)
    from scipy.spatial import cKDTree

    for sd in (True, False):
        ring = seen & (side == sd) & (az > np.radians(min_azimuth_deg))
        if ring.sum() < 50:
            continue
        lo, hi = np.quantile(az[ring], [0.05, 1.0])
        width = max(hi - lo, 1e-3)
        q = side == sd
        a = az[q]
        beyond = a > hi
        a = np.where(beyond, hi - np.mod(a - hi, width), a)  # reflect back into the ring
        tree = cKDTree(np.stack([elev[ring], 0.5 * az[ring]], 1))
        _, nn = tree.query(np.stack([elev[q], 0.5 * a], 1))
        c = colors[ring][nn]
        # Only where the ring has something at that height.
        dz = np.abs(elev[ring][nn] - elev[q])
        c[dz > np.radians(8)] = np.nan
        out[q] = c
    return out


@dataclass
class Atlas:
    """A UV atlas and its used texels: ``idx (P,)`` flat texel indices, ``pts``/``nrm (P, 3)``."""

    uv: np.ndarray
    uv_faces: np.ndarray
    uv_to_vertex: np.ndarray
    tri_id: np.ndarray
    bary: np.ndarray
    idx: np.ndarray
    pts: np.ndarray
    nrm: np.ndarray


@register("texture", "classical")
class ClassicalTexture:
    @dataclass
    class Config:
        texture_size: int = field(default=1024, metadata={"help": "UV map side, texels"})
        atlas_padding: int = field(default=4, metadata={"help": "texels between UV charts"})
        view_size: int = field(default=320, metadata={"help": "render side of each inpainting view"})
        min_facing: float = field(
            default=0.4, metadata={"help": "cos(normal, view) below which the photo is not projected"}
        )
        view_min_facing: float = field(default=0.2, metadata={"help": "the same for inpainting views"})
        mirror: bool = field(default=True, metadata={"help": "fill the unseen side from the mirrored seen side"})
        mirror_margin: float = field(
            default=0.3, metadata={"help": "use the mirror point when it faced the camera this much better (cos)"}
        )
        ring_prior: bool = field(
            default=True, metadata={"help": "continue the outermost seen hair/headwear ring around the unseen head"}
        )
        ring_min_azimuth: float = field(
            default=50.0, metadata={"help": "seen texels beyond this azimuth (deg) form the ring"}
        )
        prior_distance: float = field(
            default=12.0,
            metadata={"help": "view pixels from known colour over which inpainting hands over to the ring prior"},
        )
        inpaint_radius: int = field(default=6, metadata={"help": "Telea inpainting radius, view pixels"})
        feather: float = field(default=3.0, metadata={"help": "seam blur sigma at filled regions, texels"})
        mask_erode: int = field(
            default=3, metadata={"help": "head-mask erosion before projecting the photo, crop pixels"}
        )

    def __init__(self, cfg: "ClassicalTexture.Config"):
        self.cfg = cfg
        self.raster = get_rasterizer("torch")

    # -- geometry helpers -------------------------------------------------------------------
    def _texels(self, mesh: HeadMesh, uv: np.ndarray, uv_faces: np.ndarray):
        """Rasterize the atlas: per texel triangle id ``(T, T)``, surface point and normal ``(T, T, 3)``."""
        T = self.cfg.texture_size
        u = torch.tensor(uv, dtype=torch.float32)
        pos = torch.stack([u[:, 0] * 2 - 1, 1 - u[:, 1] * 2, torch.zeros_like(u[:, 0]), torch.ones_like(u[:, 0])], 1)
        tri = torch.tensor(uv_faces)
        rast = self.raster.rasterize(pos, tri, (T, T))
        v = torch.tensor(mesh.vertices, dtype=torch.float32)
        n = vertex_normals(v, torch.tensor(mesh.faces))
        faces = torch.tensor(mesh.faces)
        # uv_faces and mesh.faces index the same triangles, so interpolate on the mesh's own corners.
        p = self.raster.interpolate(v, rast, faces).numpy()
        nn = torch.nn.functional.normalize(self.raster.interpolate(n, rast, faces), dim=-1).numpy()
        return rast.tri_id.numpy(), rast.bary.numpy(), p, nn

    def _depth_map(self, mesh: HeadMesh, cam: Camera) -> np.ndarray:
        v = torch.tensor(mesh.vertices, dtype=torch.float64)
        tri = torch.tensor(mesh.faces)
        rast = self.raster.rasterize(cam.clip(v).float(), tri, (cam.height, cam.width))
        z = self.raster.interpolate(cam.to_camera(v)[:, 2:].float(), rast, tri)[..., 0].numpy()
        return np.where(rast.mask.numpy(), z, np.inf)

    def _visible(self, pts: np.ndarray, nrm: np.ndarray, cam: Camera, depth: np.ndarray, min_facing: float):
        """Texels ``(P, 3)`` -> (pixel ``(P, 2)``, visible ``(P,)``, facing cos ``(P,)``)."""
        uv, z = cam.project(pts)
        to_cam = cam.center[None] - pts
        cos = (nrm * to_cam).sum(1) / np.linalg.norm(to_cam, axis=1)
        yi, xi = _pixel_index(uv, cam.width, cam.height)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        tol = 0.004 + 0.002 * np.linalg.norm(cam.center)
        vis = inside & (cos > min_facing) & (z <= depth[yi, xi] + tol)
        return uv, vis, cos

    @staticmethod
    def _sample(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """Bilinear colours ``(P, 3)`` float of ``img (H, W, 3)`` at pixels ``uv (P, 2)``."""
        H, W = img.shape[:2]
        x = np.clip(uv[:, 0] - 0.5, 0, W - 1)
        y = np.clip(uv[:, 1] - 0.5, 0, H - 1)
        x0 = np.minimum(x.astype(int), W - 2)
        y0 = np.minimum(y.astype(int), H - 2)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        im = img.astype(np.float32)
        top = im[y0, x0] * (1 - fx) + im[y0, x0 + 1] * fx
        bot = im[y0 + 1, x0] * (1 - fx) + im[y0 + 1, x0 + 1] * fx
        return top * (1 - fy) + bot * fy

    # -- the stage -------------------------------------------------------------------------
    def __call__(self, a: PortraitAnalysis, mesh: HeadMesh, progress: Progress | None = None) -> TexturedHead:
        cfg = self.cfg
        T = cfg.texture_size
        report = progress or (lambda f, m: None)
        at = self._atlas(mesh)
        tri_id, bary, idx, pts, nrm = at.tri_id, at.bary, at.idx, at.pts, at.nrm
        report(0.1, "uv atlas")
        colors = np.zeros((len(idx), 3), np.float32)
        known = np.zeros(len(idx), bool)
        source = np.zeros(len(idx), np.uint8)  # 0 none, 1 photo, 2 mirror, 3 views, 4 uv fill

        # 2. The photo, from the reference view.
        cam = a.camera
        vis, cos, mask, ref_depth = self._project_photo(a, mesh, pts, nrm, colors)
        known |= vis
        source[vis] = 1
        report(0.2, "photo projected")

        # 3. Mirror the seen side onto the unseen one.
        if cfg.mirror:
            mp = self._mirror_points(mesh, tri_id.ravel()[idx], bary.reshape(-1, 3)[idx])
            mpix, mvis, mcos = self._visible(mp, nrm * [-1, 1, 1], cam, ref_depth, cfg.min_facing)
            # Unseen texels, and texels seen at a grazing angle whose mirror point faced the camera.
            take = mvis & mask[_pixel_index(mpix, cam.width, cam.height)] & (~known | (mcos > cos + cfg.mirror_margin))
            colors[take] = self._sample(a.crop, mpix[take])
            known |= take
            source[take] = 2
        report(0.3, "mirrored")

        # A prior for what no photo pixel shows: the outermost seen ring, continued around the head.
        fw = (mesh.face_weight[mesh.faces[tri_id.ravel()[idx]]] * bary.reshape(-1, 3)[idx]).sum(1)
        prior = ring_prior(pts, colors, (source == 1) & (fw < 0.5), cfg.ring_min_azimuth) if cfg.ring_prior else None

        # 4. Progressive inpainting along the trajectory.
        dist = float(np.linalg.norm(cam.center))
        for i, (elev, azim) in enumerate(PAPER_TRAJECTORY):
            vcam = Camera.orbit(azim, elev, dist, cam.fovy_deg * 1.1, cfg.view_size)
            depth = self._depth_map(mesh, vcam)
            sil = np.isfinite(depth)
            vpix, vvis, _ = self._visible(pts, nrm, vcam, depth, cfg.view_min_facing)
            todo = vvis & ~known
            if todo.any():
                img, have = self._render_known(vpix[vvis & known], colors[vvis & known], vcam.width, sil)
                holes = (sil & ~have).astype(np.uint8)
                # Pixels outside the head are holes too, so they are never used as sources.
                filled = cv2.inpaint(img, (holes | ~sil).astype(np.uint8), cfg.inpaint_radius, cv2.INPAINT_TELEA)
                new = self._sample(filled, vpix[todo])
                if prior is not None:
                    # Near known colour the inpainting continues it; farther away the prior takes over.
                    far = cv2.distanceTransform(holes, cv2.DIST_L2, 3)
                    alpha = np.clip(self._sample(far[..., None], vpix[todo])[:, 0] / cfg.prior_distance - 0.5, 0, 1)
                    p = prior[todo]
                    ok = ~np.isnan(p[:, 0])
                    new[ok] = new[ok] * (1 - alpha[ok, None]) + p[ok] * alpha[ok, None]
                colors[todo] = new
                known |= todo
                source[todo] = 3
            report(0.3 + 0.6 * (i + 1) / len(PAPER_TRAJECTORY), f"view {i + 1}/{len(PAPER_TRAJECTORY)}")

        # 5. Atlas: unseen texels and the gutter by push-pull, then feather the filled regions.
        tex = self._fill_atlas(idx, colors, known)
        stats = {
            "texels_used": int(len(idx)),
            "from_photo": float((source == 1).mean()),
            "from_mirror": float((source == 2).mean()),
            "from_views": float((source == 3).mean()),
            "from_uv_fill": float((~known).mean()),
        }
        src_map = np.zeros(T * T, np.float32)
        src_map[idx[source == 1]] = 1.0
        if cfg.feather > 0:
            blurred = cv2.GaussianBlur(tex, (0, 0), cfg.feather)
            photo = cv2.GaussianBlur(src_map.reshape(T, T), (0, 0), cfg.feather)
            keep = np.clip(photo * 1.5, 0, 1)[..., None]
            keep = np.where(src_map.reshape(T, T)[..., None] > 0, np.maximum(keep, 0.85), keep)
            tex = tex * keep + blurred * (1 - keep)
        texture = np.clip(tex + 0.5, 0, 255).astype(np.uint8)
        # Used texels holding a colour (from any source, the atlas fill included).
        stats["coverage"] = float(np.isfinite(tex.reshape(-1, 3)[idx]).all(1).mean())
        stats["seen_coverage"] = float(known.mean())
        report(1.0, "texture done")
        return TexturedHead(
            mesh=mesh, uv=at.uv, uv_faces=at.uv_faces, uv_to_vertex=at.uv_to_vertex, texture=texture, stats=stats
        )

    def _atlas(self, mesh: HeadMesh) -> "Atlas":
        """Step 1: the UV atlas and the surface point and normal of every used texel."""
        uv, uv_faces, uv_to_vertex = unwrap(mesh, self.cfg.texture_size, self.cfg.atlas_padding)
        tri_id, bary, pts_map, nrm_map = self._texels(mesh, uv, uv_faces)
        idx = np.nonzero((tri_id >= 0).ravel())[0]
        return Atlas(
            uv, uv_faces, uv_to_vertex, tri_id, bary, idx, pts_map.reshape(-1, 3)[idx], nrm_map.reshape(-1, 3)[idx]
        )

    def _project_photo(self, a: PortraitAnalysis, mesh: HeadMesh, pts: np.ndarray, nrm: np.ndarray, colors: np.ndarray):
        """Step 2: photo colours into ``colors`` at the texels ``pts``/``nrm`` seen from the reference
        view. Returns (seen ``(P,)``, facing cos ``(P,)``, eroded head mask, reference depth map)."""
        cam = a.camera
        k = self.cfg.mask_erode * 2 + 1
        mask = cv2.erode(a.head_mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
        ref_depth = self._depth_map(mesh, cam)
        pix, vis, cos = self._visible(pts, nrm, cam, ref_depth, self.cfg.min_facing)
        vis &= mask[_pixel_index(pix, cam.width, cam.height)]
        colors[vis] = self._sample(a.crop, pix[vis])
        return vis, cos, mask, ref_depth

    def _fill_atlas(self, idx: np.ndarray, colors: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Known texel colours into a ``(T, T, 3)`` float map; the rest (unseen texels and the
        gutter) by push-pull."""
        T = self.cfg.texture_size
        tex = np.zeros((T * T, 3), np.float32)
        tex[idx[known]] = colors[known]
        have = np.zeros(T * T, bool)
        have[idx[known]] = True
        return push_pull(tex.reshape(T, T, 3), have.reshape(T, T))

    def _render_known(self, pix: np.ndarray, col: np.ndarray, size: int, sil: np.ndarray):
        """Splat known texel colours into a view image; returns (uint8 image, covered mask)."""
        acc = np.zeros((size * size, 3), np.float32)
        cnt = np.zeros(size * size, np.float32)
        yi, xi = _pixel_index(pix, size, size)
        flat = yi * size + xi
        np.add.at(acc, flat, col)
        np.add.at(cnt, flat, 1)
        have = (cnt > 0).reshape(size, size)
        img = (acc / np.maximum(cnt, 1)[:, None]).reshape(size, size, 3)
        # Close single-pixel gaps between splats before deciding what is a hole.
        closed = cv2.morphologyEx(have.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0
        img = push_pull(img, have)
        have = closed & sil
        return np.clip(img, 0, 255).astype(np.uint8), have

    @staticmethod
    def _mirror_points(mesh: HeadMesh, tids: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """Surface points ``(P, 3)`` mirrored through the mesh's left/right vertex map."""
        corners = mesh.mirror[mesh.faces[tids]]
        return (mesh.vertices[corners] * bary[..., None]).sum(1)
