"""ComfyUI quantized single files: fp8 scaled, int8 (+ConvRot), mxfp8, nvfp4 load and run; the torch
expansion agrees with comfy-kitchen's kernels where comfy-kitchen is installed."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedvr2.checkpoint import CheckpointError
from seedvr2.dit import load_dit
from seedvr2.quant import comfy
from seedvr2.quant.comfy import hadamard, scheme_from_marker
from seedvr2.quant.linear import QuantLinear

KEYS = ("vid", "txt", "vid_shape", "txt_shape", "timestep")


def _marker(fmt: str, **extra) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt, **extra}).encode()), dtype=torch.uint8)


def _rel_rms(a, b) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def test_convrot_hadamard_is_orthonormal_and_symmetric():
    h = hadamard(256, torch.device("cpu"))
    assert torch.allclose(h @ h, torch.eye(256), atol=1e-5) and torch.equal(h, h.T)


def _int8_convrot(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate rows per 256 columns by H, then row-wise int8 (what the Comfy-Org files store)."""
    o, i = w.shape
    rot = (w.view(o, i // 256, 256) @ hadamard(256, w.device)).view(o, i)
    scale = rot.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(rot / scale).clamp(-127, 127).to(torch.int8), scale


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "int8_convrot"])
def test_quantized_safetensors_dit_loads_runs_and_is_close(golden_dir, tmp_path, fmt):
    weights = load_file(golden_dir / "dit7b_tiny_weights.safetensors")
    io = load_file(golden_dir / "dit7b_tiny_io.safetensors")
    tensors = {}
    quantized = []
    for key, w in weights.items():
        layer = key[: -len(".weight")]
        if key.startswith("blocks.") and key.endswith(".weight") and w.dim() == 2 and w.shape[1] % 256 == 0:
            quantized.append(layer)
            if fmt == "float8_e4m3fn":
                s = w.abs().max() / 448
                tensors[key], tensors[layer + ".weight_scale"] = (w / s).to(torch.float8_e4m3fn), s.float()
                tensors[layer + ".comfy_quant"] = _marker(fmt)
            else:
                tensors[key], tensors[layer + ".weight_scale"] = _int8_convrot(w)
                tensors[layer + ".comfy_quant"] = _marker("int8_tensorwise", convrot=True, convrot_groupsize=256)
        else:
            tensors[key] = w.to(torch.float16)
    path = tmp_path / f"q-{fmt}.safetensors"
    save_file(tensors, path)
    model = load_dit(path, dtype=torch.bfloat16, compute_dtype=torch.float32)
    for layer in quantized:
        m = model.get_submodule(layer)
        assert isinstance(m, QuantLinear)
        assert m.weight_scale.dtype == torch.float32  # scales are never cast to the storage dtype
        assert _rel_rms(m.dequantized_weight(), weights[layer + ".weight"]) < 0.05
    with torch.no_grad():
        out = model(*(io[k] for k in KEYS))
    assert _rel_rms(out, io["out_fp32"]) < 0.05


def test_format_and_shape_mismatches_are_named(golden_dir, tmp_path):
    weights = load_file(golden_dir / "dit7b_tiny_weights.safetensors")
    key = "blocks.0.mlp.vid.proj_out"
    tensors = dict(weights)
    tensors[key + ".weight"] = weights[key + ".weight"].to(torch.float8_e4m3fn)
    tensors[key + ".comfy_quant"] = _marker("float8_e4m3fn")
    save_file(tensors, tmp_path / "noscale.safetensors")
    with pytest.raises(CheckpointError, match="proj_out: format float8_e4m3fn needs 'blocks.0.mlp.vid.proj_out.weight_scale'"):
        load_dit(tmp_path / "noscale.safetensors")
    tensors[key + ".weight_scale"] = torch.ones(3)
    save_file(tensors, tmp_path / "badscale.safetensors")
    with pytest.raises(CheckpointError, match=r"proj_out.weight_scale: torch.float32 \[3\] does not fit"):
        load_dit(tmp_path / "badscale.safetensors")


def test_legacy_scaled_fp8_and_metadata_carriers(golden_dir, tmp_path):
    weights = load_file(golden_dir / "dit7b_tiny_weights.safetensors")
    io = load_file(golden_dir / "dit7b_tiny_io.safetensors")
    key = "blocks.1.mlp.txt.proj_out"
    w = weights[key + ".weight"]
    s = w.abs().max() / 448
    legacy = dict(weights, **{key + ".weight": (w / s).to(torch.float8_e4m3fn), key + ".scale_weight": s.float(),
                              key + ".scale_input": torch.tensor(1.0), "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)})
    save_file(legacy, tmp_path / "legacy.safetensors")
    meta = dict(weights, **{key + ".weight": (w / s).to(torch.float8_e4m3fn), key + ".weight_scale": s.float()})
    save_file(meta, tmp_path / "meta.safetensors",
              metadata={"_quantization_metadata": json.dumps({"layers": {key: {"format": "float8_e4m3fn"}}})})
    outs = []
    for name in ("legacy", "meta"):
        model = load_dit(tmp_path / f"{name}.safetensors", compute_dtype=torch.float32)
        assert isinstance(model.get_submodule(key), QuantLinear)
        with torch.no_grad():
            outs.append(model(*(io[k] for k in KEYS)))
    assert torch.equal(outs[0], outs[1])
    assert _rel_rms(outs[0], io["out_fp32"]) < 0.02


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_torch_path_agrees_with_comfy_kitchen(fmt, monkeypatch):
    ck = pytest.importorskip("comfy_kitchen", reason="comfy-kitchen (ComfyUI's kernel package) is not installed")
    w = torch.randn(160, 512)
    if fmt == "mxfp8":
        q, s = ck.quantize_mxfp8(w, pad_32x=False)
        stored = {"weight": q, "weight_scale": s}
    else:
        s2 = (w.abs().max() / (448 * 6)).float()
        q, s = ck.quantize_nvfp4(w, s2)
        stored = {"weight": q, "weight_scale": s, "weight_scale_2": s2}
    scheme = scheme_from_marker({"format": fmt}, "layer", {k: (v.dtype, tuple(v.shape)) for k, v in stored.items()},
                                160, 512)
    monkeypatch.setattr(comfy, "use_kitchen", False)
    torch_path = scheme.dequantize(stored, 160, 512)
    monkeypatch.setattr(comfy, "use_kitchen", True)
    kitchen_path = scheme.dequantize(stored, 160, 512)
    assert torch.equal(torch_path, kitchen_path)
    assert _rel_rms(torch_path, w) < (0.05 if fmt == "mxfp8" else 0.15)


def test_nvfp4_torch_path_unpacks_high_nibble_first():
    # One 128x4-tile of scales, all 1.0; codes 0x21 -> values (1.0, 0.5): the even element is the high nibble.
    o, i = 1, 64
    q = torch.full((o, i // 2), 0x21, dtype=torch.uint8)
    scales = torch.zeros(128 * 4, dtype=torch.float8_e4m3fn)
    scales[:4] = 1.0  # row 0, scale columns 0..3
    scheme = scheme_from_marker({"format": "nvfp4"}, "l", {"weight": (torch.uint8, (o, i // 2)),
                                                          "weight_scale": (torch.float8_e4m3fn, (128, 4)),
                                                          "weight_scale_2": (torch.float32, ())}, o, i)
    comfy_state = comfy.use_kitchen
    try:
        comfy.use_kitchen = False
        w = scheme.dequantize({"weight": q, "weight_scale": scales.view(128, 4), "weight_scale_2": torch.tensor(1.0)}, o, i)
    finally:
        comfy.use_kitchen = comfy_state
    assert w[0, :4].tolist() == [1.0, 0.5, 1.0, 0.5]
