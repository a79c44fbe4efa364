"""The input formats the paper profile's real checkpoints were trained on, each checked against an
independent reference: another well-kept library's output on the same data, or the authors' formula
on a shape whose answer is known (a sphere)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from portrait3d.pipelines.camera import Camera
from portrait3d.pipelines.landmark_image import draw_laion_face, landmark_image
from portrait3d.pipelines.render import get_rasterizer
from portrait3d.pipelines.render.maps import bae_normal_image, render_geometry

from .conftest import astronaut, grace_hopper_path

CONTROLNET_AUX = Path(__file__).resolve().parents[1] / ".tools" / "py" / "controlnet_aux"


def _laion_face_reference():
    """controlnet_aux's MediaPipe face annotator module (LAION-Face's drawing), loaded by path: its
    package ``__init__`` imports every other annotator (timm, torchvision), which this one does not need."""
    path = CONTROLNET_AUX / "mediapipe_face" / "mediapipe_face_common.py"
    if not path.is_file():
        pytest.fail(f"{path} is missing: setup.sh installs controlnet-aux there (no dependencies)")
    spec = importlib.util.spec_from_file_location("laion_face_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mediapipe_landmarks(rgb):
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
    ) as mesh:
        faces = mesh.process(rgb).multi_face_landmarks
    return np.array([[p.x, p.y] for p in faces[0].landmark], np.float64)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_landmark_image_is_pixel_identical_to_controlnet_aux(name):
    rgb = astronaut() if name == "astronaut" else np.asarray(Image.open(grace_hopper_path()).convert("RGB"))
    rgb = np.ascontiguousarray(rgb)
    want = _laion_face_reference().generate_annotation(rgb, max_faces=1, min_confidence=0.5)
    got = draw_laion_face(_mediapipe_landmarks(rgb), *rgb.shape[:2])
    assert want.any()
    assert np.array_equal(got, want), f"{(got != want).any(-1).sum()} pixels differ"


def test_landmark_image_colours_and_back_view(astronaut_analysis):
    a = astronaut_analysis
    front = landmark_image(a.landmarks_3d, Camera.orbit(0, 0, 0.6, 30, 256))
    colours = {tuple(c) for c in front.reshape(-1, 3)}
    # RGB after LAION-Face's BGR reversal: the subject's left eye is (10, 200, 180), the right (180, 200, 10).
    assert {(10, 200, 180), (180, 200, 10), (10, 220, 180), (180, 220, 10), (10, 200, 10), (10, 180, 10)} <= colours
    assert (10, 200, 250) in colours and (250, 200, 10) in colours  # left and right iris squares
    back = landmark_image(a.landmarks_3d, Camera.orbit(180, 0, 0.6, 30, 256))
    assert {tuple(c) for c in back.reshape(-1, 3)} == {(0, 0, 0), (10, 200, 10)}  # the oval alone


def _sphere_normals(size=64):
    s = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    v, f = torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)
    return render_geometry(get_rasterizer("torch"), Camera.orbit(0, 0, 0.5, 30, size), v, f)


def test_geometry_normal_image_follows_humannorm_camera_convention():
    """HumanNorm's ``normal_type: camera`` (what the normal-adapted SD1.5 learned): OpenGL camera-frame
    normals as ``n / 2 + 1 / 2``: red = toward the viewer's right, green = up, blue = toward the viewer,
    on a black background."""
    img = _sphere_normals()["image"].permute(1, 2, 0).numpy()
    c, r = 32, 22  # image centre, and a radius inside the sphere's disc
    assert np.allclose(img[c, c], [0.5, 0.5, 1.0], atol=0.03)
    assert img[c, c + r, 0] > 0.8 and img[c, c - r, 0] < 0.2  # right side red, left side dark
    assert img[c - r, c, 1] > 0.8 and img[c + r, c, 1] < 0.2  # top (row 0) green
    assert np.allclose(img[0, 0], 0)


def test_texture_normal_image_follows_normalbae():
    """control_v11p_sd15_normalbae learned BAE normals: red toward the viewer's LEFT, green up, blue
    toward the viewer, and the background as a normal facing the viewer, (0.5, 0.5, 1) (the release
    flips x of its camera-frame normals and fills the background with (0, 0, 1) for this model)."""
    maps = _sphere_normals()
    img = bae_normal_image(maps["normal"], maps["silhouette"]).permute(1, 2, 0).numpy()
    c, r = 32, 22
    assert np.allclose(img[c, c], [0.5, 0.5, 1.0], atol=0.03)
    assert img[c, c - r, 0] > 0.8 and img[c, c + r, 0] < 0.2  # the viewer's left is red
    assert img[c - r, c, 1] > 0.8 and img[c + r, c, 1] < 0.2
    assert np.allclose(img[0, 0], [0.5, 0.5, 1.0])
