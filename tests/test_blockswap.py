"""Block-swap engine on the CPU streaming path (`allow_cpu_device=True`): the same slots, copies
and schedule as on CUDA, with synchronous copies. Outputs must equal the unswapped model bitwise."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from blockswap import BlockSwapConfig, apply_block_swap

DIM = 32


class ToyBlock(nn.Module):
    """A DiT-like block; `wide` blocks carry a second stream of weights (like SeedVR2 3B's
    first 10 "mm" blocks, which are twice the size of the shared ones)."""

    def __init__(self, wide: bool):
        super().__init__()
        self.fc1 = nn.Linear(DIM, 4 * DIM)
        self.fc2 = nn.Linear(4 * DIM, DIM)
        self.txt = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)) if wide else None
        self.register_buffer("scale", torch.rand(DIM) + 0.5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.nn.functional.gelu(self.fc1(x * self.scale + emb)))
        if self.txt is not None:
            h = h + self.txt(x)
        return x + 0.5 * h


class ToyDiT(nn.Module):
    def __init__(self, num_blocks: int = 8, wide_blocks: int = 3):
        super().__init__()
        self.vid_in = nn.Linear(6, DIM)
        self.emb_in = nn.Sequential(nn.Linear(1, DIM), nn.SiLU(), nn.Linear(DIM, DIM))
        self.blocks = nn.ModuleList(ToyBlock(i < wide_blocks) for i in range(num_blocks))
        self.vid_out = nn.Linear(DIM, 6)
        self.out_bias = nn.Parameter(torch.randn(6))  # a loose tensor on the root, read directly

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.vid_in(x)
        emb = self.emb_in(t[:, None])
        for block in self.blocks:
            h = block(h, emb)
        return self.vid_out(h) + self.out_bias


def make_pair(**kw) -> tuple[ToyDiT, ToyDiT]:
    torch.manual_seed(1)
    ref = ToyDiT(**kw).eval().requires_grad_(False)
    return ref, copy.deepcopy(ref)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 6, generator=g), torch.rand(5, generator=g)


def swap(model: nn.Module, **cfg):
    return apply_block_swap(model, BlockSwapConfig(**cfg), "cpu", allow_cpu_device=True)


def block_bytes(model: ToyDiT, i: int) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.blocks[i].parameters()) + list(model.blocks[i].buffers()))


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,match", [
    ("blocks_to_swap", -1, r"blocks_to_swap must be in >= 0"),
    ("blocks_to_swap", True, r"blocks_to_swap must be an integer"),
    ("blocks_to_swap", "lots", r"blocks_to_swap must be an integer >= 0 or .auto."),
    ("prefetch_blocks", 0, r"prefetch_blocks must be in 1\.\.8"),
    ("prefetch_blocks", 9, r"prefetch_blocks must be in 1\.\.8"),
    ("pin_memory", "yes", r"pin_memory must be one of 'auto', 'on', 'off'"),
    ("placement", "last", r"placement must be one of 'first', 'spread'"),
    ("swap_io_components", 1, r"swap_io_components must be True or False"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        BlockSwapConfig(**{field: value})


def test_config_is_immutable_and_round_trips_through_a_dict():
    cfg = BlockSwapConfig(blocks_to_swap=12, swap_io_components=True, prefetch_blocks=3, pin_memory="off",
                          placement="first", debug=True)
    with pytest.raises(AttributeError):
        cfg.blocks_to_swap = 3  # type: ignore[misc]
    assert BlockSwapConfig.from_dict(cfg.to_dict()) == cfg
    assert BlockSwapConfig.coerce(cfg.to_dict()) == cfg
    assert BlockSwapConfig.coerce(None).blocks_to_swap == 0
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['blocks'\]"):
        BlockSwapConfig.from_dict({"blocks": 3})


def test_placement_swaps_exactly_n_blocks():
    assert BlockSwapConfig(blocks_to_swap=4, placement="first").swapped_indices(32) == (0, 1, 2, 3)
    assert BlockSwapConfig(blocks_to_swap=4, placement="spread").swapped_indices(32) == (4, 12, 20, 28)
    for n in range(0, 37):
        for placement in ("first", "spread"):
            idx = BlockSwapConfig(blocks_to_swap=n, placement=placement).swapped_indices(36)
            assert len(set(idx)) == len(idx) == n and all(0 <= i < 36 for i in idx)


def test_more_blocks_than_the_model_has_are_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="blockswap"):
        idx = BlockSwapConfig(blocks_to_swap=40).swapped_indices(8)
    assert idx == tuple(range(8))
    assert "blocks_to_swap=40 but the model has 8 blocks" in caplog.text


# --- placement semantics ----------------------------------------------------------------------

def test_apply_leaves_zero_block_bytes_on_the_device():
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=3)
    stats = handle.stats()
    assert stats.device_weight_bytes == 0
    assert handle.placement() == ["offload"] * 8
    assert stats.blocks_swapped == 3 and stats.blocks_resident == 5


def test_residents_load_on_first_forward_and_stay_swapped_blocks_only_while_used():
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=3, placement="first", prefetch_blocks=2)
    seen_during_use = {}
    for i in range(8):  # a child's hook runs inside the block's forward
        model.blocks[i].fc1.register_forward_pre_hook(lambda m, a, i=i: seen_during_use.__setitem__(i, handle.placement()[i]))
    model(*inputs())
    assert seen_during_use == {i: "device" for i in range(8)}
    assert handle.placement() == ["offload"] * 3 + ["device"] * 5
    stats = handle.stats()
    largest = max(block_bytes(model, i) for i in range(3))
    residents = sum(block_bytes(model, i) for i in range(3, 8))
    # Slots are 256-byte aligned per tensor; allow that slack.
    assert residents + 2 * largest <= stats.device_weight_bytes <= residents + 2 * largest + 64 * 1024


@pytest.mark.parametrize("n,k,placement", [(0, 2, "first"), (3, 1, "first"), (3, 2, "spread"),
                                           (5, 3, "spread"), (8, 2, "first"), (8, 8, "spread"), (20, 2, "first")])
def test_outputs_equal_unswapped_bitwise(n, k, placement):
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=n, prefetch_blocks=k, placement=placement)
    with torch.no_grad():
        for seed in range(3):  # several forwards: exercises wrap-around prefetch into the next one
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
    handle.remove()


def test_wrap_around_prefetch_leaves_no_on_demand_loads_after_the_first_forward():
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=6, prefetch_blocks=2, placement="spread")
    model(*inputs())
    first = handle.stats()
    assert first.on_demand_loads == 0  # the phase's first forward primes the ring in execution order
    for seed in range(1, 4):
        model(*inputs(seed))
    stats = handle.stats()
    assert stats.on_demand_loads == 0
    swapped_bytes = sum(handle.blocks[i].nbytes for i in handle.swapped)
    assert stats.bytes_streamed_last_forward == swapped_bytes == stats.bytes_streamed_per_forward


def test_all_swapped_blocks_fit_in_the_ring_are_loaded_once():
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=2, prefetch_blocks=4)
    for seed in range(3):
        model(*inputs(seed))
    assert handle.stats().block_loads == 2


def test_blocks_of_different_sizes_share_slots_of_the_largest():
    ref, model = make_pair(num_blocks=8, wide_blocks=4)
    handle = swap(model, blocks_to_swap=8, prefetch_blocks=3)
    assert block_bytes(model, 0) > 1.9 * block_bytes(model, 7)
    for seed in range(3):
        assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
    io = sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if not n.startswith("blocks."))
    stats = handle.stats()
    assert stats.device_weight_bytes_peak <= io + 3 * max(u.nbytes for u in handle.blocks) + 4096


def test_swap_io_components_keeps_io_off_the_device_between_forwards():
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=2, swap_io_components=True)
    assert torch.equal(model(*inputs()), ref(*inputs()))
    assert model.vid_in.weight.data_ptr() == handle.io[0].master_views[0].data_ptr()
    assert model.emb_in[0].weight.data_ptr() == handle.io[1].master_views[0].data_ptr()
    assert handle.stats().io_swapped
    # Without it, IO stays on the device after use.
    _, other = make_pair()
    h2 = swap(other, blocks_to_swap=2)
    other(*inputs())
    assert other.vid_in.weight.data_ptr() != h2.io[0].master_views[0].data_ptr()


def test_remove_restores_the_model_exactly():
    ref, model = make_pair()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    param_ids = [id(p) for p in model.parameters()]
    handle = swap(model, blocks_to_swap=3, swap_io_components=True)
    model(*inputs())
    units = handle.blocks + handle.io + handle.loose
    handle.remove()
    handle.remove()  # idempotent
    assert all(u.on_master() for u in units)
    assert not handle.stats().active and "removed" in handle.stats().summary()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype for k in before)
    assert [id(p) for p in model.parameters()] == param_ids
    assert all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
        assert not {"forward", "to", "cuda", "cpu", "_apply"} & set(vars(m))
    assert not hasattr(model, "_blockswap_handle")
    assert torch.equal(model(*inputs()), ref(*inputs()))
    model.half()  # ordinary conversions work again
    swap(model, blocks_to_swap=1).remove()  # and block swap can be applied again


def test_stray_moves_are_ignored_and_conversions_refused_while_active(caplog):
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=3)
    with caplog.at_level(logging.WARNING, logger="blockswap"):
        assert model.to("cpu") is model
        assert model.blocks[4].cpu() is model.blocks[4]
    assert "ignoring a device move" in caplog.text
    with pytest.raises(RuntimeError, match="BlockSwap is active on this model.*handle.remove"):
        model.half()
    with pytest.raises(RuntimeError, match="dtype/format change"):
        model.to(torch.float16)
    with pytest.raises(RuntimeError, match="already applied"):
        apply_block_swap(model, BlockSwapConfig(), "cpu", allow_cpu_device=True)
    assert torch.equal(model(*inputs()), ref(*inputs()))
    handle.remove()


def test_cpu_device_without_test_mode_is_a_logged_no_op(caplog):
    ref, model = make_pair()
    with caplog.at_level(logging.INFO, logger="blockswap"):
        handle = apply_block_swap(model, {"blocks_to_swap": 4}, "cpu")
    assert "does nothing" in caplog.text
    assert not handle.stats().active and "inactive" in handle.stats().summary()
    assert torch.equal(model(*inputs()), ref(*inputs()))
    assert "forward" not in vars(model.blocks[0])
    handle.offload()
    handle.remove()


def test_an_error_inside_a_block_leaves_the_engine_consistent():
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=4, prefetch_blocks=2, placement="first")
    seen = []

    def boom(module, args):  # a child's hook: runs inside the swapped block's wrapped forward
        seen.append(handle.placement()[2])
        raise KeyboardInterrupt("user cancelled")

    h = model.blocks[2].fc2.register_forward_pre_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        model(*inputs())
    h.remove()
    assert seen == ["device"]  # raised while block 2 was bound to its slot
    assert handle.placement()[:4] == ["offload"] * 4
    for seed in range(2):
        assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))


def test_blocks_run_out_of_order_still_compute_correctly():
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=8, prefetch_blocks=2)
    x, t = inputs()
    emb = model.emb_in(t[:, None])
    order = [5, 0, 7, 3, 3, 1]
    h_swap, h_ref = model.vid_in(x), ref.vid_in(x)
    for i in order:
        h_swap, h_ref = model.blocks[i](h_swap, emb), ref.blocks[i](h_ref, ref.emb_in(t[:, None]))
    assert torch.equal(h_swap, h_ref)
    assert handle.stats().on_demand_loads >= 3


def test_offload_frees_the_device_and_the_next_forward_reloads():
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=3)
    model(*inputs())
    assert handle.stats().device_weight_bytes > 0
    handle.offload()
    assert handle.stats().device_weight_bytes == 0
    assert handle.placement() == ["offload"] * 8
    assert torch.equal(model(*inputs(1)), ref(*inputs(1)))


def test_works_under_inference_mode_and_in_half_precision():
    torch.manual_seed(2)
    ref = ToyDiT().to(torch.bfloat16).eval().requires_grad_(False)
    model = copy.deepcopy(ref)
    handle = swap(model, blocks_to_swap=5)
    x, t = (v.to(torch.bfloat16) for v in inputs())
    with torch.inference_mode():
        out = model(x, t)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref(x, t))
    handle.remove()
    assert not any(p.is_inference() for p in model.parameters())


def test_meta_weights_are_refused_with_a_clear_message():
    with torch.device("meta"):
        model = ToyDiT()
    with pytest.raises(ValueError, match="is on the meta device; load the weights"):
        swap(model, blocks_to_swap=1)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match=r"non-empty nn.ModuleList at 'blocks'"):
        swap(nn.Sequential(nn.Linear(2, 2)), blocks_to_swap=1)


def test_debug_reports_transfer_time():
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=3, debug=True)
    model(*inputs())
    stats = handle.stats()
    assert stats.transfer_ms is not None and stats.transfer_ms > 0 and stats.stall_ms == 0
    assert "transfers" in stats.summary()
