"""SeedVR2 model and pipeline code (DiT 3B/7B, causal video VAE, one-step upscale).

Host-agnostic: nothing here imports ComfyUI. Public entry points are re-exported below.
"""
from .dit import build_dit, load_dit
from .vae import build_vae, load_vae
from .pipeline import (UpscaleInputError, UpscaleModels, UpscaleSettings, VAETiling, upscale,
                       validate_upscale_inputs)
from .placement import ModulePlacement, Placement
from .planner import MemoryPlan, plan_memory
from .pipeline.fit import MemoryFit

__all__ = ["build_dit", "load_dit", "build_vae", "load_vae", "upscale", "validate_upscale_inputs", "UpscaleInputError",
           "UpscaleModels", "UpscaleSettings", "VAETiling", "ModulePlacement", "Placement", "plan_memory", "MemoryPlan",
           "MemoryFit"]
