"""`python -m seedvr2 convert IN OUT --to {f16,bf16,q8_0,fp8}`: the written layouts, their parity on
the golden tiny DiTs, and the refusals that protect the user's files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from seedvr2.checkpoint import read_header
from seedvr2.convert import ConvertError, convert, main
from seedvr2.dit import load_dit

pytest.importorskip("gguf", reason="GGUF output needs the optional 'gguf' package")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("vid", "txt", "vid_shape", "txt_shape", "timestep")
# Relative RMS error of the output vs the official fp32 output, per target (measured: README "Model formats").
BOUNDS = {"f16": 2e-3, "bf16": 1e-2, "q8_0": 2e-2, "fp8": 6e-2}


def _rel_rms(a, b) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("to,ext", [("f16", ".gguf"), ("bf16", ".safetensors"), ("q8_0", ".gguf"), ("fp8", ".safetensors")])
def test_each_target_writes_its_layout_and_stays_close(golden_dir, family, tmp_path, to, ext):
    src = golden_dir / f"dit{family}_tiny_weights.safetensors"
    dst = tmp_path / f"out-{to}{ext}"
    counts = convert(src, dst, to)
    header, metadata = read_header(dst)
    if to == "q8_0":
        q8 = [k for k in header if metadata.get(f"seedvr2.gguf_type.{k}") == "Q8_0"]
        assert q8 and all(k.startswith("blocks.") and k.endswith(".weight") for k in q8)
        assert counts["Q8_0"] == len(q8)
    if to == "fp8":
        markers = [k for k in header if k.endswith(".comfy_quant")]
        assert markers and len(markers) == counts["FP8"]
        with safe_open(dst, "pt") as f:
            assert json.loads(bytes(f.get_tensor(markers[0]).tolist())) == {"format": "float8_e4m3fn"}
            layer = markers[0][: -len(".comfy_quant")]
            assert f.get_tensor(layer + ".weight").dtype == torch.float8_e4m3fn
            assert f.get_tensor(layer + ".weight_scale").dtype == torch.float32
    io = load_file(golden_dir / f"dit{family}_tiny_io.safetensors")
    with torch.no_grad():
        out = load_dit(dst, compute_dtype=torch.float32)(*(io[k] for k in KEYS))
    assert _rel_rms(out, io["out_fp32"]) < BOUNDS[to]
    assert not list(tmp_path.glob("*.partial"))


def test_a_quantized_input_is_expanded_then_converted(golden_dir, tmp_path):
    src = golden_dir / "dit7b_tiny_weights.safetensors"
    convert(src, tmp_path / "a.gguf", "q8_0")
    convert(tmp_path / "a.gguf", tmp_path / "b.safetensors", "f16")
    a = load_dit(tmp_path / "a.gguf", compute_dtype=torch.float32)
    b = load_dit(tmp_path / "b.safetensors", compute_dtype=torch.float32)
    layer = "blocks.2.mlp.vid.proj_in"
    assert torch.equal(b.get_submodule(layer).weight.float(),
                       a.get_submodule(layer).dequantized_weight().to(torch.float16).float())


def test_refusals_keep_user_files_intact(golden_dir, tmp_path):
    src = golden_dir / "dit7b_tiny_weights.safetensors"
    existing = tmp_path / "mine.gguf"
    existing.write_bytes(b"precious")
    with pytest.raises(ConvertError, match="mine.gguf already exists; pass --force"):
        convert(src, existing, "q8_0")
    assert existing.read_bytes() == b"precious"
    with pytest.raises(ConvertError, match="--to q8_0 writes .gguf files"):
        convert(src, tmp_path / "x.safetensors", "q8_0")
    with pytest.raises(ConvertError, match="--to fp8 writes .safetensors files"):
        convert(src, tmp_path / "x.gguf", "fp8")
    assert main([str(golden_dir / "vae_tiny_weights.safetensors"), str(tmp_path / "v.gguf"), "--to", "f16"]) == 2
    assert not list(tmp_path.glob("v.gguf*"))
    convert(src, existing, "q8_0", force=True)
    assert existing.read_bytes()[:4] == b"GGUF"


def test_cli_dispatches_convert(golden_dir, tmp_path):
    dst = tmp_path / "cli.gguf"
    run = subprocess.run([sys.executable, "-m", "seedvr2", "convert", str(golden_dir / "dit3b_tiny_weights.safetensors"),
                          str(dst), "--to", "q8_0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Q8_0" in run.stdout and dst.is_file()



def test_main_reports_errors_with_exit_code_2(golden_dir, tmp_path, capsys):
    dst = tmp_path / "taken.gguf"
    dst.write_bytes(b"x")
    assert main([str(golden_dir / "dit3b_tiny_weights.safetensors"), str(dst), "--to", "f16"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("to,ext", [("q8_0", ".gguf"), ("fp8", ".safetensors")])
def test_a_failure_mid_write_leaves_no_partial_and_keeps_the_old_file(golden_dir, tmp_path, monkeypatch, to, ext):
    import seedvr2.convert as conv

    real = conv._float_tensors

    def failing(*args):
        for i, item in enumerate(real(*args)):
            if i == 3:
                raise OSError("No space left on device")
            yield item

    monkeypatch.setattr(conv, "_float_tensors", failing)
    dst = tmp_path / f"old{ext}"
    dst.write_bytes(b"the user's previous file")
    with pytest.raises(OSError, match="No space left"):
        convert(golden_dir / "dit7b_tiny_weights.safetensors", dst, to, force=True)
    assert dst.read_bytes() == b"the user's previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]
