"""What is in a checkpoint file: DiT or VAE, which layout, which model, from the keys alone.

Decision procedure of shared/guides/checkpoints.md §0, reading only the header (safetensors) or
the memory-mapped pickle (.pth):

| layout            | recognised by                                                   | mapping                          |
|-------------------|-----------------------------------------------------------------|----------------------------------|
| `bytedance-pth`   | `.pth`, official keys                                           | none                             |
| `plain`           | `.safetensors`, official keys, no conditioning (numz/AInVFX)    | none; pos_emb.pt beside it       |
| `comfy-org`       | official keys + `positive_conditioning`/`negative_conditioning` | pop the two conditioning tensors |
| `comfy-saved`     | keys under `model.diffusion_model.` (+ VAE under `vae.`)        | strip the prefix, split `vae.`   |

| `gguf`            | `.gguf` (optional `gguf` extra), official keys                  | none; quantized per layer        |

Quantized weights (GGUF types, ComfyUI `*.comfy_quant` / `_quantization_metadata` / `scaled_fp8`)
are accepted in any of these layouts; `seedvr2.quant.plan` checks them when the DiT is loaded.
Refused with a message naming the file: any other prefix, and key sets that are neither the SeedVR2
DiT nor its VAE (e.g. MLX exports). The model variant comes from the keys
(block count, width, MLP type), never from the file name.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CheckpointError, read_header

DIT_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
CONDITIONING_KEYS = ("positive_conditioning", "negative_conditioning")
_DIT_ROOTS = ("vid_in.", "txt_in.", "emb_in.", "blocks.", "vid_out.", "vid_out_norm.", "vid_out_ada.")
_VAE_ROOTS = ("encoder.", "decoder.")
_VAE_DECISIVE = "decoder.up_blocks.2.upsamplers.0.upscale_conv.weight"
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
SUPPORTED = ("ByteDance .pth files, numz/AInVFX .safetensors (fp16/bf16/fp32/fp8_e4m3fn) and .gguf (F16/BF16/Q8_0/"
             "Q4_0..Q6_K), Comfy-Org SeedVR2 single files (fp16/fp8/int8_convrot/mxfp8/nvfp4) and ComfyUI-saved "
             "checkpoints")


@dataclass(frozen=True)
class CheckpointLayout:
    """The recognised content of a checkpoint file.

    kind: "dit" or "vae" (a ComfyUI all-in-one file is a "dit" with `has_vae`).
    layout: "bytedance-pth", "plain", "gguf", "comfy-org" or "comfy-saved".
    prefix: stripped from the model's keys ("" or "model.diffusion_model.").
    family: DiT only: "3b" (dit_v2 blocks: SwiGLU, shared late blocks) or "7b" (dit blocks).
    num_blocks, dim: DiT only, from the keys; 32/2560 for the 3B, 36/3072 for the 7B.
    pos_emb_key: the file key of the embedded positive conditioning, if any.
    has_vae: the VAE is embedded under `vae.`.
    dtypes: dtypes of the model tensors (float8_e4m3fn means fp8 weights).
    """

    path: Path
    kind: str
    layout: str
    prefix: str = ""
    family: str | None = None
    num_blocks: int = 0
    dim: int = 0
    pos_emb_key: str | None = None
    has_vae: bool = False
    dtypes: frozenset = frozenset()

    @property
    def variant(self) -> str:
        """A readable model name, e.g. '3B', '7B' or '3B-type, 6 blocks, width 2560'."""
        if self.kind == "vae":
            return "VAE"
        standard = {"3b": (32, 2560), "7b": (36, 3072)}
        if standard.get(self.family) == (self.num_blocks, self.dim):
            return self.family.upper()
        return f"{self.family.upper()}-type, {self.num_blocks} blocks, width {self.dim}"

    def model_keys(self) -> Callable[[str], bool]:
        """Which file keys belong to the model this layout describes (for `read_state_dict(keys=)`)."""
        prefix = self.prefix
        own_vae = prefix == VAE_PREFIX

        def selected(key: str) -> bool:
            if not key.startswith(prefix) or key[len(prefix):] in CONDITIONING_KEYS:
                return False
            return own_vae or not key.startswith(VAE_PREFIX)

        return selected

    def rename(self, key: str) -> str:
        """File key -> model key."""
        return key[len(self.prefix):] if self.prefix and key.startswith(self.prefix) else key

    def embedded_vae(self) -> "CheckpointLayout":
        """The VAE stored under `vae.` in a ComfyUI all-in-one checkpoint."""
        if not self.has_vae:
            raise CheckpointError(f"{self.path}: this checkpoint holds no VAE (no 'vae.' keys)")
        return CheckpointLayout(self.path, "vae", "comfy-saved", VAE_PREFIX)


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointLayout:
    """Recognise a SeedVR2 checkpoint from its keys; raises CheckpointError if it is not one we load."""
    path = Path(path)
    header, metadata = read_header(path)
    names = list(header)
    prefix = DIT_PREFIX if sum(k.startswith(DIT_PREFIX) for k in names) > 5 else ""
    has_vae = any(k.startswith(VAE_PREFIX) for k in names)
    model_names = [k[len(prefix):] for k in names
                   if k.startswith(prefix) and not k.startswith(VAE_PREFIX) and k[len(prefix):] not in CONDITIONING_KEYS]
    stray = sorted({k.split(".")[0] + "." for k in names if not k.startswith(prefix) and not k.startswith(VAE_PREFIX)
                    and k not in CONDITIONING_KEYS})
    if prefix and stray:
        raise CheckpointError(f"{path}: {len(stray)} key group(s) outside {DIT_PREFIX!r}; not a SeedVR2 "
                              f"checkpoint layout this pack knows. Supported: {SUPPORTED}.")
    pos_key = next((k for k in (prefix + "positive_conditioning", "positive_conditioning") if k in header), None)
    dtypes = frozenset(header[prefix + k][0] for k in model_names)
    layout = _layout_name(path, prefix, has_vae, pos_key)

    if "vid_in.proj.weight" in model_names:
        family, blocks, dim = _dit_variant(path, model_names, header, prefix)
        return CheckpointLayout(path, "dit", layout, prefix, family, blocks, dim, pos_key, has_vae, dtypes)
    if model_names and _is_vae(model_names):
        return CheckpointLayout(path, "vae", layout, prefix, dtypes=dtypes)
    if not model_names and has_vae:  # a checkpoint holding only `vae.*`
        vae_names = [k[len(VAE_PREFIX):] for k in names if k.startswith(VAE_PREFIX)]
        if _is_vae(vae_names):
            return CheckpointLayout(path, "vae", "comfy-saved", VAE_PREFIX, dtypes=frozenset(
                header[VAE_PREFIX + k][0] for k in vae_names))
    # A foreign file's key names are its owner's business: report a count, never the names.
    roots = {k.split(".")[0] for k in names}
    raise CheckpointError(f"{path}: not a SeedVR2 DiT or VAE checkpoint ({len(names)} tensors in {len(roots)} "
                          f"top-level key group(s), none of them SeedVR2's). Supported: {SUPPORTED}.")


def expect_kind(layout: CheckpointLayout, kind: str) -> None:
    """Raise a clear error when a VAE file is chosen as the DiT or the reverse."""
    if layout.kind == kind:
        return
    names = {"dit": "DiT (the upscaler model, e.g. seedvr2_ema_3b_fp16.safetensors)",
             "vae": "VAE (e.g. ema_vae_fp16.safetensors)"}
    raise CheckpointError(f"{layout.path}: this file is a SeedVR2 {layout.kind.upper()}, but a {names[kind]} "
                          f"was expected here. Choose it in the {layout.kind.upper()} loader instead.")


def _layout_name(path: Path, prefix: str, has_vae: bool, pos_key: str | None) -> str:
    if prefix or has_vae:
        return "comfy-saved"
    if pos_key:
        return "comfy-org"
    if path.suffix.lower() == ".gguf":
        return "gguf"
    if path.suffix.lower() in (".safetensors", ".sft"):
        return "plain"
    return "bytedance-pth"


def _is_vae(names: list[str]) -> bool:
    return all(k.startswith(_VAE_ROOTS) for k in names) and _VAE_DECISIVE in names


def _dit_variant(path: Path, names: list[str], header: dict, prefix: str) -> tuple[str, int, int]:
    unknown = sorted({k.split(".")[0] for k in names if not k.startswith(_DIT_ROOTS)})
    if unknown:
        raise CheckpointError(f"{path}: DiT-like checkpoint with {len(unknown)} unknown key group(s); not a SeedVR2 "
                              f"layout this pack knows. Supported: {SUPPORTED}.")
    blocks = {int(m.group(1)) for k in names if (m := _BLOCK_RE.match(k))}
    num_blocks = max(blocks) + 1 if blocks else 0
    if blocks != set(range(num_blocks)) or num_blocks == 0:
        raise CheckpointError(f"{path}: DiT blocks are not numbered 0..N-1 (found {sorted(blocks)[:10]}...); "
                              "the file is incomplete")
    _, shape = header[prefix + "vid_in.proj.weight"]
    family = "3b" if "vid_out_norm.weight" in names or any(".mlp.all." in k for k in names) else "7b"
    return family, num_blocks, int(shape[0])

