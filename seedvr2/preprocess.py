"""Frame geometry: from the caller's frames to the model's canvas and back.

Two resize rules, both bicubic with antialiasing (``F.interpolate(mode="bicubic",
align_corners=False, antialias=True)``, what torchvision's ``resize`` does on float tensors) and a
clamp to [0, 1] afterwards:

* ``AreaResize`` — the official rule (model-spec §2.1): scale to about ``height*width`` pixels,
  ``scale = sqrt(area / (H*W))``, size ``(round(H*scale), round(W*scale))`` with Python's
  banker's ``round``, then centre-crop to multiples of 16 (offsets also banker's-rounded). The
  output is the cropped size, so it is *not* exactly ``height x width``.
* ``SideResize`` — what users ask for: the short side becomes ``resolution``; if that makes the
  long side exceed ``max_resolution`` (0 = no cap), the long side becomes ``max_resolution``
  instead. The side that is not pinned is ``floor(side*scale + 0.5)`` (half up). The frame is then
  padded on the bottom/right to multiples of 16 by edge replication, and the padding is trimmed
  after decoding, so the output is exactly the computed size; no pixel is cropped.

``FrameGeometry`` records one such plan for a frame size and applies it to ``(T, C, H, W)`` float
tensors; the pipeline uses the same plan for the model input, the colour-fix reference and the
alpha channel, so the three always line up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MULTIPLE = 16  # VAE 8x spatial down-sampling times the DiT's 2x2 patch


@dataclass(frozen=True)
class SideResize:
    """Short side to `resolution`, long side capped at `max_resolution` (0 = no cap).

    even: round both output sides to even numbers (what 4:2:0 video needs): the free side to the
    nearest even size of its exact scaled length, a pinned odd side 1 px down.
    """

    resolution: int
    max_resolution: int = 0
    even: bool = False


@dataclass(frozen=True)
class AreaResize:
    """The official rule: scale to about `height*width` pixels, then crop to multiples of 16."""

    height: int
    width: int


ResizeRule = SideResize | AreaResize


@dataclass(frozen=True)
class FrameGeometry:
    """Where each input frame goes: resize, then crop (official) or pad (side) to the canvas.

    ``resized`` is the size after interpolation; ``crop_top/left`` select the ``output`` window
    from it (zero for side resize); ``canvas`` is what the VAE sees: ``output`` rounded up to
    multiples of 16 (equal to ``output`` for area resize).
    """

    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_top: int
    crop_left: int
    output_hw: tuple[int, int]
    canvas_hw: tuple[int, int]

    def reference(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) float in [0, 1] -> resized, clamped and cropped to `output_hw`."""
        x = resize_bicubic(frames, self.resized_hw).clamp_(0.0, 1.0)
        oh, ow = self.output_hw
        if (oh, ow) != self.resized_hw:
            x = x[..., self.crop_top:self.crop_top + oh, self.crop_left:self.crop_left + ow]
        return x

    def to_canvas(self, reference: torch.Tensor) -> torch.Tensor:
        """Pad an output-sized (T, C, H, W) tensor bottom/right to `canvas_hw` by edge replication."""
        pad_h = self.canvas_hw[0] - self.output_hw[0]
        pad_w = self.canvas_hw[1] - self.output_hw[1]
        if pad_h == 0 and pad_w == 0:
            return reference
        # replicate padding needs float input; 4-D (N, C, H, W) is what F.pad supports for it
        return F.pad(reference, (0, pad_w, 0, pad_h), mode="replicate")

    def trim(self, canvas: torch.Tensor) -> torch.Tensor:
        """Drop the canvas padding: (..., canvas_h, canvas_w) -> (..., output_h, output_w)."""
        oh, ow = self.output_hw
        return canvas[..., :oh, :ow]


def plan_geometry(height: int, width: int, rule: ResizeRule) -> FrameGeometry:
    """Plan the resize of a `height x width` frame; raises ValueError when the result is unusable."""
    if isinstance(rule, AreaResize):
        return _plan_area(height, width, rule)
    if isinstance(rule, SideResize):
        return _plan_side(height, width, rule)
    raise TypeError(f"resize rule must be SideResize or AreaResize, got {type(rule).__name__}")


def _plan_area(height: int, width: int, rule: AreaResize) -> FrameGeometry:
    scale = math.sqrt(rule.height * rule.width / (height * width))
    rh, rw = round(height * scale), round(width * scale)  # Python round: banker's, as upstream
    ch, cw = rh - rh % MULTIPLE, rw - rw % MULTIPLE
    if ch < MULTIPLE or cw < MULTIPLE:
        raise ValueError(
            f"official area resize of a {width}x{height} (WxH) frame to about {rule.height}x{rule.width} "
            f"(HxW) pixels gives {rw}x{rh}, which crops to {cw}x{ch}; both sides must be at least "
            f"{MULTIPLE}. Use a larger target area."
        )
    top, left = int(round((rh - ch) / 2)), int(round((rw - cw) / 2))
    return FrameGeometry((height, width), (rh, rw), top, left, (ch, cw), (ch, cw))


def _plan_side(height: int, width: int, rule: SideResize) -> FrameGeometry:
    short, long = min(height, width), max(height, width)
    scale = rule.resolution / short
    capped = rule.max_resolution > 0 and long * scale > rule.max_resolution
    if capped:
        scale = rule.max_resolution / long

    def side(n: int) -> int:
        # The pinned side is exact; the other rounds half up (to the nearest even size with `even`).
        if n == (long if capped else short):
            pinned = rule.max_resolution if capped else rule.resolution
            return pinned - pinned % 2 if rule.even else pinned
        if rule.even:
            return 2 * math.floor(n * scale / 2 + 0.5)
        return math.floor(n * scale + 0.5)

    oh, ow = side(height), side(width)
    if min(oh, ow) < MULTIPLE:
        raise ValueError(
            f"max_resolution={rule.max_resolution} caps the long side of this {width}x{height} (WxH) input, "
            f"which leaves an output of {ow}x{oh}; both sides must be at least {MULTIPLE}. "
            "Raise max_resolution (or set it to 0 for no cap)."
        )
    canvas = (_round_up(oh), _round_up(ow))
    return FrameGeometry((height, width), (oh, ow), 0, 0, (oh, ow), canvas)


def _round_up(n: int) -> int:
    return -(-n // MULTIPLE) * MULTIPLE


def resize_bicubic(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, C, H, W) float -> (T, C, *size): bicubic, align_corners=False, antialias=True."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames.clone()  # a same-size bicubic is the identity; callers may clamp in place
    return F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (torchvision Normalize(0.5, 0.5))."""
    return x * 2.0 - 1.0


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model output [-1, 1] (unclamped) -> [0, 1] float, clamped first as upstream does."""
    return x.clamp(-1.0, 1.0) * 0.5 + 0.5


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model output [-1, 1] -> uint8 exactly as upstream: round((clip(x,-1,1)*0.5+0.5)*255)."""
    return torch.round(to_unit_range(x) * 255.0).to(torch.uint8)


def padded_frame_count(num_frames: int) -> int:
    """Frames after upstream's last-frame padding (`cut_videos`, sp_size=1): always 4n+1.

    1 frame stays 1 (an image); 2..4 frames become 5; otherwise round up to the next 4n+1.
    """
    if num_frames < 1:
        raise ValueError(f"frame count must be at least 1, got {num_frames}")
    if num_frames == 1:
        return 1
    if num_frames <= 4:
        return 5
    return num_frames + (-(num_frames - 1)) % 4


def pad_frames(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Repeat the last frame along `dim` until the count is `padded_frame_count`."""
    n = x.shape[dim]
    extra = padded_frame_count(n) - n
    if extra == 0:
        return x
    last = x.narrow(dim, n - 1, 1)
    reps = [1] * x.dim()
    reps[dim] = extra
    return torch.cat([x, last.repeat(*reps)], dim=dim)
