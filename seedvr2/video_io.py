"""Reading and writing frames for the command line: videos through PyAV, images through Pillow.

Frames are uint8 tensors [T, H, W, C], C = 3 (RGB) or 4 (RGBA). Both libraries are imported only
when a file is read or written, with an install hint if missing (`pip install av pillow`).

* Images (.png .jpg .jpeg .webp .bmp .tif .tiff): alpha is kept when the file has it (modes
  RGBA/LA/PA, or P with transparency). Writing several frames to an image path writes a numbered
  sequence `name_00000.png`, ... JPEG and BMP have no alpha; it is dropped with a warning.
* Videos (anything else PyAV opens): the first video stream, decoded to RGB (RGBA when the pixel
  format has alpha); the frame rate is the stream's average rate. `VideoWriter` streams frames
  out as they arrive (H.264 in .mp4/.mkv/.mov, VP9 in .webm; 4:2:0 (yuv420p, what players expect)
  when both sides are even, 4:4:4 with a warning otherwise; `crf` is checked against the encoder's
  range). VP8/VP9 alpha (WebM `alpha_mode`) is decoded through libvpx when PyAV has it, else
  dropped with a warning. Alpha is written for .webm (VP9 yuva420p) and .mov/.mkv (PNG codec, RGBA);
  .mp4 cannot carry it and it is dropped with a warning.

Host memory: `read_video` holds the decoded frames once plus the per-frame list until they are
stacked (2x the uint8 video at the end of the read). `VideoSource` (what the CLI uses) decodes
lazily: it holds only the frames between the oldest one still needed and the newest read, so a
long video costs one window of frames; `open_media` gives it for videos. Writing holds one frame.
"""
from __future__ import annotations

import contextlib
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_NO_ALPHA_IMAGES = (".jpg", ".jpeg", ".bmp")
_ALPHA_VIDEO = {".webm": ("libvpx-vp9", "yuva420p"), ".mov": ("png", "rgba"), ".mkv": ("png", "rgba")}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm")  # what VideoWriter writes
DEFAULT_CRF = 17  # x264/VP9 quality: visually lossless for upscaled footage
CRF_RANGES = {"libx264": (0, 51), "libvpx-vp9": (0, 63)}  # the encoders' own limits


class MediaError(ValueError):
    """A file cannot be read or written; the message names it and says why."""


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def check_crf(crf: int, path: str | Path, option: str = "crf") -> None:
    """Raise MediaError unless `crf` is in the range of the encoder `path`'s format uses."""
    codec = "libvpx-vp9" if Path(path).suffix.lower() == ".webm" else "libx264"
    low, high = CRF_RANGES[codec]
    if isinstance(crf, bool) or not isinstance(crf, int) or not low <= crf <= high:
        name = "VP9 (.webm)" if codec == "libvpx-vp9" else "H.264 (.mp4/.mkv/.mov)"
        raise MediaError(f"{option} must be an integer from {low} to {high} for {name} (lower = better quality, "
                         f"{DEFAULT_CRF} is visually lossless), got {crf!r}")


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
    """One image -> uint8 [1, H, W, 3 or 4].

    High-bit-depth grayscale (16-bit "I;16*" and 32-bit "I" as Pillow opens 16-bit PNG/TIFF, and
    float "F") is scaled to 0..255 by its format's full range, not clipped: Pillow's own
    `convert("RGB")` clips these modes at 255, which turns a 16-bit image near-white.
    """
    Image = _import_pil()
    try:
        with Image.open(path) as img:
            if img.mode.startswith(("I", "F")):
                gray = _wide_gray_to_uint8(np.asarray(img), img.mode, path)
                return torch.from_numpy(np.repeat(gray[..., None], 3, axis=-1))[None]
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            array = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except Image.DecompressionBombError as exc:  # an Exception, neither OSError nor ValueError
        raise MediaError(f"{path}: the image header claims more pixels than Pillow reads safely ({exc}); "
                         "a real image this large cannot be upscaled anyway") from None
    except (OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot read this image ({exc})") from None
    return torch.from_numpy(array.copy())[None]


def _wide_gray_to_uint8(array: np.ndarray, mode: str, path: str | Path) -> np.ndarray:
    """16/32-bit integer or float grayscale -> uint8, scaled by the full range of the format."""
    values = array.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.size == 0 or float(np.nanmax(values)) <= 1.0 else 255.0
        log.info("%s: float grayscale image, read as 0..%g", path, top)
    else:  # "I;16", "I;16B", "I;16L", "I" (Pillow's mode for 16-bit PNG on older versions)
        top = 65535.0
        if values.size and float(values.max()) > top:
            top = float(2 ** 32 - 1)
        if values.size and float(values.min()) < 0:
            raise MediaError(f"{path}: signed integer image with negative values; convert it to 8 or 16 bits first")
    log.info("%s: %s grayscale reduced to 8 bits per channel", path, mode)
    return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)


def image_names(path: str | Path, count: int) -> list[Path]:
    """The files `count` frames written to image `path` go to: `path` itself for one frame, else
    the numbered sequence `stem_00000.ext`, ... beside it."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:05d}{path.suffix}") for i in range(count)]


def write_images(path: str | Path, frames: torch.Tensor, targets: list[Path] | None = None) -> list[Path]:
    """uint8 [T, H, W, C] -> `path` (one frame) or a numbered sequence beside it (several).

    `targets`: write to these files instead (one per frame; the format follows `path`'s suffix,
    so the CLI's temporary names keep it)."""
    Image = _import_pil()
    path = Path(path)
    if frames.shape[-1] == 4 and path.suffix.lower() in _NO_ALPHA_IMAGES:
        log.warning("%s cannot store an alpha channel; writing RGB (use .png to keep alpha)", path.suffix)
        frames = frames[..., :3]
    targets = image_names(path, frames.shape[0]) if targets is None else list(targets)
    if len(targets) != frames.shape[0]:
        raise ValueError(f"write_images got {frames.shape[0]} frames for {len(targets)} file names")
    for target, frame in zip(targets, frames):
        array = frame.numpy()
        Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB").save(target)
    return targets


class ImageFilesSink:
    """A frame sink (`dtype`, `write(start, frames)`) writing frame i to `targets[i]` as it arrives.

    The format follows `path`'s suffix (the targets may be temporary names); alpha is dropped,
    with one warning, for formats without it. Holds no frames."""

    dtype = torch.uint8

    def __init__(self, path: str | Path, targets: list[Path]):
        self.path, self.targets = Path(path), list(targets)
        self._warned = False

    def write(self, start: int, frames: torch.Tensor) -> None:
        if frames.shape[-1] == 4 and self.path.suffix.lower() in _NO_ALPHA_IMAGES:
            if not self._warned:
                log.warning("%s cannot store an alpha channel; writing RGB (use .png to keep alpha)", self.path.suffix)
                self._warned = True
            frames = frames[..., :3]
        try:
            write_images(self.path, frames.contiguous(), targets=self.targets[start:start + frames.shape[0]])
        except OSError as exc:  # disk full, ...: name the output, not the temporary file
            raise MediaError(f"{self.path}: writing frame files failed ({exc.strerror or exc})") from None


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
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        try:
            arrays, fmt = [], None
            for frame in _decoded_frames(av, container, stream, path):
                fmt = fmt or ("rgba" if _has_alpha(frame.format.name) else "rgb24")  # the first frame decides
                arrays.append(frame.to_ndarray(format=fmt))
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: the video could not be decoded ({exc})") from None
    if not arrays:
        raise MediaError(f"{path}: the video has no frames")
    for index, array in enumerate(arrays):
        if array.shape != arrays[0].shape:
            raise MediaError(f"{path}: frame {index} is {array.shape[1]}x{array.shape[0]}, the first frame "
                             f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; a video whose frame size changes is not "
                             "supported (re-encode it at one size)")
    return torch.from_numpy(np.stack(arrays)), Fraction(rate)


def _has_alpha(fmt: str | None) -> bool:
    return (fmt or "").startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbra", "ya"))


# VP8/VP9 keep alpha in a side channel (WebM BlockAdditional, stream tag alpha_mode=1) that FFmpeg's
# native decoders ignore; libvpx's decoders read it and give yuva420p frames.
_LIBVPX_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def _decoded_frames(av, container, stream, path):
    """Every decoded frame of `stream`, with its alpha channel when the stream has one."""
    codec = stream.codec_context.name
    if (stream.metadata or {}).get("alpha_mode") == "1" and codec in _LIBVPX_DECODERS:
        decoder = _LIBVPX_DECODERS[codec]
        if decoder in av.codecs_available:
            context = av.CodecContext.create(decoder, "r")
            if stream.codec_context.extradata:
                context.extradata = stream.codec_context.extradata
            for packet in container.demux(stream):
                yield from context.decode(packet)
            return
        log.warning("%s: the %s stream has an alpha channel but this PyAV build has no %s decoder to read it; "
                    "the alpha channel is dropped", path, codec.upper(), decoder)
    yield from container.decode(stream)


class VideoSource:
    """A video file as a lazy `pipeline.stream.FrameSource`: uint8 frames [n, H, W, C], decoded on demand.

    Opening decodes the file once without converting frames (to count them and learn the size
    and whether there is alpha: the first frame decides, as in `read_video`). `read(start, stop)`
    decodes forward and keeps frames from `start` on, dropping older ones; a read before the
    oldest kept frame reopens the file and decodes from the beginning (the pipeline never needs
    that). The frames equal `read_video`'s.

    Checked on every pass: the file's size and modification time are those seen at opening (a
    file rewritten meanwhile is an error, never frames of two versions), and every frame has the
    first frame's size (a size change mid-video is an error naming the frame).
    """

    dtype = torch.uint8

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stamp = _stamp(self.path)  # every later pass checks it: frames never mix two versions of the file
        count, first, rate = 0, None, Fraction(25)
        with self._open() as (container, stream, frames):
            rate = Fraction(stream.average_rate or stream.guessed_rate or Fraction(25))
            for frame in frames:
                if first is None:
                    self._fmt = "rgba" if _has_alpha(frame.format.name) else "rgb24"
                    first = frame.to_ndarray(format=self._fmt)
                count += 1
        if first is None:
            raise MediaError(f"{self.path}: the video has no frames")
        self.fps = rate
        self.shape = (count, first.shape[0], first.shape[1], first.shape[2])
        self._frames = None  # the decoding generator of the current pass
        self._kept: list[np.ndarray] = []
        self._kept_start = 0  # frame index of self._kept[0]
        self._pass = None

    @contextlib.contextmanager
    def _open(self):
        av = _import_av()
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(f"{self.path}: cannot open this file as a video or image ({exc})") from None
        try:
            if not container.streams.video:
                raise MediaError(f"{self.path}: no video stream in this file")
            stream = container.streams.video[0]
            try:
                yield container, stream, _decoded_frames(av, container, stream, self.path)
            except av.error.FFmpegError as exc:
                raise MediaError(f"{self.path}: the video could not be decoded ({exc})") from None
        finally:
            container.close()

    def read(self, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"{self.path}: frames {start}..{stop - 1} requested of {self.shape[0]}")
        if self._pass is None or start < self._kept_start:
            self._restart()
        drop = min(start - self._kept_start, len(self._kept))
        del self._kept[:drop]
        self._kept_start += drop
        while self._kept_start + len(self._kept) < stop:
            frame = self._next_frame()
            if frame is None:
                raise MediaError(f"{self.path}: the video ended at frame {self._kept_start + len(self._kept)} on "
                                 f"this pass but had {self.shape[0]} frames when it was opened (was it modified?)")
            array = frame.to_ndarray(format=self._fmt)
            if array.shape != self.shape[1:]:
                index = self._kept_start + len(self._kept)
                raise MediaError(f"{self.path}: frame {index} is {array.shape[1]}x{array.shape[0]}, the first frame "
                                 f"{self.shape[2]}x{self.shape[1]}; a video whose frame size changes is not supported "
                                 "(re-encode it at one size)")
            self._kept.append(array)
        a = start - self._kept_start
        return torch.from_numpy(np.stack(self._kept[a:a + stop - start]))

    def _next_frame(self):
        av = _import_av()
        try:
            return next(self._frames, None)
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path}: the video could not be decoded ({exc})") from None

    def _restart(self) -> None:
        self.close()
        if _stamp(self.path) != self._stamp:
            raise MediaError(f"{self.path}: the file changed since it was opened (size or modification time); "
                             "rerun once it is no longer being written")
        self._pass = self._open()
        _, _, self._frames = self._pass.__enter__()
        self._kept, self._kept_start = [], 0

    def close(self) -> None:
        """Close the decoder of the current pass (reading again reopens the file)."""
        if self._pass is not None:
            self._pass.__exit__(None, None, None)
            self._pass, self._frames, self._kept = None, None, []

    def identity(self) -> dict:
        """The file's exact content hash (see `pipeline.store.content_identity`) and frame shape."""
        from .pipeline.store import content_identity

        return {"file": content_identity(self.path), "frames": list(self.shape)}

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def open_media(path: str | Path):
    """An image or a video -> (a lazy `FrameSource`, fps or None for an image).

    Images are read whole (one frame); videos are a `VideoSource`."""
    from .pipeline.stream import TensorSource

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if is_image_path(path):
        return TensorSource(read_image(path)), None
    source = VideoSource(path)
    return source, source.fps


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
    writer is also a context manager (leaving it on an exception aborts: no flush).
    """

    dtype = torch.uint8

    def __init__(self, path: str | Path, fps: Fraction, crf: int = DEFAULT_CRF, label: str | Path | None = None):
        """`label`: the name used in messages (the CLI writes to a temporary file beside the target)."""
        check_crf(crf, path)
        self.path, self.fps, self.crf = Path(path), Fraction(fps), crf
        self.label = label or self.path
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
        with self._writing(av):
            for frame in frames[..., :channels].numpy():
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                         format="rgba" if self._alpha else "rgb24")
                self._container.mux(self._stream.encode(video_frame))
        self._next += frames.shape[0]

    @contextlib.contextmanager
    def _writing(self, av):
        """Encoder and disk errors (disk full, ...) as a MediaError naming the output, not the
        temporary file (they surface in the CLI from the writer thread)."""
        try:
            yield
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(f"{self.label}: writing the video failed ({getattr(exc, 'strerror', None) or exc})") from None

    def _open(self, width: int, height: int, channels: int) -> None:
        av = _import_av()
        suffix = self.path.suffix.lower()
        codec, pix_fmt = self._choose_codec(suffix, width, height, channels, av.codecs_available)
        try:
            self._container = av.open(str(self.path), mode="w")
            self._stream = self._container.add_stream(codec, rate=self.fps)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise MediaError(f"{self.label}: cannot create a {codec} video here ({exc})") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        if codec in ("libx264", "libvpx-vp9"):
            self._stream.options = {"crf": str(self.crf)} if codec == "libx264" else {"crf": str(self.crf), "b": "0"}
        log.info("writing %s: %s %s %dx%d at %s fps", self.label, codec, pix_fmt, width, height, self.fps)

    def _choose_codec(self, suffix: str, width: int, height: int, channels: int, available) -> tuple[str, str]:
        if channels == 4 and suffix in _ALPHA_VIDEO and _ALPHA_VIDEO[suffix][0] in available:
            self._alpha = True
            return _ALPHA_VIDEO[suffix]
        if channels == 4:
            log.warning("%s cannot carry an alpha channel here; writing RGB (use .mov, .mkv or .webm to keep alpha)",
                        suffix or "this format")
        even = width % 2 == 0 and height % 2 == 0
        if not even:
            log.warning("%dx%d has an odd side: writing 4:4:4 (yuv444p), which many players cannot play; even "
                        "sides give 4:2:0 (yuv420p)", width, height)
        if suffix == ".webm":
            return "libvpx-vp9", "yuv420p" if even else "yuv444p"
        if "libx264" in available:
            return "libx264", "yuv420p" if even else "yuv444p"
        if not even:
            raise MediaError(f"{self.label}: this PyAV build has no libx264 and MPEG-4 needs even sizes, got {width}x{height}")
        return "mpeg4", "yuv420p"

    def close(self) -> None:
        if self._container is None:
            return
        av = _import_av()
        try:
            with self._writing(av):
                try:
                    self._container.mux(self._stream.encode(None))  # flush the encoder
                finally:
                    self._container.close()
        finally:
            self._container = None

    def abort(self) -> None:
        """Close without flushing the encoder: the file is being abandoned (an error, Ctrl-C), so
        the frames still in the encoder (dozens with x264's lookahead) are not encoded, and a
        second error (the disk is still full) cannot replace the first."""
        if self._container is None:
            return
        try:
            self._container.close()
        except Exception as exc:  # noqa: BLE001 - the file is discarded anyway
            log.debug("closing the abandoned video %s: %s", self.label, exc)
        finally:
            self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
