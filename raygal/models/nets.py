"""Small building blocks shared by the models."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected network: ``in_features`` -> ``hidden`` x ``layers`` -> ``out_features``.

    >>> MLP(5, 2, hidden=16, layers=2)(torch.zeros(3, 5)).shape
    torch.Size([3, 2])
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 256,
                 layers: int = 3, activation=nn.SiLU, dropout: float = 0.0):
        mods: list[nn.Module] = []
        d = in_features
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), activation()]
            if dropout:
                mods.append(nn.Dropout(dropout))
            d = hidden
        mods.append(nn.Linear(d, out_features))
        super().__init__(*mods)


class SmallCNN(nn.Module):
    """A compact image encoder: [B, C, H, W] -> [B, out_features] (global average pooled)."""

    def __init__(self, in_channels: int = 3, out_features: int = 64, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, width * 2, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 2, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def zero_image_columns(layer: nn.Linear, image_init: str, start: int, stop: int) -> None:
    """Initialise ``layer`` for ``image_init``: 'default' leaves PyTorch's initialisation;
    'zero' initialises it as the photometry-only model's layer (PyTorch's uniform bound
    1/sqrt(fan_in) with the fan-in of the inputs outside [start, stop)) and sets the weights
    on the image features [start, stop) to zero. The network then starts as its
    photometry-only counterpart, at the same learning speed (with default initialisation the
    ~256 image features dilute the initial weights on the five photometric ones by
    sqrt(fan_in), and the image model learns the photometry several times slower), and
    gradient descent brings the image in where it lowers the loss."""
    if image_init == "default":
        return
    if image_init != "zero":
        raise ValueError(f"image_init must be 'default' or 'zero', not {image_init!r}")
    fan_in = layer.in_features - (stop - start)
    bound = 1.0 / max(fan_in, 1) ** 0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        layer.weight[:, start:stop] = 0.0
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` is true; 0 (with a gradient path) when
    nothing is masked in, so a batch without a given target still trains the rest."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
