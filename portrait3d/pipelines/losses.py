"""Losses and regularizers shared by the stages.

Example:
    >>> import torch
    >>> float(negative_pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5])))  # doctest: +ELLIPSIS
    -0.99...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mesh import vertex_normals


def negative_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``-corr(a, b)`` over all elements: 0-dimensional, in [-1, 1]."""
    a = a - a.mean()
    b = b - b.mean()
    return -(a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12)


def mask_mse(silhouette: torch.Tensor, mask: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of a rendered ``silhouette (S, S, 1)`` and the head ``mask (S, S, 1)``,
    each pixel weighted by ``known (S, S, 1)``, its share on the photo (past the photo's edge the mask says
    nothing); with ``known`` all ones, ``F.mse_loss``."""
    return ((silhouette - mask).pow(2) * known).mean()


def unique_edges(f: torch.Tensor) -> torch.Tensor:
    """``(E, 2)`` the undirected edges of faces ``f (F, 3)``, each once (lower index first)."""
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return torch.unique(torch.sort(e, dim=1).values, dim=0)


def mesh_regularizers(v: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's regularizers of a mesh (threestudio's ``Mesh``), 0-dimensional:

    - normal consistency: the mean over edges of ``1 - cos`` between the (area-weighted) vertex
      normals at the edge's two ends;
    - Laplacian smoothness: the mean over vertices of ``||L v||`` with the uniform, unnormalised
      ``L = D - A`` (degree minus adjacency): neither squared nor divided by the degree, so its scale
      is that of ``v`` (the release's weights are for its normalised frame).
    """
    e = unique_edges(f)
    n = vertex_normals(v, f)
    consistency = (1 - F.cosine_similarity(n[e[:, 0]], n[e[:, 1]], dim=-1)).mean()
    ones = torch.ones(len(e), device=v.device, dtype=v.dtype)
    deg = torch.zeros(len(v), device=v.device, dtype=v.dtype).index_add(0, e[:, 0], ones).index_add(0, e[:, 1], ones)
    nbr = torch.zeros_like(v).index_add(0, e[:, 0], v[e[:, 1]]).index_add(0, e[:, 1], v[e[:, 0]])
    laplacian = (deg[:, None] * v - nbr).norm(dim=1).mean()
    return consistency, laplacian


def normalized_disparity(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Camera depth ``(H, W)`` -> ``1 / depth`` min-max normalised to [0, 1] over ``mask`` (nearer is
    larger, as the release renders depth for its depth losses), 0 elsewhere."""
    inv = torch.where(mask, 1.0 / depth.clamp(min=1e-7), torch.zeros_like(depth))
    lo, hi = inv[mask].min(), inv[mask].max()
    return torch.where(mask, (inv - lo) / (hi - lo + 1e-7), torch.zeros_like(depth))


def aligned_depth_mse(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """MSE of ``pred (N,)`` to ``ref (N,)`` after the least-squares scale and shift of ``ref`` that fits
    ``pred`` best (the alignment is a constant: no gradient flows through it)."""
    with torch.no_grad():
        A = torch.stack([ref, torch.ones_like(ref)], -1)
        x = torch.linalg.lstsq(A, pred[:, None]).solution
        fitted = (A @ x)[:, 0]
    return F.mse_loss(fitted, pred)


def squared_total_variation(img: torch.Tensor) -> torch.Tensor:
    """The release's total variation of ``img (C, H, W)``: the sum of squared differences to the next
    row and the next column (the last row and column repeated)."""
    down = torch.cat([img[:, 1:], img[:, -1:]], 1)
    right = torch.cat([img[:, :, 1:], img[:, :, -1:]], 2)
    return ((img - down) ** 2 + (img - right) ** 2).sum()
