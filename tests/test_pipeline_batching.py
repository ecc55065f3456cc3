"""Temporal batch plans and the crossfade that joins batches (no models)."""
from __future__ import annotations

import pytest
import torch

from seedvr2.batching import Crossfade, crossfade_weights, plan_batches


@pytest.mark.parametrize("frames,batch,overlap", [(1, 5, 0), (5, 5, 0), (6, 5, 0), (17, 5, 0), (17, 5, 2),
                                                  (20, 9, 4), (3, 1, 0), (9, 5, 4), (100, 21, 3)])
def test_batches_cover_every_frame_with_the_requested_overlap(frames, batch, overlap):
    plan = plan_batches(frames, batch, overlap)
    assert plan[0].start == 0 and plan[-1].stop == frames
    assert all(1 <= b.length <= batch for b in plan)
    for prev, cur in zip(plan, plan[1:]):
        assert cur.start == prev.stop - overlap == prev.start + batch - overlap
        assert cur.overlap == overlap < cur.length
    assert plan[0].overlap == 0


def test_batch_plan_rejects_bad_arguments():
    for args in [(0, 5, 0), (5, 0, 0), (5, 5, 5), (5, 5, -1)]:
        with pytest.raises(ValueError):
            plan_batches(*args)


def test_crossfade_weights_ramp_strictly_and_sum_to_one():
    w = crossfade_weights(4)
    assert torch.allclose(w, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    assert torch.all(w[1:] > w[:-1]) and w.min() > 0 and w.max() < 1
    assert torch.allclose(w + w.flip(0), torch.ones(4))  # incoming + outgoing weights = 1 on every shared frame


def _run(plan, outputs, chunk):
    fade, pieces = Crossfade(), []
    for i, b in enumerate(plan):
        fade.start_batch(b, hold=plan[i + 1].overlap if i + 1 < len(plan) else 0)
        for a in range(0, b.length, chunk):
            pieces += fade.push(outputs[i][a:a + chunk])
        fade.end_batch()
    fade.finish()
    return pieces


@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_crossfade_emits_each_frame_once_in_order_and_blends_shared_frames(chunk):
    plan = plan_batches(13, 5, 2)  # [0,5) [3,8) [6,11) [9,13)
    # Each batch "decodes" to a constant equal to its index: the shared frames must ramp between them.
    outputs = [torch.full((b.length, 1), float(b.index)) for b in plan]
    pieces = _run(plan, outputs, chunk)
    starts = [s for s, _ in pieces]
    frames = torch.cat([p for _, p in pieces])[:, 0]
    assert starts == sorted(starts) and frames.shape[0] == 13
    expected = [0, 0, 0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2, 7 / 3, 8 / 3, 3, 3]
    torch.testing.assert_close(frames, torch.tensor(expected), atol=1e-6, rtol=0)


def test_crossfade_with_overlap_of_most_of_the_batch_still_sums_to_one():
    plan = plan_batches(7, 5, 4)  # step 1: a frame is shared by up to 5 batches
    outputs = [torch.ones(b.length, 2) for b in plan]
    frames = torch.cat([p for _, p in _run(plan, outputs, 3)])
    torch.testing.assert_close(frames, torch.ones(7, 2), atol=1e-6, rtol=0)


def test_crossfade_refuses_out_of_order_or_incomplete_batches():
    plan = plan_batches(9, 5, 1)
    fade = Crossfade()
    with pytest.raises(ValueError, match="starts at frame"):
        fade.start_batch(plan[1], hold=0)
    fade.start_batch(plan[0], hold=1)
    fade.push(torch.zeros(3, 1))
    with pytest.raises(RuntimeError, match="incomplete"):
        fade.end_batch()
