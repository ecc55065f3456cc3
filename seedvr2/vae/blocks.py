"""Building blocks of the causal video VAE: per-frame norm, resnet, attention, down/up-sampling.

Parameter names follow the official state dict (``norm1``, ``conv1``, ``conv_shortcut``,
``group_norm``, ``to_q`` ... ``to_out.0``, ``downsamplers.0.conv``, ``upsamplers.0.upscale_conv``),
so released checkpoints load strictly. Every block maps ``(b, c, t, h, w)`` tensors and takes the
per-call `CausalCache` (None = whole clip at once).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import compiled as _compiled
from .causal_conv import CausalCache, CausalConv3d

NORM_EPS = 1e-6  # resnet_eps and every GroupNorm of the official Encoder3D/Decoder3D


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame separately (official `causal_norm_wrapper`), optionally fused
    with SiLU.

    Per frame keeps the VAE causal. Statistics are accumulated in fp32 for every input dtype:
    PyTorch's group_norm kernels (CPU and CUDA) accumulate bf16/fp16 in float, so 16-bit inputs
    need no fp32 copy. Working memory beyond the output is one contiguous frame, not a transposed
    copy of the chunk. ``out`` (same shape as x) receives the result instead of a new tensor, e.g.
    the body of the next conv's time-padded input (`norm_conv`).
    """

    def forward(self, x: Tensor, silu: bool = False, out: Tensor | None = None) -> Tensor:  # (b, c, t, h, w) -> same
        out = torch.empty_like(x) if out is None else out
        for i in range(x.shape[2]):
            frame = F.group_norm(x[:, :, i], self.num_groups, self.weight, self.bias, self.eps)  # (b, c, h, w)
            out[:, :, i] = F.silu(frame, inplace=True) if silu else frame
        return out


def norm_conv(norm: FrameGroupNorm, conv: CausalConv3d, x: Tensor, cache: CausalCache | None) -> Tensor:
    """``conv(silu(norm(x)), cache)`` with the norm written straight into the conv's padded input:
    no separate norm output, no time-padding copy (bitwise the same as the two calls).

    Inside a ``vae_compile`` call (`compiled.compiled_scope`) the same step runs as one compiled
    graph instead (`compiled.compiled_norm_conv`); otherwise this eager code, unchanged."""
    kernels = _compiled.active()
    if kernels is not None:
        return _compiled.compiled_norm_conv(kernels, norm, conv, x, cache)
    b, _, t, h, w = x.shape
    padded, body = conv.padded_input(b, t, h, w, dtype=x.dtype, device=x.device, cache=cache)
    norm(x, silu=True, out=body)
    return conv.conv_padded(padded, cache)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> causal conv3 -> GN -> SiLU -> causal conv3, plus a (1x1x1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        h = norm_conv(self.norm1, self.conv1, x, cache)
        h = norm_conv(self.norm2, self.conv2, h, cache)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x, cache)
        return h.add_(skip)


class FrameAttention(nn.Module):
    """Single-head self-attention over the h*w tokens of each frame (diffusers `Attention` as the
    official mid block configures it: GN pre-norm, biased q/k/v/out projections, residual)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:  # (b, c, t, h, w) -> same
        b, c, t, h, w = x.shape
        out = torch.empty_like(x)
        norm = self.group_norm
        for i in range(t):  # one frame at a time: the score matrix is (h*w)^2 per frame
            frame = x[:, :, i]  # (b, c, h, w)
            normed = F.group_norm(frame, norm.num_groups, norm.weight, norm.bias, norm.eps)  # fp32 statistics
            tokens = normed.flatten(2).transpose(1, 2)  # (b, h*w, c)
            q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (b, 1, h*w, c)
            attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # scale 1/sqrt(c): one head of dim c
            attended = self.to_out[0](attended)  # (b, h*w, c)
            out[:, :, i] = attended.transpose(1, 2).reshape(b, c, h, w) + frame
        return out


class MidBlock(nn.Module):
    """resnet -> attention (per frame) -> resnet, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([FrameAttention(channels, groups)]) if attention else None

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        x = self.resnets[0](x, cache)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class Downsample(nn.Module):
    """2x spatial (and optionally 2x causal temporal) down-sampling by a strided conv.

    Official `Downsample3D` with padding 0: zero-pad one column right and one row bottom, then a
    stride-2 conv; the temporal variant is k_t=3, s_t=2, so T -> (T - 1) // 2 + 1.
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        kernel, stride = ((3, 3, 3), (2, 2, 2)) if temporal else ((1, 3, 3), (1, 2, 2))
        self.conv = CausalConv3d(channels, channels, kernel, stride=stride, spatial_padding=0)

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:  # (b, c, t, h, w) -> (b, c, t', h/2, w/2)
        b, _, t, h, w = x.shape
        padded, body = self.conv.padded_input(b, t, h + 1, w + 1, dtype=x.dtype, device=x.device, cache=cache)
        body[..., h:, :].zero_()  # F.pad(x, (0, 1, 0, 1)) written into the conv's input
        body[..., :h, w:].zero_()
        body[..., :h, :w].copy_(x)
        return self.conv.conv_padded(padded, cache)


class Upsample(nn.Module):
    """2x spatial (and optionally 2x temporal) up-sampling: 1x1x1 conv to r*c channels, pixel
    shuffle, then a causal 3x3x3 conv (official `Upsample3D`, MAGViT-v2 style).

    Temporal: each frame becomes two; in the first chunk of a clip the copy of frame 0 is dropped
    (official `remove_head`), so T -> 2T - 1 there and T -> 2T in later chunks.
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.time_ratio = 2 if temporal else 1
        self.upscale_conv = nn.Conv3d(channels, channels * 4 * self.time_ratio, kernel_size=1)
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        """The pixel shuffle ``b (x y z c) f h w -> b c (f z) (h x) (w y)`` is written straight into the
        causal conv's padded input (one copy, no intermediate)."""
        b, _, t, h, w = x.shape
        z, c = self.time_ratio, self.conv.in_channels
        drop = z > 1 and (cache is None or not cache.has(self.conv))  # drop the duplicate of frame 0
        up = self.upscale_conv(x).view(b, 2, 2, z, c, t, h, w).permute(0, 4, 5, 3, 6, 1, 7, 2)  # b c f z h x w y
        padded, body = self.conv.padded_input(b, z * t - drop, 2 * h, 2 * w, dtype=x.dtype, device=x.device, cache=cache)
        if drop:
            body[:, :, :1].view(b, c, 1, 1, h, 2, w, 2).copy_(up[:, :, :1, :1])
            body[:, :, 1:].view(b, c, t - 1, z, h, 2, w, 2).copy_(up[:, :, 1:])
        else:
            body.view(b, c, t, z, h, 2, w, 2).copy_(up)
        return self.conv.conv_padded(padded, cache)
