"""Pure-torch rasterizer (CPU or any device).

Visibility is a z-buffer built with ``scatter_reduce(amin)`` on a packed ``depth|triangle`` key over
the pixels of each triangle's bounding box (no gradient). Barycentrics of the winning triangle are
then recomputed from the positions, so gradients reach the vertices through interpolated attributes.
``antialias`` follows nvdiffrast's idea: where a covered pixel neighbours a background pixel, the
silhouette edge's crossing point between the two pixel centres blends their colours, which makes
silhouette coverage a differentiable function of vertex positions.
"""

from __future__ import annotations

import torch

from .base import Rast

_CHUNK = 1 << 22  # candidate (triangle, pixel) pairs per pass: bounds memory to ~100 MB
_DEPTH_BITS = 30


def _screen(pos: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip ``(V, 4)`` -> pixel x, pixel y (pixel centres at integers), NDC z."""
    w = pos[:, 3]
    x = (pos[:, 0] / w + 1) * 0.5 * W - 0.5
    y = (pos[:, 1] / w + 1) * 0.5 * H - 0.5
    return x, y, pos[:, 2] / w


def _edge_bary(x: torch.Tensor, y: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics ``(P, 3)`` of points ``(P,)`` in triangles with corners ``(P, 3)``."""
    x0, x1, x2 = tx.unbind(-1)
    y0, y1, y2 = ty.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    b0 = ((x1 - x) * (y2 - y) - (x2 - x) * (y1 - y)) / area
    b1 = ((x2 - x) * (y0 - y) - (x0 - x) * (y2 - y)) / area
    return torch.stack([b0, b1, 1 - b0 - b1], -1)


class TorchRasterizer:
    name = "torch"
    device = torch.device("cpu")

    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]) -> Rast:
        """Clip positions ``(V, 4)``, triangles ``(F, 3)`` -> :class:`Rast` at ``(H, W)``."""
        H, W = resolution
        tri = tri.long()
        tri_id = self._visibility(pos.detach(), tri, H, W)
        flat = tri_id.reshape(-1)
        pix = torch.nonzero(flat >= 0).squeeze(1)
        bary = pos.new_zeros(H * W, 3)
        depth = pos.new_ones(H * W)
        if pix.numel():
            x, y, z = _screen(pos, H, W)
            corners = tri[flat[pix]]
            sb = _edge_bary((pix % W).to(pos.dtype), (pix // W).to(pos.dtype), x[corners], y[corners])
            inv_w = 1.0 / pos[:, 3][corners]
            pb = sb * inv_w
            pb = pb / pb.sum(-1, keepdim=True)
            bary = bary.index_put((pix,), pb)
            depth = depth.index_put((pix,), (sb * z[corners]).sum(-1))
        return Rast(tri_id=tri_id, bary=bary.reshape(H, W, 3), depth=depth.reshape(H, W))

    @staticmethod
    @torch.no_grad()
    def _visibility(pos: torch.Tensor, tri: torch.Tensor, H: int, W: int) -> torch.Tensor:
        dev = pos.device
        x, y, z = _screen(pos.float(), H, W)
        tx, ty, tz = x[tri], y[tri], z[tri]
        area = (tx[:, 1] - tx[:, 0]) * (ty[:, 2] - ty[:, 0]) - (tx[:, 2] - tx[:, 0]) * (ty[:, 1] - ty[:, 0])
        in_front = (pos[:, 3][tri] > 1e-8).all(1)
        xmin = tx.min(1).values.ceil().clamp(min=0).long()
        xmax = tx.max(1).values.floor().clamp(max=W - 1).long()
        ymin = ty.min(1).values.ceil().clamp(min=0).long()
        ymax = ty.max(1).values.floor().clamp(max=H - 1).long()
        bw, bh = xmax - xmin + 1, ymax - ymin + 1
        keep = in_front & (area.abs() > 1e-12) & (bw > 0) & (bh > 0)
        ids = torch.nonzero(keep).squeeze(1)
        counts = (bw * bh)[ids]
        big = torch.iinfo(torch.int64).max
        zbuf = torch.full((H * W,), big, dtype=torch.int64, device=dev)
        csum = torch.cumsum(counts, 0)
        start = 0
        while start < ids.numel():
            base = csum[start - 1] if start else csum.new_zeros(())
            # At least one triangle per pass, however big its box.
            end = max(int(torch.searchsorted(csum, base + _CHUNK, right=True)), start + 1)
            t = ids[start:end]
            c = counts[start:end]
            ti = torch.repeat_interleave(t, c)
            offs = torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
            local = torch.arange(ti.numel(), device=dev) - offs
            px = xmin[ti] + local % bw[ti]
            py = ymin[ti] + local // bw[ti]
            b = _edge_bary(px.float(), py.float(), tx[ti], ty[ti])
            d = (b * tz[ti]).sum(1)
            inside = (b >= 0).all(1) & (d >= -1) & (d <= 1)
            key = (((d[inside] + 1) * 0.5 * (1 << _DEPTH_BITS)).long() << 32) | ti[inside]
            zbuf.scatter_reduce_(0, py[inside] * W + px[inside], key, reduce="amin")
            start = end
        out = torch.where(zbuf == big, torch.full_like(zbuf, -1), zbuf & 0xFFFFFFFF)
        return out.reshape(H, W)

    def interpolate(self, attr: torch.Tensor, rast: Rast, tri: torch.Tensor) -> torch.Tensor:
        """Vertex attributes ``(V, C)`` -> ``(H, W, C)``, zero on background."""
        H, W = rast.tri_id.shape
        flat = rast.tri_id.reshape(-1)
        pix = torch.nonzero(flat >= 0).squeeze(1)
        corners = tri.long()[flat[pix]]
        vals = (attr[corners] * rast.bary.reshape(-1, 3)[pix, :, None]).sum(1)
        out = attr.new_zeros(H * W, attr.shape[1]).index_put((pix,), vals)
        return out.reshape(H, W, -1)

    def antialias(self, color: torch.Tensor, rast: Rast, pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
        """Blend colours ``(H, W, C)`` across object/background edges; differentiable w.r.t. ``pos``."""
        H, W, C = color.shape
        ids = rast.tri_id
        x, y, _ = _screen(pos, H, W)
        tri = tri.long()
        flat_c = color.reshape(-1, C)
        delta = torch.zeros_like(flat_c)
        rows = torch.arange(H, device=ids.device)[:, None].expand(H, W)
        cols = torch.arange(W, device=ids.device)[None, :].expand(H, W)
        for a_sl, b_sl in (
            ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
            ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ):
            ia, ib = ids[a_sl], ids[b_sl]
            edge = (ia >= 0) != (ib >= 0)
            if not edge.any():
                continue
            pa = rows[a_sl][edge] * W + cols[a_sl][edge]
            pb = rows[b_sl][edge] * W + cols[b_sl][edge]
            a_is_fg = ia[edge] >= 0
            fg = torch.where(a_is_fg, pa, pb)
            bg = torch.where(a_is_fg, pb, pa)
            corners = tri[ids.reshape(-1)[fg]]
            tx, ty = x[corners], y[corners]
            b_f = _edge_bary((fg % W).to(pos.dtype), (fg // W).to(pos.dtype), tx, ty)
            b_g = _edge_bary((bg % W).to(pos.dtype), (bg // W).to(pos.dtype), tx, ty)
            # Crossing of the triangle's boundary on the segment fg centre (0) -> bg centre (1).
            ratio = b_f / (b_f - b_g).clamp(min=1e-12)
            ratio = torch.where(b_g < 0, ratio, torch.full_like(ratio, 2.0))
            s = ratio.min(1).values.clamp(0, 1)
            cf, cg = flat_c[fg], flat_c[bg]
            d = (s - 0.5)[:, None]
            delta = delta.index_add(0, bg, d.clamp(min=0) * (cf - cg))
            delta = delta.index_add(0, fg, (-d).clamp(min=0) * (cg - cf))
        return (flat_c + delta).reshape(H, W, C)
