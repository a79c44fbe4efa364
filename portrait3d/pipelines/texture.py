"""Stage 5, texture (``fast``: back-projection + mirroring + progressive classical inpainting).

1. UV atlas with xatlas; every texel of the atlas knows its surface point and normal.
2. Back-projection of the photo from the reference view onto visible texels facing the camera within
   ~66 degrees; a texel seen obliquely averages the photo across its stretch (no streaks at the sides).
   Head-mask pixels at its edge that look like the background beside them are not projected: the
   outermost seen texels continue around the head (the ring prior), so a wall there would too. Such
   pixels that the head encloses beside the face (an ear's shadowed bowl) are the head's and stay.
3. Mirroring: texels still empty take the colour of their left/right mirror point when that one
   was seen in the photo (the mesh's vertex mirror map gives the mirrored point exactly); texels the photo
   saw at a grazing angle whose mirror point faced it better blend toward the mirror's colour.
4. Progressive inpainting along the paper's camera trajectory (front, sides, back, then from above):
   each view renders the current texture, fills its empty pixels with a classical inpainter
   (OpenCV Telea), and back-projects the new pixels into the texels that are still empty. What the views
   painted is blurred along the surface, and beside the photo's edge it continues the photo's colour,
   fading out over about a centimetre (``edge_fade``), so a cheek seen from the side ends without a step.
   Far from known colour the ring prior takes over: the outermost seen ring continued around the head,
   behind the ears and above the nape only its hair (texels more like the photo's crown than like the
   face's bare skin, sunglasses left out), and so is the unseen crown above the face outline's top (a
   photo that cuts it off).
5. Seams: texels no view saw and the atlas gutter are filled by push-pull, and filled regions are
   feathered into the photo region.
6. The back of the head is looked at with mediapipe's face detector; where it finds a face there, the
   painted hair behind the ears is smoothed until it finds none (``back_check``).

``stats["coverage"]`` is the share of used texels that received a colour from the photo, the mirror
or an inpainting view (before the push-pull fill, which reaches every texel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .back_check import (
    BACK_LEVELS,
    Detector,
    back_weight,
    face_likeness,
    faces_behind,
    mediapipe_detector,
    smooth_back,
)
from .camera import pixel_index, standing_rotation
from .face_geometry import CHIN, EYE_RADIUS, NOSE_BASE, bare_skin, eye_cut_side, eye_distance, sunglasses_band
from .registry import register
from .render import get_rasterizer
from .settings import setting
from .stage import Reporter
from .texturing import (
    MIRROR,
    NONE,
    PHOTO,
    VIEWS,
    atlas_texture,
    build_atlas,
    coverage_stats,
    depth_inside_outline,
    depth_map,
    enough_hair,
    fade_photo_edge,
    hair_like,
    mirror_points,
    mirror_share,
    project_photo,
    ring_prior,
    sample_bilinear,
    skin_like,
    smooth_inpainted,
    splat_known,
    surface_gaussian,
    trajectory_cameras,
    visible_texels,
)
from .types import PortraitAnalysis, TexturedHead, TextureInput
from .uv_unwrap import UVUnwrapper

INNER = (0.12, 0.06)  # the face's inner part starts this many face widths inside its outline, fully in over this
FACE_TEXEL = 0.5  # texels with a face weight from here up are face, never part of the hair ring
MIN_SKIN_TEXELS = 200  # fewer face texels from the photo than this: no skin model, no hair ring
FOREHEAD_TOP = 10  # mediapipe landmark at the top of the face's outline
# The crown: from this many face heights above the face's outline up. Between it and the outline a high
# forehead's skin would make the hair's colour model half skin (measured on obama_partial_face2).
CROWN = 0.2
DARK_GLASSES = 0.4  # eyes darker than this share of the bare skin's median luma are behind sunglasses


def dark_glasses(colors: np.ndarray, eyes: np.ndarray, bare: np.ndarray) -> bool:
    """Whether a face wears sunglasses: its ``eyes`` texels (``(P,)`` bool) are much darker (median luma below
    ``DARK_GLASSES`` of) than its ``bare`` skin texels (``(P,)`` bool); ``colors (P, 3)`` 0-255.
    Measured (the ratio): 0.72-1.08 on 15 real faces without them (deep-set eyes, eye make-up, glasses), 0.13
    with (terminator_crop).

    >>> cols = np.array([[200.0, 150, 120]] * 300 + [[25.0, 25, 25]] * 100)  # skin; black lenses
    >>> eyes = np.arange(400) >= 300
    >>> dark_glasses(cols, eyes, ~eyes)
    True
    >>> cols[eyes] = [150.0, 110, 95]  # eyes, lashes and brows, in the shade of the brow ridge
    >>> dark_glasses(cols, eyes, ~eyes)
    False
    """
    if eyes.sum() < MIN_SKIN_TEXELS // 4 or bare.sum() < MIN_SKIN_TEXELS:
        return False
    luma = colors @ np.array([0.299, 0.587, 0.114])
    return bool(np.median(luma[eyes]) < DARK_GLASSES * np.median(luma[bare]))


@register("texture", "classical")
class ClassicalTexture:
    @dataclass(frozen=True)
    class Config:
        texture_size: int = setting(1024, "UV map side, texels", ge=64, le=8192)
        atlas_padding: int = setting(4, "texels between UV charts", ge=0, le=64)
        view_size: int = setting(320, "render side of each inpainting view", ge=32, le=4096)
        min_facing: float = setting(
            0.4,
            "cos(normal, view) below which the photo is not projected on the face: lower keeps more of the photo "
            "at the reference view, but what it sees beyond ~66 deg shows as streaks and ghost features at the sides",
            ge=-1,
            le=1,
        )
        prior_min_facing: float = setting(
            0.4,
            "the same off the face, where the surface is the head prior's guess and a grazing projection smears",
            ge=-1,
            le=1,
        )
        inner_min_facing: float = setting(
            0.05,
            "the same deep inside the face's outline (nose, lips, eyelids), where a steep surface is a detail the "
            "photo shows from the front (the nostrils under the nose) and the mirror takes what faced away",
            ge=-1,
            le=1,
        )
        view_min_facing: float = setting(0.2, "the same for inpainting views", ge=-1, le=1)
        mirror: bool = setting(True, "fill the unseen side from the mirrored seen side")
        mirror_margin: float = setting(
            0.3, "use the mirror point when it faced the camera this much better (cos)", ge=0, le=2
        )
        mirror_gain_blur: float = setting(
            0.006,
            "sigma, metres along the surface, of a Gaussian over how much better each texel's mirror point faced "
            "the camera, before mirror_margin and mirror_blend read it (0: off)",
            ge=0,
            le=0.05,
        )
        mirror_blend: float = setting(
            0.3,
            "cos span, centred on mirror_margin, over which a seen texel's colour goes from the photo's to the "
            "mirror's, so that on a turned face the two meet without a step (0: a hard switch)",
            ge=0,
            le=2,
        )
        ring_prior: bool = setting(True, "continue the outermost seen hair/headwear ring around the unseen head")
        ring_min_azimuth: float = setting(50.0, "seen texels beyond this azimuth (deg) form the ring", ge=0, le=180)
        back_azimuth: float = setting(
            100.0,
            "beyond this azimuth (deg) and above the nape the ring continues only its hair texels (more like the "
            "photo's crown than like the face's skin), when they are at least a tenth of the ring above the nape "
            "(fewer are what the person holds or wears)",
            ge=0,
            le=180,
        )
        nape_height: float = setting(
            0.6,
            "height of the back of the head's hairline, from the nose's base (0) down to the chin (1): "
            "a nape hairline sits about at the mouth",
            ge=-1,
            le=2,
        )
        prior_distance: float = setting(
            12.0, "view pixels from known colour over which inpainting hands over to the ring prior", gt=0, le=1000
        )
        inpaint_radius: int = setting(6, "Telea inpainting radius, view pixels", ge=1, le=100)
        inpaint_blur: float = setting(
            0.01,
            "sigma, metres along the surface, of a Gaussian over the colours the views inpainted (not the "
            "photo's or the mirror's): each view fills its own holes, and the edges between those patches are "
            "artefacts, not detail (0: off)",
            ge=0,
            le=0.05,
        )
        edge_fade: float = setting(
            0.006,
            "sigma, metres along the surface, over which the painted texels beside the photo's (and the mirror's) "
            "continue the photo's colour, so the cheek does not end in a step where the photo stops; the photo's "
            "own texels keep theirs (0: off)",
            ge=0,
            le=0.05,
        )
        feather: float = setting(3.0, "seam blur sigma at filled regions, texels", ge=0, le=100)
        mask_erode: int = setting(3, "head-mask erosion before projecting the photo, crop pixels", ge=0, le=100)
        background_rim: int = setting(
            12,
            "head-mask pixels above the chin within this many crop pixels of its edge nearer in colour to the "
            "background beside them than to the head are not projected (a mask that overshoots the hair or "
            "cheek would paint the wall behind onto the sides), unless the head encloses them beside the face "
            "(0: off)",
            ge=0,
            le=100,
        )
        back_check: bool = setting(
            True,
            "look at the textured head from behind (45 views, yaw 160-200, pitch -25..15, the head stood up as "
            "export stands it with its default level_max_deg) with mediapipe's face "
            "detector and, where it finds a face, smooth the painted hair behind the ears (to one colour per height, "
            "then toward one colour, then a cap of the hair's colour down to the nape), keeping the least face-like",
        )
        grazing_blur: float = setting(
            1.0,
            "a texel the photo sees at a grazing angle averages the photo across its stretch over this many "
            "times (1/cos - 1) pixels, so the sides show soft colour rather than streaks (0: off)",
            ge=0,
            le=10,
        )

    def __init__(self, cfg: ClassicalTexture.Config) -> None:
        self.cfg = cfg
        self.raster = get_rasterizer("torch")
        self.unwrapper = UVUnwrapper()
        self._detect: Detector | None = None  # built on the first back check
        self._close_detector: Callable[[], None] = lambda: None

    def close(self) -> None:
        self.unwrapper.close()
        self._close_detector()

    def hair_ring(
        self, a: PortraitAnalysis, pts: np.ndarray, colors: np.ndarray, source: np.ndarray, fw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, float, float]:
        """The photo's non-face texels ``(P,)`` bool; which texels are hair, or None without enough face
        texels to tell; the nape's height ``nape_height`` of the way from the nose's base to the chin, and
        the face outline's top, where a hairline usually is (head frame, metres). Hair looks like the photo's
        texels on the crown (``CROWN``) more than like the face's skin (:func:`hair_like`), sampled where the
        face is bare (:func:`bare_skin`; behind :func:`dark_glasses`, not where sunglasses are either); a bald
        head's crown is its scalp, so its back is the scalp's colour."""
        photo = source == PHOTO
        face, ring = photo & (fw >= FACE_TEXEL), photo & (fw < FACE_TEXEL)
        top, base, chin = (float(a.landmarks_3d[i, 1]) for i in (FOREHEAD_TOP, NOSE_BASE, CHIN))
        crown = ring & (pts[:, 1] > top + CROWN * (top - chin))
        hair = None
        # A white beard or sunglasses in the skin sample would make grey or dark hair skin.
        lm = a.landmarks_3d
        sample = face & bare_skin(pts, lm)
        if dark_glasses(colors, face & (eye_distance(pts, lm) < EYE_RADIUS), sample):
            sample &= ~sunglasses_band(pts, lm)
        if sample.sum() < MIN_SKIN_TEXELS:
            sample = face
        if sample.sum() >= MIN_SKIN_TEXELS:  # a crown the photo's edge cuts off: hair is what is unlike the skin
            skin = colors[sample]
            hair = (
                hair_like(colors, skin, colors[crown]) if crown.sum() >= MIN_SKIN_TEXELS else ~skin_like(colors, skin)
            )
        return ring, hair, base + self.cfg.nape_height * (chin - base), top

    def __call__(self, inputs: TextureInput, report: Reporter) -> TexturedHead:
        cfg = self.cfg
        a, mesh = inputs.analysis, inputs.mesh
        T = cfg.texture_size
        report(0.0, "uv atlas")
        at = build_atlas(self.raster, self.unwrapper, mesh, T, cfg.atlas_padding, report.check)
        tri_id, bary, idx, pts, nrm = at.tri_id, at.bary, at.idx, at.pts, at.nrm
        report(0.1, "photo")
        colors = np.zeros((len(idx), 3), np.float32)
        known = np.zeros(len(idx), bool)
        source = np.full(len(idx), NONE, np.uint8)

        # 2. The photo, from the reference view.
        cam = a.camera
        fw = (mesh.face_weight[mesh.faces[tri_id.ravel()[idx]]] * bary.reshape(-1, 3)[idx]).sum(1)
        facing = cfg.prior_min_facing + (cfg.min_facing - cfg.prior_min_facing) * np.clip(fw, 0, 1)
        deep = np.clip(fw, 0, 1) * depth_inside_outline(a.landmarks_px, a.crop.shape[0], cam.project(pts)[0], *INNER)
        facing = facing + (cfg.inner_min_facing - facing) * deep
        vis, cos, mask, ref_depth = project_photo(
            self.raster, a, mesh, at, colors, facing, cfg.mask_erode, cfg.grazing_blur, cfg.background_rim
        )
        known |= vis
        source[vis] = PHOTO
        report(0.2, "mirror")

        # 3. Mirror the seen side onto the unseen one.
        mirror_face = np.zeros(len(idx), bool)
        if cfg.mirror:
            mp = mirror_points(mesh, tri_id.ravel()[idx], bary.reshape(-1, 3)[idx])
            mpix, mvis, mcos = visible_texels(mp, nrm * [-1, 1, 1], cam, ref_depth, facing)
            # Unseen texels, and texels seen at a grazing angle whose mirror point faced the camera better.
            seen = mvis & mask[pixel_index(mpix, cam.width, cam.height)]
            gain = mcos - cos
            if cfg.mirror_gain_blur > 0:  # normals vary from triangle to triangle: the patches' edges would too
                gain = surface_gaussian(pts, gain[:, None], cfg.mirror_gain_blur)[:, 0]
            alpha = mirror_share(gain, cfg.mirror_margin, cfg.mirror_blend)
            cut = eye_cut_side(a.landmarks_3d, a.landmarks_px, a.in_photo)
            if cut:  # the photo's edge cuts an eye: that half of the face is the mirror's, seam at the midline
                half = np.sign(pts[:, 0]) == cut
                alpha = np.where(half, np.maximum(alpha, np.clip(fw, 0, 1)), alpha)
                mirror_face = half & (fw >= FACE_TEXEL)
            alpha = np.where(known, alpha, 1.0) * seen
            take = alpha > 0
            colors[take] += alpha[take, None] * (sample_bilinear(a.crop, mpix[take]) - colors[take])
            known |= take
            source[alpha >= 0.5] = MIRROR
        report(0.3, "views")

        # A prior for what no photo pixel shows: the outermost seen ring, continued around the head, with the
        # ring's hair texels for the back of the head, down to the nape, and for the unseen crown.
        ring, hair, nape, hairline = self.hair_ring(a, pts, colors, source, fw)
        prior, hold = None, None
        if cfg.ring_prior:
            prior, hold = ring_prior(
                pts, colors, ring, cfg.ring_min_azimuth, hair, nape, cfg.back_azimuth, report.check, hairline_y=hairline
            )

        # 4. Progressive inpainting along the trajectory.
        views = trajectory_cameras(cam, cfg.view_size)
        for i, vcam in enumerate(views):
            report(0.3 + 0.6 * i / len(views), f"view {i + 1}/{len(views)}")
            depth = depth_map(self.raster, mesh, vcam)
            sil = np.isfinite(depth)
            vpix, vvis, _ = visible_texels(pts, nrm, vcam, depth, cfg.view_min_facing)
            todo = vvis & ~known
            if not todo.any():
                continue
            img, have = splat_known(vpix[vvis & known], colors[vvis & known], vcam.width, sil)
            holes = (sil & ~have).astype(np.uint8)
            # Pixels outside the head are holes too, so they are never used as sources.
            filled = cv2.inpaint(img, (holes | ~sil).astype(np.uint8), cfg.inpaint_radius, cv2.INPAINT_TELEA)
            new = sample_bilinear(filled, vpix[todo])
            if prior is not None:
                # Near known colour the inpainting continues it; farther away the prior takes over.
                far = cv2.distanceTransform(holes, cv2.DIST_L2, 3)
                alpha = np.clip(sample_bilinear(far[..., None], vpix[todo])[:, 0] / cfg.prior_distance - 0.5, 0, 1)
                alpha = np.maximum(alpha, hold[todo])
                p = prior[todo]
                ok = ~np.isnan(p[:, 0])
                new[ok] = new[ok] * (1 - alpha[ok, None]) + p[ok] * alpha[ok, None]
            colors[todo] = new
            known |= todo
            source[todo] = VIEWS
        colors = smooth_inpainted(pts, colors, source == VIEWS, cfg.inpaint_blur)
        seen, painted = (source == PHOTO) | (source == MIRROR), source == VIEWS
        colors = fade_photo_edge(pts, colors, seen, painted, cfg.edge_fade)
        report(0.9, "atlas fill")
        # A face half the mirror paints whole is the photo's detail (an eye), kept as sharp as the photo's.
        sharp = (source == PHOTO) | ((source == MIRROR) & mirror_face)
        texture = atlas_texture(T, idx, colors, known, sharp, cfg.feather)
        stats = coverage_stats(source, known)
        head = TexturedHead(
            mesh=mesh, uv=at.uv, uv_faces=at.uv_faces, uv_to_vertex=at.uv_to_vertex, texture=texture, stats=stats
        )
        if cfg.back_check:
            report(0.95, "back of the head")
            stand = standing_rotation(a.camera.center)
            cap = None
            upper = ring & (pts[:, 1] > nape)
            if hair is not None and enough_hair(upper, hair, MIN_SKIN_TEXELS):
                cap = (np.median(colors[upper & hair], 0), nape)
            head = self.clear_back(head, idx, pts, colors, known, source, report.check, stand, cap)
        return head

    def clear_back(
        self,
        head: TexturedHead,
        idx: np.ndarray,
        pts: np.ndarray,
        colors: np.ndarray,
        known: np.ndarray,
        source: np.ndarray,
        check: Callable[[], None],
        stand: np.ndarray | None = None,
        cap: tuple[np.ndarray, float] | None = None,
    ) -> TexturedHead:
        """``head``, or, while mediapipe finds a face on its back (:func:`faces_behind`), the same with the
        painted texels behind the ears smoothed one level more (:func:`smooth_back`); of the levels tried,
        the least face-like (fewest back views with a face, then the lowest sum of their scores), the least
        smoothed of equals. ``stats`` gets ``back_smoothing`` (0: as painted) and ``back_faces`` (how many
        of the back views still show a face). ``stand``: the rotation export stands the head up with;
        ``cap``: the hair's colour and lowest height, for the last level (a cap of hair over the back)."""
        if self._detect is None:
            self._detect, self._close_detector = mediapipe_detector()
        weight = back_weight(pts, source != PHOTO)
        found = faces_behind(head, self._detect, stand=stand)
        best = (face_likeness(found), 0, head)
        for level in range(1, BACK_LEVELS + (cap is not None) + 1):
            if not found:
                break
            check()
            smoothed = smooth_back(pts, colors, weight, level, cap)
            texture = atlas_texture(head.texture.shape[0], idx, smoothed, known, source == PHOTO, self.cfg.feather)
            tried = dataclasses.replace(head, texture=texture, stats=dict(head.stats))
            found = faces_behind(tried, self._detect, stand=stand)
            best = min(best, (face_likeness(found), level, tried), key=lambda b: b[:2])
        (faces, _), level, head = best
        head.stats.update(back_smoothing=level, back_faces=faces)
        return head
