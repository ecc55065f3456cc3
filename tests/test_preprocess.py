"""Frame geometry and value mapping: the official glue against the e2e fixture, and the side rule."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from seedvr2.preprocess import (AreaResize, SideResize, pad_frames, padded_frame_count, plan_geometry,
                                resize_bicubic, to_model_range, to_uint8)


@pytest.fixture(scope="module")
def e2e(golden_dir):
    return load_file(str(golden_dir / "e2e_tiny_io.safetensors"))


def test_official_area_resize_and_crop_match_fixture(e2e):
    frames = e2e["frames_u8"].float() / 255  # (t, c, h, w)
    geo = plan_geometry(24, 40, AreaResize(64, 96))
    # README steps 2-3: 61x101 after the area resize, banker's offsets round(6.5)=6, round(2.5)=2.
    assert geo.resized_hw == (61, 101)
    assert (geo.crop_top, geo.crop_left) == (6, 2)
    assert geo.output_hw == geo.canvas_hw == (48, 96)
    cond = to_model_range(geo.reference(frames)).permute(1, 0, 2, 3)  # c t h w
    torch.testing.assert_close(cond, e2e["cond_video"], atol=1e-6, rtol=0)


def test_last_frame_padding_matches_fixture(e2e):
    padded = pad_frames(e2e["cond_video"], dim=1)
    torch.testing.assert_close(padded, e2e["padded_video"], atol=0, rtol=0)


@pytest.mark.parametrize("frames,expected", [(1, 1), (2, 5), (3, 5), (4, 5), (5, 5), (6, 9), (8, 9), (9, 9),
                                             (10, 13), (17, 17), (18, 21)])
def test_padded_frame_count_follows_cut_videos(frames, expected):
    assert padded_frame_count(frames) == expected
    assert pad_frames(torch.arange(frames), 0).tolist() == list(range(frames)) + [frames - 1] * (expected - frames)


def test_uint8_rounding_matches_fixture(e2e):
    for mode in ("fp32", "flash_emul"):
        out = to_uint8(e2e[f"{mode}.sample_colorfix"]).permute(0, 2, 3, 1)
        assert torch.equal(out, e2e[f"{mode}.output_uint8"])


@pytest.mark.parametrize("hw,rule,out", [
    ((720, 1280), SideResize(1080), (1080, 1920)),
    ((1280, 720), SideResize(1080), (1920, 1080)),           # portrait: the short side is the width
    ((101, 203), SideResize(77), (77, 155)),                  # 203*77/101 = 154.77 -> 155
    ((100, 150), SideResize(33), (33, 50)),                   # 49.5 rounds half up
    ((100, 1000), SideResize(512, 2000), (200, 2000)),        # the cap binds: long side exactly 2000
    ((300, 400), SideResize(512, 600), (450, 600)),
    ((64, 64), SideResize(64), (64, 64)),
])
def test_side_resize_gives_exactly_the_requested_size(hw, rule, out):
    geo = plan_geometry(*hw, rule)
    assert geo.output_hw == out
    assert all(c % 16 == 0 and 0 <= c - o < 16 for c, o in zip(geo.canvas_hw, out))
    if out[0] * out[1] > 500_000:
        return  # geometry only for the HD cases; the tensor path is the same for all sizes
    frames = torch.rand(2, 3, *hw)
    ref = geo.reference(frames)
    assert tuple(ref.shape[-2:]) == out
    canvas = geo.to_canvas(ref)
    assert tuple(canvas.shape[-2:]) == geo.canvas_hw
    assert torch.equal(geo.trim(canvas), ref)
    # bottom/right padding replicates the edge pixels
    if geo.canvas_hw[0] > out[0]:
        assert torch.equal(canvas[..., -1, : out[1]], ref[..., -1, :])


def test_side_resize_is_bicubic_antialiased_and_clamped():
    frames = torch.rand(3, 3, 40, 60)
    geo = plan_geometry(40, 60, SideResize(20))
    expected = F.interpolate(frames, size=(20, 30), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(geo.reference(frames), expected, atol=0, rtol=0)


def test_same_size_resize_is_identity_and_a_copy():
    frames = torch.rand(1, 3, 16, 16)
    out = resize_bicubic(frames, (16, 16))
    assert torch.equal(out, frames) and out.data_ptr() != frames.data_ptr()


def test_cap_below_16_pixels_is_refused():
    with pytest.raises(ValueError, match="max_resolution=64.*64x2.*at least 16"):
        plan_geometry(10, 320, SideResize(16, 64))


def test_official_area_too_small_is_refused():
    with pytest.raises(ValueError, match="official area resize.*at least 16"):
        plan_geometry(100, 1000, AreaResize(16, 16))
