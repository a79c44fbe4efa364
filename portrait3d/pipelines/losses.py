"""Losses and regularizers shared by the stages.

Example:
    >>> import torch
    >>> float(negative_pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5])))  # doctest: +ELLIPSIS
    -0.99...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``-corr(a, b)`` over all elements: 0-dimensional, in [-1, 1]."""
    a = a - a.mean()
    b = b - b.mean()
    return -(a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12)


def mesh_regularizers(v: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normal consistency: mean ``1 - cos`` between the normals of faces sharing an edge; uniform
    Laplacian: mean squared distance of each vertex to its neighbours' centroid)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    fn = F.normalize(torch.cross(b - a, c - a, dim=1), dim=1, eps=1e-12)
    edges = torch.sort(torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), dim=1).values
    face_of = torch.arange(len(f), device=f.device).repeat(3)
    _, inv = torch.unique(edges, dim=0, return_inverse=True)
    order = torch.argsort(inv, stable=True)
    si, sf = inv[order], face_of[order]
    pair = si[1:] == si[:-1]  # a closed manifold mesh has each edge twice, adjacent after the sort
    consistency = (1 - (fn[sf[:-1][pair]] * fn[sf[1:][pair]]).sum(-1)).mean() if pair.any() else v.sum() * 0
    e = edges
    deg = torch.zeros(len(v), device=v.device).index_add(0, e.reshape(-1), torch.ones(e.numel(), device=v.device))
    nbr = torch.zeros_like(v).index_add(0, e[:, 0], v[e[:, 1]]).index_add(0, e[:, 1], v[e[:, 0]])
    used = deg > 0
    lap = (nbr[used] / deg[used, None] - v[used]).pow(2).sum(-1).mean()
    return consistency, lap


def total_variation(t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring texels of ``t (C, H, W)``."""
    return (t[:, 1:] - t[:, :-1]).abs().mean() + (t[:, :, 1:] - t[:, :, :-1]).abs().mean()
