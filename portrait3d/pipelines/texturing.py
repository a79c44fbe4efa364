"""Texturing functions shared by the texture stages: the UV atlas and its texels, the paper's
camera trajectory, visibility, back-projection of images into texels, and filling the atlas.

Texel colours are kept per *used texel* (the texels a UV triangle covers): ``Atlas.idx`` gives
their flat indices in the ``(T, T)`` map, ``Atlas.pts``/``Atlas.nrm`` their surface points and
normals; a colour array ``(P, 3)`` float in [0, 255] and a ``known (P,)`` mask travel with them.

Example:
    >>> len(PAPER_TRAJECTORY), PAPER_TRAJECTORY[2]
    (15, (-15, 0))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial import cKDTree

from .camera import Camera, pixel_index
from .face_geometry import CHIN, FACE_SIDES, landmark_face_mask
from .mesh import vertex_normals
from .render import Rasterizer
from .types import HeadMesh, PortraitAnalysis
from .uv_unwrap import UVUnwrapper

#: The paper's 15 inpainting views (elevation, azimuth), in order: around the head at -15 degrees,
#: then from above at +45.
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
#: The views see a little more than the reference camera: its field of view times this.
VIEW_FOV_SCALE = 1.1
# A texel is visible when its camera depth is within this of the depth map (metres; the second term
# grows with the camera distance, as depth-map error does).
DEPTH_TOLERANCE = (0.004, 0.002)
#: Where a used texel's colour came from.
NONE, PHOTO, MIRROR, VIEWS = 0, 1, 2, 3


@dataclass
class Atlas:
    """A UV atlas and its used texels: ``idx (P,)`` flat texel indices, ``pts``/``nrm (P, 3)``;
    ``tri_id (T, T)`` and ``bary (T, T, 3)`` locate every texel on the mesh."""

    uv: np.ndarray
    uv_faces: np.ndarray
    uv_to_vertex: np.ndarray
    tri_id: np.ndarray
    bary: np.ndarray
    idx: np.ndarray
    pts: np.ndarray
    nrm: np.ndarray

    @property
    def size(self) -> int:
        return int(self.tri_id.shape[0])


def trajectory_cameras(ref: Camera, size: int) -> list[Camera]:
    """The :data:`PAPER_TRAJECTORY` views at the reference camera's distance, ``size`` pixels square."""
    dist = float(np.linalg.norm(ref.center))
    return [Camera.orbit(az, el, dist, ref.fovy_deg * VIEW_FOV_SCALE, size) for el, az in PAPER_TRAJECTORY]


def build_atlas(
    raster: Rasterizer,
    unwrapper: UVUnwrapper,
    mesh: HeadMesh,
    size: int,
    padding: int,
    check: Callable[[], None] | None = None,
) -> Atlas:
    """The UV atlas of ``mesh`` (``size`` texels square) and the surface point and normal of every used
    texel. ``check`` is called while xatlas runs and may raise to cancel."""
    uv, uv_faces, uv_to_vertex = unwrapper(mesh.vertices, mesh.faces, size, padding, check)
    tri_id, bary, pts_map, nrm_map = texel_surface(raster, mesh, uv, uv_faces, size)
    idx = np.nonzero((tri_id >= 0).ravel())[0]
    return Atlas(
        uv, uv_faces, uv_to_vertex, tri_id, bary, idx, pts_map.reshape(-1, 3)[idx], nrm_map.reshape(-1, 3)[idx]
    )


def texel_surface(
    raster: Rasterizer, mesh: HeadMesh, uv: np.ndarray, uv_faces: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterize the atlas: per texel triangle id ``(T, T)``, barycentrics ``(T, T, 3)``, surface point
    and normal ``(T, T, 3)`` (on the rasterizer's device: nvdiffrast on CUDA)."""
    dev = raster.device
    u = torch.tensor(uv, dtype=torch.float32, device=dev)
    pos = torch.stack([u[:, 0] * 2 - 1, 1 - u[:, 1] * 2, torch.zeros_like(u[:, 0]), torch.ones_like(u[:, 0])], 1)
    rast = raster.rasterize(pos, torch.tensor(uv_faces, device=dev), (size, size))
    v = torch.tensor(mesh.vertices, dtype=torch.float32, device=dev)
    faces = torch.tensor(mesh.faces, device=dev)
    n = vertex_normals(v, faces)
    # uv_faces and mesh.faces index the same triangles, so interpolate on the mesh's own corners.
    p = raster.interpolate(v, rast, faces).cpu().numpy()
    nn = torch.nn.functional.normalize(raster.interpolate(n, rast, faces), dim=-1).cpu().numpy()
    return rast.tri_id.cpu().numpy(), rast.bary.cpu().numpy(), p, nn


def depth_map(raster: Rasterizer, mesh: HeadMesh, cam: Camera) -> np.ndarray:
    """Camera depth ``(H, W)`` of the mesh at ``cam``, ``inf`` off the mesh."""
    dev = raster.device
    v = torch.tensor(mesh.vertices, dtype=torch.float64, device=dev)
    tri = torch.tensor(mesh.faces, device=dev)
    rast = raster.rasterize(cam.clip(v).float(), tri, (cam.height, cam.width))
    z = raster.interpolate(cam.to_camera(v)[:, 2:].float(), rast, tri)[..., 0].cpu().numpy()
    return np.where(rast.mask.cpu().numpy(), z, np.inf)


def visible_texels(
    pts: np.ndarray, nrm: np.ndarray, cam: Camera, depth: np.ndarray, min_facing: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels ``(P, 3)`` -> (pixel ``(P, 2)``, visible ``(P,)``, facing cos ``(P,)``): in the image,
    facing the camera by at least ``min_facing`` (one value, or one per texel) and not behind the depth
    map ``(H, W)``."""
    uv, z = cam.project(pts)
    to_cam = cam.center[None] - pts
    cos = (nrm * to_cam).sum(1) / np.linalg.norm(to_cam, axis=1)
    yi, xi = pixel_index(uv, cam.width, cam.height)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
    tol = DEPTH_TOLERANCE[0] + DEPTH_TOLERANCE[1] * np.linalg.norm(cam.center)
    vis = inside & (cos > min_facing) & (z <= depth[yi, xi] + tol)
    return uv, vis, cos


def sample_bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear colours ``(P, C)`` float of ``img (H, W, C)`` at pixels ``uv (P, 2)``."""
    H, W = img.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, W - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, H - 1)
    x0 = np.minimum(x.astype(int), W - 2)
    y0 = np.minimum(y.astype(int), H - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    im = img.astype(np.float32, copy=False)
    top = im[y0, x0] * (1 - fx) + im[y0, x0 + 1] * fx
    bot = im[y0 + 1, x0] * (1 - fx) + im[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def project_photo(
    raster: Rasterizer,
    a: PortraitAnalysis,
    mesh: HeadMesh,
    atlas: Atlas,
    colors: np.ndarray,
    min_facing: float | np.ndarray,
    mask_erode: int,
    grazing_blur: float = 0.0,
    background_rim: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The photo's colours into ``colors (P, 3)`` at the texels seen from the reference view inside the
    head mask (eroded by ``mask_erode`` crop pixels). With ``grazing_blur > 0`` a texel seen at a grazing
    angle averages the photo along the image direction its surface is not stretched in, over
    ``grazing_blur * (1 / cos - 1)`` pixels (:func:`sample_across_stretch`). With ``background_rim > 0``
    the mask's pixels above the chin within that many of its edge that look like the background are left
    out first (:func:`drop_background_rim`). Returns (seen ``(P,)``, facing cos ``(P,)``, eroded head
    mask, reference depth map)."""
    cam = a.camera
    head = photo_mask(a, background_rim)
    k = mask_erode * 2 + 1
    mask = cv2.erode(head.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    ref_depth = depth_map(raster, mesh, cam)
    pix, vis, cos = visible_texels(atlas.pts, atlas.nrm, cam, ref_depth, min_facing)
    vis &= mask[pixel_index(pix, cam.width, cam.height)]
    if grazing_blur > 0:
        step, _ = cam.project(atlas.pts[vis] + atlas.nrm[vis] * 1e-3)
        length = grazing_blur * (1.0 / np.maximum(cos[vis], 0.05) - 1.0)
        colors[vis] = sample_across_stretch(a.crop, pix[vis], step - pix[vis], length)
    else:
        colors[vis] = sample_bilinear(a.crop, pix[vis])
    return vis, cos, mask, ref_depth


def photo_mask(a: PortraitAnalysis, background_rim: int) -> np.ndarray:
    """The crop's pixels ``(S, S)`` bool the photo is projected from: the head mask, with the pixels within
    ``background_rim`` of its edge above the chin that look like the background beside them left out
    (:func:`drop_background_rim`; 0: none), unless they are enclosed by the head outside the face's outline
    (:func:`restore_enclosed`)."""
    head = a.head_mask.astype(bool)
    if background_rim <= 0:
        return head
    # Below the chin the mask's sides are the neck's cut, with clothes on both sides of it.
    neck = np.arange(head.shape[0])[:, None] > a.landmarks_px[CHIN, 1]
    kept = drop_background_rim(a.crop, head, background_rim, a.photo_pixels()) | (head & neck)
    # What looks like the wall but is enclosed by the head beside the face (an ear's shadowed bowl, dark
    # strands by the cheek) is the head. Inside the face's outline the cut stays: on a turned face's far
    # side what it cuts (a dark spot seen at a grazing angle) is painted from the near side instead.
    return restore_enclosed(kept, head, ~landmark_face_mask(a.landmarks_px, head.shape[0]))


def depth_inside_outline(lm_px: np.ndarray, size: int, pix: np.ndarray, start: float, width: float) -> np.ndarray:
    """How deep inside the face's landmark outline (their convex hull in the ``size``-square crop) the crop
    pixels ``pix (P, 2)`` lie, as weights ``(P,)`` in [0, 1]: 0 outside it and within ``start`` face widths
    of it, rising to 1 at ``start + width`` face widths in.

    Example:
        >>> lm = np.zeros((478, 3)); lm[:468, :2] = [[10, 10], [90, 10], [90, 90], [10, 90]] * 117
        >>> lm[234, :2], lm[454, :2] = (10, 50), (90, 50)            # the face is 80 px wide
        >>> pix = np.array([[50.0, 50.0], [12.0, 50.0], [200.0, 50.0]])
        >>> depth_inside_outline(lm, 128, pix, 0.1, 0.2).round(2).tolist()
        [1.0, 0.0, 0.0]
    """
    inside = cv2.distanceTransform(landmark_face_mask(lm_px, size).astype(np.uint8), cv2.DIST_L2, 5)
    face_w = max(float(np.linalg.norm(lm_px[FACE_SIDES[1], :2] - lm_px[FACE_SIDES[0], :2])), 1.0)
    d = sample_bilinear(inside[..., None], np.clip(pix, 0, size - 1))[:, 0] / face_w
    return np.clip((d - start) / width, 0, 1)


def drop_background_rim(img: np.ndarray, mask: np.ndarray, width: int, known: np.ndarray | None = None) -> np.ndarray:
    """``mask (H, W)`` bool without the pixels within ``width`` of its edge whose colour is nearer (in
    CIELAB) the local background than the local foreground of ``img (H, W, 3)`` uint8: a person mask
    that reaches a few pixels past the hair or cheek would paint the wall or flag behind onto the head's
    sides. The local colours are Gaussian averages (sigma ``2 * width``) of the pixels ``width`` to
    ``2 * width`` outside the mask (background) and more than ``width`` inside it (foreground); pixels
    off ``known (H, W)`` bool (past the photo's edge, where the crop repeats its edge) are neither.

    Example:
        >>> img = np.zeros((64, 64, 3), np.uint8); img[:, 32:] = 255    # a black head on a white wall
        >>> mask = np.zeros((64, 64), bool); mask[:, :36] = True        # the mask overshoots by 4 px
        >>> out = drop_background_rim(img, mask, 8)
        >>> bool(out[:, :32].all()), bool(out[:, 32:].any())
        (True, False)
    """
    m = mask.astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    inner = cv2.erode(m, kernel)
    grown = cv2.dilate(m, kernel)
    outer = cv2.dilate(grown, kernel) & ~grown & 1
    if known is not None:
        outer &= known.astype(np.uint8)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)

    def local_mean(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 2 * width)
        mean = cv2.GaussianBlur(lab * region[..., None], (0, 0), 2 * width) / np.maximum(w, 1e-6)[..., None]
        return mean, w

    (bg, w_bg), (fg, w_fg) = local_mean(outer), local_mean(inner)
    # Only where both sides are near: at the photo's border there is no background to compare with.
    rim = mask & ~inner.astype(bool) & (w_bg > MIN_LOCAL_WEIGHT) & (w_fg > MIN_LOCAL_WEIGHT)
    nearer_bg = np.linalg.norm(lab - bg, axis=2) < np.linalg.norm(lab - fg, axis=2)
    return mask & ~(rim & nearer_bg)


def restore_enclosed(kept: np.ndarray, mask: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``kept (H, W)`` bool, a cut of ``mask (H, W)``, with what it cut from inside the mask (not connected
    to the outside) restored within ``where (H, W)``.

    Example:
        >>> mask = np.zeros((8, 8), bool); mask[1:7, 1:7] = True
        >>> kept = mask.copy(); kept[3, 3] = kept[1, 4] = False      # a hole inside, a notch at the edge
        >>> out = restore_enclosed(kept, mask, np.ones((8, 8), bool))
        >>> bool(out[3, 3]), bool(out[1, 4])
        (True, False)
    """
    _, parts = cv2.connectedComponents((~kept).astype(np.uint8), connectivity=4)
    return kept | (~np.isin(parts, np.unique(parts[~mask])) & mask & where)


MIN_LOCAL_WEIGHT = 0.05  # share of a pixel's Gaussian neighbourhood that must be background (or foreground)


def sample_across_stretch(
    img: np.ndarray, pix: np.ndarray, stretch: np.ndarray, length: np.ndarray, taps: int = 9
) -> np.ndarray:
    """Colours ``(P, C)`` of ``img (H, W, C)`` at pixels ``pix (P, 2)``, each the mean of ``taps``
    bilinear samples on a segment of ``length (P,)`` pixels centred on it, perpendicular to the image
    direction ``stretch (P, 2)`` (the projected surface normal: the direction a grazing surface is
    stretched in). A photo pixel covers ``1 / cos`` times more surface along the stretch than across
    it; averaging across evens the two, so a grazing surface seen from the side shows soft colour
    instead of streaks of single pixel rows.

    Example:
        >>> img = np.zeros((8, 8, 1)); img[4] = 9.0  # one bright row, centred at y = 4.5
        >>> pix, along_x = np.array([[4.0, 4.5]]), np.array([[1.0, 0.0]])
        >>> [float(sample_across_stretch(img, pix, along_x, np.array([n]))[0, 0]) for n in (0.0, 4.0)]
        [9.0, 2.0]
    """
    d = stretch / np.maximum(np.linalg.norm(stretch, axis=1, keepdims=True), 1e-12)
    t = np.stack([-d[:, 1], d[:, 0]], 1)
    im = img.astype(np.float32, copy=False)
    acc = np.zeros((len(pix), img.shape[2]), np.float32)
    for f in np.linspace(-0.5, 0.5, taps):
        acc += sample_bilinear(im, pix + t * (f * length)[:, None])
    return acc / taps


def mirror_points(mesh: HeadMesh, tids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Surface points ``(P, 3)`` mirrored through the mesh's left/right vertex map, for points given by
    triangle ids ``(P,)`` and barycentrics ``(P, 3)``."""
    corners = mesh.mirror[mesh.faces[tids]]
    return (mesh.vertices[corners] * bary[..., None]).sum(1)


def mirror_share(gain: np.ndarray, margin: float, blend: float) -> np.ndarray:
    """How much of a seen texel's colour comes from its mirror point, ``(P,)`` in [0, 1], given by how much
    better the mirror point faced the camera (``gain (P,)``, a difference of cos): a half at ``margin``,
    rising from none to all over ``blend`` around it (a step at ``margin`` with ``blend`` 0).

    Example:
        >>> mirror_share(np.array([0.0, 0.2, 0.3, 0.4, 0.6]), 0.3, 0.2).round(2).tolist()
        [0.0, 0.0, 0.5, 1.0, 1.0]
        >>> mirror_share(np.array([0.29, 0.31]), 0.3, 0.0).tolist()
        [0.0, 1.0]
    """
    if blend <= 0:
        return (gain > margin).astype(np.float64)
    return np.clip((gain - margin) / blend + 0.5, 0, 1)


def splat_known(pix: np.ndarray, col: np.ndarray, size: int, sil: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splat known texel colours ``col (P, 3)`` at pixels ``pix (P, 2)`` into a ``size``-square view
    image; returns (uint8 image, covered mask ``(size, size)`` within the silhouette ``sil``)."""
    acc = np.zeros((size * size, 3), np.float32)
    cnt = np.zeros(size * size, np.float32)
    yi, xi = pixel_index(pix, size, size)
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


def fill_atlas(size: int, idx: np.ndarray, colors: np.ndarray, known: np.ndarray, dilate: int = 0) -> np.ndarray:
    """Known texel colours into a ``(T, T, 3)`` float map; the rest (unseen texels and the gutter) by
    nearest-rim dilation up to ``dilate`` texels away (see :func:`dilate_texture`), then push-pull."""
    tex = np.zeros((size * size, 3), np.float32)
    tex[idx[known]] = colors[known]
    have = np.zeros(size * size, bool)
    have[idx[known]] = True
    tex, grown = dilate_texture(tex.reshape(size, size, 3), have.reshape(size, size), dilate)
    return push_pull(tex, grown)


def atlas_texture(
    size: int, idx: np.ndarray, colors: np.ndarray, known: np.ndarray, photo: np.ndarray, feather: float
) -> np.ndarray:
    """The ``size x size`` uint8 texture of the texels ``idx (P,)`` with ``colors (P, 3)``: the unknown ones
    and the gutter by ``GUTTER_DILATE`` texels of dilation from each chart's rim, then push-pull
    (:func:`fill_atlas`), then the regions not from the photo (``photo (P,)``)
    blurred by ``feather`` texels, the photo's own texels kept (at least ``PHOTO_KEEP_MIN`` of each)."""
    tex = fill_atlas(size, idx, colors, known, GUTTER_DILATE)
    if feather > 0:
        src = np.zeros(size * size, np.float32)
        src[idx[photo]] = 1.0
        src = src.reshape(size, size)
        blurred = cv2.GaussianBlur(tex, (0, 0), feather)
        keep = np.clip(cv2.GaussianBlur(src, (0, 0), feather) * PHOTO_KEEP_GAIN, 0, 1)[..., None]
        keep = np.where(src[..., None] > 0, np.maximum(keep, PHOTO_KEEP_MIN), keep)
        tex = tex * keep + blurred * (1 - keep)
    return np.clip(tex + 0.5, 0, 255).astype(np.uint8)


GUTTER_DILATE = 4  # texels each chart bleeds into the gutter: a bilinear lookup at its edge reads its own colour
PHOTO_KEEP_GAIN = 1.5  # how fast the photo's own texels win over the blur away from a seam
PHOTO_KEEP_MIN = 0.85  # a texel from the photo keeps at least this much of itself


def dilate_texture(tex: np.ndarray, have: np.ndarray, radius: int, rim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The release's dilation of a UV map: every texel within ``radius`` steps (4-connected, as
    ``binary_dilation`` grows) of the ``have (T, T)`` texels takes the colour of the nearest (Euclidean)
    texel of their ``rim``-wide border. Returns the map and the grown ``have``.

    Example:
        >>> have = np.zeros((5, 5), bool); have[2, 2] = True
        >>> tex = np.zeros((5, 5, 1)); tex[2, 2] = 7
        >>> out, grown = dilate_texture(tex, have, radius=1)
        >>> int(grown.sum()), float(out[1, 2, 0]), float(out[0, 0, 0])
        (5, 7.0, 0.0)
    """
    from scipy import ndimage

    if radius <= 0 or not have.any():
        return tex, have
    border = have & ~ndimage.binary_erosion(have, iterations=rim, border_value=1)
    _, (ii, jj) = ndimage.distance_transform_edt(~border, return_indices=True)
    grow = ~have & (ndimage.distance_transform_cdt(~have, metric="taxicab") <= radius)
    out = tex.copy()
    out[grow] = tex[ii[grow], jj[grow]]
    return out, have | grow


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


def skin_like(colors: np.ndarray, skin: np.ndarray, sigmas: float = 4.5) -> np.ndarray:
    """Which colours ``(P, 3)`` (float, 0-255) look like the skin samples ``skin (S, 3)``: within ``sigmas``
    robust standard deviations of them in YCrCb (:func:`colour_distance`). ``(P,)`` bool."""
    return colour_distance(colors, skin) < sigmas


def hair_like(colors: np.ndarray, skin: np.ndarray, hair: np.ndarray, sigmas: float = 4.5) -> np.ndarray:
    """Which colours ``(P, 3)`` (float, 0-255) are hair: nearer the ``hair (H, 3)`` samples than the
    ``skin (S, 3)`` samples, and within ``sigmas`` of the hair (:func:`colour_distance`). ``(P,)`` bool.

    Dark brown hair is within a few sigmas of a face whose shadows widen its spread, so "unlike the
    skin" alone misses it; two models tell it from the skin, and neither takes a collar or a backlit ear.

    >>> skin, hair = np.array([[200.0, 150, 130]] * 9), np.array([[90.0, 60, 40]] * 9)
    >>> hair_like(np.array([[200.0, 150, 130], [95, 62, 40], [40, 60, 120]]), skin, hair).tolist()
    [False, True, False]
    """
    d_hair = colour_distance(colors, hair)
    return (d_hair < colour_distance(colors, skin)) & (d_hair < sigmas)


def colour_distance(colors: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """How far colours ``(P, 3)`` (float, 0-255) are from ``samples (S, 3)`` in YCrCb: ``(P,)`` robust
    standard deviations (median, 1.4826 x MAD per channel, with a floor), the channels' in quadrature."""
    ycc, ref = _ycrcb(colors), _ycrcb(samples)
    med = np.median(ref, 0)
    # A floor on the spread: samples of one flat colour must not make every other colour far from them.
    spread = np.maximum(1.4826 * np.median(np.abs(ref - med), 0), (6.0, 3.0, 3.0))
    return np.sqrt((((ycc - med) / spread) ** 2).sum(1))


def _ycrcb(colors: np.ndarray) -> np.ndarray:
    """RGB ``(P, 3)`` float 0-255 -> YCrCb ``(P, 3)`` float32 (OpenCV's 8-bit conversion)."""
    return cv2.cvtColor(np.clip(colors, 0, 255).astype(np.uint8)[:, None], cv2.COLOR_RGB2YCrCb)[:, 0].astype(np.float32)


def ring_prior(
    pts: np.ndarray,
    colors: np.ndarray,
    seen: np.ndarray,
    min_azimuth_deg: float,
    hair: np.ndarray | None = None,
    hair_min_y: float = 0.0,
    back_azimuth_deg: float = 100.0,
    check: Callable[[], None] = lambda: None,
    hairline_y: float = np.inf,
) -> tuple[np.ndarray, np.ndarray]:
    """Colours ``(P, 3)`` (NaN where none) continuing the outermost seen ring around the head, and
    ``(P,)`` how firmly they hold (1: over any colour inpainted from the seen side).

    Heads are close to rotationally alike in what covers them at a given height (hair, headwear,
    ears, neck): each texel takes the median colour of the ``SIDE_NEIGHBOURS`` seen, non-face texels
    nearest it in elevation on the side it is on, its azimuth reflected back into the seen ring so the
    ring's variation continues (the median: a stray texel of background in the ring does not tile a patch).
    At the back of the head (beyond ``back_azimuth_deg`` and above ``hair_min_y``, the nape) the ring
    is only its ``hair (P,)`` texels (not skin: cheeks and ears do not wrap around the back), taken from
    the nearest height that has them (the mean of ``BACK_NEIGHBOURS``), when a side has enough of them
    (:func:`enough_hair`), the two sides blended across the midline (where one side's hair is more than
    ``BACK_MAX_GAP_DEG`` of elevation away, the other's alone); these hold firmly, from 0 at
    ``BACK_RAMP_DEG`` before ``back_azimuth_deg`` to 1 at it. Above ``hairline_y`` the whole head takes the
    hair so, as firmly from ``CROWN_RAMP`` metres above it, so the top of a head the photo's edge cuts off
    is the hair seen at its sides, not its forehead's skin inpainted upward (what the photo shows there
    stays the photo's). ``check`` is called every ``QUERY_CHUNK`` texels and may raise to cancel.
    """
    # Contiguous float64 columns: NumPy's float32 arctan2 on strided columns gave last-bit differences
    # between runs on the same input (measured), which changed nearest neighbours below.
    x, y, z = (np.ascontiguousarray(pts[:, i], dtype=np.float64) for i in range(3))
    r = np.sqrt(x * x + y * y + z * z)
    elev = np.arcsin(np.clip(y / np.maximum(r, 1e-9), -1, 1))
    az = np.abs(np.arctan2(x, z))
    side = x >= 0
    out = np.full_like(colors, np.nan)
    hold = np.zeros(len(colors), np.float32)
    ramp = np.clip((az - np.radians(back_azimuth_deg - BACK_RAMP_DEG)) / np.radians(BACK_RAMP_DEG), 0, 1)
    back = ((y > hair_min_y) & (ramp > 0)) | (y > hairline_y) if hair is not None else np.zeros(len(x), bool)
    preds, weights = [], []
    for sd in (True, False):
        ring = seen & (side == sd) & (az > np.radians(min_azimuth_deg))
        if ring.sum() < RING_MIN_TEXELS:
            continue
        q = side == sd
        upper = ring & (y > hair_min_y)  # a collar's colour below the nape is not the hair's
        if back.any() and enough_hair(upper, hair, RING_MIN_TEXELS):
            seen_hair = upper & hair
            preds.append(_continue_ring(elev, az, colors, seen_hair, back, BACK_MAX_GAP_DEG, check, k=BACK_NEIGHBOURS))
            # Each side's hair fades into the other's across the back's midline.
            weights.append(np.clip(0.5 + (x[back] if sd else -x[back]) / (r[back] * BACK_MIDLINE), 0, 1) + 1e-6)
            q = q & ~back
        out[q] = _continue_ring(elev, az, colors, ring, q, 8, check, k=SIDE_NEIGHBOURS, median=True)
    if preds:
        # A side whose hair is seen only high up has none within reach of the low back: the other side's holds there.
        p = np.stack(preds)
        w = np.stack(weights)[..., None] * ~np.isnan(p)
        with np.errstate(invalid="ignore"):
            out[back] = (np.nan_to_num(p) * w).sum(0) / w.sum(0)
        hold[back] = np.maximum(ramp, np.clip((y - hairline_y) / CROWN_RAMP, 0, 1))[back]
    return out, hold


RING_MIN_TEXELS = 50
HAIR_MIN_SHARE = 0.1  # hair texels fewer than this share of a ring are something else (a held card, a collar)
BACK_RAMP_DEG = 30.0
CROWN_RAMP = 0.02  # metres above the hairline over which the crown's hair comes to hold
BACK_MAX_GAP_DEG = 90.0  # the back takes no side's hair from farther than this in elevation
BACK_NEIGHBOURS = 32  # the back averages this many hair texels: sparse hair texels would tile it in patches
SIDE_NEIGHBOURS = 16  # the sides take the median of this many ring texels: one stray texel must not tile a patch
BACK_MIDLINE = 1.0  # the two sides' hair blend where |x| / r < this / 2 (within 30 degrees of the midline)
SURFACE_CELL = 0.004  # metres: the finest grid the surface blur splats texels onto (at least sigma / 2.5)
QUERY_CHUNK = 1 << 15  # texels per nearest-neighbour query between cancel checks (about 0.1 s at k=32)


def enough_hair(ring: np.ndarray, hair: np.ndarray, min_texels: int) -> bool:
    """Whether the ``ring``'s ``hair`` texels (both ``(P,)`` bool) are hair the back of the head can continue:
    at least ``min_texels`` of them and ``HAIR_MIN_SHARE`` of the ring. A few texels unlike the skin on a
    head whose hair is close to its skin in colour are what the person holds or wears, not the hair."""
    n = int((ring & hair).sum())
    return n >= min_texels and n >= HAIR_MIN_SHARE * int(ring.sum())


def _continue_ring(
    elev: np.ndarray,
    az: np.ndarray,
    colors: np.ndarray,
    ring: np.ndarray,
    q: np.ndarray,
    max_gap_deg: float,
    check: Callable[[], None],
    k: int = 1,
    median: bool = False,
) -> np.ndarray:
    """Colours for the texels ``q`` from the ``ring`` texels (both ``(P,)`` bool), as in :func:`ring_prior`:
    the mean (or ``median``) of the ``k`` nearest; NaN where the nearest is more than ``max_gap_deg`` of
    elevation away."""
    lo, hi = np.quantile(az[ring], [0.05, 1.0])
    width = max(hi - lo, 1e-3)
    a = az[q]
    a = np.where(a > hi, hi - np.mod(a - hi, width), a)  # reflect back into the ring
    tree = cKDTree(np.stack([elev[ring], 0.5 * az[ring]], 1))
    k = min(k, int(ring.sum()))
    where = np.stack([elev[q], 0.5 * a], 1)
    nn = np.empty((len(a), k), np.int64)
    for lo_row in range(0, len(a), QUERY_CHUNK):
        check()
        rows = slice(lo_row, lo_row + QUERY_CHUNK)
        nn[rows] = tree.query(where[rows], k=k, workers=-1)[1].reshape(-1, k)
    near = colors[ring][nn]
    c = np.median(near, 1) if median else near.mean(1)
    c[np.abs(elev[ring][nn[:, 0]] - elev[q]) > np.radians(max_gap_deg)] = np.nan
    return c


def surface_gaussian(pts: np.ndarray, colors: np.ndarray, sigma: float, cell: float | None = None) -> np.ndarray:
    """The Gaussian-weighted mean colour ``(P, C)`` around each of the points ``pts (P, 3)`` (metres) over
    the points themselves, with ``sigma`` in metres: the points are splatted trilinearly onto a grid of
    ``cell`` (default: ``SURFACE_CELL`` or ``sigma / 2.5``, the larger), the grid blurred in 3D and read
    back trilinearly. A head is much thicker than ``sigma``, so the blur stays on the surface it starts on.

    Example:
        >>> pts = np.array([[0.0, 0.0, 0.0], [0.001, 0.0, 0.0], [0.5, 0.0, 0.0]])
        >>> cols = np.array([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0], [255.0, 0.0, 0.0]])
        >>> np.round(surface_gaussian(pts, cols, 0.01)[:, 0]).tolist()  # the first two mix; the far one keeps its own
        [50.0, 50.0, 255.0]
    """
    cell = cell or max(SURFACE_CELL, sigma / 2.5)
    pad = int(np.ceil(4 * sigma / cell)) + 1
    q = (pts - pts.min(0)) / cell + pad  # grid coordinates: cell centres at integers
    shape = tuple(int(n) for n in np.ceil(q.max(0)) + pad + 1)
    base = np.floor(q).astype(np.int64)
    frac = q - base
    values = np.concatenate([colors, np.ones((len(pts), 1))], 1).astype(np.float64)
    C = colors.shape[1]
    grids = np.zeros((C + 1, int(np.prod(shape))))
    for corner in np.ndindex(2, 2, 2):  # trilinear splatting: each point's weight over its 8 nearest centres
        w = np.prod(np.where(corner, frac, 1 - frac), axis=1)
        flat = np.ravel_multi_index(tuple((base + corner).T), shape)
        for c in range(C + 1):
            grids[c] += np.bincount(flat, weights=w * values[:, c], minlength=grids.shape[1])
    blurred = [gaussian_filter(g.reshape(shape), sigma / cell, mode="constant") for g in grids]
    out = np.stack([map_coordinates(b, q.T, order=1) for b in blurred], 1)
    return (out[:, :C] / np.maximum(out[:, C:], 1e-12)).astype(colors.dtype)


def smooth_inpainted(pts: np.ndarray, colors: np.ndarray, inpainted: np.ndarray, sigma: float) -> np.ndarray:
    """``colors (P, 3)`` with the ``inpainted (P,)`` texels replaced by their :func:`surface_gaussian` over
    the inpainted texels alone (``sigma`` metres; 0: unchanged): the edges between the views' inpainted
    patches are artefacts of the per-view fill, not detail. The other texels keep their colours."""
    out = colors.copy()
    if inpainted.any() and sigma > 0:
        out[inpainted] = surface_gaussian(pts[inpainted], colors[inpainted], sigma)
    return out


def fade_photo_edge(
    pts: np.ndarray, colors: np.ndarray, photo: np.ndarray, painted: np.ndarray, sigma: float
) -> np.ndarray:
    """``colors (P, 3)`` with the ``painted (P,)`` texels beside the ``photo (P,)`` ones continuing the photo's
    colour: each moves toward the :func:`surface_gaussian` mean (``sigma`` metres along the surface) of the
    photo's texels around it, fully where they are half of the known texels around it (at the edge), less
    with fewer, not at all where there are none. The photo's texels and all others keep their colours, so
    what the photo shows at its own viewpoint does not change; ``sigma`` 0: nothing changes.

    Example:
        >>> pts = np.stack([np.linspace(-0.05, 0.05, 101), np.zeros(101), np.zeros(101)], 1)
        >>> cols = np.where(pts[:, :1] < 0, 200.0, 100.0).repeat(3, 1)
        >>> out = fade_photo_edge(pts, cols, pts[:, 0] < 0, pts[:, 0] >= 0, 0.005)
        >>> np.round(out[[0, 49, 50, 55, 60, 100], 0]).tolist()  # the photo's side keeps; a ramp, not a step
        [200.0, 200.0, 193.0, 132.0, 104.0, 100.0]
    """
    if sigma <= 0 or not photo.any() or not painted.any():
        return colors
    known = photo | painted
    p, q = photo[known, None].astype(np.float64), painted[known, None].astype(np.float64)
    f = surface_gaussian(pts[known], np.concatenate([colors[known] * p, p, q], 1), sigma)
    share = f[:, 3:4] / np.maximum(f[:, 3:4] + f[:, 4:5], 1e-12)
    photo_mean = f[:, :3] / np.maximum(f[:, 3:4], 1e-12)
    sub = painted[known]  # the painted texels among the known
    out = colors.copy()
    out[painted] += np.minimum(2 * share[sub], 1.0) * (photo_mean[sub] - colors[painted])
    return out.astype(colors.dtype)


def coverage_stats(source: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """Shares of the used texels by where their colour came from; ``coverage``: from any source but the
    final atlas fill."""
    return {
        "texels_used": int(len(source)),
        "from_photo": float((source == PHOTO).mean()),
        "from_mirror": float((source == MIRROR).mean()),
        "from_views": float((source == VIEWS).mean()),
        "from_uv_fill": float((~known).mean()),
        "coverage": float(known.mean()),
    }
