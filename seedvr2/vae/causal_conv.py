"""Causal 3-D convolution and the per-call state that lets a clip run in temporal chunks.

The official `InflatedCausalConv3d` (model-spec §7) drops the temporal zero padding of a Conv3d
and instead, for the first frames of a clip, repeats the first frame ``k_t - 1`` times in front.
When a clip is processed in chunks, each conv prepends the last ``k_t - s_t`` frames it saw in the
previous chunk instead. The official code keeps those frames on the module (``self.memory``);
here they live in a `CausalCache` that the caller creates per call (and per spatial tile) and
passes down, so nothing survives a call and two clips can never mix.
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

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        k_t, s_t = self.kernel_size[0], self.stride[0]
        head = cache.tail(self, x.device) if cache is not None else None
        if head is None and k_t > 1:
            head = x[:, :, :1].expand(-1, -1, k_t - 1, -1, -1)  # first frame repeated (official extend_head)
        padded = x if head is None else torch.cat([head, x], dim=2)  # (b, c, T + k_t - 1, h, w)
        if cache is not None and k_t > s_t:
            cache.store(self, padded[:, :, padded.shape[2] - (k_t - s_t):])
        return F.conv3d(padded, self.weight, self.bias, self.stride, self.padding)
