import math

import numpy as np
import pytest
import torch

from portrait3d.pipelines.camera import Camera, rotation_ypr, ypr_from_rotation


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
