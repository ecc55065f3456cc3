"""The text conditioning: SeedVR2 feeds one fixed, precomputed positive embedding.

The text encoder is not shipped; the official scripts load `pos_emb.pt` (a bare bf16 tensor,
58x5120) and pass it as `txt` with `txt_shape=[[58]]` (model-spec §2.6). The negative embedding
(64x5120) is only used with cfg != 1, which SeedVR2 never does. The same data arrives as:

* `pos_emb.pt` from the ByteDance-Seed/SeedVR2-3B repository (`torch.save` of a bare tensor);
* the key `positive_conditioning` of a Comfy-Org single-file DiT (optionally under
  `model.diffusion_model.`);
* the key `pos` of a safetensors file such as the test copy `text_embeds.safetensors`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_header, read_state_dict

POS_EMB_SHAPE = (58, 5120)  # official pos_emb.pt
NEG_EMB_SHAPE = (64, 5120)
_SAFETENSORS_KEYS = ("pos", "positive_conditioning", "model.diffusion_model.positive_conditioning")


def embedding_key(path: str | os.PathLike) -> str | None:
    """The key holding the positive embedding in a safetensors file, or None if it has none."""
    names, _ = read_header(path)
    for key in _SAFETENSORS_KEYS:
        if key in names:
            return key
    return None


def load_pos_emb(path: str | os.PathLike) -> torch.Tensor:
    """Read the positive text embedding (tokens, channels) from a .pt or .safetensors file, on the CPU.

    Raises CheckpointError naming the file when it holds no such embedding.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (the positive text embedding, pos_emb.pt)")
    if path.suffix.lower() in (".safetensors", ".sft"):
        key = embedding_key(path)
        if key is None:
            raise CheckpointError(f"{path}: no positive text embedding in this file (looked for keys "
                                  f"{', '.join(_SAFETENSORS_KEYS)}); use pos_emb.pt from ByteDance-Seed/SeedVR2-3B")
        emb = read_state_dict(path, keys=[key])[key]
    else:
        emb = _load_bare_tensor(path)
    if emb.dim() != 2 or not emb.is_floating_point():
        raise CheckpointError(f"{path}: the text embedding must be a float (tokens, channels) tensor, "
                              f"got {emb.dtype} {tuple(emb.shape)}")
    return emb


def _load_bare_tensor(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path}: cannot read this embedding file ({type(exc).__name__}: {exc}); "
                              "expected pos_emb.pt as saved by torch.save") from None
    if isinstance(obj, dict) and "pos" in obj:
        obj = obj["pos"]
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: expected a tensor (pos_emb.pt), found a {type(obj).__name__}")
    return obj
