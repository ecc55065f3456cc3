"""Load a SeedVR2 DiT checkpoint: detect the variant from keys and shapes, build on meta, fill strictly.

Accepted layouts (shared/guides/checkpoints.md sections 0, 1, 4, 5): the official flat key set in
``.pth`` (ByteDance, fp32) or ``.safetensors`` (numz/AInVFX fp16, fp8_e4m3fn, mixed fp8 + fp16;
Comfy-Org fp16/fp8), also under a ``model.diffusion_model.`` prefix (ComfyUI saves; an embedded
``vae.*`` part is ignored), and ``.gguf`` (optional ``gguf`` extra). Comfy-Org's embedded
``positive_conditioning`` / ``negative_conditioning`` tensors are not DiT weights and are skipped.
Quantized layers (GGUF Q-types, ComfyUI scaled fp8 / int8 ConvRot / mxfp8 / nvfp4) become
``seedvr2.quant.QuantLinear`` modules holding the compressed bytes under the file's own names
(``seedvr2.quant.plan`` decides which, from the header); they expand their weight per call. The variant (3B-type or 7B-type, width, block count) is
read from the key names and shapes, never from the file name.

Memory: the model is built on the meta device and the file's tensors are assigned to it, so peak
host RAM is about one copy of the weights (see ``bench/dit_load.py``). Casting to ``dtype`` replaces
tensors one at a time; fp8_e4m3fn weights are kept as fp8 and upcast per layer when used.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch

from ..checkpoint import CheckpointError, load_into, read_header, read_state_dict
from ..quant.linear import swap_in_quant_linears
from ..quant.plan import plan_quantized_layers
from .config import DiTConfig
from .model import NaDiT, default_compute_dtype
from .rope import RopeFreqs, rope_freqs

__all__ = ["load_dit", "detect_dit_config"]

log = logging.getLogger(__name__)

_PREFIX = "model.diffusion_model."
_CONDITIONING = ("positive_conditioning", "negative_conditioning")
_STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def load_dit(path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
             compute_dtype: torch.dtype | None = None, attention: str = "sdpa") -> NaDiT:
    """Load a SeedVR2 DiT from ``path`` (``.safetensors`` or ``.pth``), ready for inference.

    ``dtype``: storage dtype for the floating weights (fp32, fp16 or bf16); None keeps the file's.
    fp8_e4m3fn weights always stay fp8. ``compute_dtype``: activation dtype of the forward; None picks
    bf16 where ``device`` supports it, else fp16. ``attention``: "sdpa", "flash_emul" or "flash_attn".
    Raises ``CheckpointError`` (naming the file and the problem) for anything that is not a complete
    SeedVR2 DiT.
    """
    if dtype is not None and dtype not in _STORAGE_DTYPES:
        raise ValueError(f"load_dit: dtype must be one of {_STORAGE_DTYPES} or None (keep the file's), got {dtype}")
    header, metadata = read_header(path)
    rename = _dit_key_names(header, metadata, path)
    plan = plan_quantized_layers(path, header, metadata, rename)
    shapes = {rename[name]: shape for name, (_, shape) in header.items() if name in rename}
    shapes.update(plan.logical_shapes)
    config = detect_dit_config(shapes, source=str(path))
    with torch.device("meta"):
        model = NaDiT(config, attention=attention)
    try:
        swap_in_quant_linears(model, plan.schemes)
    except KeyError as exc:
        raise CheckpointError(f"{path}: {exc.args[0]}") from None
    state = read_state_dict(path, keys=rename.keys(), rename=rename)
    what = f"SeedVR2 DiT ({config.dim}-dim, {config.num_layers} blocks) from '{path}'"
    load_into(model, state, what=what, dtype=dtype, keep_dtype=plan.keeps_dtype)
    del state
    _reset_rope_freqs(model, config, what)
    model.requires_grad_(False).eval()
    model.compute_dtype = compute_dtype or default_compute_dtype(device)
    if torch.device(device).type != "cpu":
        model.to(device)
    return model


def _dit_key_names(header: Mapping, metadata: Mapping[str, str], path) -> dict[str, str]:
    """File key -> model key for the DiT part of a checkpoint; refuses layouts we cannot load."""
    names = list(header)
    if names and all(n.startswith(("encoder.", "decoder.")) for n in names):
        raise CheckpointError(f"{path}: this is a SeedVR2 video VAE checkpoint (only encoder./decoder. keys), "
                              "not a DiT. Select it as the VAE and pick a seedvr2_ema_3b/7b DiT file here.")
    prefixed = [n for n in names if n.startswith(_PREFIX)]
    if prefixed:
        # ComfyUI-saved file: the DiT lives under the prefix; other parts (vae.*, ...) are not ours.
        return {n: n[len(_PREFIX):] for n in prefixed if n[len(_PREFIX):] not in _CONDITIONING}
    return {n: n for n in names if n not in _CONDITIONING}


def detect_dit_config(shapes: Mapping[str, tuple[int, ...]], *, source: str = "checkpoint") -> DiTConfig:
    """The ``DiTConfig`` of a checkpoint, from its key names and shapes (official key set)."""
    if "vid_in.proj.weight" not in shapes:
        sample = ", ".join(list(shapes)[:5]) or "none"
        raise CheckpointError(f"{source}: not a SeedVR2 DiT checkpoint: key 'vid_in.proj.weight' is missing "
                              f"(first keys: {sample}).")
    dim = shapes["vid_in.proj.weight"][0]
    block_ids = sorted({int(m.group(1)) for n in shapes if (m := _BLOCK_KEY.match(n))})
    if not block_ids or block_ids != list(range(block_ids[-1] + 1)):
        raise CheckpointError(f"{source}: DiT blocks must be numbered 0..N-1, found {_ranges(block_ids)}.")
    num_layers = len(block_ids)
    mm = [i for i in block_ids if f"blocks.{i}.attn.proj_qkv.vid.weight" in shapes]
    if mm != list(range(len(mm))):
        raise CheckpointError(f"{source}: blocks with separate video/text weights must come first, found them at "
                              f"{_ranges(mm)}.")
    swiglu = any(".proj_in_gate.weight" in n for n in shapes)
    out_norm = "vid_out_norm.weight" in shapes
    if swiglu != out_norm:
        raise CheckpointError(f"{source}: unknown SeedVR2 DiT variant (SwiGLU MLP: {swiglu}, output norm: "
                              f"{out_norm}); only the 3B and 7B layouts are supported.")
    head_dim = _first(shapes, r"blocks\.\d+\.attn\.norm_q\.(vid|all)\.weight", source)[0]
    inner = _first(shapes, r"blocks\.\d+\.attn\.proj_qkv\.(vid|all)\.weight", source)[0] // 3
    hidden = _first(shapes, r"blocks\.\d+\.mlp\.(vid|all)\.proj_in\.weight", source)[0]
    three_b = swiglu
    try:
        config = DiTConfig(
            dim=dim,
            txt_in_dim=_shape(shapes, "txt_in.weight", source)[1],
            heads=inner // head_dim,
            head_dim=head_dim,
            num_layers=num_layers,
            mm_layers=len(mm),
            mlp="swiglu" if three_b else "gelu",
            mlp_hidden=hidden,
            rope="mmrope3d" if three_b else "pixel3d",
            rope_dim=head_dim if three_b else head_dim // 2,  # official: rope_dim = head_dim (3B); head_dim//2 (7B)
            out_norm=out_norm,
            last_block_vid_only=three_b,
            window_shifted=tuple(i % 2 == 1 for i in range(num_layers)),
            vid_in_channels=shapes["vid_in.proj.weight"][1] // 4,
            vid_out_channels=_shape(shapes, "vid_out.proj.weight", source)[0] // 4,
            emb_dim=_shape(shapes, "emb_in.proj_out.weight", source)[0],
        )
    except ValueError as exc:
        raise CheckpointError(f"{source}: inconsistent SeedVR2 DiT shapes: {exc}") from None
    freqs = _first(shapes, r"blocks\.\d+\.attn\.rope\.rope\.freqs", source)
    if freqs != (config.rope_freqs,):
        raise CheckpointError(f"{source}: rope freqs have shape {list(freqs)}, expected [{config.rope_freqs}] for "
                              f"head_dim {head_dim}; this is not a SeedVR2 DiT this port knows.")
    return config


def _reset_rope_freqs(model: NaDiT, config: DiTConfig, what: str) -> None:
    """Replace the stored rope constants by their fp32 formula values (they are never read in compute,
    but a saved state dict should hold the right constants); warn if the file's differ."""
    expected = rope_freqs(config.rope, config.rope_axis_dim)
    mismatched = []
    for name, module in model.named_modules():
        if not isinstance(module, RopeFreqs):
            continue
        stored = module.freqs
        if stored.dtype.itemsize > 1:  # an unscaled fp8 cast flushes small freqs; nothing to compare
            eps = torch.finfo(stored.dtype).eps
            if not torch.allclose(stored.float(), expected.to(stored.dtype).float(), rtol=2 * eps, atol=0):
                mismatched.append(name)
        module.freqs = expected.clone()
    if mismatched:
        log.warning("%s: rope freqs in %d block(s) (e.g. %s) differ from the SeedVR2 formula; the formula is used.",
                    what, len(mismatched), mismatched[0])


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{source}: not a complete SeedVR2 DiT checkpoint: key {key!r} is missing.")
    return shapes[key]


def _first(shapes: Mapping[str, tuple[int, ...]], pattern: str, source: str) -> tuple[int, ...]:
    regex = re.compile(pattern)
    for name, shape in shapes.items():
        if regex.fullmatch(name):
            return tuple(shape)
    raise CheckpointError(f"{source}: not a complete SeedVR2 DiT checkpoint: no key matches {pattern!r}.")


def _ranges(ids: list[int]) -> str:
    return f"{ids[:8]}{'...' if len(ids) > 8 else ''}" if ids else "none"
