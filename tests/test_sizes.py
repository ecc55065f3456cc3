"""Unbounded sizes: a run whose output cannot fit in host memory is refused before any allocation,
with a message naming resolution/max_resolution, the output size, the bytes needed and available.
(The ComfyUI node runs the same check; tests/acceptance/test_hostile.py posts a huge resolution.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import seedvr2.pipeline.memory as memory
from seedvr2.cli import main
from seedvr2.pipeline import (UpscaleInputError, UpscaleModels, UpscaleSettings, available_host_memory,
                              host_memory_needed, upscale)
from seedvr2.preprocess import SideResize, plan_geometry


class NeverRun(torch.nn.Module):
    """A model that must not be reached: the size check comes first."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the model ran although the output cannot fit in memory")

    encode = decode = forward


def _models() -> UpscaleModels:
    dit, vae = NeverRun(), NeverRun()
    vae.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    return UpscaleModels(dit, vae, torch.zeros(3, 8), "cpu")


def test_api_refuses_an_output_larger_than_memory_before_allocating():
    frames = torch.rand(4, 4, 512, 3)  # the case: 4x512 frames, resolution in the millions
    with pytest.raises(UpscaleInputError) as refused:
        upscale(frames, _models(), UpscaleSettings(resolution=10**9))
    text = str(refused.value)
    assert text.startswith("resolution=1000000000 gives 4 output frame(s) of 128000000000x1000000000 (WxH)"), text
    assert "bytes) of host memory" in text and "is available" in text and "Lower resolution" in text


def test_the_estimate_counts_output_latents_and_canvas_and_the_limit_is_the_available_memory(monkeypatch):
    settings = UpscaleSettings(resolution=64, max_resolution=96, batch_size=5)
    geometry = plan_geometry(48, 64, settings.resize_rule)  # -> 64x86 output, canvas 64x96
    assert geometry.output_hw == (64, 85) and geometry.canvas_hw == (64, 96)
    est = host_memory_needed(9, 3, geometry, settings, output_dtype=torch.float32, vae_itemsize=2)
    assert est.output == 9 * 64 * 85 * 3 * 4
    assert est.latents == (2 + 2) * 8 * 12 * 16 * 4  # two batches of 5 and 4 frames -> 2 latent frames each
    assert est.canvas == 3 * 5 * 64 * 96 * 2
    assert host_memory_needed(9, 3, geometry, settings, output_dtype=None, canvas_on_host=False).total == est.latents

    frames = torch.rand(9, 48, 64, 3)
    est = host_memory_needed(9, 3, geometry, settings, output_dtype=torch.float32, vae_itemsize=4)  # fp32 VAE, CPU
    monkeypatch.setattr(memory, "available_host_memory", lambda: est.total - 1)
    with pytest.raises(UpscaleInputError, match=r"resolution=64, max_resolution=96 gives 9 output frame\(s\) of "
                                                r"85x64 \(WxH\).*\(%s bytes\) of host memory.*only .*\(%s bytes\) is "
                                                r"available" % (f"{est.total:,}", f"{est.total - 1:,}")):
        upscale(frames, _models(), settings)
    monkeypatch.setattr(memory, "available_host_memory", lambda: est.total)
    with pytest.raises(AssertionError, match="the model ran"):  # fits: the run starts
        upscale(frames, _models(), settings)


def test_available_memory_is_known_on_this_machine():
    available = available_host_memory()
    assert available is not None and 2**27 < available < 2**50


def test_cli_refuses_a_huge_resolution_before_loading_models(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    src = tmp_path / "img.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(src)
    code = main([str(src), "-o", str(tmp_path / "o.png"), "--resolution", "100000", "--models-dir",
                 str(tmp_path / "no_models"), "--no-download", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: resolution=100000 gives 1 output frame(s) of 133333x100000"), err
    assert "Traceback" not in err and not (tmp_path / "o.png").exists()


def test_side_resize_plans_are_plain_arithmetic_at_any_size():
    geo = plan_geometry(4, 512, SideResize(16384))
    assert geo.output_hw == (16384, 2097152)

