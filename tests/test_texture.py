import numpy as np

from portrait3d.pipelines.mesh import symmetric_sphere
from portrait3d.pipelines.texture import PAPER_TRAJECTORY, push_pull, unwrap
from portrait3d.pipelines.types import HeadMesh


def test_push_pull_fills_everything_and_keeps_known():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (64, 48, 3)).astype(np.float32)
    known = rng.uniform(size=(64, 48)) < 0.05
    out = push_pull(img, known)
    assert np.isfinite(out).all()
    assert np.allclose(out[known], img[known])
    # A constant known colour spreads as that colour.
    const = np.zeros_like(img)
    const[known] = (10, 200, 30)
    assert np.allclose(push_pull(const, known), (10, 200, 30), atol=1e-3)


def test_unwrap_keeps_faces_and_fits_unit_square():
    v, f, m = symmetric_sphere(3)
    mesh = HeadMesh(
        vertices=(v * 0.1).astype(np.float32), faces=f.copy(), mirror=m.copy(), face_weight=np.zeros(len(v), np.float32)
    )
    uv, uv_faces, vmap = unwrap(mesh, 512)
    assert uv_faces.shape == f.shape
    assert (vmap[uv_faces] == f).all()  # same triangles, same corner order
    assert uv.min() >= 0 and uv.max() <= 1


def test_paper_trajectory():
    assert len(PAPER_TRAJECTORY) == 15
    assert PAPER_TRAJECTORY[:3] == ((-15, -45), (-15, 45), (-15, 0))
    assert sum(1 for e, _ in PAPER_TRAJECTORY if e == 45) == 5
