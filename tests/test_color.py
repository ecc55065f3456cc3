"""Colour correction: wavelet against the official fixture; adain and lab by their defining properties."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from seedvr2.color import (COLOR_CORRECTIONS, WAVELET_HALO, adain, band_rows, color_correct, color_correct_bands,
                           lab_to_rgb, lab_transfer, rgb_to_lab)


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


# ------------------------------------------------------------------------------------------
# Row bands (frames too large to correct whole): equal to the whole-frame corrections
# ------------------------------------------------------------------------------------------

def _banded(content, reference, method, rows, reads=None):
    """`color_correct_bands` over row slices of whole tensors, reassembled; `reads` logs each read."""
    def reader(x, name):
        def read(start, stop):
            if reads is not None:
                reads.append((name, start, stop))
            return x[..., start:stop, :]
        return read

    out = torch.full_like(content, float("nan"))
    bands = []
    for a, b, rows_out in color_correct_bands(reader(content, "content"), reader(reference, "reference"),
                                              content.shape[-2], method, rows):
        assert rows_out.shape == (*content.shape[:2], b - a, content.shape[-1])
        out[..., a:b, :] = rows_out
        bands.append((a, b))
    assert bands == [(a, min(a + rows, content.shape[-2])) for a in range(0, content.shape[-2], rows)]
    return out


# (height, width, rows): sizes that are not multiples of the band, bands smaller than the halo
# (31 rows), one band touching both borders, and bands whose halo is cut by a border.
BAND_CASES = [(97, 53, 5), (97, 53, 40), (200, 70, 64), (37, 20, 3), (16, 16, 1), (150, 24, 100), (64, 33, 64)]


@pytest.mark.parametrize("height,width,rows", BAND_CASES)
def test_wavelet_in_row_bands_is_bit_identical_to_the_whole_frame(height, width, rows):
    """The depthwise CPU convolution computes each output from its own 9 taps in a fixed order,
    whatever the band's size, so every band equals its rows of the whole-frame result exactly."""
    content = torch.rand(2, 3, height, width) * 2 - 1
    reference = torch.rand(2, 3, height, width) * 2 - 1
    assert torch.equal(_banded(content, reference, "wavelet", rows), color_correct(content, reference, "wavelet"))


def test_wavelet_bands_read_only_their_rows_and_the_31_row_halo():
    height, rows, reads = 200, 20, []
    content, reference = torch.rand(1, 3, height, 8), torch.rand(1, 3, height, 8)
    _banded(content, reference, "wavelet", rows, reads)
    assert WAVELET_HALO == 31
    expected = [(max(0, a - 31), min(height, a + rows + 31)) for a in range(0, height, rows)]
    assert [(s, e) for name, s, e in reads if name == "content"] == expected
    assert [(s, e) for name, s, e in reads if name == "reference"] == expected


@pytest.mark.parametrize("height,width,rows", BAND_CASES)
def test_adain_and_none_in_row_bands_equal_the_whole_frame(height, width, rows):
    """adain's statistics are the whole frame's (accumulated over the bands), not each band's:
    equal to float32 rounding of the statistics."""
    content = torch.randn(2, 3, height, width) * 0.3 + 0.2
    reference = torch.randn(2, 3, height, width) * torch.tensor([0.1, 0.5, 0.2])[:, None, None] - 0.4
    torch.testing.assert_close(_banded(content, reference, "adain", rows), color_correct(content, reference, "adain"),
                               atol=1e-6, rtol=0)
    assert torch.equal(_banded(content, reference, "none", rows), content)


@pytest.mark.parametrize("height,width,rows", BAND_CASES)
def test_lab_in_row_bands_equals_the_whole_frame_to_its_own_float32_rounding(height, width, rows):
    """lab's float32 result is itself ~1e-5 from the float64 one (L* up to 100); the banded one is
    as close, and within that of the whole-frame result."""
    content = torch.rand(2, 3, height, width) * 2 - 1
    reference = torch.rand(2, 3, height, width) * 1.4 - 0.6
    whole = color_correct(content, reference, "lab")
    exact = color_correct(content.double(), reference.double(), "lab")
    banded = _banded(content, reference, "lab", rows)
    whole_error = (whole - exact).abs().max().item()
    assert (banded - exact).abs().max().item() <= 2 * whole_error + 1e-6
    torch.testing.assert_close(banded, whole, atol=max(4 * whole_error, 1e-6), rtol=0)
    assert whole_error < 1e-4


def test_band_statistics_are_the_whole_frames_not_each_bands():
    """A frame whose top and bottom differ: per-band statistics would move each band to the
    reference's mean on its own; the frame's statistics keep the step between them."""
    content = torch.cat([torch.full((1, 3, 30, 8), -0.5), torch.full((1, 3, 30, 8), 0.5)], dim=2)
    content = content + 0.01 * torch.randn_like(content)
    reference = torch.rand(1, 3, 60, 8) * 0.2
    for method in ("adain", "lab"):
        banded = _banded(content, reference, method, 30)
        whole = color_correct(content, reference, method)
        torch.testing.assert_close(banded, whole, atol=1e-4, rtol=0)
        assert (banded[..., 30:, :].mean() - banded[..., :30, :].mean()).item() > 0.05  # per band: ~0


@pytest.mark.parametrize("method", COLOR_CORRECTIONS)
def test_band_rows_leave_room_for_the_halo_within_the_pixel_budget(method):
    halo = 62 if method == "wavelet" else 0
    assert band_rows(1000, 200_000, method) == 200 - halo
    assert band_rows(15360, 1 << 23, method) == (1 << 23) // 15360 - halo
    assert band_rows(100_000, 1000, method) == 1  # a budget under one row still makes progress
    with pytest.raises(ValueError, match="rows per band must be at least 1"):
        list(color_correct_bands(lambda a, b: None, lambda a, b: None, 10, method, 0))
    with pytest.raises(ValueError, match="color_correction must be one of"):
        list(color_correct_bands(lambda a, b: None, lambda a, b: None, 10, "sepia", 5))
