"""The VAE's straightforward data flow before the copy-free causal padding, kept as the reference
the fast path is checked (bitwise) and timed against (tests/test_speed_vae.py, bench/vae_speed.py).

`legacy_vae()` patches, for the duration of a ``with`` block:

* `CausalConv3d.forward`: ``torch.cat([head, x])`` (a new padded copy of every chunk) and a copy
  of the tail from it;
* the norm -> conv pairs: the norm's own output tensor, then the conv;
* `Downsample`: ``F.pad`` copy, then the conv (another copy);
* `Upsample`: einops ``rearrange`` (a copy), ``torch.cat`` to drop the duplicate first frame, then
  the conv;
* the frame-by-frame stages: a list of frames concatenated at the end.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
import torch.nn.functional as F
from einops import rearrange

from seedvr2.vae import blocks, causal_conv, decoder, encoder


def _conv_forward(self, x, cache=None):
    k_t, s_t = self.kernel_size[0], self.stride[0]
    head = cache.tail(self, x.device) if cache is not None else None
    if head is None and k_t > 1:
        head = x[:, :, :1].expand(-1, -1, k_t - 1, -1, -1)
    padded = x if head is None else torch.cat([head, x], dim=2)
    if cache is not None and k_t > s_t:
        cache.store(self, padded[:, :, padded.shape[2] - (k_t - s_t):])
    return F.conv3d(padded, self.weight, self.bias, self.stride, self.padding)


def _norm_conv(norm, conv, x, cache):
    return conv(norm(x, silu=True), cache)


def _downsample_forward(self, x, cache):
    return self.conv(F.pad(x, (0, 1, 0, 1)), cache)


def _upsample_forward(self, x, cache):
    first_chunk = cache is None or not cache.has(self.conv)
    x = rearrange(self.upscale_conv(x), "b (x y z c) f h w -> b c (f z) (h x) (w y)", x=2, y=2, z=self.time_ratio)
    if self.time_ratio > 1 and first_chunk:
        x = torch.cat([x[:, :, :1], x[:, :, 2:]], dim=2)
    return self.conv(x, cache)


def _per_frame(fn, x):
    return torch.cat([fn(x[:, :, i: i + 1]) for i in range(x.shape[2])], dim=2)


@contextlib.contextmanager
def legacy_vae() -> Iterator[None]:
    """Run every VAE in this process through the reference data flow inside the block."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(causal_conv.CausalConv3d, "forward", _conv_forward))
        for module in (blocks, encoder, decoder):
            stack.enter_context(mock.patch.object(module, "norm_conv", _norm_conv))
        for module in (encoder, decoder):
            stack.enter_context(mock.patch.object(module, "_per_frame", _per_frame))
        stack.enter_context(mock.patch.object(blocks.Downsample, "forward", _downsample_forward))
        stack.enter_context(mock.patch.object(blocks.Upsample, "forward", _upsample_forward))
        yield
