"""Backbones that map images (B, 3, H, W) to a representation (B, D).

* ``resnet18`` (D = 512) / ``resnet50`` (D = 2048): torchvision, random init, zero-init residual
  (the last BN of each block starts at 0, as in the paper's recipe), ``fc`` replaced by Identity.
  ``small_stem=True`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (32-pixel images).
* ``smallcnn`` (D = 4 * width): four conv-BN-ReLU stages and a final residual block, for CPU runs.
  The residual connection matters for DirectCLR: r[:, d0:] gets no direct gradient and is only
  useful through it (PAPER.md s.3).
"""

from __future__ import annotations

import torch
from torch import nn

from collapse_probe.errors import CollapseProbeError


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` at constant width; last BN zero-initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class SmallCNN(nn.Module):
    """A ~0.6M-parameter CNN for 32-pixel images: (B, 3, H, W) -> (B, 4 * width).

    >>> SmallCNN(width=8)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 32])
    """

    def __init__(self, width: int = 32):
        super().__init__()
        channels = [width, width, 2 * width, 4 * width]

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            stage(3, channels[0], 1),
            stage(channels[0], channels[1], 2),
            stage(channels[1], channels[2], 2),
            stage(channels[2], channels[3], 2),
            ResidualBlock(channels[3]),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def build_backbone(arch: str, *, small_stem: bool = False, width: int = 32) -> tuple[nn.Module, int]:
    """Return ``(backbone, representation_dim)`` for ``arch`` (resnet18, resnet50 or smallcnn).

    >>> net, dim = build_backbone("resnet18", small_stem=True)
    >>> dim, net(torch.zeros(2, 3, 32, 32)).shape
    (512, torch.Size([2, 512]))
    """
    if arch == "smallcnn":
        net = SmallCNN(width)
        return net, net.out_dim
    if arch not in ("resnet18", "resnet50"):
        raise CollapseProbeError(f"unknown backbone {arch!r}; choose resnet18, resnet50 or smallcnn")
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net, dim
