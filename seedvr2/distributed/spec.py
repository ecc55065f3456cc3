"""What a process needs to load the models itself: `ModelSpec` (plain data, picklable).

The command line loads its models from a `ModelSpec`, and so does each Ray worker (every worker
loads the models once, for its own device, with its own block-swap plan), so a run on one machine
and a run on many load exactly the same files with the same options.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..pipeline import UpscaleModels, VAETiling
from ..speed import SpeedOptions, apply_speed

AUTO = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """Model files and how to place them (the CLI's model and memory options).

    dit/vae: file names in `models_dir`, or paths. dtype: "auto", "bf16", "fp16", "fp32".
    block_swap: a `blockswap.BlockSwapConfig` as a dict (None: the loader's default, "auto" on
        CUDA); it is applied on CUDA, and elsewhere only when it swaps something explicitly.
    vae_tiling: the VAE tiles and chunks ("auto" tile: planned per device).
    download: fetch missing known files into `models_dir`.
    speed: the fast paths (`seedvr2.speed.SpeedOptions`, the CLI's speed switches), applied to both
        models once loaded (`seedvr2.speed.apply_speed`).
    """

    dit: str
    vae: str
    models_dir: str
    dtype: str = AUTO
    attention: str = "sdpa"
    block_swap: dict | None = None
    vae_tiling: VAETiling = field(default_factory=VAETiling)
    download: bool = True
    speed: SpeedOptions = field(default_factory=SpeedOptions)

    def load(self, device: torch.device | str, loaders: tuple | None = None) -> tuple[UpscaleModels, Any]:
        """Load and place both models for `device`; returns (UpscaleModels, the LoadedDiT).

        loaders: (load_dit_model, load_vae_model, upscale_models) to use instead of `seedvr2.loaders`'."""
        if loaders is None:
            from ..loaders import load_dit_model, load_vae_model, upscale_models
        else:
            load_dit_model, load_vae_model, upscale_models = loaders
        device = torch.device(device)
        swap = self.block_swap
        if swap is not None:
            explicit = swap.get("blocks_to_swap") not in (0, AUTO) or swap.get("swap_io_components")
            if device.type != "cuda" and not explicit:
                swap = None  # a logged no-op off CUDA; "auto" applies on CUDA only
        dit = load_dit_model(self.dit, self.models_dir, device=device, dtype=self.dtype, attention=self.attention,
                             block_swap=swap, download=self.download)
        vae = load_vae_model(self.vae, self.models_dir, device=device, dtype=self.dtype, tiling=self.vae_tiling,
                             download=self.download)
        apply_speed(self.speed, vae=vae.module, dit=dit.module)
        return upscale_models(dit, vae), dit

    def identity(self, device_type: str | None) -> dict:
        """What identifies these models for `--resume`: the resolved files' identities, the compute
        dtype and attention backend for `device_type` (None: not known here, e.g. Ray workers
        choose their own device; the dtype option is recorded as given)."""
        from ..loaders import compute_dtype
        from ..models import resolve_model
        from ..pipeline.store import file_identity

        files = {}
        for kind, name in (("dit", self.dit), ("vae", self.vae)):
            path = Path(resolve_model(name, kind, self.models_dir, download=False).path)
            files[kind] = {"name": path.name, **file_identity(path)}
        dtype = str(compute_dtype(self.dtype, torch.device(device_type))) if device_type else self.dtype
        return {"models": files, "dtype": dtype, "attention": self.attention, "device": device_type or "any"}

