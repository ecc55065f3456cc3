"""Build the VAE from a config and load released weights into it, strictly.

Accepted files: ByteDance ``ema_vae.pth`` and the community ``ema_vae_fp16.safetensors`` (any float
dtype), with the current diffusers attention names (``to_q/to_k/to_v/to_out.0``) or the legacy
ones (``query/key/value/proj_attn``) that the official loader renames before loading. A ``vae.``
prefix (ComfyUI all-in-one files) is stripped. Unlike the official ``strict=False`` load, a
missing or mis-shaped tensor is an error, never a silently random layer.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_into, read_header, read_state_dict
from .config import VAEConfig, resolve_config
from .model import VideoVAE

# diffusers `_convert_deprecated_attention_blocks`: old attention-block names -> current ones.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_PREFIXES = ("", "vae.")


def build_vae(config: VAEConfig | Mapping[str, Any] | str = "default", *,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VideoVAE:
    """Build the VAE (random init) from ``"default"`` (the released SeedVR2 VAE), a `VAEConfig`, or
    the official config mapping (or its JSON text, as in the fixtures' safetensors metadata).
    ``device="meta"`` builds without allocating weights (what `load_vae` does)."""
    with torch.device(device or "cpu"):
        vae = VideoVAE(resolve_config(config))
    return vae.to(dtype=dtype) if dtype is not None else vae


def load_vae(path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = torch.bfloat16,
             config: VAEConfig | Mapping[str, Any] | str | None = None) -> VideoVAE:
    """Load a SeedVR2 VAE checkpoint (.safetensors or .pth) for inference.

    ``dtype`` is the compute dtype the weights are cast to (bf16 by default, as the official run;
    float32 for exact reference numerics; None keeps the file's dtype). ``config`` defaults to the
    file's ``config`` metadata when present, else the released VAE. Peak host memory is one copy
    of the weights (plus the cast copy of one tensor at a time).
    """
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"load_vae: dtype must be torch.float32, torch.float16, torch.bfloat16 or None (the file's "
                         f"own), got {dtype!r}")
    names, metadata = read_header(path)
    prefix = _vae_prefix(path, names)
    if config is None:
        config = metadata.get("config", "default")
    try:
        vae = build_vae(config, device="meta")
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build the VAE from its config: {exc}") from None
    state = read_state_dict(path, keys=lambda n: n.startswith((prefix + "encoder.", prefix + "decoder.")),
                            rename=lambda n: _current_name(n[len(prefix):]))
    load_into(vae, state, what=f"SeedVR2 VAE from '{os.fspath(path)}'", dtype=dtype)
    return vae.to(device=device).eval()


def _vae_prefix(path: str | os.PathLike, names: Mapping[str, Any]) -> str:
    for prefix in _PREFIXES:
        if any(n.startswith(prefix + "encoder.") for n in names) and any(n.startswith(prefix + "decoder.") for n in names):
            return prefix
    dit = " It looks like a DiT checkpoint; pick the VAE file (ema_vae*.pth / .safetensors)." if "vid_in.proj.weight" in names else ""
    raise CheckpointError(f"{os.fspath(path)}: no VAE weights (keys 'encoder.*' and 'decoder.*') in this file "
                          f"({len(names)} tensors).{dit}")


def _current_name(name: str) -> str:
    """Rename legacy ``...mid_block.attentions.0.query.weight`` style keys to the current names."""
    head, _, leaf = name.rpartition(".")
    owner, _, old = head.rpartition(".")
    if ".attentions." in name and old in _LEGACY_ATTENTION:
        return f"{owner}.{_LEGACY_ATTENTION[old]}.{leaf}"
    return name
