"""The back of the head is looked at with mediapipe's face detector, and smoothed where it finds a face."""

import dataclasses

import numpy as np
import pytest

from portrait3d.pipelines.back_check import (
    BACK_PITCHES,
    BACK_YAWS,
    back_weight,
    faces_behind,
    mediapipe_detector,
    smooth_back,
)
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.init import HeadPriorInit
from portrait3d.pipelines.render import get_rasterizer
from portrait3d.pipelines.stage import Reporter
from portrait3d.pipelines.texture import ClassicalTexture
from portrait3d.pipelines.texturing import PHOTO, VIEWS, atlas_texture, sample_bilinear, texel_surface
from portrait3d.pipelines.types import InitInput, TextureInput


def test_smoothing_levels_go_from_bands_to_one_colour():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(4000, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True) * 10
    colors = rng.uniform(0, 255, (4000, 3)).astype(np.float32)
    weight = back_weight(pts, pts[:, 1] > -0.05)
    behind = weight == 1
    one, half, flat = (smooth_back(pts, colors, weight, level) for level in (1, 2, 3))
    assert np.array_equal(one[weight == 0], colors[weight == 0])  # the face side and the photo's texels
    # Level 1: one colour per height (texels of one 2-degree band agree); level 3: one colour.
    band = np.abs(np.degrees(np.arcsin(pts[:, 1] * 10)) - 21) < 0.9  # one 2-degree bin
    assert one[behind & band].std(0).max() < 1 and colors[behind & band].std(0).min() > 40
    assert flat[behind].std(0).max() < 0.01
    assert np.allclose(half[behind], (one[behind] + flat[behind]) / 2, atol=1e-3)
    # Level 4: level 1 with a cap of the hair's colour above the hair's lowest height.
    capped = smooth_back(pts, colors, weight, 4, ((10.0, 20.0, 30.0), 0.01))
    high = behind & (pts[:, 1] > 0.01)
    assert np.allclose(capped[high], (10, 20, 30)) and np.array_equal(capped[behind & ~high], one[behind & ~high])
    assert np.array_equal(smooth_back(pts, colors, weight, 4), one)  # no hair colour known: level 1


@pytest.fixture(scope="module")
def astronaut_head(astronaut_analysis):
    cfg = build_profile_config("fast", ["init.subdivisions=5", "texture.texture_size=512", "texture.view_size=160"])
    mesh = HeadPriorInit(cfg.stages["init"])(InitInput(astronaut_analysis), Reporter("init"))
    stage = ClassicalTexture(cfg.stages["texture"])
    yield stage, stage(TextureInput(astronaut_analysis, mesh), Reporter("texture"))
    stage.close()


def test_a_face_painted_on_the_back_of_the_head_is_found_and_smoothed_away(astronaut_analysis, astronaut_head):
    stage, head = astronaut_head
    # Her own back: hair, no face (at this test's small texture, one of the 45 views may see a faint one
    # in the hair as painted, and the first level of smoothing clears it).
    assert head.stats["back_faces"] == 0 and head.stats["back_smoothing"] <= 1
    # Paint the photo's face on the back: each texel behind the head takes the crop pixel it would fall
    # on with the head turned round (rotated 180 degrees about its vertical axis).
    a, T = astronaut_analysis, head.texture.shape[0]
    tri_id, _, pts_map, _ = texel_surface(get_rasterizer("torch"), head.mesh, head.uv, head.uv_faces, T)
    idx = np.flatnonzero(tri_id.ravel() >= 0)
    pts = pts_map.reshape(-1, 3)[idx]
    colors = head.texture.reshape(-1, 3)[idx].astype(np.float32)
    uv, _ = a.camera.project(pts * [-1, 1, -1])
    behind = (pts[:, 2] < 0) & (uv >= 0).all(1) & (uv < a.crop.shape[0] - 1).all(1)
    colors[behind] = sample_bilinear(a.crop, uv[behind])
    source = np.where(behind, VIEWS, PHOTO).astype(np.uint8)
    known = np.ones(len(idx), bool)
    texture = atlas_texture(T, idx, colors, known, source == PHOTO, stage.cfg.feather)
    painted = dataclasses.replace(head, texture=texture)
    detect, close = mediapipe_detector()
    try:
        found = faces_behind(painted, detect)
        assert (180, 0) in [(y, p) for y, p, _ in found] and len(found) >= len(BACK_YAWS) * len(BACK_PITCHES) // 2
        fixed = stage.clear_back(painted, idx, pts, colors, known, source, lambda: None, np.eye(3))
        assert fixed.stats["back_faces"] == 0 and fixed.stats["back_smoothing"] >= 1
        assert faces_behind(fixed, detect) == []
    finally:
        close()
    # In front of the ears nothing changed but where the atlas's seam blur reaches across a chart's edge
    # and the gutter it bleeds into (measured: at most 4-5 levels, one texel at a chart's edge, within 60
    # degrees of the face; 8 up to the ears).
    azimuth = np.degrees(np.abs(np.arctan2(pts[:, 0], pts[:, 2])))
    for within, most in ((60, 6), (90, 8)):
        front = np.zeros(T * T, bool)
        front[idx[azimuth < within]] = True
        change = np.abs(fixed.texture.reshape(-1, 3)[front].astype(int) - painted.texture.reshape(-1, 3)[front])
        assert change.max() <= most, (within, change.max())


def test_where_smoothing_does_not_help_the_head_is_kept_as_painted(astronaut_head):
    # A detector that sees a face in every view (as when the "face" is the head's shape or the photo's
    # texels, which smoothing the hair cannot change): each level is tried and none is kept.
    stage, head = astronaut_head
    T = head.texture.shape[0]
    tri_id, _, pts_map, _ = texel_surface(get_rasterizer("torch"), head.mesh, head.uv, head.uv_faces, T)
    idx = np.flatnonzero(tri_id.ravel() >= 0)
    pts = pts_map.reshape(-1, 3)[idx]
    colors = head.texture.reshape(-1, 3)[idx].astype(np.float32)
    source = np.where(pts[:, 2] < 0, VIEWS, PHOTO).astype(np.uint8)
    seen, real = [], stage._detect
    stage._detect = lambda image: seen.append(image.mean()) or [0.9]
    try:
        kept = stage.clear_back(head, idx, pts, colors, np.ones(len(idx), bool), source, lambda: None)
    finally:
        stage._detect = real
    assert (kept.stats["back_smoothing"], kept.stats["back_faces"]) == (0, len(BACK_YAWS) * len(BACK_PITCHES))
    assert kept.texture is head.texture
    assert len(seen) == 4 * len(BACK_YAWS) * len(BACK_PITCHES)  # as painted, then the three levels


def test_the_back_is_looked_at_as_export_stands_the_head(astronaut_head):
    from scipy.spatial.transform import Rotation

    _, head = astronaut_head
    level = Rotation.from_euler("x", 12, degrees=True).as_matrix()
    stood = dataclasses.replace(head, mesh=dataclasses.replace(head.mesh, vertices=head.mesh.vertices @ level.T))
    seen = {"turned": [], "stood": []}
    faces_behind(head, lambda image: seen["turned"].append(image) or [], 64, stand=level)
    faces_behind(stood, lambda image: seen["stood"].append(image) or [], 64)
    assert len(seen["turned"]) == len(BACK_YAWS) * len(BACK_PITCHES)
    assert all(np.array_equal(a, b) for a, b in zip(seen["turned"], seen["stood"], strict=True))
    faces_behind(head, lambda image: seen["turned"].append(image) or [], 64)
    assert not np.array_equal(seen["turned"][-1], seen["stood"][-1])
