"""The SeedVR2 upscale pipeline: frames [T, H, W, C] in, upscaled frames out (no ComfyUI here)."""
from .noise import NoiseSource, SeededNoise
from .output import FrameSink, TensorSink
from .memory import MemoryEstimate, available_host_memory, check_host_memory, host_memory_needed
from .run import NonFiniteOutputError, UpscaleModels, VAETiling, upscale
from .store import ResumeError, ResumeStore
from .stream import FrameSource, TensorSource
from .settings import UpscaleInputError, UpscaleSettings, check_frames, check_settings, validate_upscale_inputs

__all__ = [
    "MemoryEstimate", "available_host_memory", "check_host_memory", "host_memory_needed", "NonFiniteOutputError",
    "NoiseSource", "SeededNoise", "FrameSink", "TensorSink", "UpscaleModels", "VAETiling", "upscale",
    "UpscaleInputError", "UpscaleSettings", "check_frames", "check_settings", "validate_upscale_inputs",
    "ResumeError", "ResumeStore", "FrameSource", "TensorSource",
]
