"""Rotary position embeddings of the SeedVR2 DiTs (model-spec.md section 4).

Both follow rotary-embedding-torch 0.5.3: interleaved pairs, ``rotate_half((x0, x1)) = (-x1, x0)``,
angles ``pos * f`` repeated twice per pair, applied to the first ``rot`` features of each head
(the rest pass through), in fp32.

* 3B ``mmrope3d``: 'lang' frequencies ``f_j = 1 / 10000^(2j / axis_dim)``. A video token at
  window-local ``(t, y, x)`` gets ``[(L + t) f, y f, x f]`` where L is its sample's text length; a
  text token p gets ``[p f, p f, p f]``. Positions restart in every window (upstream quirk).
* 7B ``pixel3d``: 'pixel' frequencies ``linspace(1, 128, axis_dim // 2) * pi``; per axis the
  positions are ``linspace(-1, 1, n)`` over the *window's* extent. Text is not rotated.

Angles are computed here from the formulas, once per window shape and forward call, never from the
``rope.rope.freqs`` buffers: those are constants kept for strict state-dict compatibility (a fp16 or
fp8 copy of them would give wrong angles at positions near 1000).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["rope_freqs", "RopeFreqs", "window_rope", "apply_rope"]

_LANG_THETA = 10000.0
_PIXEL_MAX_FREQ = 256.0


def rope_freqs(kind: str, axis_dim: int) -> torch.Tensor:
    """The per-axis frequencies ``(axis_dim // 2,)`` in fp32 on the CPU, as rotary-embedding-torch
    computes them. Always on the CPU, also inside a ``torch.device("meta")`` build: a few bytes, and
    meta kernels for these ops would pull in torch's slow-to-import decompositions."""
    if kind == "mmrope3d":
        exponents = torch.arange(0, axis_dim, 2, device="cpu")[: axis_dim // 2].float() / axis_dim
        return 1.0 / (_LANG_THETA ** exponents)
    if kind == "pixel3d":
        return torch.linspace(1.0, _PIXEL_MAX_FREQ / 2, axis_dim // 2, device="cpu") * math.pi
    raise ValueError(f"unknown rope kind {kind!r}")


class RopeFreqs(nn.Module):
    """Holds the persistent ``freqs`` buffer under the official name ``attn.rope.rope.freqs``."""

    def __init__(self, kind: str, axis_dim: int):
        super().__init__()
        self.register_buffer("freqs", rope_freqs(kind, axis_dim))


def window_rope(kind: str, freqs: torch.Tensor, window: tuple[int, int, int], txt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(f*h*w + txt_len, 6 * len(freqs))`` for one window sequence ``[video ; text]``.

    ``freqs`` must be fp32 on the target device (from ``rope_freqs``).
    """
    f, h, w = window
    device = freqs.device
    if kind == "mmrope3d":
        axes = [txt_len + torch.arange(f, device=device), torch.arange(h, device=device), torch.arange(w, device=device)]
    else:
        axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in (f, h, w)]
    t_ang, y_ang, x_ang = (_pair_angles(pos.float(), freqs) for pos in axes)  # (n, 2F) each
    vid = torch.cat([
        t_ang[:, None, None].expand(f, h, w, -1),
        y_ang[None, :, None].expand(f, h, w, -1),
        x_ang[None, None, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)  # (f*h*w, 6F)
    if kind == "mmrope3d":
        txt = _pair_angles(torch.arange(txt_len, device=device).float(), freqs).repeat(1, 3)  # (L, 6F)
    else:
        txt = torch.zeros(txt_len, vid.shape[1], device=device)  # no text rope: angle 0 = identity
    angles = torch.cat([vid, txt])  # (S, 6F)
    return angles.cos(), angles.sin()


def _pair_angles(pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (n, 2F): f0 f0 f1 f1 ...


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rot`` features of ``x`` ``(n, S, H, D)`` by ``cos/sin`` ``(S, rot)``, in fp32."""
    rot = cos.shape[-1]
    xr = x[..., :rot].float()  # (n, S, H, rot)
    pairs = xr.unflatten(-1, (-1, 2))  # (n, S, H, rot/2, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # rotate_half
    out = xr * cos[:, None] + rotated * sin[:, None]  # (n, S, H, rot)
    return torch.cat([out.to(x.dtype), x[..., rot:]], dim=-1)  # (n, S, H, D)
