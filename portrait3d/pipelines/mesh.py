"""Small mesh utilities: a mirror-symmetric sphere, adjacency, Laplacians, normals, quality checks."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch
import trimesh
from scipy.spatial import cKDTree


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
