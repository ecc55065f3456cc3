"""SeedVR2 model and pipeline code (DiT 3B/7B, causal video VAE, one-step upscale).

Host-agnostic: nothing here imports ComfyUI. Public entry points are re-exported below.
"""
from .dit import build_dit, load_dit
