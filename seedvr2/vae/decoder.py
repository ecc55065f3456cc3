"""Causal video decoder: latents (b, 16, t', h', w') -> pixels (b, 3, 4(t'-1)+1, 8h', 8w')."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import FrameGroupNorm, MidBlock, NORM_EPS, ResnetBlock, Upsample, norm_conv
from .causal_conv import CausalCache, CausalConv3d, per_frame as _per_frame
from .config import VAEConfig


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int,
                 upsample: bool, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(out_channels, temporal)]) if upsample else None

    def forward(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class Decoder(nn.Module):
    """Official `Decoder3D`: conv_in, mid block, up blocks (layers_per_block + 1 resnets each),
    GN-SiLU-conv_out. Channels run through block_out_channels reversed; every block but the last
    doubles h and w, and the first `temporal_scale_num` blocks also double time."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        last = len(channels) - 1
        self.conv_in = CausalConv3d(config.latent_channels, channels[0], 3)
        self.mid_block = MidBlock(channels[0], groups, config.mid_block_attention)
        self.up_blocks = nn.ModuleList([
            UpBlock(channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups,
                    upsample=i < last, temporal=i < config.temporal_scale_num)
            for i in range(len(channels))])
        self.conv_norm_out = FrameGroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(channels[-1], config.out_channels, 3)
        self.temporal_blocks = config.temporal_scale_num  # the first blocks also upsample time

    def forward(self, z: Tensor, cache: CausalCache | None = None) -> Tensor:
        """``cache=None``: the whole clip at once. With a cache (a temporal chunk), the stages after
        the last temporal upsampler (the high-resolution ones) run one frame at a time, which is
        exact (they are causal with state in the cache) and divides their working memory by the
        number of frames in the chunk."""
        x = self.mid_block(self.conv_in(z, cache), cache)  # (b, c0, t', h', w')
        for block in self.up_blocks[: self.temporal_blocks]:
            x = block(x, cache)  # SeedVR2: (b, 512, T, h'*4, w'*4) after two blocks
        if cache is None:
            return self._spatial_stages(x, None)
        return _per_frame(lambda frame: self._spatial_stages(frame, cache), x)

    def _spatial_stages(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        for block in self.up_blocks[self.temporal_blocks:]:
            x = block(x, cache)
        return norm_conv(self.conv_norm_out, self.conv_out, x, cache)  # (b, 3, T, 8h', 8w')
