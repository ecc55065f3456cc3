"""Colour correction of the model output against the (resized) input.

All functions take ``content`` (the decoded output) and ``reference`` (the preprocessed input,
same size) as ``(T, 3, H, W)`` float tensors in the model range [-1, 1] and return the corrected
content in that range (unclamped, like upstream). Every method works frame by frame, so callers
may process a batch in frame chunks to bound memory.

* ``wavelet``: StableSR ``wavelet_reconstruction`` exactly as the official pipeline applies it
  (model-spec §2.7): 5-level decomposition with the 3x3 binomial kernel at dilation 2**i after
  replicate padding; high frequencies from the content, low from the reference. No clamping of
  the dilation (a third-party variant clamps it to min(H, W)//8, which is a different filter).
* ``adain``: per-frame, per-channel mean/std transfer (StableSR ``adain_color_fix``: unbiased
  variance + 1e-5).
* ``lab``: the same mean/std transfer in CIELAB (sRGB, D65) on L*, a* and b*, which corrects the
  model's saturation and brightness drift without mixing hues across RGB channels.
* ``none``: the content unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_CORRECTIONS = ("wavelet", "adain", "lab", "none")
WAVELET_LEVELS = 5


def color_correct(content: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply `method` (one of COLOR_CORRECTIONS) to (T, 3, H, W) tensors in [-1, 1]."""
    if content.shape != reference.shape:
        raise ValueError(f"colour correction needs equal shapes, got {tuple(content.shape)} and {tuple(reference.shape)}")
    if method == "wavelet":
        return wavelet_reconstruction(content, reference)
    if method == "adain":
        return adain(content, reference)
    if method == "lab":
        return lab_transfer(content, reference)
    if method == "none":
        return content
    raise ValueError(f"color_correction must be one of {', '.join(COLOR_CORRECTIONS)}, got {method!r}")


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    channels = x.shape[1]
    kernel = kernel.expand(channels, 1, 3, 3)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(x, kernel, groups=channels, dilation=radius)


def _wavelet_decompose(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): `high` sums x - blur(x) over the levels in upstream's order; `low` is the last blur."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _wavelet_blur(x, 2**i)
        high += x - low
        x = low
    return high, x


def wavelet_reconstruction(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of `content` + low frequencies of `reference` (StableSR, 5 levels)."""
    high, _ = _wavelet_decompose(content)
    _, low = _wavelet_decompose(reference)
    return high + low


def _mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)  # (T, C, H*W)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]


def adain(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame, per-channel mean/std of `content` set to those of `reference`."""
    c_mean, c_std = _mean_std(content)
    r_mean, r_std = _mean_std(reference)
    return (content - c_mean) / c_std * r_std + r_mean


def lab_transfer(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """AdaIN in CIELAB: inputs clamped to the displayable range first (sRGB needs [0, 1])."""
    c_lab = rgb_to_lab(content.clamp(-1, 1) * 0.5 + 0.5)
    r_lab = rgb_to_lab(reference.clamp(-1, 1) * 0.5 + 0.5)
    out = lab_to_rgb(adain(c_lab, r_lab))
    return out.clamp(0, 1) * 2.0 - 1.0


# sRGB (D65) <-> CIE XYZ <-> CIELAB, IEC 61966-2-1 and CIE 15 formulas.
_RGB_TO_XYZ = torch.tensor([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_LAB_EPS = 216 / 24389
_LAB_KAPPA = 24389 / 27


def _channel_matmul(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,tjhw->tihw", m.to(x), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) sRGB in [0, 1] -> L* in [0, 100], a*, b* roughly [-128, 127]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _channel_matmul(_RGB_TO_XYZ, linear) / _D65_WHITE.to(rgb)[None, :, None, None]
    f = torch.where(xyz > _LAB_EPS, xyz.clamp_min(_LAB_EPS) ** (1 / 3), (_LAB_KAPPA * xyz + 16) / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_lab` (sRGB in [0, 1] for in-gamut colours; not clamped)."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f**3 > _LAB_EPS, f**3, (116 * f - 16) / _LAB_KAPPA)
    xyz = xyz * _D65_WHITE.to(lab)[None, :, None, None]
    linear = _channel_matmul(torch.linalg.inv(_RGB_TO_XYZ), xyz)
    linear = linear.clamp_min(0)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
