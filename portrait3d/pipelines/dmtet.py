"""Deformable tetrahedral grids (DMTet): the grid, marching tetrahedra, and an SDF from a mesh.

The grid is a cube lattice of ``resolution`` cells per side over ``[-1, 1]^3``, each cube split into
the 6 tetrahedra around its main diagonal (Kuhn / Freudenthal subdivision: neighbouring cubes share
their split faces, so the grid is conforming and the extracted surface is watertight). A narrow band
keeps only the cubes near a surface, which makes high resolutions affordable.

Marching tetrahedra follows DMTet (Shen et al. 2021): a surface vertex on every edge whose ends have
opposite signs, placed where the linear interpolation of the SDF is zero, so positions are
differentiable with respect to both the SDF values and the grid deformation.

Example:
    >>> verts, tets = kuhn_grid(8)
    >>> sdf = torch.from_numpy(np.linalg.norm(verts, axis=1) - 0.5)
    >>> v, f = marching_tets(torch.from_numpy(verts), sdf, torch.from_numpy(tets))
    >>> bool(abs(v.norm(dim=1).mean() - 0.5) < 0.02)
    True
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from .mesh import vertex_normals

# The 6 tetrahedra of a unit cube: corner bits (x, y, z); each walks 000 -> 111 along one axis order.
_CORNERS = np.array([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)])


def _cube_tets() -> np.ndarray:
    out = []
    for perm in itertools.permutations(range(3)):
        path, bits = [0], 0
        for axis in perm:
            bits |= 1 << axis
            path.append(bits)
        p = _CORNERS[path].astype(float)
        if np.linalg.det(p[1:] - p[0]) < 0:  # one orientation for all, as the triangle table assumes
            path[2], path[3] = path[3], path[2]
        out.append(path)
    return np.array(out)


CUBE_TETS = _cube_tets()  # (6, 4) corner indices


def kuhn_grid(resolution: int, cubes: np.ndarray | None = None, with_boundary: bool = False):
    """Tetrahedral grid over ``[-1, 1]^3``: vertices ``(N, 3)`` float32, tets ``(T, 4)`` int64, and
    with ``with_boundary`` a bool ``(N,)`` marking vertices on the grid's boundary (fewer than 8 of
    their cubes kept).

    ``cubes (C, 3)`` int, cube indices in ``[0, resolution)``, keeps only those cubes (default: all).
    """
    if resolution < 1:
        raise ValueError(f"grid resolution must be at least 1, got {resolution}")
    r1 = resolution + 1
    if cubes is None:
        g = np.arange(resolution)
        cubes = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    corner_ids = (cubes[:, None, :] + _CORNERS[None]) @ np.array([r1 * r1, r1, 1])  # (C, 8) lattice ids
    # Lattice ids -> compact vertex ids through a dense table (linear, unlike a sort).
    cubes_per_lattice = np.bincount(corner_ids.ravel(), minlength=r1**3)
    used = np.flatnonzero(cubes_per_lattice)
    index = np.zeros(r1**3, np.int64)
    index[used] = np.arange(len(used))
    tets = index[corner_ids[:, CUBE_TETS].reshape(-1, 4)]
    ijk = np.stack([used // (r1 * r1), (used // r1) % r1, used % r1], 1)
    verts = (ijk / resolution * 2 - 1).astype(np.float32)
    if not with_boundary:
        return verts, tets
    return verts, tets, cubes_per_lattice[used] < 8


def cached_kuhn_grid(resolution: int, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kuhn_grid` of the whole cube, kept in ``cache_dir`` (default ``$PORTRAIT3D_CACHE`` or
    ``~/.cache/portrait3d``) under ``tets/kuhn_{resolution}.npz``."""
    base = Path(cache_dir or os.environ.get("PORTRAIT3D_CACHE") or Path.home() / ".cache" / "portrait3d")
    path = base / "tets" / f"kuhn_{resolution}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["verts"], z["tets"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt
    verts, tets = kuhn_grid(resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, verts=verts, tets=tets)
    os.replace(tmp, path)
    return verts, tets


def band_cubes(resolution: int, surface: np.ndarray, band: float) -> np.ndarray:
    """Cube indices ``(C, 3)`` within ``band`` (grid units, [-1, 1] cube) of the cubes holding any of
    the points ``surface (P, 3)`` (sample a surface densely: at least one point per cube it crosses).

    A Euclidean distance transform of the occupied cubes: linear in the number of cubes.
    """
    from scipy.ndimage import distance_transform_edt

    ijk = np.clip(((surface + 1) / 2 * resolution).astype(np.int64), 0, resolution - 1)
    free = np.ones((resolution,) * 3, bool)
    free[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = False
    cells = distance_transform_edt(free)
    return np.argwhere(cells * (2.0 / resolution) <= band)


# Marching-tetrahedra tables (DMTet): for each of the 16 inside/outside patterns of a tet's corners,
# up to two triangles over its 6 edges.
_TRIANGLES = torch.tensor(
    [
        [-1, -1, -1, -1, -1, -1],
        [1, 0, 2, -1, -1, -1],
        [4, 0, 3, -1, -1, -1],
        [1, 4, 2, 1, 3, 4],
        [3, 1, 5, -1, -1, -1],
        [2, 3, 0, 2, 5, 3],
        [1, 4, 0, 1, 5, 4],
        [4, 2, 5, -1, -1, -1],
        [4, 5, 2, -1, -1, -1],
        [4, 1, 0, 4, 5, 1],
        [3, 2, 0, 3, 5, 2],
        [1, 3, 5, -1, -1, -1],
        [4, 1, 2, 4, 3, 1],
        [3, 0, 4, -1, -1, -1],
        [2, 0, 1, -1, -1, -1],
        [-1, -1, -1, -1, -1, -1],
    ]
)
_NUM_TRIANGLES = torch.tensor([0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0])
_TET_EDGES = torch.tensor([0, 1, 0, 2, 0, 3, 1, 2, 1, 3, 2, 3])


def marching_tets(pos: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero level set of ``sdf (N,)`` (negative inside) on the tet grid ``pos (N, 3)``, ``tets (T, 4)``.

    Returns vertices ``(V, 3)`` (differentiable w.r.t. ``pos`` and ``sdf``) and faces ``(F, 3)``
    int64, counter-clockwise seen from outside.
    """
    dev = pos.device
    with torch.no_grad():
        inside = sdf < 0
        occ = inside[tets]
        n_in = occ.sum(-1)
        valid = (n_in > 0) & (n_in < 4)
        edges = tets[valid][:, _TET_EDGES.to(dev)].reshape(-1, 2)
        edges = torch.sort(edges, dim=1).values
        unique, edge_of = torch.unique(edges, dim=0, return_inverse=True)
        crossing = inside[unique].sum(-1) == 1
        vert_of_edge = torch.full((len(unique),), -1, dtype=torch.long, device=dev)
        vert_of_edge[crossing] = torch.arange(int(crossing.sum()), device=dev)
        edge_vert = vert_of_edge[edge_of].reshape(-1, 6)
        ends = unique[crossing]
    s = sdf[ends]  # (E, 2)
    w = s[:, 1:] / (s[:, 1:] - s[:, :1])  # weight of the first end
    verts = pos[ends[:, 0]] * w + pos[ends[:, 1]] * (1 - w)
    with torch.no_grad():
        code = (occ[valid].long() * (2 ** torch.arange(4, device=dev))).sum(-1)
        count = _NUM_TRIANGLES.to(dev)[code]
        table = _TRIANGLES.to(dev)[code]
        one = torch.gather(edge_vert[count == 1], 1, table[count == 1][:, :3]).reshape(-1, 3)
        two = torch.gather(edge_vert[count == 2], 1, table[count == 2][:, :6]).reshape(-1, 3)
        faces = torch.cat([one, two])[:, [0, 2, 1]]  # the tables wind inward for negative-inside SDFs
    return verts, faces


def mesh_sdf(
    vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, samples: int = 200_000, seed: int = 0
) -> np.ndarray:
    """Approximate signed distance ``(P,)`` (negative inside) of ``points (P, 3)`` to a closed mesh.

    Distance to the nearest of ``samples`` area-uniform surface points; sign from that point's face
    normal. Accurate near the surface (where DMTet needs it) to about the sample spacing.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal = cross / np.maximum(np.linalg.norm(cross, axis=1), 1e-20)[:, None]
    pts, pick = surface_points(v, f, samples, seed, with_faces=True)
    nrm = np.concatenate([normal[pick], vertex_normals(torch.from_numpy(v), torch.from_numpy(f)).numpy()])
    dist, nn = cKDTree(pts).query(points, workers=-1)
    side = np.einsum("ij,ij->i", points - pts[nn], nrm[nn])
    return np.where(side < 0, -dist, dist)


MIN_BAND_CELLS = 4


class DMTetSurface:
    """SDF values and vertex offsets on a tet grid: the parameters DMTet optimises.

    The grid is a cube around a mesh's bounding box (``margin`` metres of free space), restricted to
    the cells within ``band`` metres of that mesh (``band = 0``: the whole, cached grid). Offsets are
    bounded by ``deform_scale`` cells through ``tanh``.

    Example:
        >>> import trimesh
        >>> ball = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
        >>> s = DMTetSurface.from_mesh(ball.vertices, ball.faces, resolution=24, band=0.03)
        >>> v, f = s.extract()                  # (V, 3) metres, differentiable; (F, 3) int64
        >>> bool(abs(v.norm(dim=1).mean() - 0.1) < 0.005), v.requires_grad
        (True, True)
        >>> opt = torch.optim.Adam(s.parameters(), lr=5e-3)
    """

    def __init__(
        self,
        grid: torch.Tensor,
        tets: torch.Tensor,
        sdf: torch.Tensor,
        centre: torch.Tensor,
        extent: float,
        resolution: int,
        deform_scale: float = 0.5,
        boundary: torch.Tensor | None = None,
    ):
        self.grid, self.tets, self.centre, self.extent = grid, tets, centre, float(extent)
        self.sdf = sdf.clone().requires_grad_(True)
        # Boundary vertices keep their initial sign, so the surface never reaches the grid's edge
        # (where it would open: there are no tets beyond it).
        self.boundary = boundary if boundary is not None else torch.zeros_like(sdf, dtype=torch.bool)
        self._outside = sdf[self.boundary] > 0
        self.deform = torch.zeros_like(grid, requires_grad=True)
        self.max_offset = deform_scale * 2.0 / resolution
        self.cell = 2.0 * self.extent / resolution  # a grid cell's side, metres

    @classmethod
    def from_mesh(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        resolution: int,
        band: float = 0.0,
        margin: float = 0.03,
        deform_scale: float = 0.5,
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
    ) -> DMTetSurface:
        """Grid and SDF around a closed mesh ``vertices (N, 3)`` (metres), ``faces (F, 3)``."""
        v = np.asarray(vertices, np.float64)
        lo, hi = v.min(0), v.max(0)
        centre = (lo + hi) / 2
        ext = float((hi - lo).max() / 2 + margin)
        local = (v - centre) / ext
        if band > 0:
            # At least MIN_BAND_CELLS each side: a band a couple of cells thin has boundary edges across
            # the surface, where the surface opens (seen at resolution 32 with a 2-cell band).
            width = max(band / ext, MIN_BAND_CELLS * 2.0 / resolution)
            cubes = band_cubes(resolution, surface_points(local, faces, 20 * resolution**2), width)
            verts, tets, boundary = kuhn_grid(resolution, cubes, with_boundary=True)
        else:
            verts, tets = cached_kuhn_grid(resolution, cache_dir)
            boundary = np.abs(verts).max(1) >= 1
        sdf = mesh_sdf(local, faces, verts)
        return cls(
            torch.from_numpy(verts).to(device),
            torch.from_numpy(tets).to(device),
            torch.from_numpy(sdf).float().to(device),
            torch.tensor(centre, dtype=torch.float32, device=device),
            ext,
            resolution,
            deform_scale,
            torch.from_numpy(boundary).to(device),
        )

    def parameters(self) -> list[torch.Tensor]:
        return [self.sdf, self.deform]

    @torch.no_grad()
    def constrain(self) -> None:
        """Give boundary vertices back their initial sign (call after each optimiser step)."""
        b = self.sdf[self.boundary]
        eps = 1e-4
        self.sdf[self.boundary] = torch.where(self._outside, b.clamp(min=eps), b.clamp(max=-eps))

    def extract(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current surface: vertices ``(V, 3)`` in metres (differentiable), faces ``(F, 3)``."""
        pos = self.grid + self.max_offset * torch.tanh(self.deform)
        v, f = marching_tets(pos, self.sdf, self.tets)
        return self.centre + v * self.extent, f


def surface_points(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0, with_faces: bool = False):
    """``(n + N, 3)`` area-uniform points on a mesh, then its ``N`` vertices (and, with ``with_faces``,
    the face ``(n,)`` of each sampled point)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    s, r2 = np.sqrt(rng.random(n)), rng.random(n)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = np.concatenate([(tri[pick] * bary[..., None]).sum(1), vertices])
    return (pts, pick) if with_faces else pts
