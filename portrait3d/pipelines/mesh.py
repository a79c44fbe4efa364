"""Mesh utilities: a mirror-symmetric sphere, adjacency, Laplacians, normals, ray casting, components,
decimation, attribute transfer, quality checks."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch
import trimesh
from scipy.spatial import cKDTree

from .types import HeadMesh


def mirror_map(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each vertex of ``v (N, 3)``, the nearest vertex to its reflection through x = 0:
    (distance ``(N,)``, index ``(N,)`` int64)."""
    d, idx = cKDTree(v).query(np.asarray(v) * [-1, 1, 1])
    return d, idx.astype(np.int64)


@lru_cache(maxsize=4)
def symmetric_sphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit icosphere -> (directions ``(N, 3)``, faces ``(F, 3)``, mirror ``(N,)``).

    The icosphere is symmetric under x -> -x; ``mirror[i]`` is the vertex at ``(-x, y, z)``.
    """
    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = np.asarray(s.vertices, np.float64)
    f = np.asarray(s.faces, np.int64)
    d, idx = mirror_map(v)
    if d.max() > 1e-6:
        raise RuntimeError("icosphere is not mirror-symmetric")
    v.setflags(write=False)
    f.setflags(write=False)
    idx.setflags(write=False)
    return v, f, idx


def adjacency(faces: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric vertex adjacency ``(n, n)`` of a triangle mesh."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    return a.tocsr()


def uniform_laplacian(faces: np.ndarray, n: int) -> torch.Tensor:
    """Sparse ``L = I - D^-1 A`` as a torch sparse tensor ``(n, n)``: ``L @ v`` is each vertex minus
    the mean of its neighbours."""
    a = adjacency(faces, n)
    deg = np.asarray(a.sum(1)).ravel()
    lap = (sp.eye(n) - sp.diags(1.0 / np.maximum(deg, 1)) @ a).tocoo()
    idx = torch.tensor(np.vstack([lap.row, lap.col]), dtype=torch.long)
    return torch.sparse_coo_tensor(
        idx, torch.tensor(lap.data, dtype=torch.float32), (n, n), check_invariants=False
    ).coalesce()


def harmonic_fill(values: np.ndarray, fixed: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Solve the graph Laplace equation for the free vertices given ``values`` at ``fixed`` (bool)."""
    n = len(values)
    a = adjacency(faces, n)
    deg = np.asarray(a.sum(1)).ravel()
    L = (sp.diags(deg) - a).tocsr()
    free = ~fixed
    if not free.any():
        return values.copy()
    rhs = -L[free][:, fixed] @ values[fixed]
    out = values.copy()
    out[free] = sp.linalg.spsolve(L[free][:, free].tocsc(), rhs)
    return out


def vertex_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals ``(N, 3)`` (differentiable)."""
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    fn = torch.cross(b - a, c - a, dim=1)
    n = torch.zeros_like(v).index_add(0, faces[:, 0], fn).index_add(0, faces[:, 1], fn).index_add(0, faces[:, 2], fn)
    return torch.nn.functional.normalize(n, dim=1, eps=1e-12)


def quality(vertices: np.ndarray, faces: np.ndarray) -> dict[str, float | bool]:
    """Watertightness, degenerate faces, and whether the mesh encloses a positive volume."""
    m = trimesh.Trimesh(vertices, faces, process=False)
    areas = m.area_faces
    return {
        "watertight": bool(m.is_watertight),
        "winding_consistent": bool(m.is_winding_consistent),
        "degenerate_faces": int((areas < 1e-12).sum()),
        "volume_m3": float(m.volume),
        "vertices": int(len(vertices)),
        "faces": int(len(faces)),
    }


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


def largest_component(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The connected component with the most faces (marching tetrahedra can leave floaters)."""
    m = trimesh.Trimesh(v, f, process=False)
    parts = m.split(only_watertight=False)
    if len(parts) <= 1:
        return v, f
    best = max(parts, key=lambda p: len(p.faces))
    return np.asarray(best.vertices, np.float32), np.asarray(best.faces, np.int64)


def decimate(v: np.ndarray, f: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric-error decimation to at most ``max_faces`` faces (marching tetrahedra at a fine grid
    gives hundreds of thousands of faces, more than texturing and a glb need). Decimation can leave a
    non-manifold edge; slightly lower targets are tried until the mesh is closed (measured: a 766k-face
    head gave an open mesh at 150k faces, a closed one at 60k)."""
    import fast_simplification

    v32, f64 = np.ascontiguousarray(v, np.float32), np.ascontiguousarray(f, np.int64)
    for target in (max_faces, int(max_faces * 0.9), int(max_faces * 0.8), int(max_faces * 0.7)):
        vd, fd = fast_simplification.simplify(v32, f64, target_count=target)
        vd, fd = largest_component(np.asarray(vd, np.float32), np.asarray(fd, np.int64))
        if trimesh.Trimesh(vd, fd, process=False).is_watertight:
            break
    return vd, fd


def transfer_attributes(v: np.ndarray, source: HeadMesh) -> tuple[np.ndarray, np.ndarray]:
    """Mirror map ``(N,)`` (nearest vertex to each vertex reflected through x = 0) and face weight
    ``(N,)`` (from the nearest vertex of ``source``) for a new mesh ``v (N, 3)``."""
    _, nn = cKDTree(source.vertices).query(v)
    return mirror_map(v)[1], source.face_weight[nn].astype(np.float32)
