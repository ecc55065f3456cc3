"""load_dit: storage dtypes (fp16, fp8_e4m3fn, mixed), compute dtypes, .pth, layouts, refusals.

Tolerances against the official fp32 output (tiny fixture A, output std ~1), measured values in
brackets (3B / 7B):
* fp16 weights, fp32 compute: max |err| < 1e-2            [3.3e-3 / 2.7e-3]
* fp16 weights, bf16 compute: max < 0.15, rel RMS < 0.02  [0.052, 0.009 / 0.051, 0.007]
* fp8_e4m3fn weights (unscaled cast of every tensor, as the released fp8 files): rel RMS < 0.15
  [0.077 / 0.059]; and exact per-layer upcast: equal (1e-4) to the same fp8-rounded weights
  stored as fp32.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from seedvr2.checkpoint import CheckpointError
from seedvr2.dit import load_dit

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def weights(golden_dir, family) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / f"dit{family}_tiny_weights.safetensors")


@pytest.fixture(scope="module")
def io(golden_dir, family) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / f"dit{family}_tiny_io.safetensors")


def _run(model, io) -> torch.Tensor:
    with torch.no_grad():
        return model(io["vid"], io["txt"], io["vid_shape"], io["txt_shape"], io["timestep"])


def _save(tmp_path, name: str, tensors: dict[str, torch.Tensor], metadata=None):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).square().mean().sqrt() / b.square().mean().sqrt()).item()


def _param_dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def test_fp16_file_keeps_fp16_and_matches_fp32(tmp_path, weights, io):
    path = _save(tmp_path, "fp16.safetensors", {k: v.half() for k, v in weights.items()})
    model = load_dit(path, compute_dtype=torch.float32)
    assert _param_dtypes(model) == {torch.float16}
    assert {b.dtype for b in model.buffers()} == {torch.float32}  # rope constants reset to the fp32 formula
    out = _run(model, io)
    assert out.dtype == torch.float32
    assert (out - io["out_fp32"]).abs().max().item() < 1e-2

    bf16_compute = load_dit(path, compute_dtype=torch.bfloat16)
    out = _run(bf16_compute, io)
    assert out.dtype == torch.float32  # returned in the dtype of vid
    assert (out - io["out_fp32"]).abs().max().item() < 0.15
    assert _rel_rms(out, io["out_fp32"]) < 0.02


def test_fp8_file_stays_fp8_and_is_upcast_per_layer(tmp_path, weights, io):
    fp8 = {k: v.to(FP8) for k, v in weights.items()}
    model = load_dit(_save(tmp_path, "fp8.safetensors", fp8), dtype=torch.bfloat16, compute_dtype=torch.float32)
    assert _param_dtypes(model) == {FP8}  # dtype= never touches fp8 tensors
    out = _run(model, io)
    assert _rel_rms(out, io["out_fp32"]) < 0.15
    # Same rounded values stored in fp32: per-layer upcast must give the same result.
    upcast = load_dit(_save(tmp_path, "fp8_as_fp32.safetensors", {k: v.float() for k, v in fp8.items()}),
                      compute_dtype=torch.float32)
    assert (out - _run(upcast, io)).abs().max().item() < 1e-4


def test_mixed_fp8_fp16_file_casts_only_the_non_fp8_part(tmp_path, weights, io):
    """Like the AInVFX 7B "mixed_block35_fp16" files: last block fp16, the rest fp8."""
    last = max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    mixed = {k: v.half() if k.startswith(f"blocks.{last}.") else v.to(FP8) for k, v in weights.items()}
    model = load_dit(_save(tmp_path, "mixed.safetensors", mixed), dtype=torch.bfloat16, compute_dtype=torch.float32)
    assert _param_dtypes(model.blocks[last]) == {torch.bfloat16}
    assert _param_dtypes(model.blocks[0]) == {FP8}
    assert _rel_rms(_run(model, io), io["out_fp32"]) < 0.15


def test_pth_file_loads_like_safetensors(tmp_path, weights, io, golden_dir, family):
    path = tmp_path / "official.pth"
    torch.save(weights, path)
    from_pth = _run(load_dit(path, compute_dtype=torch.float32), io)
    from_st = _run(load_dit(golden_dir / f"dit{family}_tiny_weights.safetensors", compute_dtype=torch.float32), io)
    assert torch.equal(from_pth, from_st)


def test_comfyui_prefix_and_embedded_conditioning_are_handled(tmp_path, weights, io):
    tensors = {f"model.diffusion_model.{k}": v for k, v in weights.items()}
    tensors["model.diffusion_model.positive_conditioning"] = torch.zeros(3, 80, dtype=torch.bfloat16)
    tensors["vae.encoder.conv_in.weight"] = torch.zeros(1)
    model = load_dit(_save(tmp_path, "comfy.safetensors", tensors), compute_dtype=torch.float32)
    assert (_run(model, io) - io["out_fp32"]).abs().max().item() < 1e-4


def test_default_compute_dtype_and_device(tmp_path, weights):
    model = load_dit(_save(tmp_path, "w.safetensors", weights))
    assert model.compute_dtype == torch.bfloat16  # CPU supports bf16
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_missing_key_is_reported_by_name(tmp_path, weights):
    broken = dict(weights)
    del broken["blocks.1.attn.norm_q.vid.weight"]
    with pytest.raises(CheckpointError) as info:
        load_dit(_save(tmp_path, "missing.safetensors", broken))
    msg = str(info.value)
    assert "missing.safetensors" in msg
    assert "1 key(s) missing from the file" in msg and "blocks.1.attn.norm_q.vid.weight" in msg


def test_wrong_key_and_wrong_shape_are_reported(tmp_path, weights):
    broken = dict(weights)
    broken["blocks.0.mlp.vid.proj_outt.weight"] = broken.pop("blocks.0.mlp.vid.proj_out.weight")
    broken["txt_in.bias"] = torch.zeros(65)
    with pytest.raises(CheckpointError) as info:
        load_dit(_save(tmp_path, "wrong.safetensors", broken))
    msg = str(info.value)
    assert "blocks.0.mlp.vid.proj_outt.weight" in msg and "unexpected" in msg
    assert "blocks.0.mlp.vid.proj_out.weight" in msg and "missing" in msg
    assert "txt_in.bias: file [65], model [64]" in msg


def test_vae_file_is_refused_as_dit(golden_dir):
    with pytest.raises(CheckpointError, match="vae_tiny_weights.safetensors: this is a SeedVR2 video VAE checkpoint"):
        load_dit(golden_dir / "vae_tiny_weights.safetensors")


def test_unknown_comfyui_quant_format_is_refused(tmp_path, weights):
    tensors = dict(weights)
    tensors["blocks.0.mlp.vid.proj_in.comfy_quant"] = torch.tensor(list(b'{"format": "int8"}'), dtype=torch.uint8)
    with pytest.raises(CheckpointError, match="blocks.0.mlp.vid.proj_in: quantization format 'int8' is not supported"):
        load_dit(_save(tmp_path, "q.safetensors", tensors))


def test_loaded_config_equals_file_metadata(golden_dir, family):
    """Detection from shapes agrees with the official config the fixture was made from."""
    from seedvr2.dit import DiTConfig

    path = golden_dir / f"dit{family}_tiny_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        official = json.loads(f.metadata()["config"])
    assert load_dit(path).config == DiTConfig.from_official(official)


def test_bad_dtype_argument(golden_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_dit(golden_dir / "dit3b_tiny_weights.safetensors", dtype=FP8)
