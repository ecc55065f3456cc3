"""Windowed multi-modal attention (``NaSwinAttention``, model-spec.md 3.4) and attention backends.

Backends share one signature, ``fn(q, k, v) -> out`` on ``(n, S, H, D)`` tensors (n independent
sequences, query and key lengths may differ), and are chosen by name per model or per call:

* ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention`` in the activation dtype.
* ``"flash_emul"``: the official numerics (it casts q, k, v to bf16 for flash-attn even in fp32):
  q, k, v rounded to bf16, attention in fp32, output rounded to bf16, back in the activation dtype.
* ``"flash_attn"``: ``flash_attn.flash_attn_func`` (only if the package is installed; CUDA only).
  Windows are already grouped by shape (`seedvr2.dit.windows`), so each call is one dense batch
  of equal-length sequences and the varlen entry point would add nothing but index bookkeeping.
* ``"auto"``: ``"flash_attn"`` on a CUDA device of compute capability 8.0+ (flash-attn 2's floor)
  when the package imports, else ``"sdpa"``; resolved per forward (`resolve_attention_backend`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Linear, PerStream, RMSNorm
from .rope import RopeFreqs, apply_rope
from .windows import WindowPlan

__all__ = ["ATTENTION_BACKENDS", "AUTO_BACKEND", "check_attention_backend", "resolve_attention_backend", "attend",
           "WindowAttention"]

# Most query tokens per attention call: bounds the gathered copies of q/k/v (and their fp32 rope
# temporaries) whatever the resolution; big enough that each call keeps a GPU busy.
MAX_QUERY_TOKENS_PER_CALL = 16384


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (n, H, S, D)
    return out.transpose(1, 2)  # (n, S, H, D)


def _flash_emul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    bf = [t.to(torch.bfloat16).float() for t in (q, k, v)]
    return _sdpa(*bf).to(torch.bfloat16).to(q.dtype)


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func  # checked by check_attention_backend

    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    out = flash_attn_func(q.to(half), k.to(half), v.to(half))  # (n, S, H, D)
    return out.to(q.dtype)


ATTENTION_BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sdpa": _sdpa,
    "flash_emul": _flash_emul,
    "flash_attn": _flash_attn,
}


AUTO_BACKEND = "auto"


def check_attention_backend(name: str) -> str:
    """Validate a backend name (and that flash-attn is importable when asked for); returns it."""
    if name == AUTO_BACKEND:
        return name
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted([*ATTENTION_BACKENDS, AUTO_BACKEND])}")
    if name == "flash_attn":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ValueError("attention backend 'flash_attn' needs the flash-attn package, which is not "
                             "installed; use 'sdpa' (same results, no extra package)") from None
    return name


def resolve_attention_backend(name: str, device: torch.device) -> str:
    """The backend that runs for ``name`` on ``device``: ``"auto"`` becomes ``"flash_attn"`` on a CUDA
    device with compute capability >= 8.0 when flash-attn imports, else ``"sdpa"``; other names as given."""
    if name != AUTO_BACKEND:
        return name
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attn"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Full non-causal attention, softmax scale 1/sqrt(D): ``(n, Sq, H, D)`` -> ``(n, Sq, H, D)``."""
    return ATTENTION_BACKENDS[backend](q, k, v)


class WindowAttention(nn.Module):
    """qkv projection, qk RMSNorm, rope, windowed attention over ``[window video ; sample text]``.

    Video outputs are scattered back to their rows; each text token's output is the mean over its
    sample's windows (upstream ``unconcat_coalesce``). Weights are per stream (``.vid``/``.txt``) or
    shared (``.all``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, shared: bool, eps: float, rope: str, rope_axis_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.proj_qkv = PerStream(lambda: Linear(dim, 3 * inner, bias=False), shared)
        self.proj_out = PerStream(lambda: Linear(inner, dim), shared)
        self.norm_q = PerStream(lambda: RMSNorm(head_dim, eps), shared)
        self.norm_k = PerStream(lambda: RMSNorm(head_dim, eps), shared)
        self.rope = nn.Module()  # official nesting: attn.rope.rope.freqs
        self.rope.rope = RopeFreqs(rope, rope_axis_dim)

    def _qkv(self, stream: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self.proj_qkv.pick(stream)(x).view(x.shape[0], 3, self.heads, self.head_dim)  # (L, 3, H, D)
        q, k, v = qkv.unbind(1)  # (L, H, D) each, q/k/v order
        return self.norm_q.pick(stream)(q), self.norm_k.pick(stream)(k), v

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, plan: WindowPlan, *,
                txt_out: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``vid (L, dim)``, ``txt (Lt, dim)`` -> ``(L, dim)`` and ``(Lt, dim)`` (None if not ``txt_out``).

        With ``txt_out=False`` text tokens serve only as keys and values (the 3B last block).
        """
        q_v, k_v, v_v = self._qkv("vid", vid)  # (L, H, D)
        q_t, k_t, v_t = self._qkv("txt", txt)  # (Lt, H, D)
        inner = self.heads * self.head_dim
        out_v = vid.new_empty(vid.shape[0], inner)  # (L, H*D); every row is written once
        acc_t = txt.new_zeros(txt.shape[0], inner, dtype=torch.float32) if txt_out else None  # (Lt, H*D)

        for group in plan.groups:
            per_call = max(1, MAX_QUERY_TOKENS_PER_CALL // (group.vid_len + group.txt_idx.shape[1]))
            for vid_idx, txt_idx in zip(group.vid_idx.split(per_call), group.txt_idx.split(per_call)):
                n, sv = vid_idx.shape
                q = torch.cat([q_v[vid_idx], q_t[txt_idx]], dim=1) if txt_out else q_v[vid_idx]  # (n, Sq, H, D)
                k = torch.cat([k_v[vid_idx], k_t[txt_idx]], dim=1)  # (n, S, H, D)
                v = torch.cat([v_v[vid_idx], v_t[txt_idx]], dim=1)  # (n, S, H, D)
                q = apply_rope(q, group.cos[: q.shape[1]], group.sin[: q.shape[1]])
                k = apply_rope(k, group.cos, group.sin)
                o = attend(q, k, v, plan.attention).reshape(n, q.shape[1], inner)  # (n, Sq, H*D)
                out_v.index_copy_(0, vid_idx.reshape(-1), o[:, :sv].reshape(-1, inner))
                if acc_t is not None:
                    acc_t.index_add_(0, txt_idx.reshape(-1), o[:, sv:].reshape(-1, inner).float())

        vid_res = self.proj_out.pick("vid")(out_v)  # (L, dim)
        if acc_t is None:
            return vid_res, None
        txt_mean = (acc_t / plan.txt_windows).to(txt.dtype)  # (Lt, H*D): mean over the sample's windows
        return vid_res, self.proj_out.pick("txt")(txt_mean)
