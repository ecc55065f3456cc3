"""blocks_to_swap="auto", vram_budget, and `handle.reconfigure()` (how "auto" and the DiT's
out-of-memory fallback change the swap set between phases), on the CPU streaming path and on the
deferred-copy double that fails on every ordering bug."""
from __future__ import annotations

import pytest
import torch

from blockswap import BlockSwapConfig, apply_block_swap
from blockswap.pinning import PinBudget, unpin
from blockswap_double import DeferredBackend, MasterReadDetector
from test_blockswap import block_bytes, inputs, make_pair


def test_auto_and_budget_round_trip_through_a_dict():
    cfg = BlockSwapConfig(blocks_to_swap="auto", vram_budget=7.5, prefetch_blocks=3)
    assert cfg.auto and cfg.vram_budget_bytes == int(7.5 * (1 << 30))
    again = BlockSwapConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.auto
    assert BlockSwapConfig(blocks_to_swap=4).auto is False
    assert BlockSwapConfig(blocks_to_swap="auto").vram_budget_bytes is None


@pytest.mark.parametrize("value,match", [
    (0, "vram_budget must be in GiB, greater than 0"),
    (-2.0, "vram_budget must be in GiB, greater than 0"),
    (1e9, "at most 4096"),
    (float("nan"), "vram_budget must be a number of GiB or None"),
    ("8", "vram_budget must be a number of GiB or None"),
    (True, "vram_budget must be a number of GiB or None"),
])
def test_bad_budgets_are_refused_naming_the_field(value, match):
    with pytest.raises(ValueError, match=match):
        BlockSwapConfig(blocks_to_swap="auto", vram_budget=value)


def test_auto_swaps_every_block_until_reconfigured():
    assert BlockSwapConfig(blocks_to_swap="auto").swapped_indices(8) == tuple(range(8))
    _, model = make_pair()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap="auto"), "cpu", allow_cpu_device=True)
    assert handle.stats().blocks_swapped == 8
    handle.reconfigure(3)
    stats = handle.stats()
    assert stats.blocks_swapped == 3 and stats.swapped_indices == BlockSwapConfig(blocks_to_swap=3).swapped_indices(8)
    assert handle.config.auto  # what the user asked for is kept
    handle.remove()


def _device_bytes_expected(model, swapped, k):
    """IO + residents + K x largest swapped block (the engine's documented invariant)."""
    total_blocks = len(model.blocks)
    io = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("blocks."))
    residents = sum(block_bytes(model, i) for i in range(total_blocks) if i not in swapped)
    largest = max((block_bytes(model, i) for i in swapped), default=0)
    return io, residents, min(k, len(swapped)) * largest


@pytest.mark.parametrize("first,then,k", [(8, 2, 2), (2, 6, 2), (5, 0, 3), (0, 8, 1)])
def test_reconfigure_between_phases_keeps_outputs_and_resizes_the_arena(first, then, k):
    """Outputs stay bitwise equal to the unswapped model across a reconfigure (deferred copies:
    any missing wait or fence reads poison or raises), and the arena follows the new layout."""
    ref, model = make_pair()
    backend = DeferredBackend()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=first, prefetch_blocks=2), "cuda",
                              backend=backend, pin_budget=PinBudget(1 << 40))
    with torch.inference_mode():
        assert torch.equal(model(*inputs(0)), ref(*inputs(0)))
        handle.reconfigure(then, prefetch_blocks=k)
        assert handle.stats().device_weight_bytes == 0  # offloaded: nothing on the device until the next phase
        detector = MasterReadDetector([u.buffer for u in handle.blocks + handle.io + handle.loose])
        with detector:
            for seed in range(3):
                assert torch.equal(model(*inputs(seed)), ref(*inputs(seed))), seed
        assert detector.reads == []
    stats = handle.stats()
    assert stats.blocks_swapped == then and stats.prefetch_blocks == min(k, then)
    io, residents, ring = _device_bytes_expected(model, set(stats.swapped_indices), k)
    assert stats.device_weight_bytes >= io + residents + ring
    assert stats.device_weight_bytes <= io + residents + ring + 256 * 64  # alignment only
    if then:
        assert stats.on_demand_loads <= 1  # the ring prefetches with the new K (one cold miss at most)
    handle.offload()
    assert backend.pending_copies() == 0
    handle.remove()


def _resident_model_without_pins():
    ref, model = make_pair()
    backend = DeferredBackend()
    budget = PinBudget(1 << 40)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=0), "cuda", backend=backend, pin_budget=budget)
    for unit in handle.blocks:  # residents unpinned, as if the budget had gone to other models
        unpin(unit.buffer)
        unit.pinned = False
    return ref, model, handle, backend, budget


def test_newly_swapped_blocks_are_staged_when_the_driver_refuses_pins():
    ref, model, handle, backend, _ = _resident_model_without_pins()
    backend.refuse_pins = 4  # the 4 newly swapped blocks; the two bounce buffers are accepted
    handle.reconfigure(4)
    assert not any(handle.blocks[i].pinned for i in handle.swapped)
    assert handle.transfers.staging_bytes >= 2 * max(handle.blocks[i].nbytes for i in handle.swapped)
    assert handle.copy_mode == "pinned+staged"
    with torch.inference_mode():
        assert torch.equal(model(*inputs(1)), ref(*inputs(1)))
    handle.remove()
    assert backend.registered == {}


def test_newly_swapped_blocks_are_pinned_within_the_budget_else_copied_pageable():
    ref, model, handle, backend, budget = _resident_model_without_pins()
    handle.reconfigure(2)
    assert all(handle.blocks[i].pinned for i in handle.swapped)
    handle.reconfigure(6)  # 4 more, but now nothing fits the budget (not even bounce buffers)
    budget.limit = budget.used
    handle.reconfigure(8)
    assert handle.copy_mode == "pageable"
    with torch.inference_mode():
        assert torch.equal(model(*inputs(2)), ref(*inputs(2)))
    handle.remove()


def test_reconfigure_during_a_forward_is_refused():
    _, model = make_pair()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=2), "cpu", allow_cpu_device=True)
    errors = []

    def inside(module, args):
        try:
            handle.reconfigure(4)
        except RuntimeError as exc:
            errors.append(str(exc))

    hook = model.blocks[0].register_forward_pre_hook(inside)
    with torch.inference_mode():
        model(*inputs(0))
    hook.remove()
    assert errors and "while a forward is running" in errors[0]
    assert handle.stats().blocks_swapped == 2
    handle.remove()


def test_reconfigure_validates_its_numbers():
    _, model = make_pair()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=2), "cpu", allow_cpu_device=True)
    with pytest.raises(ValueError, match="blocks_to_swap"):
        handle.reconfigure(-1)
    with pytest.raises(ValueError, match="prefetch_blocks"):
        handle.reconfigure(2, prefetch_blocks=0)
    handle.remove()
