"""Block swap on a real CUDA device: placement in VRAM, pinned masters, bitwise equality with the
resident model, and event ordering under injected delays (a missing fence shows up as a wrong
output). Skipped without CUDA; run on a GPU machine with `python -m pytest tests/test_blockswap_cuda.py`."""
from __future__ import annotations

import copy

import pytest
import torch

from blockswap import BlockSwapConfig, apply_block_swap
from blockswap.backend import CudaBackend
from blockswap.pinning import PIN_BUDGET
from test_blockswap import ToyDiT, inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_inputs(seed: int = 0):
    return tuple(t.cuda() for t in inputs(seed))


def pair():
    torch.manual_seed(3)
    ref = ToyDiT(num_blocks=12, wide_blocks=4).eval().requires_grad_(False)
    return ref.cuda(), copy.deepcopy(ref).cpu()


def test_apply_puts_nothing_on_the_gpu_and_pins_swapped_masters():
    _, model = pair()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=6), "cuda")
    assert torch.cuda.memory_allocated() == before
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(handle.blocks[i].buffer.is_pinned() for i in handle.swapped)
    assert handle.stats().copy_mode == "pinned"
    model(*cuda_inputs())
    resident = [i for i in range(12) if i not in handle.swapped]
    assert all(model.blocks[i].fc1.weight.device.type == "cuda" for i in resident)
    assert all(model.blocks[i].fc1.weight.device.type == "cpu" for i in handle.swapped)
    units = handle.blocks
    handle.remove()
    assert not any(u.buffer.is_pinned() for u in units)
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("pin", ["auto", "off"])
def test_outputs_match_resident_bitwise(k, pin):
    ref, model = pair()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=12, prefetch_blocks=k, pin_memory=pin), "cuda")
    with torch.inference_mode():
        for seed in range(4):
            assert torch.equal(model(*cuda_inputs(seed)), ref(*cuda_inputs(seed)))
    assert handle.stats().on_demand_loads == 0
    handle.remove()


def test_ordering_holds_when_copies_and_compute_are_delayed(monkeypatch):
    """Slow copies (compute must wait for `ready`) and slow compute (copies must wait for `free`)."""
    ref, model = pair()
    original = CudaBackend.copy_async

    def slow_copy(self, dst, src, stream):
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2_000_000)
        return original(self, dst, src, stream)

    monkeypatch.setattr(CudaBackend, "copy_async", slow_copy)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=8, prefetch_blocks=2, placement="spread"), "cuda")
    for block in model.blocks:
        block.fc2.register_forward_pre_hook(lambda m, a: torch.cuda._sleep(2_000_000))
    with torch.inference_mode():
        for seed in range(3):
            expected = ref(*cuda_inputs(seed))
            assert torch.equal(model(*cuda_inputs(seed)), expected)
    handle.remove()


def test_offload_returns_the_weights_memory():
    _, model = pair()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=4, debug=True), "cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    model(*cuda_inputs())
    stats = handle.stats()
    assert stats.device_weight_bytes > 0 and stats.transfer_ms > 0 and stats.stall_ms >= 0
    handle.offload()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= base
    handle.remove()


def test_past_the_pin_budget_blocks_are_staged_and_still_exact(monkeypatch, caplog):
    ref, model = pair()
    block = sum(t.numel() * t.element_size() for t in model.blocks[0].state_dict().values())
    monkeypatch.setattr(PIN_BUDGET, "_limit", PIN_BUDGET.used + 3 * block)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=12, prefetch_blocks=2), "cuda")
    stats = handle.stats()
    assert stats.copy_mode == "pinned+staged" and 0 < stats.pinned_bytes <= 3 * block
    assert "not pinned (the pin budget" in caplog.text
    assert PIN_BUDGET.used <= PIN_BUDGET.limit
    with torch.inference_mode():
        for seed in range(3):
            assert torch.equal(model(*cuda_inputs(seed)), ref(*cuda_inputs(seed)))
    handle.remove()
