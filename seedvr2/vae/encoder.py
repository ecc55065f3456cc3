"""Causal video encoder: pixels (b, 3, T, H, W) -> moments (b, 2*latent, (T-1)/4+1, H/8, W/8)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import Downsample, FrameGroupNorm, MidBlock, NORM_EPS, ResnetBlock, norm_conv
from .causal_conv import CausalCache, CausalConv3d, per_frame as _per_frame
from .config import VAEConfig


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int,
                 downsample: bool, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(out_channels, temporal)]) if downsample else None

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, cache)
        return x


class Encoder(nn.Module):
    """Official `Encoder3D` with double_z: conv_in, down blocks, mid block, GN-SiLU-conv_out.

    Every block but the last halves h and w; the `temporal_scale_num` blocks before the last one
    also halve time causally (blocks 1 and 2 for SeedVR2).
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        last = len(channels) - 1
        self.conv_in = CausalConv3d(config.in_channels, channels[0], 3)
        self.down_blocks = nn.ModuleList([
            DownBlock(channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups,
                      downsample=i < last, temporal=i >= last - config.temporal_scale_num)
            for i in range(len(channels))])
        self.mid_block = MidBlock(channels[-1], groups, config.mid_block_attention)
        self.conv_norm_out = FrameGroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(channels[-1], 2 * config.latent_channels, 3)
        self.frame_local_blocks = last - config.temporal_scale_num  # blocks before the first time-strided conv

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        """``cache=None``: the whole clip at once. With a cache (a temporal chunk), the full-resolution
        stages before the first time-strided conv run one frame at a time, which is exact (they are
        causal with state in the cache) and divides their working memory by the chunk length."""
        head = self.down_blocks[: self.frame_local_blocks]
        if cache is None:
            x = self._stages(head, self.conv_in(x, None), None)
        else:
            x = _per_frame(lambda frame: self._stages(head, self.conv_in(frame, cache), cache), x)  # (b, c1, T, H/2, W/2)
        x = self._stages(self.down_blocks[self.frame_local_blocks:], x, cache)
        x = self.mid_block(x, cache)  # (b, c_last, t', H/8, W/8)
        return norm_conv(self.conv_norm_out, self.conv_out, x, cache)  # (b, 2*latent, t', H/8, W/8)

    @staticmethod
    def _stages(blocks: nn.ModuleList, x: Tensor, cache: CausalCache | None) -> Tensor:
        for block in blocks:
            x = block(x, cache)
        return x
