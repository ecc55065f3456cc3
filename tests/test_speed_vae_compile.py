"""``SpeedOptions.vae_compile``: the VAE's norm -> SiLU -> time-pad steps compiled by inductor (CPU).

What users depend on, each asserted here:

* the compiled path really runs (a counting wrapper around inductor counts graphs and calls) and
  equals eager within fp32 rounding, for encode and decode, with tiles and temporal chunks, under
  ``torch.inference_mode()`` as ComfyUI runs nodes, and in bf16 within bf16 rounding;
* one shared compiled function: a whole encode + decode compiles a handful of graphs (one per
  call structure), not one per block, and other tile/clip sizes reuse them (dynamic shapes);
* the switch is read at each call (``vae.speed``): off again gives the eager result bit for bit
  and no compiled call.

Compile time is what this costs: the module compiles ~6 small graphs with inductor (C++ via gcc),
tens of seconds on a 2-core CI box when inductor's disk cache is cold, a few seconds when warm.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo

from seedvr2.speed import SpeedOptions, apply_speed
from seedvr2.vae import build_vae
from seedvr2.vae import compiled
from tiny_models import VAE_TINY_CONFIG

GRAPH_BOUND = 6  # first chunk: t=1, t>1; later chunks: t=1, t>1, a frame sliced from a chunk; + bf16


class CountingInductor:
    """A torch.compile backend: inductor, counting the graphs it compiles and the calls they get."""

    def __init__(self) -> None:
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        compiled_fn = compile_fx(gm, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled_fn(*args)

        return run


@pytest.fixture(scope="module")
def backend():
    """Inductor with counters, as `seedvr2.vae.compiled`'s backend for this module only."""
    counting = CountingInductor()
    saved = compiled.BACKEND
    torch._dynamo.reset()
    compiled.BACKEND = counting
    try:
        yield counting
    finally:
        compiled.BACKEND = saved
        compiled._KERNELS.pop(counting, None)
        torch._dynamo.reset()


def _random_vae(dtype: torch.dtype = torch.float32):
    model = build_vae(VAE_TINY_CONFIG)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def vae():
    return _random_vae()


def _clip(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _roundtrip(vae, x, options: SpeedOptions, **kw):
    apply_speed(options, vae=vae)
    with torch.inference_mode():  # ComfyUI runs nodes in inference mode
        mean = vae.encode(x, **kw).mean
        return mean, vae.decode(mean, **kw)


TILED_CHUNKED = dict(tile_size=32, tile_overlap=8, chunk_frames=4)


@pytest.fixture(scope="module")
def tiled(vae, backend):
    """Eager, then compiled: 9 frames 48x40 (WxH) in 2x2 tiles of unequal width and 3 temporal
    chunks; the first compiled run, so it compiles every structure an encode + decode has."""
    x = _clip(9, 40, 48)
    ref = _roundtrip(vae, x, SpeedOptions.eager(), **TILED_CHUNKED)
    calls = backend.calls
    fast = _roundtrip(vae, x, SpeedOptions(vae_compile=True), **TILED_CHUNKED)
    return dict(ref=ref, fast=fast, calls=backend.calls - calls, graphs=backend.graphs)


def test_compiled_vae_matches_eager_with_tiles_and_chunks(tiled):
    assert tiled["calls"] > 100  # every norm -> conv step of every tile and chunk went through a graph
    assert 0 < tiled["graphs"] <= GRAPH_BOUND  # a few structures, not one graph per block (~50 norm -> conv steps)
    for a, b in zip(tiled["fast"], tiled["ref"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fp32: the fused norm sums in its own order


def test_other_sizes_reuse_the_compiled_graphs(vae, backend, tiled):
    """Dynamic shapes: another frame size, tile size and clip length compile nothing new."""
    graphs, calls = backend.graphs, backend.calls
    x = _clip(13, 56, 40, seed=2)
    kw = dict(tile_size=40, tile_overlap=8, chunk_frames=8)
    fast = _roundtrip(vae, x, SpeedOptions(vae_compile=True), **kw)
    assert backend.graphs == graphs and backend.calls > calls
    ref = _roundtrip(vae, x, SpeedOptions.eager(), **kw)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_switching_off_is_eager_bit_for_bit(vae, backend):
    x = _clip(5, 32, 32)
    kw = dict(tile_size=None, chunk_frames=4)
    ref = _roundtrip(vae, x, SpeedOptions.eager(), **kw)
    calls = backend.calls
    _roundtrip(vae, x, SpeedOptions(vae_compile=True), **kw)
    assert backend.calls > calls
    assert compiled.active() is None  # the scope ends with the call
    calls = backend.calls
    off = _roundtrip(vae, x, SpeedOptions(), **kw)  # the same cached model, switched back
    assert backend.calls == calls
    for a, b in zip(off, ref):
        assert torch.equal(a, b)


def test_compiled_vae_in_bf16(vae, backend):
    """bf16: compiled as close to the fp32 result as eager bf16 is (the fused kernel rounds once
    after norm + SiLU where eager rounds after each)."""
    bf16 = _random_vae(torch.bfloat16)
    x = _clip(5, 32, 32)
    kw = dict(tile_size=None, chunk_frames=None)
    truth = _roundtrip(vae, x, SpeedOptions.eager(), **kw)
    ref = _roundtrip(bf16, x.bfloat16(), SpeedOptions.eager(), **kw)
    calls = backend.calls
    fast = _roundtrip(bf16, x.bfloat16(), SpeedOptions(vae_compile=True), **kw)
    assert backend.calls > calls
    for a, b, t in zip(fast, ref, truth):
        assert a.dtype == torch.bfloat16
        err_fast, err_eager = (a.float() - t).abs().mean(), (b.float() - t).abs().mean()
        assert err_fast <= 1.25 * err_eager, (err_fast, err_eager)
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0.25)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_vae_compile_matches_eager():
    """On a GPU (bench/gpu_check.py runs `pytest -k cuda`): inductor's Triton kernels against
    eager, fp32 without TF32, tiles and chunks."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu = _random_vae().cuda()
    x = _clip(9, 40, 48).cuda()
    try:
        ref = _roundtrip(gpu, x, SpeedOptions.eager(), **TILED_CHUNKED)
        fast = _roundtrip(gpu, x, SpeedOptions(vae_compile=True), **TILED_CHUNKED)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        apply_speed(SpeedOptions(), vae=gpu)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
