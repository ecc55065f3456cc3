"""SeedVR2-1.4B distilled (`seedvr2_distill_6L_1.4B_sharp_fp16.safetensors`): 6 blocks at the 7B's
layout; recognised from keys and shapes (never the file name), loads, runs and block-swaps."""
from __future__ import annotations

import copy

import torch
from safetensors.torch import save_file

from blockswap import BlockSwapConfig, apply_block_swap
from seedvr2.dit import build_dit, detect_dit_config, load_dit
from seedvr2.dit.config import PRESETS
from seedvr2.models import inspect_checkpoint


def _tiny_distill_config():
    # The 7B family (GELU MLP, all blocks mm, pixel rope) with 6 blocks, scaled down in width.
    return PRESETS["7b"].__class__(**{**PRESETS["7b"].__dict__, "dim": 64, "heads": 2, "head_dim": 48,
                                      "mlp_hidden": 256, "txt_in_dim": 80, "emb_dim": 384, "num_layers": 6, "rope_dim": 24,
                                      "mm_layers": 6, "window_shifted": tuple(i % 2 == 1 for i in range(6))})


def test_full_size_distill_shapes_give_a_six_block_7b_family_config():
    with torch.device("meta"):
        full = build_dit(PRESETS["7b"])
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items() if not k.startswith(tuple(f"blocks.{i}." for i in range(6, 36)))}
    config = detect_dit_config(shapes)
    assert (config.num_layers, config.dim, config.mlp, config.mm_layers, config.rope) == (6, 3072, "gelu", 6, "pixel3d")


def test_tiny_distill_file_loads_runs_and_swaps(tmp_path):
    torch.manual_seed(0)
    model = build_dit(_tiny_distill_config())
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path / "seedvr2_distill_6L_1.4B_sharp_fp16.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}, path)
    layout = inspect_checkpoint(path)
    assert (layout.family, layout.num_blocks, layout.dim) == ("7b", 6, 64)
    loaded = load_dit(path, compute_dtype=torch.float32)
    assert len(loaded.blocks) == 6
    vid = torch.randn(1 * 4 * 4, 33)
    txt = torch.randn(5, 80)
    args = (vid, txt, torch.tensor([[1, 4, 4]]), torch.tensor([[5]]), torch.tensor([500.0]))
    with torch.no_grad():
        ref = loaded(*args)
        swapped = copy.deepcopy(loaded)
        handle = apply_block_swap(swapped, BlockSwapConfig(blocks_to_swap=6, prefetch_blocks=2), "cpu",
                                  allow_cpu_device=True)
        assert torch.equal(swapped(*args), ref) and torch.isfinite(ref).all()
    assert handle.stats().forwards == 1
    handle.remove()
