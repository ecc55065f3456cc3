"""SeedVR2-1.4B distilled (`seedvr2_distill_6L_1.4B_sharp_fp16.safetensors`): 6 blocks at the 7B's
layout; recognised from keys and shapes (never the file name), loads, runs and block-swaps."""
from __future__ import annotations

import copy
import logging

import torch
from safetensors.torch import save_file

from blockswap import BlockSwapConfig, apply_block_swap
from seedvr2.dit import build_dit, detect_dit_config, load_dit
from seedvr2.dit.config import PRESETS
from seedvr2.models import inspect_checkpoint
from tiny_models import write_tiny_models

DISTILL_BLOCKS = 6  # shared/guides/checkpoints.md: "a distilled 6-layer 1.4B model" (the file's "6L")


def _tiny_distill_config():
    # The 7B family (GELU MLP, all blocks mm, pixel rope) with 6 blocks, scaled down in width.
    return PRESETS["7b"].__class__(**{**PRESETS["7b"].__dict__, "dim": 64, "heads": 2, "head_dim": 48,
                                      "mlp_hidden": 256, "txt_in_dim": 80, "emb_dim": 384, "num_layers": 6, "rope_dim": 24,
                                      "mm_layers": 6, "window_shifted": tuple(i % 2 == 1 for i in range(6))})


def test_full_size_distill_shapes_give_a_six_block_7b_family_config():
    with torch.device("meta"):
        full = build_dit(PRESETS["7b"])
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()
              if not k.startswith(tuple(f"blocks.{i}." for i in range(DISTILL_BLOCKS, 36)))}
    config = detect_dit_config(shapes)
    assert (config.num_layers, config.dim, config.mlp, config.mm_layers, config.rope) == (DISTILL_BLOCKS, 3072, "gelu",
                                                                                           DISTILL_BLOCKS, "pixel3d")


def _write_tiny_distill(folder):
    torch.manual_seed(0)
    model = build_dit(_tiny_distill_config())
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    path = folder / "seedvr2_distill_6L_1.4B_sharp_fp16.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_tiny_distill_file_loads_runs_and_swaps(tmp_path):
    path = _write_tiny_distill(tmp_path)
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


def test_the_loader_swaps_all_six_blocks_when_asked_for_more_and_says_so(tmp_path, caplog):
    """The nodes' default (16) and maximum (36) exceed the 1.4B's 6 blocks: clamped to 6, logged."""
    from seedvr2.loaders import load_dit_model  # noqa: PLC0415

    path = _write_tiny_distill(tmp_path)
    (tmp_path / "pos_emb.pt").write_bytes(write_tiny_models(tmp_path / "tiny").pos_emb.read_bytes())
    with caplog.at_level(logging.WARNING, logger="blockswap"):
        dit = load_dit_model(path.name, tmp_path, device=torch.device("cpu"), dtype="fp32", download=False,
                             block_swap={"blocks_to_swap": 36, "prefetch_blocks": 2}, cpu_block_swap=True)
    try:
        assert f"blocks_to_swap=36 but the model has {DISTILL_BLOCKS} blocks; swapping all {DISTILL_BLOCKS}" in caplog.text
        stats = dit.block_swap.stats()
        assert (stats.blocks_swapped, stats.blocks_resident) == (DISTILL_BLOCKS, 0)
    finally:
        dit.release()
