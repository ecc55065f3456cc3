"""End-to-end parity with the official one-step pipeline: golden/e2e_tiny_io.safetensors.

The official run (golden README steps 1-12) with the tiny 3B-type DiT and tiny VAE, fp32,
res_h x res_w = 64 x 96, fed the fixture's frames and its stored noises (VAE posterior noise and
x_T) through `upscale(..., official_area=(64, 96))`. Every stage is compared where it crosses a
model boundary, so a failure names the first stage that diverges. Tolerances (fp32 attention
path, from the golden README: DiT out_fp32 atol 1e-4, VAE atol 1e-5, uint8 within 1 level):

| stage                     | tolerance | observed (max abs, CPU) |
|---------------------------|-----------|-------------------------|
| cond_video, padded_video  | 1e-6      | 0                       |
| latent (condition)        | 1e-5      | 9.5e-7                  |
| dit_pred                  | 1e-4      | 1.5e-6                  |
| x0_latent                 | 1e-4      | 1.5e-6                  |
| decoded                   | 1e-4      | 3.6e-6                  |
| sample_colorfix           | 1e-4      | 3.5e-6 (1.7e-6 in 0..1) |
| output_uint8              | 1 level   | 0 (no pixel differs)    |
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from seedvr2.dit import load_dit
from seedvr2.pipeline import UpscaleModels, UpscaleSettings, VAETiling, upscale
from seedvr2.pipeline.output import to_output
from seedvr2.vae import load_vae


class _FixtureNoise:
    """The fixture's draws: one batch, so every batch index gets the same stored tensors."""

    def __init__(self, io):
        self.io = io

    def latent_noise(self, batch_index, shape):
        assert tuple(shape) == tuple(self.io["noise"].shape)
        return self.io["noise"].clone()

    def posterior_noise(self, batch_index, shape):
        assert tuple(shape) == tuple(self.io["vae_encode_noise"].shape)
        return self.io["vae_encode_noise"].clone()


class _RecordingVAE(nn.Module):
    """Passes calls through to the VAE and keeps its inputs/outputs for stage comparisons."""

    def __init__(self, vae):
        super().__init__()
        self.vae, self.seen = vae, {}

    def encode(self, x, **kwargs):
        self.seen["encode_in"] = x.clone()
        return self.vae.encode(x, **kwargs)

    def decode(self, z, **kwargs):
        out = self.vae.decode(z, **kwargs)
        self.seen["decoded"] = out.clone()
        return out


class _RecordingDiT(nn.Module):
    def __init__(self, dit):
        super().__init__()
        self.dit, self.blocks, self.config, self.seen = dit, dit.blocks, dit.config, {}

    def forward(self, vid, txt, vid_shape, txt_shape, timestep):
        out = self.dit(vid, txt, vid_shape, txt_shape, timestep)
        self.seen.update(vid=vid.clone(), txt=txt.clone(), vid_shape=vid_shape.clone(), timestep=timestep.clone(),
                         pred=out.clone())
        return out


@pytest.fixture(scope="module")
def golden_run(golden_dir):
    io = load_file(str(golden_dir / "e2e_tiny_io.safetensors"))
    dit = _RecordingDiT(load_dit(golden_dir / "dit3b_tiny_weights.safetensors", compute_dtype=torch.float32))
    vae = _RecordingVAE(load_vae(golden_dir / "vae_tiny_weights.safetensors", dtype=torch.float32))
    # the official inference path: causal slicing of 4 frames, no spatial tiling
    models = UpscaleModels(dit, vae, io["txt_pos"], "cpu", vae_tiling=VAETiling(None, 0, 4))
    settings = UpscaleSettings(batch_size=9, official_area=(int(64), int(96)), color_correction="wavelet")
    frames = io["frames_u8"].permute(0, 2, 3, 1).contiguous()  # t c h w -> [T, H, W, C] uint8
    out = upscale(frames, models, settings, noise=_FixtureNoise(io))
    return io, dit.seen, vae.seen, out


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def test_vae_input_is_the_padded_official_video(golden_run):
    io, _, vae_seen, _ = golden_run
    assert _max_err(vae_seen["encode_in"][0, :, :6], io["cond_video"]) <= 1e-6
    assert _max_err(vae_seen["encode_in"][0], io["padded_video"]) <= 1e-6


def test_dit_gets_noise_condition_and_text_in_the_official_layout(golden_run):
    io, dit_seen, _, _ = golden_run
    t, h, w, _ = io["latent"].shape
    assert dit_seen["vid_shape"].tolist() == [[t, h, w]]
    assert dit_seen["timestep"].tolist() == [1000.0]
    assert torch.equal(dit_seen["txt"], io["txt_pos"])
    vid = dit_seen["vid"].reshape(t, h, w, 33)
    assert torch.equal(vid[..., :16], io["noise"])
    assert _max_err(vid[..., 16:], io["condition"]) <= 1e-5  # the posterior-sampled latent * 0.9152, and the mask


def test_dit_prediction_and_x0_match(golden_run):
    io, dit_seen, _, _ = golden_run
    assert _max_err(dit_seen["pred"], io["fp32.dit_pred"]) <= 1e-4
    x0 = io["noise"] - dit_seen["pred"].reshape(io["noise"].shape)
    assert _max_err(x0, io["fp32.x0_latent"]) <= 1e-4


def test_decoded_video_matches(golden_run):
    io, _, vae_seen, _ = golden_run
    assert _max_err(vae_seen["decoded"][0], io["fp32.decoded"]) <= 1e-4


def test_colour_fixed_output_matches(golden_run):
    io, _, _, out = golden_run
    expected = (io["fp32.sample_colorfix"].clamp(-1, 1) * 0.5 + 0.5).permute(0, 2, 3, 1)
    assert out.shape == expected.shape == (6, 48, 96, 3)
    assert _max_err(out, expected) <= 0.5e-4  # the [-1, 1] tolerance 1e-4, halved by the mapping to [0, 1]


def test_uint8_output_within_one_level(golden_run):
    io, _, _, out = golden_run
    u8 = to_output(out, torch.uint8)
    diff = (u8.int() - io["fp32.output_uint8"].int()).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).float().mean().item() < 1e-3  # off-by-one only where a value sits on a rounding edge
