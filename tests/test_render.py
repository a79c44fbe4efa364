import numpy as np
import pytest
import torch

from portrait3d.pipelines.camera import Camera
from portrait3d.pipelines.render import get_rasterizer


def _brute_force(pos, tri, H, W):
    """Per pixel, per triangle: inside test and nearest NDC depth (reference for visibility)."""
    p = pos.numpy().astype(np.float64)
    x = (p[:, 0] / p[:, 3] + 1) * 0.5 * W - 0.5
    y = (p[:, 1] / p[:, 3] + 1) * 0.5 * H - 0.5
    z = p[:, 2] / p[:, 3]
    ids = -np.ones((H, W), int)
    best = np.full((H, W), np.inf)
    for f, (a, b, c) in enumerate(tri.numpy()):
        area = (x[b] - x[a]) * (y[c] - y[a]) - (x[c] - x[a]) * (y[b] - y[a])
        if abs(area) < 1e-12:
            continue
        for i in range(H):
            for j in range(W):
                b0 = ((x[b] - j) * (y[c] - i) - (x[c] - j) * (y[b] - i)) / area
                b1 = ((x[c] - j) * (y[a] - i) - (x[a] - j) * (y[c] - i)) / area
                b2 = 1 - b0 - b1
                if min(b0, b1, b2) < 0:
                    continue
                d = b0 * z[a] + b1 * z[b] + b2 * z[c]
                if d < best[i, j]:
                    best[i, j], ids[i, j] = d, f
    return ids, best


def _random_scene(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(3 * n, 3, generator=g) * 0.6 - 0.3
    tri = torch.arange(3 * n).reshape(n, 3)
    cam = Camera.orbit(20, 10, 1.0, 40, 24)
    return cam.clip(v.double()).float(), tri, cam


def test_visibility_matches_brute_force():
    r = get_rasterizer("torch")
    for seed in range(3):
        pos, tri, cam = _random_scene(seed)
        rast = r.rasterize(pos, tri, (24, 24))
        ids, depth = _brute_force(pos, tri, 24, 24)
        agree = (rast.tri_id.numpy() == ids).mean()
        assert agree > 0.995, agree
        cov = ids >= 0
        assert cov.sum() > 50
        np.testing.assert_allclose(rast.depth.numpy()[cov], depth[cov], atol=1e-4)


def test_interpolate_is_perspective_correct():
    # A quad receding in depth: interpolated camera depth must equal the true depth per pixel.
    cam = Camera.look_at([0, 0, 1], [0, 0, 0], [0, 1, 0], 60, 32)
    v = torch.tensor([[-1, -1, -1.5], [1, -1, -1.5], [1, 1, 0.3], [-1, 1, 0.3]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    r = get_rasterizer("torch")
    pos = cam.clip(v)
    rast = r.rasterize(pos, tri, (32, 32))
    world = r.interpolate(v, rast, tri)
    m = rast.mask.numpy()
    uv = np.stack(np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5), -1)[m]
    uv_back, _ = cam.project(world.numpy()[m])
    np.testing.assert_allclose(uv_back, uv, atol=1e-6)


def test_silhouette_gradient_points_outward():
    # One triangle, target silhouette = a larger copy: d(loss)/d(vertex) must push vertices outward.
    r = get_rasterizer("torch")
    base = torch.tensor([[-0.4, -0.3, 0.0], [0.4, -0.3, 0.0], [0.0, 0.4, 0.0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    cam = Camera.look_at([0, 0, 2], [0, 0, 0], [0, 1, 0], 40, 64)
    with torch.no_grad():
        big = cam.clip(base * 1.25)
        target = r.rasterize(big, tri, (64, 64)).mask.double()[..., None]
    v = base.clone().requires_grad_(True)
    pos = cam.clip(v)
    rast = r.rasterize(pos, tri, (64, 64))
    sil = r.antialias(rast.mask.double()[..., None], rast, pos, tri)
    loss = ((sil - target) ** 2).sum()
    loss.backward()
    g = v.grad.numpy()
    assert np.abs(g).sum() > 0
    # Gradient descent moves each vertex away from the centroid (outward), in image x and y.
    outward = (base - base.mean(0)).numpy()
    assert all(np.dot(-g[i, :2], outward[i, :2]) > 0 for i in range(3))


def test_silhouette_optimization_converges():
    r = get_rasterizer("torch")
    tri = torch.tensor([[0, 1, 2]])
    cam = Camera.look_at([0, 0, 2], [0, 0, 0], [0, 1, 0], 40, 48)
    target_v = torch.tensor([[-0.3, -0.3, 0.0], [0.35, -0.25, 0.0], [0.05, 0.35, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        target = r.rasterize(cam.clip(target_v), tri, (48, 48)).mask.double()[..., None]
    v = (target_v * 0.6 + 0.05).clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.01)
    losses = []
    for _ in range(60):
        pos = cam.clip(v)
        rast = r.rasterize(pos, tri, (48, 48))
        sil = r.antialias(rast.mask.double()[..., None], rast, pos, tri)
        loss = ((sil - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def _nvdiffrast_usable() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("nvdiffrast") is not None


@pytest.mark.skipif(not _nvdiffrast_usable(), reason="needs CUDA and nvdiffrast (pip install diffrp-nvdiffrast)")
def test_nvdiffrast_backend_matches_the_torch_backend():
    """Same visibility, interpolated attributes and antialiased coverage on a test mesh."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v = torch.tensor(np.asarray(m.vertices) * [0.08, 0.11, 0.095])
    tri = torch.tensor(m.faces)
    cam = Camera.orbit(35, 15, 0.5, 40, 96)
    pos = cam.clip(v).float()
    cpu, gpu = get_rasterizer("torch"), get_rasterizer("nvdiffrast", "cuda")
    a = cpu.rasterize(pos, tri, (96, 96))
    b = gpu.rasterize(pos.cuda(), tri.cuda(), (96, 96))
    same = a.tri_id == b.tri_id.cpu()
    assert a.mask.sum() > 1000 and same.float().mean() > 0.995
    attr = cam.to_camera(v)[:, 2:].float()
    za = cpu.interpolate(attr, a, tri)[..., 0]
    zb = gpu.interpolate(attr.cuda(), b, tri.cuda())[..., 0].cpu()
    both = same & a.mask
    np.testing.assert_allclose(za[both].numpy(), zb[both].numpy(), atol=1e-4)
    cover_a = cpu.antialias(a.mask.float()[..., None], a, pos, tri)
    cover_b = gpu.antialias(b.mask.float()[..., None].cuda(), b, pos.cuda(), tri.cuda()).cpu()
    assert (cover_a - cover_b).abs().mean() < 0.01
