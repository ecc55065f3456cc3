"""SeedVR2 diffusion transformers (3B ``dit_v2`` and 7B ``dit``): model, config, loading."""
from .config import PRESETS, DiTConfig
from .loading import detect_dit_config, load_dit
from .model import NaDiT, build_dit, default_compute_dtype

__all__ = ["DiTConfig", "PRESETS", "NaDiT", "build_dit", "load_dit", "detect_dit_config", "default_compute_dtype"]
