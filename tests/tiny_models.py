"""Tiny random-weight SeedVR2 checkpoints for tests (pipeline, CLI, ComfyUI acceptance).

`write_tiny_models(models_dir)` writes, into `models_dir` (e.g. a temp `models/SEEDVR2`):

* `tiny_dit_3b.safetensors`: a 3B-type DiT with the golden `dit3b_tiny` config (width 64, 4 blocks,
  text width 80), official key names, metadata `config` = the official config mapping as JSON;
* `tiny_vae.safetensors`: the video VAE with the golden `vae_tiny` config (channels 16/16/32/32);
* `pos_emb.pt`: a (11, 80) float32 text embedding saved like the official `pos_emb.pt` (a bare
  tensor), found beside the DiT by `seedvr2.models.resolve_models`.

Weights are fresh random draws from a seeded generator (the golden README's scheme: matrices
N(0, 1/fan_in), biases N(0, 0.1^2), norm weights and ada scales 1 + 0.2 N, ada shifts 0.2 N, gates
0.5 N), so outputs are O(1) and the files are deterministic for a seed. About 6 MB in all; writing
takes well under a second. Only torch, safetensors and the `seedvr2` package are needed; the
configs are copied here from `tests/data/reference/golden` (tests/test_models.py checks they match).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

DIT_FILE = "tiny_dit_3b.safetensors"
VAE_FILE = "tiny_vae.safetensors"
POS_EMB_FILE = "pos_emb.pt"
POS_EMB_TOKENS = 11

# golden/dit3b_tiny_weights.safetensors metadata "config" (the official dit_v2 NaDiT mapping).
DIT3B_TINY_CONFIG = {
    "__object__": {"path": "models.dit_v2.nadit", "name": "NaDiT", "args": "as_params"},
    "vid_in_channels": 33, "vid_out_channels": 16, "vid_dim": 64, "vid_out_norm": "fusedrms", "txt_in_dim": 80,
    "txt_in_norm": "fusedln", "txt_dim": 64, "emb_dim": 384, "heads": 2, "head_dim": 32, "expand_ratio": 4,
    "norm": "fusedrms", "norm_eps": 1e-05, "ada": "single", "qk_bias": False, "qk_norm": "fusedrms",
    "patch_size": [1, 2, 2], "num_layers": 4, "mm_layers": 2, "mlp_type": "swiglu", "msa_type": "None",
    "block_type": ["mmdit_sr"] * 4, "window": [[4, 3, 3]] * 4,
    "window_method": ["720pwin_by_size_bysize", "720pswin_by_size_bysize"] * 2,
    "rope_type": "mmrope3d", "rope_dim": 32,
}

# golden/vae_tiny_weights.safetensors metadata "config" (official VideoAutoencoderKLWrapper mapping).
VAE_TINY_CONFIG = {
    "__object__": {"path": "models.video_vae_v3.modules.attn_video_vae", "name": "VideoAutoencoderKLWrapper",
                   "args": "as_params"},
    "act_fn": "silu", "block_out_channels": [16, 16, 32, 32], "down_block_types": ["DownEncoderBlock3D"] * 4,
    "in_channels": 3, "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 4, "out_channels": 3,
    "slicing_sample_min_size": 4, "temporal_scale_num": 2, "inflation_mode": "pad",
    "up_block_types": ["UpDecoderBlock3D"] * 4, "spatial_downsample_factor": 8, "temporal_downsample_factor": 4,
    "use_quant_conv": False, "use_post_quant_conv": False, "freeze_encoder": False,
}


@dataclass(frozen=True)
class TinyModels:
    """Paths of the written files (all in one folder)."""

    models_dir: Path
    dit: Path
    vae: Path
    pos_emb: Path


def random_state_dict(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fresh float32 values for every floating tensor of `template` (golden README init scheme).

    Tensors named `*.freqs` (RoPE constants) are kept as they are.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, ref in template.items():
        if not ref.is_floating_point() or name.endswith(".freqs"):
            out[name] = ref.detach().clone().contiguous()
            continue
        noise = torch.randn(ref.shape, generator=gen)
        leaf = name.rsplit(".", 1)[-1]
        if ref.dim() >= 2:
            value = noise / math.sqrt(math.prod(ref.shape[1:]))
        elif leaf == "bias":
            value = 0.1 * noise
        elif "shift" in leaf:
            value = 0.2 * noise
        elif "gate" in leaf:
            value = 0.5 * noise
        else:  # norm weights, ada / output scales
            value = 1 + 0.2 * noise
        out[name] = value.contiguous()
    return out


def write_tiny_models(models_dir: str | Path, seed: int = 0) -> TinyModels:
    """Write the tiny DiT, VAE and pos_emb into `models_dir` (created if needed); returns their paths."""
    from seedvr2.dit import build_dit
    from seedvr2.vae import build_vae

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    dit_path, vae_path, emb_path = models_dir / DIT_FILE, models_dir / VAE_FILE, models_dir / POS_EMB_FILE

    dit_state = random_state_dict(build_dit(DIT3B_TINY_CONFIG).state_dict(), seed)
    save_file(dit_state, str(dit_path), metadata={"config": json.dumps(DIT3B_TINY_CONFIG)})
    vae_state = random_state_dict(build_vae(VAE_TINY_CONFIG).state_dict(), seed + 1)
    save_file(vae_state, str(vae_path), metadata={"config": json.dumps(VAE_TINY_CONFIG)})
    gen = torch.Generator().manual_seed(seed + 2)
    torch.save(torch.randn(POS_EMB_TOKENS, DIT3B_TINY_CONFIG["txt_in_dim"], generator=gen), emb_path)
    return TinyModels(models_dir, dit_path, vae_path, emb_path)
