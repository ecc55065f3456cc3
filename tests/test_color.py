"""Colour correction: wavelet against the official fixture; adain and lab by their defining properties."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from seedvr2.color import COLOR_CORRECTIONS, adain, color_correct, lab_to_rgb, lab_transfer, rgb_to_lab


@pytest.fixture(scope="module")
def e2e(golden_dir):
    return load_file(str(golden_dir / "e2e_tiny_io.safetensors"))


@pytest.mark.parametrize("mode", ["fp32", "flash_emul"])
def test_wavelet_matches_official_colorfix(e2e, mode):
    reference = e2e["cond_video"].permute(1, 0, 2, 3)  # t c h w, the preprocessed input
    out = color_correct(e2e[f"{mode}.sample"], reference, "wavelet")
    # Same filter and summation order as StableSR: equal to float rounding.
    torch.testing.assert_close(out, e2e[f"{mode}.sample_colorfix"], atol=1e-6, rtol=0)


def test_wavelet_of_a_frame_with_itself_is_the_frame():
    x = torch.rand(2, 3, 40, 24) * 2 - 1
    torch.testing.assert_close(color_correct(x, x, "wavelet"), x, atol=1e-5, rtol=0)


def test_wavelet_takes_low_frequencies_from_the_reference():
    content = torch.rand(1, 3, 64, 64) * 2 - 1
    out = color_correct(content, torch.full_like(content, 0.25), "wavelet")
    # a flat reference has no detail; the mean of the output moves to it
    assert abs(out.mean().item() - 0.25) < 0.02
    assert abs(content.mean().item() - 0.25) > 0.1


def test_adain_transfers_per_frame_channel_statistics():
    content = torch.randn(3, 3, 20, 30) * 0.3 + 0.2
    reference = torch.randn(3, 3, 20, 30) * torch.tensor([0.1, 0.5, 0.2])[:, None, None] - 0.4
    out = adain(content, reference)
    torch.testing.assert_close(out.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3)), reference.std(dim=(2, 3)), atol=1e-3, rtol=1e-3)


def test_lab_conversion_round_trips_and_hits_known_values():
    rgb = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)
    primaries = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])[:, :, None, None]
    lab = rgb_to_lab(primaries)[:, :, 0, 0]
    # CIELAB (D65) of sRGB white, red and blue.
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])
    torch.testing.assert_close(lab, expected, atol=0.05, rtol=0)


def test_lab_transfer_matches_reference_lab_statistics():
    content = (torch.rand(2, 3, 32, 32) * 0.5 + 0.25) * 2 - 1      # mid-tones, in gamut after transfer
    reference = (torch.rand(2, 3, 32, 32) * 0.3 + 0.35) * 2 - 1
    out = lab_transfer(content, reference)
    out_lab, ref_lab = rgb_to_lab(out * 0.5 + 0.5), rgb_to_lab(reference * 0.5 + 0.5)
    torch.testing.assert_close(out_lab.mean(dim=(2, 3)), ref_lab.mean(dim=(2, 3)), atol=0.05, rtol=0)
    torch.testing.assert_close(out_lab.std(dim=(2, 3)), ref_lab.std(dim=(2, 3)), atol=0.1, rtol=0.01)


def test_none_returns_content_and_unknown_method_is_named():
    x = torch.rand(1, 3, 4, 4)
    assert color_correct(x, x * 0, "none") is x
    assert set(COLOR_CORRECTIONS) == {"wavelet", "adain", "lab", "none"}
    with pytest.raises(ValueError, match="color_correction must be one of.*'sepia'"):
        color_correct(x, x, "sepia")
