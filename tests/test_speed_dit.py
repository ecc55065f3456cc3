"""torch.compile of the DiT blocks under block swap (CPU mode), and the attention backend dispatch.

The compile test uses dynamo's ``eager`` backend: what is under test is that the block body is
traced between block swap's hooks (which stay out of the graph), that streamed weights are read
as graph inputs (a graph that baked one block's weights in would give every block the same
output), and that one compiled graph serves every block of one structure. Inductor's kernels are
the GPU bench's business (bench/gpu_check.py); tracing once costs a few seconds on this CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from blockswap import BlockSwapConfig, apply_block_swap
from seedvr2.dit import attention
from seedvr2.dit.model import build_dit, compile_blocks
from seedvr2.speed import SpeedOptions, apply_speed


def _uniform_dit() -> torch.nn.Module:
    """Four blocks of one structure (per-stream weights, regular windows), random O(1) weights."""
    from seedvr2.dit.config import PRESETS

    cfg = dataclasses.replace(PRESETS["3b"], dim=64, txt_in_dim=80, heads=2, head_dim=32, num_layers=4, mm_layers=4,
                              mlp_hidden=128, rope_dim=32, last_block_vid_only=False, window_shifted=(False,) * 4,
                              emb_dim=384)
    model = build_dit(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]) if p.ndim > 1
                    else 1 + 0.2 * torch.randn(p.shape, generator=gen))
    model.compute_dtype = torch.float32
    return model.eval()


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    t, h, w = 1, 4, 6
    return (torch.randn(t * h * w, 33, generator=gen), torch.randn(5, 80, generator=gen), torch.tensor([[t, h, w]]),
            torch.tensor([[5]]), torch.tensor([1000.0]))


def test_compiled_blocks_under_block_swap_equal_eager_with_one_compile_for_all_blocks():
    ref = _uniform_dit()
    model = copy.deepcopy(ref)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=2, prefetch_blocks=1), "cpu", allow_cpu_device=True)
    compile_blocks(model, True, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            for seed in (0, 1):  # two forwards: swapped blocks streamed in again, same graph
                data = _inputs(seed)
                torch.testing.assert_close(model(*data), ref(*data), rtol=1e-5, atol=1e-5)
        assert counters["frames"]["ok"] == 1  # one trace served 4 blocks x 2 forwards
        assert handle.stats().forwards == 2
        compile_blocks(model, False)
        assert all(block.compiled_body is None for block in model.blocks)
    finally:
        handle.remove()
        torch._dynamo.reset()


def test_apply_speed_switches_dit_compile_on_and_off():
    model = _uniform_dit()
    apply_speed(SpeedOptions(dit_compile=True), dit=model)
    assert all(block.compiled_body is not None for block in model.blocks)
    assert len({id(block.compiled_body) for block in model.blocks}) == 1  # one shared compiled function
    apply_speed(SpeedOptions(), dit=model)
    assert all(block.compiled_body is None for block in model.blocks)


def test_auto_attention_picks_flash_attn_only_on_a_capable_gpu_with_the_package(monkeypatch):
    import sys
    import types

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert attention.resolve_attention_backend("auto", cuda) == "flash_attn"
    assert attention.resolve_attention_backend("auto", torch.device("cpu")) == "sdpa"
    assert attention.resolve_attention_backend("sdpa", cuda) == "sdpa"  # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert attention.resolve_attention_backend("auto", cuda) == "sdpa"  # flash-attn 2 needs Ampere
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    assert attention.resolve_attention_backend("auto", cuda) == "sdpa"


def test_auto_attention_runs_sdpa_on_the_cpu():
    model = _uniform_dit()
    data = _inputs(0)
    with torch.no_grad():
        assert torch.equal(model(*data, attention="auto"), model(*data, attention="sdpa"))
    with pytest.raises(ValueError, match="choose one of"):
        model(*data, attention="fast")


def test_cli_compile_flag_compiles_the_loaded_dit(monkeypatch):
    from types import SimpleNamespace

    import seedvr2.cli as cli

    dit = _uniform_dit()
    monkeypatch.setattr(cli, "load_dit_model", lambda *a, **kw: SimpleNamespace(module=dit, device=torch.device("cpu")))
    monkeypatch.setattr(cli, "load_vae_model", lambda *a, **kw: SimpleNamespace(module=None, tiling=kw["tiling"]))
    monkeypatch.setattr(cli, "upscale_models", lambda d, v: (d, v))
    cli.load_models(cli.build_parser().parse_args(["in.png"]), torch.device("cpu"))
    assert all(block.compiled_body is None for block in dit.blocks)  # off by default
    cli.load_models(cli.build_parser().parse_args(["in.png", "--compile"]), torch.device("cpu"))
    assert all(block.compiled_body is not None for block in dit.blocks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inductor_blocks_under_block_swap_match_eager():
    """On a GPU (bench/gpu_check.py): inductor-compiled blocks, half of them streamed, fp32."""
    ref = _uniform_dit().cuda()
    model = _uniform_dit()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=2, prefetch_blocks=1), "cuda")
    compile_blocks(model, True)
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch.no_grad():
            for seed in (0, 1):
                data = _inputs(seed)
                out = model(*(t.cuda() for t in data))
                torch.testing.assert_close(out, ref(*(t.cuda() for t in data)), rtol=1e-4, atol=1e-4)
        assert counters["frames"]["ok"] == 1
    finally:
        handle.remove()
        torch._dynamo.reset()
