"""Adaptive window partition, window plans and rope rotation (pure functions; model-spec.md 4, 5)."""
from __future__ import annotations

import math

import pytest
import torch

from seedvr2.dit.rope import apply_rope, rope_freqs, window_rope
from seedvr2.dit.windows import axis_windows, build_window_plan, window_size


def _spans(grid, shifted, num_windows=(4, 3, 3)):
    size = window_size(grid, num_windows)
    return [axis_windows(n, s, shifted) for n, s in zip(grid, size)]


def _lengths(spans):
    return [b - a for a, b in spans]


def test_720p_windows_match_the_spec():
    t_sp, h_sp, w_sp = _spans((11, 45, 80), shifted=False)
    assert _lengths(h_sp) == [15, 15, 15] and _lengths(w_sp) == [27, 27, 26]
    assert len(t_sp) * len(h_sp) * len(w_sp) == 36
    t_sp, h_sp, w_sp = _spans((11, 45, 80), shifted=True)
    assert _lengths(h_sp) == [7, 15, 15, 8] and _lengths(w_sp) == [13, 27, 27, 13]
    assert len(t_sp) * len(h_sp) * len(w_sp) == 80


def test_1080p_window_counts_and_long_clip_time_splits():
    for shifted, count in ((False, 100), (True, 150)):
        spans = _spans((11, 68, 120), shifted)
        assert math.prod(len(s) for s in spans) == count
    assert _spans((21, 45, 80), False)[0] == [(0, 6), (6, 12), (12, 18), (18, 21)]
    assert _spans((21, 45, 80), True)[0] == [(0, 3), (3, 9), (9, 15), (15, 21)]


def test_fixture_a_windows():
    """Fixture A (token grid 5x16x28) in the golden README: 12 uneven windows of each kind."""
    assert _spans((5, 16, 28), False) == [[(0, 2), (2, 4), (4, 5)], [(0, 15), (15, 16)], [(0, 27), (27, 28)]]
    assert _spans((5, 16, 28), True) == [[(0, 1), (1, 3), (3, 5)], [(0, 7), (7, 16)], [(0, 13), (13, 28)]]


def test_single_frame_and_small_grids_have_one_window_per_axis():
    assert _spans((1, 8, 8), True)[0] == [(0, 1)]
    assert axis_windows(5, 5, shifted=True) == [(0, 5)]


@pytest.mark.parametrize("shifted", [False, True])
def test_plan_covers_every_video_token_once_and_groups_by_shape(shifted):
    grids, txt_lens = [(3, 8, 12), (1, 12, 8)], [7, 4]
    plan = build_window_plan(grids, txt_lens, num_windows=(4, 3, 3), shifted=shifted, rope="mmrope3d",
                             rope_axis_dim=10, attention="sdpa", device=torch.device("cpu"))
    rows = torch.cat([g.vid_idx.reshape(-1) for g in plan.groups])
    assert torch.equal(rows.sort().values, torch.arange(3 * 8 * 12 + 12 * 8))
    for group in plan.groups:
        # a window's text rows are all of its own sample's text
        sample = (group.vid_idx[:, :1] >= 3 * 8 * 12).long()  # (n, 1): 0 or 1
        starts = torch.tensor([0, 7])[sample]
        assert torch.equal(group.txt_idx, starts + torch.arange(group.txt_idx.shape[1]))
        assert group.cos.shape == (group.vid_len + group.txt_idx.shape[1], 30)
    windows = [math.prod(len(s) for s in _spans(g, shifted)) for g in grids]
    assert torch.equal(plan.txt_windows[:, 0], torch.tensor([windows[0]] * 7 + [windows[1]] * 4, dtype=torch.float32))
    assert plan.vid_counts == (288, 96) and plan.txt_counts == (7, 4)


def test_rope_rotates_interleaved_pairs():
    """(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) on the first rot dims; the rest pass through."""
    x = torch.randn(1, 3, 2, 6)  # (n, S, H, D), rot = 4
    theta = torch.randn(3, 2).repeat_interleave(2, dim=-1)  # (S, 4)
    out = apply_rope(x, theta.cos(), theta.sin())
    c, s = theta[None, :, None, 0::2].cos(), theta[None, :, None, 0::2].sin()
    x0, x1 = x[..., 0:4:2], x[..., 1:4:2]
    torch.testing.assert_close(out[..., 0:4:2], x0 * c - x1 * s)
    torch.testing.assert_close(out[..., 1:4:2], x1 * c + x0 * s)
    assert torch.equal(out[..., 4:], x[..., 4:])


def test_rope_angles_follow_the_spec():
    freqs = rope_freqs("mmrope3d", 42)
    assert freqs.shape == (21,) and freqs[0] == 1.0
    torch.testing.assert_close(freqs[1], torch.tensor(10000 ** (-2 / 42)))
    cos, sin = window_rope("mmrope3d", freqs, (2, 3, 4), txt_len=5)

    def expect(row: int, angles: list[float]) -> None:  # interleaved: each angle twice
        theta = torch.tensor(angles).repeat_interleave(2)
        torch.testing.assert_close(cos[row], theta.cos())
        torch.testing.assert_close(sin[row], theta.sin())

    # video token (t=1, y=2, x=3): row 1*12 + 2*4 + 3; time offset by the text length 5
    expect(1 * 12 + 2 * 4 + 3, [*(6 * freqs).tolist(), *(2 * freqs).tolist(), *(3 * freqs).tolist()])
    expect(24 + 3, (3 * freqs).tolist() * 3)  # text token p=3: [p f, p f, p f]

    pixel = rope_freqs("pixel3d", 21)
    torch.testing.assert_close(pixel, torch.linspace(1, 128, 10) * math.pi)
    cos, sin = window_rope("pixel3d", pixel, (1, 2, 3), txt_len=4)
    # one frame -> position -1; rows of h=2: -1, 1; w=3: -1, 0, 1
    expect_rows = {0: [-1, -1, -1], 5: [-1, 1, 1], 1: [-1, -1, 0]}
    for row, (pt, py, px) in expect_rows.items():
        theta = torch.cat([pt * pixel, py * pixel, px * pixel]).repeat_interleave(2)
        torch.testing.assert_close(cos[row], theta.cos())
        torch.testing.assert_close(sin[row], theta.sin())
    assert torch.equal(cos[6:], torch.ones(4, 60)) and torch.equal(sin[6:], torch.zeros(4, 60))  # no text rope
