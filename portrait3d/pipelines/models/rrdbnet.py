"""Real-ESRGAN's RRDBNet, for the ``super_resolution`` role (the release's texture "deblur": the UV
map is shrunk by 2 and super-resolved back).

No installable library carries this network here (``realesrgan``/``basicsr`` and ``spandrel`` need
torchvision, which does not install beside this torch), so it is written out: the module and
parameter names are Real-ESRGAN's, so its checkpoints (``params_ema``, ``params`` or a bare state
dict) load with ``strict=True``; the sizes are read from the weights.

Example:
    >>> net = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4)
    >>> net(torch.rand(1, 3, 16, 16)).shape
    torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelError


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, s H, s W)``; scales 2 and 1 take the input pixel-unshuffled."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.scale = scale
        in_ch = 3 * {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, 4 // self.scale) if self.scale < 4 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    @classmethod
    def from_state_dict(cls, state: dict) -> RRDBNet:
        """The network a Real-ESRGAN checkpoint describes, with its weights."""
        sd = state.get("params_ema") or state.get("params") or state
        try:
            in_ch, feat = sd["conv_first.weight"].shape[1], sd["conv_first.weight"].shape[0]
            blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
            grow = sd["body.0.rdb1.conv1.weight"].shape[0]
            net = cls({3: 4, 12: 2, 48: 1}[in_ch], feat, blocks, grow)
            net.load_state_dict(sd, strict=True)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ModelError(f"not a Real-ESRGAN RRDBNet checkpoint: {type(e).__name__}: {e}") from None
        return net.eval().requires_grad_(False)


@torch.no_grad()
def deblur(texture: torch.Tensor, net: RRDBNet) -> torch.Tensor:
    """The release's deblur of a UV map ``(3, T, T)`` in [0, 1]: shrunk by the network's scale (bicubic),
    then super-resolved back to ``(3, T, T)``."""
    T = texture.shape[-1]
    small = F.interpolate(texture[None], size=(T // net.scale, T // net.scale), mode="bicubic", align_corners=False)
    out = net(small.clamp(0, 1))
    if out.shape[-1] != T:
        out = F.interpolate(out, size=(T, T), mode="bicubic", align_corners=False)
    return out[0].clamp(0, 1)
