"""Reading and writing frames for the command line: videos through PyAV, images through Pillow.

Frames are uint8 tensors [T, H, W, C], C = 3 (RGB) or 4 (RGBA). Both libraries are imported only
when a file is read or written, with an install hint if missing (`pip install av pillow`).

* Images (.png .jpg .jpeg .webp .bmp .tif .tiff): alpha is kept when the file has it (modes
  RGBA/LA/PA, or P with transparency). Writing several frames to an image path writes a numbered
  sequence `name_00000.png`, ... JPEG and BMP have no alpha; it is dropped with a warning.
* Videos (anything else PyAV opens): the first video stream, decoded to RGB (RGBA when the pixel
  format has alpha); the frame rate is the stream's average rate. `VideoWriter` streams frames
  out as they arrive (H.264 in .mp4/.mkv/.mov, VP9 in .webm; 4:2:0 when both sides are even,
  4:4:4 otherwise). Alpha is written for .webm (VP9 yuva420p) and .mov/.mkv (PNG codec, RGBA);
  .mp4 cannot carry it and it is dropped with a warning.

Host memory: reading holds the decoded frames once plus the per-frame list until they are
stacked (2x the uint8 video at the end of the read); writing holds one frame.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_NO_ALPHA_IMAGES = (".jpg", ".jpeg", ".bmp")
_ALPHA_VIDEO = {".webm": ("libvpx-vp9", "yuva420p"), ".mov": ("png", "rgba"), ".mkv": ("png", "rgba")}
DEFAULT_CRF = 17  # x264/VP9 quality: visually lossless for upscaled footage


class MediaError(ValueError):
    """A file cannot be read or written; the message names it and says why."""


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _import_av():
    try:
        import av
    except ImportError:
        raise MediaError("reading and writing video needs PyAV: pip install av") from None
    return av


def _import_pil():
    try:
        from PIL import Image
    except ImportError:
        raise MediaError("reading and writing images needs Pillow: pip install pillow") from None
    return Image


def read_image(path: str | Path) -> torch.Tensor:
    """One image -> uint8 [1, H, W, 3 or 4]."""
    Image = _import_pil()
    try:
        with Image.open(path) as img:
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            array = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot read this image ({exc})") from None
    return torch.from_numpy(array.copy())[None]


def write_images(path: str | Path, frames: torch.Tensor) -> list[Path]:
    """uint8 [T, H, W, C] -> `path` (one frame) or a numbered sequence beside it (several)."""
    Image = _import_pil()
    path = Path(path)
    if frames.shape[-1] == 4 and path.suffix.lower() in _NO_ALPHA_IMAGES:
        log.warning("%s cannot store an alpha channel; writing RGB (use .png to keep alpha)", path.suffix)
        frames = frames[..., :3]
    targets = [path] if frames.shape[0] == 1 else [
        path.with_name(f"{path.stem}_{i:05d}{path.suffix}") for i in range(frames.shape[0])]
    for target, frame in zip(targets, frames):
        array = frame.numpy()
        Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB").save(target)
    return targets


def read_video(path: str | Path) -> tuple[torch.Tensor, Fraction]:
    """The first video stream -> (uint8 [T, H, W, 3 or 4], frames per second)."""
    av = _import_av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot open this file as a video or image ({exc})") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream in this file")
        stream = container.streams.video[0]
        fmt = "rgba" if _has_alpha(stream) else "rgb24"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        try:
            arrays = [frame.to_ndarray(format=fmt) for frame in container.decode(stream)]
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: the video could not be decoded ({exc})") from None
    if not arrays:
        raise MediaError(f"{path}: the video has no frames")
    return torch.from_numpy(np.stack(arrays)), Fraction(rate)


def _has_alpha(stream) -> bool:
    fmt = stream.codec_context.pix_fmt or ""
    return fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbra", "ya"))


def read_media(path: str | Path) -> tuple[torch.Tensor, Fraction | None]:
    """An image or a video -> (uint8 [T, H, W, C], fps or None for an image)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if is_image_path(path):
        return read_image(path), None
    return read_video(path)


class VideoWriter:
    """A frame sink (`dtype`, `write(start, frames)`) that encodes frames as they arrive.

    Frames must arrive in order (the pipeline guarantees it). Call `close()` to flush; the
    writer is also a context manager.
    """

    dtype = torch.uint8

    def __init__(self, path: str | Path, fps: Fraction, crf: int = DEFAULT_CRF):
        self.path, self.fps, self.crf = Path(path), Fraction(fps), crf
        self._container = self._stream = None
        self._next = 0
        self._alpha = False

    def write(self, start: int, frames: torch.Tensor) -> None:
        if start != self._next:
            raise ValueError(f"VideoWriter got frame {start}, expected {self._next} (frames must come in order)")
        if self._stream is None:
            self._open(frames.shape[2], frames.shape[1], frames.shape[3])
        av = _import_av()
        channels = 4 if self._alpha else 3
        for frame in frames[..., :channels].numpy():
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgba" if self._alpha else "rgb24")
            self._container.mux(self._stream.encode(video_frame))
        self._next += frames.shape[0]

    def _open(self, width: int, height: int, channels: int) -> None:
        av = _import_av()
        suffix = self.path.suffix.lower()
        codec, pix_fmt = self._choose_codec(suffix, width, height, channels, av.codecs_available)
        try:
            self._container = av.open(str(self.path), mode="w")
            self._stream = self._container.add_stream(codec, rate=self.fps)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise MediaError(f"{self.path}: cannot create a {codec} video here ({exc})") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        if codec in ("libx264", "libvpx-vp9"):
            self._stream.options = {"crf": str(self.crf)} if codec == "libx264" else {"crf": str(self.crf), "b": "0"}
        log.info("writing %s: %s %s %dx%d at %s fps", self.path, codec, pix_fmt, width, height, self.fps)

    def _choose_codec(self, suffix: str, width: int, height: int, channels: int, available) -> tuple[str, str]:
        if channels == 4 and suffix in _ALPHA_VIDEO and _ALPHA_VIDEO[suffix][0] in available:
            self._alpha = True
            return _ALPHA_VIDEO[suffix]
        if channels == 4:
            log.warning("%s cannot carry an alpha channel here; writing RGB (use .mov, .mkv or .webm to keep alpha)",
                        suffix or "this format")
        even = width % 2 == 0 and height % 2 == 0
        if suffix == ".webm":
            return "libvpx-vp9", "yuv420p" if even else "yuv444p"
        if "libx264" in available:
            return "libx264", "yuv420p" if even else "yuv444p"
        if not even:
            raise MediaError(f"{self.path}: this PyAV build has no libx264 and MPEG-4 needs even sizes, got {width}x{height}")
        return "mpeg4", "yuv420p"

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))  # flush the encoder
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
