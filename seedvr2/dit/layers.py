"""Small layers of the SeedVR2 DiT. Every weight is cast to the activation dtype where it is used.

Compute-dtype rule: a layer computes in the dtype of its input activation. Weights may be stored
in fp32, fp16, bf16 or fp8_e4m3fn; each use casts them (``weight.to(x.dtype)``, a no-op when the
dtypes already match), so a block streamed in its storage dtype works unchanged and fp8 weights are
upcast one layer at a time. Norm statistics are always computed in fp32.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Linear", "rms_norm", "RMSNorm", "PerStream", "SwiGLU", "GeluMLP", "AdaSingle", "TimeEmbedding",
    "PatchIn", "PatchOut", "OutAda", "per_sample",
]


class Linear(nn.Linear):
    """``nn.Linear`` whose weight and bias are cast to the input's dtype at each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, in fp32 (as apex FusedRMSNorm), returned in ``x.dtype``."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.float()
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale (qk norms, the 3B output norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class PerStream(nn.Module):
    """Weights for the video and text streams: separate (``.vid``/``.txt``) or shared (``.all``).

    The attribute names are the official state-dict names, e.g. ``attn.proj_qkv.vid.weight``.
    """

    def __init__(self, make: Callable[[], nn.Module], shared: bool):
        super().__init__()
        self.shared = shared
        if shared:
            self.all = make()
        else:
            self.vid = make()
            self.txt = make()

    def pick(self, stream: str) -> nn.Module:
        """The module for ``stream`` ("vid" or "txt")."""
        return self.all if self.shared else getattr(self, stream)


class SwiGLU(nn.Module):
    """3B MLP: ``proj_out(silu(proj_in_gate(x)) * proj_in(x))``, no biases.

    Declaration order follows the official module so the state dict lists keys in the same order.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj_in_gate = Linear(dim, hidden, bias=False)
        self.proj_out = Linear(hidden, dim, bias=False)
        self.proj_in = Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class GeluMLP(nn.Module):
    """7B MLP ("normal"): ``proj_out(gelu_tanh(proj_in(x)))`` with biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj_in = Linear(dim, hidden)
        self.proj_out = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


def per_sample(x: torch.Tensor, counts: Sequence[int], fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn(segment, sample_index)`` to each sample's rows of a packed ``(L, C)`` tensor."""
    if len(counts) == 1:
        return fn(x, 0)
    return torch.cat([fn(seg, i) for i, seg in enumerate(x.split(list(counts)))])


class AdaSingle(nn.Module):
    """Ada modulation from the shared timestep embedding ("ada: single", model-spec.md 3.3.4).

    ``emb`` ``(b, 6*dim)`` is laid out per channel as ``(dim, 2, 3)``: branch l in {attn, mlp} x
    g in {shift, scale, gate}, interleaved (not chunked). The learned tables are added to it; the
    learned scale is initialised near 1, so there is no implicit ``1 +``.
    """

    _BRANCH = {"attn": 0, "mlp": 1}

    def __init__(self, dim: int):
        super().__init__()
        for branch in ("attn", "mlp"):
            self.register_parameter(f"{branch}_shift", nn.Parameter(torch.zeros(dim)))
            self.register_parameter(f"{branch}_scale", nn.Parameter(torch.ones(dim)))
            self.register_parameter(f"{branch}_gate", nn.Parameter(torch.zeros(dim)))

    def _table(self, emb: torch.Tensor, branch: str, slot: int, name: str, dtype: torch.dtype) -> torch.Tensor:
        dim = emb.shape[1] // 6
        from_emb = emb.view(emb.shape[0], dim, 2, 3)[:, :, self._BRANCH[branch], slot]  # (b, dim)
        return (from_emb.float() + getattr(self, f"{branch}_{name}").float()).to(dtype)  # (b, dim)

    def modulate(self, x: torch.Tensor, emb: torch.Tensor, branch: str, counts: Sequence[int]) -> torch.Tensor:
        """``x * scale + shift`` per sample; ``x`` is the packed ``(L, dim)`` stream."""
        shift = self._table(emb, branch, 0, "shift", x.dtype)  # (b, dim)
        scale = self._table(emb, branch, 1, "scale", x.dtype)  # (b, dim)
        return per_sample(x, counts, lambda seg, i: torch.addcmul(shift[i], seg, scale[i]))

    def gate(self, x: torch.Tensor, emb: torch.Tensor, branch: str, counts: Sequence[int]) -> torch.Tensor:
        gate = self._table(emb, branch, 2, "gate", x.dtype)  # (b, dim)
        return per_sample(x, counts, lambda seg, i: seg * gate[i])


class OutAda(nn.Module):
    """3B ``vid_out_ada``: ``x * (emb_attn_scale + out_scale) + (emb_attn_shift + out_shift)``.

    Upstream quirk (model-spec.md 3.3.6): the official module hits the blocks' cached *attn* slice
    of ``emb``, so the output head is modulated with the attn (shift, scale), not its own layout.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.out_shift = nn.Parameter(torch.zeros(dim))
        self.out_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        dim = x.shape[-1]
        attn = emb.view(emb.shape[0], dim, 2, 3)[:, :, 0].float()  # (b, dim, 3): shift, scale, gate
        shift = (attn[..., 0] + self.out_shift.float()).to(x.dtype)  # (b, dim)
        scale = (attn[..., 1] + self.out_scale.float()).to(x.dtype)  # (b, dim)
        return per_sample(x, counts, lambda seg, i: torch.addcmul(shift[i], seg, scale[i]))


class TimeEmbedding(nn.Module):
    """Timestep -> ``(b, 6*dim)`` modulation vector: sinusoid(256) -> MLP with two SiLUs."""

    FREQ_DIM = 256

    def __init__(self, dim: int, emb_dim: int):
        super().__init__()
        self.proj_in = Linear(self.FREQ_DIM, dim)
        self.proj_hid = Linear(dim, dim)
        self.proj_out = Linear(dim, emb_dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = sinusoid(timestep, self.FREQ_DIM).to(dtype)  # (b, 256)
        x = F.silu(self.proj_in(x))
        x = F.silu(self.proj_hid(x))
        return self.proj_out(x)  # (b, emb_dim); no activation after proj_out


def sinusoid(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[sin(t f_k), cos(t f_k)]``, ``f_k = exp(-ln(max_period) k / (dim/2))`` (diffusers
    ``get_timestep_embedding`` with flip_sin_to_cos=False, shift 0), in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None]  # (b, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (b, dim)


class PatchIn(nn.Module):
    """Patchify each sample's latent grid by (1, 2, 2) and project: ``vid_in.proj``."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.proj = Linear(in_channels * 4, dim)

    def forward(self, vid: torch.Tensor, grids: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        c = self.in_channels
        patches = []
        for (t, h, w), x in zip(grids, vid.split([t * h * w for t, h, w in grids])):
            # "(T)(H h)(W w) c -> T H W (h w c)": feature index (dh*2 + dw)*C + c
            x = x.reshape(t, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)  # (T, H/2, W/2, 2, 2, C)
            patches.append(x.reshape(t * (h // 2) * (w // 2), 4 * c))
        x = patches[0] if len(patches) == 1 else torch.cat(patches)  # (L/4, 4C)
        return self.proj(x)  # (L/4, dim)


class PatchOut(nn.Module):
    """Project and un-patchify back to the latent grid: ``vid_out.proj``."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.proj = Linear(dim, out_channels * 4)

    def forward(self, vid: torch.Tensor, token_grids: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        c = self.out_channels
        x = self.proj(vid)  # (L', 4C)
        pixels = []
        for (t, h, w), seg in zip(token_grids, x.split([t * h * w for t, h, w in token_grids])):
            # "T H W (h w c) -> (T)(H h)(W w) c"
            seg = seg.view(t, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5)  # (T, H, 2, W, 2, C)
            pixels.append(seg.reshape(t * h * 2 * w * 2, c))
        return pixels[0] if len(pixels) == 1 else torch.cat(pixels)  # (L, C)
