"""Host memory a run will need, checked before anything is allocated.

`host_memory_needed` estimates, from the planned output size alone, what an upscale allocates in
host RAM beyond the caller's input frames (see `upscale`'s docstring for where each part comes
from): the output frames when they are collected in memory (a `TensorSink`; a streaming sink
holds one chunk), the latents of all batches (float32, parked on the CPU between phases), and the
largest VAE canvas of one batch when it lives in host memory (VAE tiling on, or a CPU run). It
is a lower bound: the VAE's activations and a few per-chunk temporaries come on top.

`check_host_memory` refuses a run whose estimate exceeds the memory available now (psutil when
installed, else /proc/meminfo's MemAvailable, else os.sysconf's free pages; no check when none
of them answers), with a message naming resolution/max_resolution, the output size and both
byte counts, so that a typo such as resolution=100000 ends in a sentence instead of an
allocator error after minutes of work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..batching import plan_batches
from ..preprocess import FrameGeometry, padded_frame_count
from .settings import UpscaleInputError, UpscaleSettings

LATENT_CHANNELS = 16
SPATIAL_DOWN = 8
TEMPORAL_DOWN = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of host memory by purpose; `total` is their sum."""

    output: int
    latents: int
    canvas: int

    @property
    def total(self) -> int:
        return self.output + self.latents + self.canvas


def host_memory_needed(num_frames: int, channels: int, geometry: FrameGeometry, settings: UpscaleSettings, *,
                       output_dtype: torch.dtype | None, vae_itemsize: int = 2,
                       canvas_on_host: bool = True) -> MemoryEstimate:
    """Estimate of the host memory an upscale of `num_frames` frames allocates (a lower bound).

    output_dtype: the dtype the output is collected in, None for a streaming sink.
    canvas_on_host: whether VAE canvases live in host memory (tiling on, or a CPU device).
    """
    oh, ow = geometry.output_hw
    hc, wc = geometry.canvas_hw
    output = 0
    if output_dtype is not None:
        output = num_frames * oh * ow * channels * torch.empty((), dtype=output_dtype).element_size()
    batches = plan_batches(num_frames, settings.batch_size, settings.temporal_overlap)
    latent_frame = (hc // SPATIAL_DOWN) * (wc // SPATIAL_DOWN) * LATENT_CHANNELS * 4  # float32
    latents = sum(((padded_frame_count(b.length) - 1) // TEMPORAL_DOWN + 1) * latent_frame for b in batches)
    longest = max(padded_frame_count(b.length) for b in batches)
    canvas = 3 * longest * hc * wc * vae_itemsize if canvas_on_host else 0
    return MemoryEstimate(output, latents, canvas)


def available_host_memory() -> int | None:
    """Bytes of RAM available to a new allocation now, or None when the system does not say."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed, or no answer on this platform
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_host_memory(estimate: MemoryEstimate, geometry: FrameGeometry, settings: UpscaleSettings,
                      num_frames: int, available: int | None = None) -> None:
    """Raise UpscaleInputError when `estimate` does not fit in the available host memory."""
    available = available_host_memory() if available is None else available
    if available is None or estimate.total <= available:
        return
    oh, ow = geometry.output_hw
    if settings.official_area is not None:
        asked = f"official_area={settings.official_area[0]}x{settings.official_area[1]}"
    else:
        asked = f"resolution={settings.resolution}" + (
            f", max_resolution={settings.max_resolution}" if settings.max_resolution else "")
    raise UpscaleInputError(
        f"{asked} gives {num_frames} output frame(s) of {ow}x{oh} (WxH), which need at least "
        f"{_size(estimate.total)} of host memory (output frames {_size(estimate.output)}, latents "
        f"{_size(estimate.latents)}, VAE canvas {_size(estimate.canvas)}) but only {_size(available)} is "
        "available. Lower resolution, set max_resolution to cap the long side, or upscale fewer frames at a time.")


def _size(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB ({n:,} bytes)"


__all__ = ["MemoryEstimate", "available_host_memory", "check_host_memory", "host_memory_needed"]
