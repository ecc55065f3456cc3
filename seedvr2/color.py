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

Frames too large to correct whole on the device go through `color_correct_bands`: the same
methods on consecutive row bands read through callables, so that only a band (plus its halo) of
the content and of the reference is worked on at a time; the result equals `color_correct`
(see its docstring for how exactly).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

COLOR_CORRECTIONS = ("wavelet", "adain", "lab", "none")
WAVELET_LEVELS = 5
# Rows a band of the wavelet must read beyond its own on each interior side: level i's blur reads
# +-2**i rows of the level before, so the 5 levels reach 1 + 2 + 4 + 8 + 16 = 31 rows.
WAVELET_HALO = sum(2**i for i in range(WAVELET_LEVELS))

RowReader = Callable[[int, int], torch.Tensor]


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
    _check_method(method)
    return content


def _wavelet_blur(x: torch.Tensor, radius: int, top: bool = True, bottom: bool = True) -> torch.Tensor:
    """3x3 binomial blur at dilation `radius` with replicate padding; `top`/`bottom` False leave
    that side unpadded (a band's interior edge): the output is then `radius` rows shorter there."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    channels = x.shape[1]
    kernel = kernel.expand(channels, 1, 3, 3)
    x = F.pad(x, (radius, radius, radius if top else 0, radius if bottom else 0), mode="replicate")
    return F.conv2d(x, kernel, groups=channels, dilation=radius)


def _wavelet_decompose(x: torch.Tensor, *, keep_high: bool = True, start: int = 0,
                       height: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """(high or None, low, first row they cover) of rows [start, start + x.shape[-2]) of a frame
    `height` rows tall (None: `x` is the whole frame). `high` sums x - blur(x) over the levels in
    upstream's order; `low` is the last blur. Sides on the frame's border get the replicate
    padding; interior sides (a band's edges, `color_correct_bands`) are not padded and lose 2**i
    rows at level i. A whole frame loses none: upstream's decomposition, bit for bit."""
    stop = start + x.shape[-2]
    height = stop if height is None else height
    high = torch.zeros_like(x) if keep_high else None
    for i in range(WAVELET_LEVELS):
        radius = 2**i
        top, bottom = start == 0, stop == height
        low = _wavelet_blur(x, radius, top, bottom)
        cut_top, cut_bottom = (0 if top else radius), (0 if bottom else radius)
        if high is not None:
            high = high[..., cut_top:x.shape[-2] - cut_bottom, :]
            high += x[..., cut_top:x.shape[-2] - cut_bottom, :] - low
        x, start, stop = low, start + cut_top, stop - cut_bottom
    return high, x, start


def wavelet_reconstruction(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of `content` + low frequencies of `reference` (StableSR, 5 levels)."""
    high, _, _ = _wavelet_decompose(content)
    _, low, _ = _wavelet_decompose(reference, keep_high=False)
    return high + low


ADAIN_EPS = 1e-5


def _mean_std(x: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)  # (T, C, H*W)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]


def _transfer(content: torch.Tensor, c_stats: tuple[torch.Tensor, torch.Tensor],
              r_stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    (c_mean, c_std), (r_mean, r_std) = c_stats, r_stats
    return (content - c_mean) / c_std * r_std + r_mean


def adain(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame, per-channel mean/std of `content` set to those of `reference`."""
    return _transfer(content, _mean_std(content), _mean_std(reference))


def _to_lab(x: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab(x.clamp(-1, 1) * 0.5 + 0.5)


def _from_lab(lab: torch.Tensor) -> torch.Tensor:
    return lab_to_rgb(lab).clamp(0, 1) * 2.0 - 1.0


def lab_transfer(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """AdaIN in CIELAB: inputs clamped to the displayable range first (sRGB needs [0, 1])."""
    return _from_lab(adain(_to_lab(content), _to_lab(reference)))


# ---------------------------------------------------------------------------------------------
# Row bands: the same corrections for frames too large to hold whole
# ---------------------------------------------------------------------------------------------

def band_rows(width: int, pixels: int, method: str) -> int:
    """Rows per band so that a band of a `width`-px frame, with the halo `method` reads above and
    below it (`WAVELET_HALO` rows a side for the wavelet, none for the others), reads about
    `pixels` pixels; at least 1 row (a band then reads 1 + 2 * halo rows)."""
    halo = 2 * WAVELET_HALO if method == "wavelet" else 0
    return max(1, pixels // max(1, width) - halo)


def color_correct_bands(content: RowReader, reference: RowReader, height: int, method: str,
                        rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """`color_correct` of frames `height` rows tall, in consecutive bands of `rows` rows.

    content(start, stop)/reference(start, stop) give rows [start, stop) of the whole frames as
    (T, 3, stop - start, W) float tensors (the reference is not called for "none"); yields
    (start, stop, corrected rows [start, stop)) for bands covering [0, height) in order. At most a
    band's worth of rows (with its halo) is read and worked on at a time.

    * wavelet: each band reads `WAVELET_HALO` (31) rows more on every side that is inside the
      frame, and blurs without padding there: level i's output is 2**i rows shorter on each
      interior side, so after the 5 levels exactly the band's rows remain, each computed from the
      same inputs by the same operations as whole-frame. Sides on the frame's border use the real
      replicate padding. Equal to `color_correct` bit for bit on the CPU (the depthwise
      convolution computes each output from its own 9 taps in a fixed order whatever the tensor
      size; `tests/test_color.py` asserts it), to float rounding elsewhere. (Padding the interior
      sides too and cropping the whole halo at the end would also be exact: a wrong padded row
      reaches exactly 1 + 2 + 4 + 8 + 16 rows inwards; it computes those rows for nothing.)
    * adain/lab: two passes. The first accumulates each frame's per-channel mean and variance
      over the bands (each band's in float32, combined in float64 with Chan's pairwise update),
      the second applies the transfer per band. The statistics equal the whole-frame float32
      ones to float32 rounding (both are within it of the exact values), so the results agree to
      about 1e-6, not bit for bit.
    * none: the content's bands unchanged.
    """
    _check_method(method)
    if rows < 1:
        raise ValueError(f"rows per band must be at least 1, got {rows}")
    bands = [(a, min(a + rows, height)) for a in range(0, height, rows)]
    if method == "wavelet":
        for a, b in bands:
            yield a, b, _wavelet_band(content, reference, a, b, height)
    elif method in ("adain", "lab"):
        convert = _to_lab if method == "lab" else (lambda x: x)
        c_moments, r_moments = _Moments(), _Moments()
        for a, b in bands:
            c_moments.add(convert(content(a, b)))
            r_moments.add(convert(reference(a, b)))
        c_stats, r_stats = c_moments.mean_std(), r_moments.mean_std()
        for a, b in bands:
            out = _transfer(convert(content(a, b)), c_stats, r_stats)
            yield a, b, _from_lab(out) if method == "lab" else out
    else:
        for a, b in bands:
            yield a, b, content(a, b)


def _wavelet_band(content: RowReader, reference: RowReader, a: int, b: int, height: int) -> torch.Tensor:
    """Rows [a, b) of `wavelet_reconstruction`: high frequencies of the content + low of the reference."""
    start, stop = max(0, a - WAVELET_HALO), min(height, b + WAVELET_HALO)
    high, _, first = _wavelet_decompose(content(start, stop), start=start, height=height)
    high = high[..., a - first:b - first, :]
    _, low, first = _wavelet_decompose(reference(start, stop), keep_high=False, start=start, height=height)
    return high + low[..., a - first:b - first, :]


class _Moments:
    """Per-frame, per-channel count, mean and sum of squared deviations of (T, C, h, w) bands,
    combined in float64 (Chan et al.'s pairwise update); `mean_std` as `_mean_std` gives them."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = self.m2 = torch.zeros(())

    def add(self, x: torch.Tensor) -> None:
        flat = x.flatten(2)
        var, mean = torch.var_mean(flat, dim=2, correction=0)
        n = flat.shape[2]
        mean, m2 = mean.double(), var.double() * n
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def mean_std(self, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
        var = self.m2 / (self.count - 1)  # unbiased, as torch.var
        return self.mean.float()[..., None, None], (var + eps).sqrt().float()[..., None, None]


def _check_method(method: str) -> None:
    if method not in COLOR_CORRECTIONS:
        raise ValueError(f"color_correction must be one of {', '.join(COLOR_CORRECTIONS)}, got {method!r}")


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
