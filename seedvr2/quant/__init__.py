"""Quantized SeedVR2 weights: GGML/GGUF and ComfyUI formats, kept compressed and expanded per layer.

* ``ggml``: the GGML block types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) in torch;
* ``gguf_reader``, ``gguf_file``: GGUF reading (standard library, memory-mapped) and streamed
  writing (optional ``gguf`` extra);
* ``comfy``: ComfyUI's fp8 (scaled), int8 (+ConvRot), mxfp8 and nvfp4 single-file formats;
* ``linear``: ``QuantLinear`` (compressed buffers, per-call expansion) and the swap-in;
* ``plan``: which layers of a checkpoint are quantized, from its header;
* ``published``: the published quantized files with their hashes (for the registry).

Nothing here imports ``gguf`` or ``comfy_kitchen`` at import time.
"""
GGUF_EXTRA_HINT = ("writing .gguf files needs the optional 'gguf' package (reading does not): "
                   "pip install 'seedvr2-blockswap[gguf]' (or: pip install gguf)")

from .ggml import GGML_TYPES  # noqa: E402, GGMLType, dequantize
from .linear import GGMLScheme  # noqa: E402, QuantLinear, QuantScheme, swap_in_quant_linears

__all__ = ["GGUF_EXTRA_HINT", "GGML_TYPES", "GGMLType", "dequantize", "GGMLScheme", "QuantLinear", "QuantScheme", "swap_in_quant_linears"]
