"""The CUDA path's ordering, pinning and staging rules, on the CPU: the engine runs against
`DeferredBackend` (copies land only when waited for, destinations poisoned until then, every copy
fenced after the last compute use of its destination). Breaking any rule fails a test here."""
from __future__ import annotations

import pytest
import torch

from blockswap import BlockSwapConfig, apply_block_swap
from blockswap.pinning import PinBudget
from blockswap_double import DeferredBackend, MasterReadDetector, OrderingError
from test_blockswap import ToyDiT, block_bytes, inputs, make_pair


def deferred(model, budget=None, refuse_pins=0, **cfg):
    backend = DeferredBackend(refuse_pins=refuse_pins)
    budget = budget or PinBudget(1 << 40)
    handle = apply_block_swap(model, BlockSwapConfig(**cfg), "cuda", backend=backend, pin_budget=budget)
    return handle, backend, budget


def masters(handle):
    return [u.buffer for u in handle.blocks + handle.io + handle.loose]


CONFIGS = [dict(blocks_to_swap=8, prefetch_blocks=2), dict(blocks_to_swap=3, prefetch_blocks=1, placement="first"),
           dict(blocks_to_swap=5, prefetch_blocks=3), dict(blocks_to_swap=4, swap_io_components=True),
           dict(blocks_to_swap=0)]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_deferred_copies_give_the_unswapped_output_over_phases(cfg):
    """Compute must wait for every copy (else it reads poison); each phase re-fences its arena."""
    ref, model = make_pair()
    handle, backend, _ = deferred(model, **cfg)
    with torch.inference_mode():
        for phase in range(2):
            handle.load()
            for seed in range(3):
                assert torch.equal(model(*inputs(seed)), ref(*inputs(seed))), (phase, seed)
            handle.offload()
            assert backend.pending_copies() == 0
    handle.remove()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_compute_never_reads_a_host_master(cfg):
    _, model = make_pair()
    handle, _, _ = deferred(model, **cfg)
    detector = MasterReadDetector(masters(handle))
    with torch.inference_mode(), detector:
        for seed in range(3):
            model(*inputs(seed))
    assert detector.reads == []
    handle.remove()


def test_weights_are_never_copied_back_to_the_host():
    _, model = make_pair()
    handle, _, _ = deferred(model, blocks_to_swap=6, swap_io_components=True)
    versions = [b._version for b in masters(handle)]
    snapshot = [b.clone() for b in masters(handle)]
    with torch.inference_mode():
        for seed in range(3):
            model(*inputs(seed))
    handle.offload()
    assert [b._version for b in masters(handle)] == versions
    assert all(torch.equal(a, b) for a, b in zip(masters(handle), snapshot))
    handle.remove()


def test_nothing_is_copied_before_the_first_forward_and_load_only_reserves():
    _, model = make_pair()
    handle, backend, _ = deferred(model, blocks_to_swap=3)
    assert handle.stats().device_weight_bytes == 0 and backend.copies_issued == 0
    handle.load()
    assert backend.copies_issued == 0 and handle.placement() == ["offload"] * 8
    reserved = handle.stats().device_weight_bytes
    residents = sum(block_bytes(model, i) for i in range(8) if i not in handle.swapped)
    assert reserved >= residents + 2 * max(block_bytes(model, i) for i in handle.swapped)
    with torch.inference_mode():
        model(*inputs())
    # one copy per resident unit (IO, root, 5 blocks) and per swapped block, plus the next
    # forward's first K=2 swapped blocks (wrap-around)
    assert backend.copies_issued == len(handle.residents) + 3 + 2
    assert handle.stats().device_weight_bytes == reserved  # one arena, no growth during the forward
    handle.remove()


def test_the_arena_is_allocated_once_per_phase_before_activations():
    _, model = make_pair()
    handle, backend, _ = deferred(model, blocks_to_swap=4)
    allocations = []
    original = backend.allocate
    backend.allocate = lambda n: allocations.append(n) or original(n)
    with torch.inference_mode():
        handle.load()
        for seed in range(3):
            model(*inputs(seed))
        handle.offload()
    assert len(allocations) == 1
    handle.remove()


def test_pin_on_pins_every_streamed_block_past_the_budget():
    _, model = make_pair()
    budget = PinBudget(0)
    handle, backend, _ = deferred(model, budget=budget, blocks_to_swap=5, pin_memory="on")
    swapped = [handle.blocks[i] for i in handle.swapped]
    assert all(backend.is_registered(u.buffer) and u.pinned for u in swapped)
    assert handle.stats().copy_mode == "pinned"
    assert budget.used == sum(u.nbytes for u in swapped)  # counted even past the limit
    handle.remove()
    assert backend.registered == {} and budget.used == 0


def test_auto_pins_streamed_blocks_then_residents_within_one_process_wide_budget():
    block = block_bytes(ToyDiT(), 0)
    budget = PinBudget(int(6.5 * block))  # two models share it
    _, first = make_pair()
    _, second = make_pair()
    h1, b1, _ = deferred(first, budget=budget, blocks_to_swap=4)
    h2, b2, _ = deferred(second, budget=budget, blocks_to_swap=4)
    pinned = sum(b1.registered.values()) + sum(b2.registered.values())
    assert pinned == budget.used <= budget.limit
    assert all(h1.blocks[i].pinned for i in h1.swapped)  # streamed blocks first
    h1.remove()
    h2.remove()
    assert budget.used == 0 and b1.registered == {} and b2.registered == {}


def test_residents_are_pinned_when_there_is_room():
    _, model = make_pair()
    handle, backend, _ = deferred(model, blocks_to_swap=2)
    assert all(backend.is_registered(r.unit.buffer) for r in handle.residents.values())
    handle.remove()
    assert backend.registered == {}


def test_staged_copies_wait_for_their_bounce_buffer():
    """Every master refused by the driver: copies go through 2 pinned bounce buffers; with K=3
    the third load reuses a buffer whose copy has not landed yet unless the stager waits."""
    ref, model = make_pair()
    handle, backend, _ = deferred(model, refuse_pins=8, blocks_to_swap=8, prefetch_blocks=3)
    assert handle.stats().copy_mode == "staged"
    with torch.inference_mode():
        for seed in range(3):
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
    handle.remove()
    assert backend.registered == {}


def test_staging_is_all_or_nothing():
    ref, model = make_pair()
    # the 8 swapped masters refused, 4 residents (3 IO modules, the root's loose tensor) pinned,
    # then the first bounce buffer pinned and the second refused
    backend = DeferredBackend(refuse_pins=8)
    original = backend.register_host
    calls = []

    def second_staging_refused(buffer):
        calls.append(buffer)
        return False if len(calls) == 14 else original(buffer)

    backend.register_host = second_staging_refused
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=8), "cuda", backend=backend,
                              pin_budget=PinBudget(1 << 40))
    assert len(calls) == 14 and handle.stats().copy_mode == "pageable"
    assert handle.transfers.staging_bytes == 0
    assert not any(backend.is_registered(b) for b in calls[12:14])
    with torch.inference_mode():
        assert torch.equal(model(*inputs()), ref(*inputs()))
    handle.remove()


def test_offload_waits_for_copies_in_flight_before_dropping_the_arena():
    _, model = make_pair()
    handle, backend, _ = deferred(model, blocks_to_swap=6, prefetch_blocks=2)
    with torch.inference_mode():
        model(*inputs())
    assert backend.pending_copies() > 0  # the wrap-around prefetch of the next forward
    handle.offload()  # DeferredBackend.free raises if a copy into the arena is still queued
    assert backend.pending_copies() == 0 and handle.stats().device_weight_bytes == 0
    handle.remove()


def test_an_interrupt_inside_a_block_issues_no_new_copy_and_recovers():
    ref, model = make_pair()
    handle, backend, _ = deferred(model, blocks_to_swap=8, prefetch_blocks=2, placement="first")
    issued = []

    def boom(module, args):
        issued.append(backend.copies_issued)
        raise KeyboardInterrupt("cancel")

    h = model.blocks[3].fc1.register_forward_pre_hook(boom)
    with torch.inference_mode(), pytest.raises(KeyboardInterrupt):
        model(*inputs())
    h.remove()
    assert backend.copies_issued == issued[0]
    assert handle.placement() == ["offload"] * 8
    with torch.inference_mode():
        for seed in range(2):
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
    handle.remove()


def test_bytes_streamed_per_forward_is_the_steady_state():
    _, model = make_pair()
    fits, _, _ = deferred(model, blocks_to_swap=2, prefetch_blocks=4)
    with torch.inference_mode():
        for seed in range(3):
            model(*inputs(seed))
    assert fits.stats().bytes_streamed_per_forward == 0 == fits.stats().bytes_streamed_last_forward
    fits.remove()
    _, other = make_pair()
    streams, _, _ = deferred(other, blocks_to_swap=6, prefetch_blocks=2)
    with torch.inference_mode():
        for seed in range(3):
            other(*inputs(seed))
    swapped = sum(streams.blocks[i].nbytes for i in streams.swapped)
    assert streams.stats().bytes_streamed_per_forward == swapped == streams.stats().bytes_streamed_last_forward
    streams.remove()


def test_the_double_catches_an_unfenced_copy():
    """The checker itself: a copy into memory compute used, with no fence after that use."""
    backend = DeferredBackend()
    buf = backend.allocate(64)
    with pytest.raises(OrderingError, match="no 'free' fence"):
        backend.copy_async(buf, torch.zeros(64, dtype=torch.uint8), "side")
