"""Image encoders: gri cutouts [B, C, H, W] -> feature vectors [B, F].

``ConvEncoder`` is the CFM paper's encoder (Yunus, Wu & Holwerda, arXiv:2512.05078): four
stride-1 3x3 convolution blocks, each followed by 2x2 average pooling, then global average
pooling and a linear map to ``out_features`` (256 in the paper).
"""
from __future__ import annotations

import torch
from torch import nn


def _groups(channels: int, max_groups: int = 8) -> int:
    """The largest divisor of ``channels`` not above ``max_groups``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nn.Sequential):
    """conv 3x3 (stride 1, same padding) -> GroupNorm -> SiLU -> 2x2 average pooling.

    GroupNorm rather than BatchNorm: it behaves the same in training and inference and for any
    batch size (batch inference sees single rows; DDP workers see small shards), so a saved
    model needs no running statistics.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.SiLU(),
            nn.AvgPool2d(2),
        )


class ConvEncoder(nn.Module):
    """The CFM image encoder: [B, C, H, W] -> [B, out_features].

    Four ``ConvBlock`` s with ``width`` x (1, 2, 4, 8) channels halve the resolution four times
    (64 px -> 4 px, 160 px -> 10 px); global average pooling makes the output independent of
    the input size, so one architecture serves 64-160 px cutouts (anything >= 16 px works).

    Args:
        in_channels: image channels C (3 for gri).
        out_features: feature size F (256 in the paper).
        width: channels of the first block.

    >>> enc = ConvEncoder(3, 256, width=8)
    >>> enc(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 256])
    >>> enc(torch.zeros(1, 3, 160, 160)).shape
    torch.Size([1, 256])
    """

    MULTIPLIERS = (1, 2, 4, 8)
    MIN_SIZE = 2 ** len(MULTIPLIERS)

    def __init__(self, in_channels: int = 3, out_features: int = 256, width: int = 32):
        super().__init__()
        chans = [in_channels] + [width * m for m in self.MULTIPLIERS]
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], out_features)
        self.in_channels = in_channels
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got "
                             f"{list(x.shape)}")
        if min(x.shape[-2:]) < self.MIN_SIZE:
            raise ValueError(f"images of {x.shape[-2]}x{x.shape[-1]} px are too small for "
                             f"{len(self.MULTIPLIERS)} pooling stages (need >= "
                             f"{self.MIN_SIZE} px)")
        return self.head(self.pool(self.blocks(x)).flatten(1))
