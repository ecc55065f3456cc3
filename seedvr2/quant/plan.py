"""Which layers of a checkpoint are quantized, and how: the loader's plan before it builds the model.

``plan_quantized_layers(path, header, metadata, rename)`` reads only the header (plus the tiny
``.comfy_quant`` marker tensors) and returns a ``QuantPlan``:

* ``schemes``: model module path (e.g. ``blocks.0.attn.proj_qkv.vid``) -> ``QuantScheme``, for
  ``swap_in_quant_linears``;
* ``logical_shapes``: the ``[out, in]`` of weights whose stored shape is not (nvfp4 packs two
  values per byte), so variant detection sees the real widths;
* ``rename`` is edited in place: marker keys and keys we do not use (``scaled_fp8``,
  ``scale_input``) are dropped; legacy ``scale_weight`` becomes ``weight_scale``.

Carriers recognised (shared/guides/checkpoints.md 0 and 5.4): GGUF tensor types (from
``read_header``'s metadata), ``<p>.comfy_quant`` markers, ``__metadata__["_quantization_metadata"]``,
and the legacy top-level ``scaled_fp8`` key. Anything inconsistent raises ``CheckpointError`` naming
the file and layer.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..checkpoint import GGUF_TYPE_KEY, CheckpointError, read_state_dict
from .comfy import parse_marker, scheme_from_marker
from .ggml import GGML_TYPES
from .linear import GGMLScheme, QuantScheme

__all__ = ["QuantPlan", "plan_quantized_layers"]

_MARKER = ".comfy_quant"
_STORED = ("weight", "weight_scale", "weight_scale_2")


@dataclass
class QuantPlan:
    schemes: dict[str, QuantScheme] = field(default_factory=dict)
    logical_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def keeps_dtype(self, key: str) -> bool:
        """Whether model key ``key`` is a stored tensor of a quantized layer (never cast on load)."""
        layer, _, leaf = key.rpartition(".")
        return leaf in _STORED and layer in self.schemes


def plan_quantized_layers(path: str | os.PathLike, header: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                          metadata: Mapping[str, str], rename: dict[str, str]) -> QuantPlan:
    """See the module docstring. ``rename`` maps file keys to model keys and is edited in place."""
    plan = QuantPlan()
    _plan_gguf(path, header, metadata, rename, plan)
    markers = _comfy_markers(path, header, metadata, rename)
    for file_layer, marker in markers.items():
        weight_key = file_layer + ".weight"
        if weight_key not in rename:
            continue  # not part of the DiT (e.g. an embedded VAE layer)
        layer = rename[weight_key][: -len(".weight")]
        entries = {k[len(file_layer) + 1:]: header[k] for k in header
                   if k.startswith(file_layer + ".") and k[len(file_layer) + 1:].count(".") == 0}
        if "scale_weight" in entries:  # legacy scaled_fp8 names
            entries["weight_scale"] = entries.pop("scale_weight")
        entries.pop("scale_input", None)
        dtype, shape = entries["weight"]
        if len(shape) != 2:
            raise CheckpointError(f"{path}: quantized tensor {weight_key!r} has shape {list(shape)}; only 2-D Linear "
                                  "weights can be quantized")
        out_f, in_f = shape[0], shape[1] * (2 if marker.get("format") == "nvfp4" else 1)
        try:
            plan.schemes[layer] = scheme_from_marker(marker, file_layer, entries, out_f, in_f)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        plan.logical_shapes[layer + ".weight"] = (out_f, in_f)
    return plan


def _plan_gguf(path, header, metadata, rename, plan: QuantPlan) -> None:
    for name, model_key in rename.items():
        qtype = metadata.get(GGUF_TYPE_KEY + name)
        if qtype is None:
            continue
        shape = header[name][1]
        if not model_key.endswith(".weight") or len(shape) != 2:
            raise CheckpointError(f"{path}: tensor {name!r} ({qtype}, shape {list(shape)}) is quantized, but only 2-D "
                                  "Linear weights can be; this is not a SeedVR2 GGUF this loader knows")
        plan.schemes[model_key[: -len(".weight")]] = GGMLScheme(GGML_TYPES[qtype])


def _comfy_markers(path, header, metadata, rename: dict[str, str]) -> dict[str, dict]:
    """File layer prefix -> marker dict, from whichever carrier the file uses; edits ``rename``."""
    markers: dict[str, dict] = {}
    marker_keys = [k for k in header if k.endswith(_MARKER)]
    if marker_keys:
        raw = read_state_dict(path, keys=marker_keys)
        for key in marker_keys:
            try:
                markers[key[: -len(_MARKER)]] = parse_marker(raw[key], f"{path}: {key}")
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
    if "_quantization_metadata" in metadata:
        try:
            layers = json.loads(metadata["_quantization_metadata"])["layers"]
            for layer, marker in layers.items():
                markers.setdefault(layer, parse_marker(marker, f"{path}: _quantization_metadata[{layer!r}]"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: __metadata__['_quantization_metadata'] is not the ComfyUI layout "
                                  f"({type(exc).__name__}: {exc})") from None
    if "scaled_fp8" in header:
        for key in [k for k in header if k.endswith(".scale_weight")]:
            layer = key[: -len(".scale_weight")]
            fmt = "float8_e5m2" if header.get(layer + ".weight", (None,))[0] == torch.float8_e5m2 else "float8_e4m3fn"
            markers.setdefault(layer, {"format": fmt})
            if key in rename:
                new = rename.pop(key)
                rename[key] = new[: -len(".scale_weight")] + ".weight_scale"
        for key in [k for k in rename if k == "scaled_fp8" or k.endswith(".scale_input")]:
            rename.pop(key)
    for key in marker_keys:
        rename.pop(key, None)
    return markers
