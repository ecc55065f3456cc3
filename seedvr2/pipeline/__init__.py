"""The SeedVR2 upscale pipeline: frames [T, H, W, C] in, upscaled frames out (no ComfyUI here)."""
from .noise import NoiseSource, SeededNoise
from .output import FrameSink, TensorSink
from .run import UpscaleModels, VAETiling, upscale
from .settings import UpscaleInputError, UpscaleSettings, check_frames, check_settings, validate_upscale_inputs

__all__ = [
    "NoiseSource", "SeededNoise", "FrameSink", "TensorSink", "UpscaleModels", "VAETiling", "upscale",
    "UpscaleInputError", "UpscaleSettings", "check_frames", "check_settings", "validate_upscale_inputs",
]
