"""The paper's two-view augmentations, per image (torchvision v2) and per batch (on the device).

Both views (PAPER.md s.3, from the DirectCLR public code): RandomResizedCrop (bicubic),
horizontal flip p=0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, then
Gaussian blur with p=1.0 (view 1) / 0.1 (view 2) and solarize with p=0.0 (view 1) / 0.2 (view 2).
Blur sigma is U(0.1, 2.0) pixels at 224 px, scaled with the image size; the kernel spans about
10% of the image (odd, at least 3).

:func:`view_transforms` is the faithful per-image path (PIL -> normalised tensor, in DataLoader
workers). :class:`BatchAugment` does the same on a whole (B, 3, H, W) batch on any device, so a GPU
run is not capped by CPU augmentation. It differs from the per-image path in three documented
ways: bilinear resampling of the crop, one random order of the four colour-jitter operations per
batch (per image in torchvision), and crops whose aspect ratio is clamped instead of re-sampled.

Evaluation (no augmentation) has one transform for the trainer and the probe alike:
:func:`collapse_probe.data.images.eval_transform`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from collapse_probe.data.images import IMAGENET_MEAN, IMAGENET_STD

JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
BLUR_P = (1.0, 0.1)
SOLARIZE_P = (0.0, 0.2)


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel size spanning about 10% of the image, at least 3 (23 at 224 px)."""
    k = max(3, int(round(0.1 * image_size)))
    return k if k % 2 else k + 1


def blur_sigma(image_size: int) -> tuple[float, float]:
    """Blur sigma range in pixels: (0.1, 2.0) at 224 px, scaled linearly with the image size."""
    scale = image_size / 224
    return (0.1 * scale, 2.0 * scale)


def view_transforms(
    image_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """The two per-image view transforms of the paper (PIL image -> normalised float tensor).

    >>> from PIL import Image
    >>> t1, t2 = view_transforms(32)
    >>> t1(Image.new("RGB", (40, 40))).shape
    torch.Size([3, 32, 32])
    """
    from torchvision.transforms import InterpolationMode, v2

    def view(blur_p: float, solarize_p: float) -> v2.Compose:
        return v2.Compose([
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(*JITTER)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(image_size), sigma=blur_sigma(image_size))], p=blur_p),
            v2.RandomSolarize(threshold=128, p=solarize_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ])

    return view(BLUR_P[0], SOLARIZE_P[0]), view(BLUR_P[1], SOLARIZE_P[1])


def crop_transform(image_size: int, *, crop_scale: tuple[float, float] = (0.08, 1.0)) -> Callable[[Any], torch.Tensor]:
    """CPU half of the device path: RandomResizedCrop (bicubic) + flip -> uint8 (3, S, S) tensor."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
    ])


class TwoViews:
    """``image -> (t1(image), t2(image))``; picklable for DataLoader workers."""

    def __init__(self, t1: Callable[[Any], Any], t2: Callable[[Any], Any]):
        self.t1, self.t2 = t1, t2

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.t1(image), self.t2(image)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma with torchvision's coefficients, (B, 1, H, W)."""
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    delta = maxc - x.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    hue = torch.where(delta > 0, hue.gather(1, argmax.unsqueeze(1)).squeeze(1) / 6, torch.zeros_like(delta))
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.stack([hue, sat, maxc], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.arange(5.0, 0.0, -2.0, device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)  # 5, 3, 1: no host copy
    k = (n + h * 6) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift the HSV hue of each image of (B, 3, H, W) in [0, 1] by ``shift`` (B,) turns.

    The same operation as torchvision's ``adjust_hue``, with one factor per image.

    >>> x = torch.rand(2, 3, 4, 4)
    >>> bool(torch.allclose(adjust_hue(x, torch.zeros(2)), x, atol=1e-5))
    True
    """
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


class BatchAugment:
    """The paper's augmentation of one view, applied to a whole batch on its device.

    Call with a (B, 3, H, W) batch (uint8, or float in [0, 1]) and an optional
    ``torch.Generator`` on the batch's device; returns the normalised float (B, 3, S, S) batch.
    ``crop=False`` skips crop and flip (done per image on the CPU by :func:`crop_transform`).

    >>> aug = BatchAugment(16, view=1)
    >>> aug(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 16, 16])
    """

    def __init__(
        self,
        image_size: int,
        *,
        view: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop: bool = True,
        crop_scale: tuple[float, float] = (0.08, 1.0),
    ):
        if view not in (1, 2):
            raise ValueError("view must be 1 or 2")
        self.image_size, self.crop, self.crop_scale = image_size, crop, crop_scale
        self.blur_p, self.solarize_p = BLUR_P[view - 1], SOLARIZE_P[view - 1]
        self.mean, self.std = tuple(mean), tuple(std)
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, 1, 1) mean and std on ``like``'s device, copied there once: a host-to-device
        copy per call would be a host sync per training step on a GPU."""
        key = (like.device, like.dtype)
        if key not in self._stats:
            self._stats[key] = tuple(torch.tensor(v, dtype=like.dtype).view(1, 3, 1, 1).to(like.device)
                                     for v in (self.mean, self.std))
        return self._stats[key]

    def _uniform(self, n: int, low: float, high: float, like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, device=like.device, generator=gen) * (high - low) + low

    def _crop_flip(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        area = self._uniform(b, *self.crop_scale, x, gen)
        log_ratio = self._uniform(b, math.log(3 / 4), math.log(4 / 3), x, gen)
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - w) * (2 * torch.rand(b, device=x.device, generator=gen) - 1)  # centre in [-1+w, 1-w]
        cy = (1 - h) * (2 * torch.rand(b, device=x.device, generator=gen) - 1)
        flip = torch.where(torch.rand(b, device=x.device, generator=gen) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, [b, 3, self.image_size, self.image_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        bright, contrast, sat, hue = JITTER
        factors = [
            self._uniform(b, 1 - bright, 1 + bright, x, gen).view(-1, 1, 1, 1),
            self._uniform(b, 1 - contrast, 1 + contrast, x, gen).view(-1, 1, 1, 1),
            self._uniform(b, 1 - sat, 1 + sat, x, gen).view(-1, 1, 1, 1),
            self._uniform(b, -hue, hue, x, gen),
        ]
        # one order per batch, drawn on the CPU so that a GPU batch causes no device sync
        cpu_gen = gen if gen is None or gen.device.type == "cpu" else None
        order = torch.randperm(4, generator=cpu_gen).tolist()
        for op in order:
            if op == 0:
                x = (x * factors[0]).clamp_(0, 1)
            elif op == 1:
                x = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), factors[1])
            elif op == 2:
                x = _blend(x, _gray(x), factors[2])
            else:
                x = adjust_hue(x, factors[3])
        return x

    def _blur(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        k = blur_kernel_size(self.image_size)
        sigma = self._uniform(b, *blur_sigma(self.image_size), x, gen)
        offsets = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
        kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True))[:, None].expand(b, c, k).reshape(b * c, k)  # (B*C, k)
        flat = F.pad(x.reshape(1, b * c, hgt, wid), (k // 2,) * 4, mode="reflect")
        flat = F.conv2d(flat, kernel.view(b * c, 1, k, 1), groups=b * c)
        flat = F.conv2d(flat, kernel.view(b * c, 1, 1, k), groups=b * c)
        return flat.view(b, c, hgt, wid)

    def _where(self, p: float, new: torch.Tensor, old: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if p >= 1.0:
            return new
        mask = torch.rand(old.shape[0], device=old.device, generator=gen).view(-1, 1, 1, 1) < p
        return torch.where(mask, new, old)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.crop:
            x = self._crop_flip(x, gen)
        x = self._where(0.8, self._jitter(x, gen), x, gen)
        x = self._where(0.2, _gray(x).expand_as(x), x, gen)
        if self.blur_p > 0:
            x = self._where(self.blur_p, self._blur(x, gen), x, gen)
        if self.solarize_p > 0:
            x = self._where(self.solarize_p, torch.where(x >= 0.5, 1 - x, x), x, gen)
        mean, std = self._mean_std(x)
        return (x - mean) / std
