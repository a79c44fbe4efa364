import math

import numpy as np
import pytest
import torch

from portrait3d.pipelines.camera import Camera, leveling_rotation, rotation_ypr, ypr_from_rotation


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (30, 10), (-90, -15), (180, 45), (135, 5)])
def test_project_unproject_round_trip(yaw, pitch):
    cam = Camera.orbit(yaw, pitch, distance=1.2, fovy_deg=28, size=320)
    pts = np.random.default_rng(0).normal(scale=0.1, size=(100, 3))
    uv, z = cam.project(pts)
    back = cam.unproject(uv, z)
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_orbit_conventions():
    # yaw 0 looks at the face from +Z; yaw 90 from the person's left (+X); pitch > 0 from above.
    assert np.allclose(Camera.orbit(0, 0, 2, 30, 64).center, [0, 0, 2])
    assert np.allclose(Camera.orbit(90, 0, 2, 30, 64).center, [2, 0, 0])
    assert Camera.orbit(0, 45, 2, 30, 64).center[1] > 1.0
    cam = Camera.orbit(0, 0, 2, 30, 64)
    uv, _ = cam.project(np.array([[0.1, 0.1, 0.0]]))
    assert uv[0, 0] > 32 and uv[0, 1] < 32  # +X is image right, +Y image up


def test_clip_matches_project():
    cam = Camera.orbit(40, 20, 1.0, 30, 200)
    pts = np.random.default_rng(1).normal(scale=0.1, size=(50, 3))
    uv, z = cam.project(pts)
    clip = cam.clip(torch.tensor(pts)).numpy()
    u = (clip[:, 0] / clip[:, 3] + 1) * 0.5 * cam.width
    v = (clip[:, 1] / clip[:, 3] + 1) * 0.5 * cam.height
    np.testing.assert_allclose(np.stack([u, v], 1), uv, atol=1e-9)
    np.testing.assert_allclose(clip[:, 3], z, atol=1e-12)


def test_ypr_round_trip_and_dict():
    for ypr in [(10, 5, -3), (-60, 20, 15), (170, -10, 0)]:
        assert np.allclose(ypr_from_rotation(rotation_ypr(*ypr)), ypr, atol=1e-9)
    cam = Camera.orbit(25, 5, 1.1, 28, 128)
    again = Camera.from_dict(cam.to_dict())
    assert np.allclose(again.K, cam.K) and np.allclose(again.R, cam.R) and np.allclose(again.t, cam.t)
    assert math.isclose(cam.to_dict()["fovy_deg"], 28)
    gl = np.array(cam.to_dict()["camera_to_world_gl"])
    # An OpenGL camera looks down its -Z: toward the origin here.
    assert np.allclose(gl[:3, :3] @ [0, 0, -1], -cam.center / np.linalg.norm(cam.center))


def _elevation_deg(p):
    return math.degrees(math.atan2(p[1], math.hypot(p[0], p[2])))


@pytest.mark.parametrize(
    "yaw,pitch,cap,expected",
    [(0, 8, 30, 0), (0, -12, 30, 0), (45, 20, 30, 0), (-70, 35, 30, 5), (0, 50, 0, 50), (120, 0, 30, 0)],
)
def test_leveling_rotation_levels_the_eye_up_to_the_cap(yaw, pitch, cap, expected):
    eye = Camera.orbit(yaw, pitch, 1.1, 28, 64).center
    L, _ = leveling_rotation(eye, cap)
    assert np.allclose(L @ L.T, np.eye(3)) and math.isclose(np.linalg.det(L), 1.0)
    moved = L @ eye
    assert math.isclose(_elevation_deg(moved), expected, abs_tol=1e-9)
    assert math.isclose(math.atan2(moved[0], moved[2]), math.atan2(eye[0], eye[2]), abs_tol=1e-9)  # same azimuth
    axis = np.array([L[2, 1] - L[1, 2], L[0, 2] - L[2, 0], L[1, 0] - L[0, 1]])  # 2 sin(angle) * axis
    assert abs(axis[1]) < 1e-12  # the axis is horizontal


def test_leveling_rotation_is_a_pitch_for_a_frontal_eye():
    # A camera straight in front at elevation e: the turn is a pitch of the head by e about +X.
    eye = Camera.orbit(0, 7, 1.0, 28, 64).center
    np.testing.assert_allclose(leveling_rotation(eye, 30)[0], rotation_ypr(0, 7, 0), atol=1e-12)
    assert np.array_equal(leveling_rotation([0.0, 2.0, 0.0], 30)[0], np.eye(3))  # straight above: no azimuth
