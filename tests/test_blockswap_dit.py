"""Block swap on the real SeedVR2 DiTs (tiny golden weights, CPU streaming path): the swapped
model gives bitwise the unswapped output, and still matches the official fixture."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from blockswap import BlockSwapConfig, apply_block_swap
from seedvr2.dit import load_dit

FP32_ATOL = 1e-4  # the golden README's tolerance for fp32 attention


@pytest.mark.parametrize("family", ["3b", "7b"])
@pytest.mark.parametrize("cfg", [dict(blocks_to_swap=4, prefetch_blocks=2),
                                 dict(blocks_to_swap=2, prefetch_blocks=1, placement="first", swap_io_components=True),
                                 dict(blocks_to_swap=3, prefetch_blocks=3, placement="spread")])
def test_swapped_dit_equals_unswapped_and_the_fixture(golden_dir, family, cfg):
    ref = load_dit(golden_dir / f"dit{family}_tiny_weights.safetensors", compute_dtype=torch.float32)
    model = copy.deepcopy(ref)
    handle = apply_block_swap(model, BlockSwapConfig(**cfg), "cpu", allow_cpu_device=True)
    io = load_file(golden_dir / f"dit{family}_tiny_io.safetensors")
    batch2 = load_file(golden_dir / f"dit{family}_tiny_batch2_io.safetensors")
    keys = ("vid", "txt", "vid_shape", "txt_shape", "timestep")
    with torch.no_grad():
        for data in (io, batch2, io):  # three forwards: the ring wraps around between them
            out = model(*(data[k] for k in keys))
            assert torch.equal(out, ref(*(data[k] for k in keys)))
            assert (out - data["out_fp32"]).abs().max() < FP32_ATOL
    stats = handle.stats()
    assert stats.forwards == 3 and stats.on_demand_loads == 0
    handle.remove()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
