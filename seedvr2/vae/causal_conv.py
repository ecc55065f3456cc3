"""Causal 3-D convolution and the per-call state that lets a clip run in temporal chunks.

The official `InflatedCausalConv3d` (model-spec §7) drops the temporal zero padding of a Conv3d
and instead, for the first frames of a clip, repeats the first frame ``k_t - 1`` times in front.
When a clip is processed in chunks, each conv prepends the last ``k_t - s_t`` frames it saw in the
previous chunk instead. The official code keeps those frames on the module (``self.memory``);
here they live in a `CausalCache` that the caller creates per call (and per spatial tile) and
passes down, so nothing survives a call and two clips can never mix.

No copy of the chunk for the time padding: a conv's input is allocated once, already padded
(`CausalConv3d.padded_input`), and whoever produces the chunk writes it straight into the body
of that buffer (the frame-wise GroupNorm before every 3x3x3 conv, the upsampler's pixel shuffle,
the downsampler's spatial pad); only the ``k_t - 1`` head frames are copied in (from the cache or
from frame 0). ``forward(x, cache)`` does the same for a finished ``x`` with one copy of it (what
``torch.cat([head, x])`` did). The buffer takes the memory format of the conv's weight, so a VAE
whose weights are ``channels_last_3d`` runs its 3x3x3 convs on channels-last activations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalCache:
    """Tail frames each causal conv needs before the next temporal chunk of the same clip (or tile).

    An empty cache means "first chunk": convs pad with the repeated first frame and the decoder's
    temporal upsamplers drop the duplicated first frame. Memory: for each conv with ``k_t > s_t``,
    ``k_t - s_t`` frames of its input (2 for the 3x3x3 convs), at the chunk's spatial size; for the
    SeedVR2 decoder that is about 4300 channel-frames per output pixel (encoder: 1900 per input
    pixel), more than a 4-frame chunk's own working set. With ``device`` (e.g. ``"cpu"``, the
    official ``memory_device``), tails are parked there (pinned when they come from CUDA) and each
    is moved back just before its conv runs, so only one conv's tail at a time occupies the compute
    device. Copies are asynchronous; stream order keeps them correct.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._tails: dict[nn.Module, Tensor] = {}
        self.device = None if device is None else torch.device(device)

    def tail(self, conv: nn.Module, device: torch.device) -> Tensor | None:
        frames = self._tails.get(conv)
        return None if frames is None else frames.to(device, non_blocking=True)

    def tail_into(self, conv: nn.Module, out: Tensor) -> bool:
        """Copy the stored tail of ``conv`` into ``out`` (same shape, any device); False if none."""
        frames = self._tails.get(conv)
        if frames is None:
            return False
        out.copy_(frames, non_blocking=True)
        return True

    def store(self, conv: nn.Module, frames: Tensor) -> None:
        """Keep a copy of ``frames`` (never a view: it would pin the whole chunk it slices)."""
        device = frames.device if self.device is None else self.device
        parked = torch.empty(frames.shape, dtype=frames.dtype, device=device,
                             pin_memory=frames.is_cuda and device.type == "cpu")
        self._tails[conv] = parked.copy_(frames, non_blocking=True)

    def has(self, conv: nn.Module) -> bool:
        return conv in self._tails

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tails.values())


class CausalConv3d(nn.Conv3d):
    """Conv3d that is causal in time: output frame i sees input frames <= i only.

    Spatial padding is zero padding as in Conv3d; there is no temporal padding argument.
    ``(b, c, T, h, w) -> (b, c', (T - 1) // s_t + 1, h', w')`` for a whole clip or a first chunk.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, spatial_padding: int = -1) -> None:
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        pad = kernel[1] // 2 if spatial_padding < 0 else spatial_padding
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=(0, pad, pad))

    def head_frames(self, cache: CausalCache | None) -> int:
        """Frames in front of the chunk: the cached tail (``k_t - s_t``) or, on a first chunk or a
        whole clip, ``k_t - 1`` copies of frame 0."""
        k_t, s_t = self.kernel_size[0], self.stride[0]
        return k_t - s_t if cache is not None and cache.has(self) else k_t - 1

    def memory_format(self) -> torch.memory_format:
        """channels_last_3d when the weight is stored so (``vae.to(memory_format=...)``), else contiguous."""
        w = self.weight
        if w.dim() == 5 and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
        return torch.contiguous_format

    def padded_input(self, batch: int, frames: int, height: int, width: int, *, dtype: torch.dtype,
                     device: torch.device, cache: CausalCache | None) -> tuple[Tensor, Tensor]:
        """Allocate this conv's time-padded input for a chunk of ``frames`` frames.

        Returns ``(padded, body)``: ``padded`` is (b, c_in, head + frames, h, w) and ``body`` its last
        ``frames`` frames, which the caller fills before calling `conv_padded`.
        """
        head = self.head_frames(cache)
        padded = torch.empty((batch, self.in_channels, head + frames, height, width), dtype=dtype, device=device,
                             memory_format=self.memory_format())
        return padded, padded[:, :, head:]

    def conv_padded(self, padded: Tensor, cache: CausalCache | None) -> Tensor:
        """Fill the head of a `padded_input` buffer (cached tail or repeated frame 0), store this
        chunk's tail in the cache, convolve."""
        k_t, s_t = self.kernel_size[0], self.stride[0]
        head = self.head_frames(cache)
        if head and not (cache is not None and cache.tail_into(self, padded[:, :, :head])):
            padded[:, :, :head].copy_(padded[:, :, head : head + 1].expand(-1, -1, head, -1, -1))  # official extend_head
        if cache is not None and k_t > s_t:
            cache.store(self, padded[:, :, padded.shape[2] - (k_t - s_t):])
        return F.conv3d(padded, self.weight, self.bias, self.stride, self.padding)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        if self.kernel_size[0] == 1:  # no time padding, no state
            return F.conv3d(x, self.weight, self.bias, self.stride, self.padding)
        b, _, t, h, w = x.shape
        padded, body = self.padded_input(b, t, h, w, dtype=x.dtype, device=x.device, cache=cache)
        body.copy_(x)
        return self.conv_padded(padded, cache)


def per_frame(fn, x: Tensor) -> Tensor:
    """``torch.cat([fn(x[:, :, i:i+1]) for i in range(T)], dim=2)`` written frame by frame into one
    output allocated after the first frame (no list of frames plus their concatenation)."""
    first = fn(x[:, :, :1])
    out = first.new_empty((*first.shape[:2], x.shape[2], *first.shape[3:]))
    out[:, :, :1] = first
    del first
    for i in range(1, x.shape[2]):
        out[:, :, i : i + 1] = fn(x[:, :, i : i + 1])
    return out
