"""VAE fast paths against the reference (eager, one tile per call, contiguous, cat-based padding).

* copy-free causal padding: bitwise the reference data flow (`speed_reference.legacy_vae`);
* channels-last-3d: equal within fp32 rounding on the CPU, and really channels-last;
* tile batching: equal within fp32 rounding, fewer calls, progress counts every tile;
* cuDNN autotuning: scoped to the call, restored afterwards, also after an error.
"""
from __future__ import annotations

import math

import pytest
import torch

from seedvr2.speed import SpeedOptions, apply_speed, vae_call_context
from seedvr2.vae import VAEConfig, build_vae
from speed_reference import legacy_vae

TINY = VAEConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=4)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = build_vae(TINY)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(p[0].numel(), 1)))
    return model


@pytest.fixture(scope="module")
def clip():
    return torch.rand(1, 3, 9, 40, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _roundtrip(vae, x, **kw):
    mean = vae.encode(x, **kw).mean
    return mean, vae.decode(mean, **kw)


@pytest.mark.parametrize("chunk_frames", [4, None])
@pytest.mark.parametrize("tile_size", [None, 32])
def test_copy_free_causal_padding_is_bitwise_the_reference(vae, clip, chunk_frames, tile_size):
    kw = dict(chunk_frames=chunk_frames, tile_size=tile_size, tile_overlap=8)
    fast = _roundtrip(vae, clip, **kw)
    with legacy_vae():
        ref = _roundtrip(vae, clip, **kw)
    for a, b in zip(fast, ref):
        assert torch.equal(a, b)


def test_channels_last_matches_contiguous_and_is_channels_last(vae, clip):
    kw = dict(chunk_frames=4, tile_size=None)
    ref = _roundtrip(vae, clip, **kw)
    conv = vae.decoder.up_blocks[0].resnets[0].conv1
    try:
        apply_speed(SpeedOptions(channels_last=True), vae=vae)
        fast = _roundtrip(vae, clip, **kw)
        assert conv.memory_format() == torch.channels_last_3d
        padded, _ = conv.padded_input(1, 2, 4, 4, dtype=torch.float32, device=torch.device("cpu"), cache=None)
        assert padded.is_contiguous(memory_format=torch.channels_last_3d) and not padded.is_contiguous()
    finally:
        apply_speed(SpeedOptions(), vae=vae)
    _roundtrip(vae, clip[:, :, :1], **kw)  # switching back converts the weights back
    assert conv.weight.is_contiguous() and conv.memory_format() == torch.contiguous_format
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # CPU kernels for NDHWC sum in another order


def test_tile_batching_matches_tile_by_tile_with_fewer_calls(vae, clip):
    kw = dict(chunk_frames=4, tile_size=32, tile_overlap=8)
    calls = []
    hook = vae.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        ref = _roundtrip(vae, clip, **kw)
        ref_calls, calls[:] = list(calls), []
        progress = []
        apply_speed(SpeedOptions(tile_batch=4), vae=vae)
        fast_mean = vae.encode(clip, **kw).mean
        fast = vae.decode(fast_mean, **kw, on_tile=lambda done, total: progress.append((done, total)))
    finally:
        hook.remove()
        apply_speed(SpeedOptions(), vae=vae)
    # 48x40 (WxH) px -> 5x6 latent, 4-cell tiles with 1 overlap: 2x2 tiles, columns 3 and 4 wide; 3 time chunks
    assert set(ref_calls) == {1} and len(calls) < len(ref_calls) and max(calls) > 1
    assert progress[-1][0] == progress[-1][1] == len(ref_calls)  # every tile chunk counted once
    torch.testing.assert_close(fast_mean, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, ref[1], rtol=1e-5, atol=1e-5)


def test_cudnn_benchmark_is_scoped_to_the_vae_call():
    before = torch.backends.cudnn.benchmark
    cuda = torch.device("cuda")  # the context only flips a flag: no GPU needed
    try:
        torch.backends.cudnn.benchmark = False
        with vae_call_context(SpeedOptions(), cuda):
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
        with pytest.raises(KeyError), vae_call_context(SpeedOptions(), cuda):
            raise KeyError("boom")
        assert not torch.backends.cudnn.benchmark
        with vae_call_context(SpeedOptions(cudnn_benchmark=False), cuda):
            assert not torch.backends.cudnn.benchmark
        with vae_call_context(SpeedOptions(), torch.device("cpu")):
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("kwargs, message", [
    (dict(tile_batch=0), "tile_batch must be an integer >= 1"),
    (dict(tile_batch=2.0), "tile_batch must be an integer >= 1"),
    (dict(channels_last="yes"), "channels_last must be True or False"),
    (dict(vae_compile=1), "vae_compile must be True or False"),
])
def test_bad_speed_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeedOptions(**kwargs)


def test_eager_turns_every_fast_path_off():
    eager = SpeedOptions.eager()
    assert not (eager.cudnn_benchmark or eager.channels_last or eager.dit_compile or eager.vae_compile)
    assert not SpeedOptions().vae_compile  # off by default (see seedvr2.speed)
    assert eager.tile_batch == 1



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_paths_match_eager(vae, clip):
    """On a GPU (bench/gpu_check.py): cuDNN autotuning + channels-last + tile batching against every
    fast path off, fp32 without TF32 (cuDNN's algorithms sum in their own order: atol 1e-4)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu = build_vae(TINY).cuda()
    gpu.load_state_dict(vae.state_dict())
    kw = dict(chunk_frames=4, tile_size=32, tile_overlap=8)
    try:
        apply_speed(SpeedOptions.eager(), vae=gpu)
        ref = _roundtrip(gpu, clip.cuda(), **kw)
        apply_speed(SpeedOptions(channels_last=True, tile_batch=4), vae=gpu)
        fast = _roundtrip(gpu, clip.cuda(), **kw)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
