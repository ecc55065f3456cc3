"""Upscale settings and the one place every input is checked.

`validate_upscale_inputs` is what the ComfyUI node and the CLI call before loading anything; the
pipeline calls it again itself. Every message names the input, says what was expected and what
to do, in the words of the node/CLI option.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..color import COLOR_CORRECTIONS
from ..preprocess import MULTIPLE, AreaResize, FrameGeometry, ResizeRule, SideResize, plan_geometry

MAX_SEED = 2**64 - 1  # ComfyUI's seed widget range
# Values further than this outside [0, 1] are not a small overshoot but a different convention
# (0..255 floats, or [-1, 1]); smaller excursions are clamped like upstream clamps after resize.
RANGE_SLACK = 0.5
_CHECK_CHUNK = 16  # frames per NaN/range scan: bounds the temporary bool tensor


class UpscaleInputError(ValueError):
    """A bad input to the upscaler; the message names it and says how to fix it."""


@dataclass(frozen=True)
class UpscaleSettings:
    """What the upscaler node and CLI expose.

    resolution: target short side in pixels (>= 16); the output is exactly this (see
        `preprocess.SideResize` for the rule), unless `official_area` is set.
    max_resolution: cap on the long side, 0 = none; when it binds, the long side is exactly this.
    batch_size: frames per model call, 4n+1 (1, 5, 9, ...); more frames = better temporal
        consistency and more memory.
    temporal_overlap: frames shared by consecutive batches and crossfaded (0 <= overlap < batch_size).
    color_correction: "wavelet" (official), "adain", "lab" or "none".
    seed: noise seed; the same seed gives the same output on any device.
    official_area: (res_h, res_w) to use the official rule instead: resize to about res_h*res_w
        pixels and crop to multiples of 16 (the official CLI's --res_h/--res_w).
    even_size: round the output to even sides (4:2:0 video needs them; the CLI sets it for video
        output unless --exact-size): the free side to the nearest even size, an odd
        `resolution`/`max_resolution` 1 px down. The official rule's output is always even.
    """

    resolution: int = 1080
    max_resolution: int = 0
    batch_size: int = 5
    temporal_overlap: int = 0
    color_correction: str = "wavelet"
    seed: int = 0
    official_area: tuple[int, int] | None = None
    even_size: bool = False

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def resize_rule(self) -> ResizeRule:
        if self.official_area is not None:
            return AreaResize(*self.official_area)
        return SideResize(self.resolution, self.max_resolution, even=self.even_size)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nearest_4n1(n: int) -> str:
    lower = max(1, n - (n - 1) % 4)
    return f"{lower} or {lower + 4}" if lower != n else str(n)


def check_settings(s: UpscaleSettings) -> None:
    """Raise UpscaleInputError for the first bad setting."""
    for name in ("resolution", "max_resolution", "batch_size", "temporal_overlap", "seed"):
        if not _is_int(getattr(s, name)):
            raise UpscaleInputError(f"{name} must be an integer, got {getattr(s, name)!r}")
    if s.resolution < MULTIPLE:
        raise UpscaleInputError(
            f"resolution must be at least {MULTIPLE} pixels (the model works on {MULTIPLE}-pixel blocks), got {s.resolution}"
        )
    if s.max_resolution != 0 and s.max_resolution < MULTIPLE:
        raise UpscaleInputError(f"max_resolution must be 0 (no cap) or at least {MULTIPLE}, got {s.max_resolution}")
    if s.batch_size < 1 or (s.batch_size - 1) % 4:
        raise UpscaleInputError(
            f"batch_size must be 4n+1 (1, 5, 9, 13, ...: the VAE compresses time 4x), got {s.batch_size}; "
            f"use {_nearest_4n1(max(s.batch_size, 1))}"
        )
    if not 0 <= s.temporal_overlap < s.batch_size:
        raise UpscaleInputError(
            f"temporal_overlap must be between 0 and batch_size-1 ({s.batch_size - 1}), got {s.temporal_overlap}"
        )
    if s.color_correction not in COLOR_CORRECTIONS:
        raise UpscaleInputError(f"color_correction must be one of {', '.join(COLOR_CORRECTIONS)}, got {s.color_correction!r}")
    if not 0 <= s.seed <= MAX_SEED:
        raise UpscaleInputError(f"seed must be between 0 and {MAX_SEED}, got {s.seed}")
    if not isinstance(s.even_size, bool):
        raise UpscaleInputError(f"even_size must be True or False, got {s.even_size!r}")
    if s.official_area is not None:
        area = tuple(s.official_area)
        if len(area) != 2 or not all(_is_int(v) and v >= MULTIPLE for v in area):
            raise UpscaleInputError(f"official_area must be (height, width) integers >= {MULTIPLE}, got {s.official_area!r}")


def check_frames(frames: object) -> None:
    """Raise UpscaleInputError unless `frames` is a [T, H, W, C] tensor the pipeline can use.

    Accepts uint8 (0..255) or floating point (0..1, clamped) with C = 3 (RGB) or 4 (RGBA).
    Scans float frames for NaN/inf and for a wrong value range in chunks of frames, so the
    check allocates at most a chunk-sized temporary.
    """
    if not isinstance(frames, torch.Tensor):
        raise UpscaleInputError(f"frames must be a torch.Tensor [frames, height, width, channels], got {type(frames).__name__}")
    if frames.dim() != 4:
        hint = " (a single image [H, W, C] needs a leading frame axis: frames[None])" if frames.dim() == 3 else ""
        raise UpscaleInputError(f"frames must have 4 dimensions [frames, height, width, channels], got shape {tuple(frames.shape)}{hint}")
    t, h, w, c = frames.shape
    if t == 0:
        raise UpscaleInputError("frames is empty (0 frames): there is nothing to upscale; check the loader's frame range")
    if c not in (3, 4):
        hint = " (looks like [T, C, H, W]; the layout must be [T, H, W, C])" if frames.shape[1] in (3, 4) else ""
        raise UpscaleInputError(f"frames must have 3 (RGB) or 4 (RGBA) channels in the last dimension, got {c} (shape {tuple(frames.shape)}){hint}")
    if h < 1 or w < 1:
        raise UpscaleInputError(f"frames have an empty size {w}x{h} (WxH)")
    if frames.device.type == "meta":
        raise UpscaleInputError("frames are on the meta device (a shape without data, e.g. from a model built with "
                                "device='meta'); pass real frames on the CPU or a GPU")
    if frames.dtype == torch.uint8:
        return
    if not frames.is_floating_point():
        raise UpscaleInputError(f"frames must be uint8 (0..255) or floating point (0..1), got {frames.dtype}")
    for start in range(0, t, _CHECK_CHUNK):
        chunk = frames[start:start + _CHECK_CHUNK]
        finite = torch.isfinite(chunk).flatten(1).all(dim=1)
        if not bool(finite.all()):
            first = start + int((~finite).nonzero()[0])
            raise UpscaleInputError(f"frames contain NaN or infinite values (first at frame {first}); fix the node that produced them")
        lo, hi = (float(v) for v in torch.aminmax(chunk))
        if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
            raise UpscaleInputError(
                f"frames values must be in 0..1, found {lo:.3g}..{hi:.3g} in frames {start}..{start + chunk.shape[0] - 1}; "
                "convert 0..255 images with x/255 and [-1, 1] images with (x+1)/2"
            )


def validate_upscale_inputs(frames: object, settings: UpscaleSettings) -> FrameGeometry:
    """Check frames and settings together; returns the frame geometry the run will use."""
    check_settings(settings)
    check_frames(frames)
    _, h, w, _ = frames.shape
    try:
        return plan_geometry(h, w, settings.resize_rule)
    except ValueError as exc:
        raise UpscaleInputError(str(exc)) from None
