"""DiT configs: the real 3B/7B models built on meta match the released key/shape manifests exactly;
official config parsing, presets, and variant detection from checkpoint keys and shapes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from seedvr2 import build_dit
from seedvr2.checkpoint import CheckpointError
from seedvr2.dit import PRESETS, DiTConfig, detect_dit_config

MANIFEST_COUNTS = {"3b": (635, 3_391_475_776), "7b": (1128, 8_239_607_872)}


def _manifest(reference_dir, name: str) -> dict:
    return json.loads((reference_dir / f"manifest_dit_{name}.json").read_text())


@pytest.mark.parametrize("name", ["3b", "7b"])
@pytest.mark.parametrize("source", ["official", "preset"])
def test_meta_build_matches_manifest_exactly(reference_dir, name, source):
    manifest = _manifest(reference_dir, name)
    with torch.device("meta"):
        model = build_dit(manifest["config"] if source == "official" else name)
    state = model.state_dict()
    expected = {k: v["shape"] for k, v in manifest["tensors"].items()}
    assert {k: list(t.shape) for k, t in state.items()} == expected
    assert list(state) == list(expected)  # same order as the official module tree
    tensors, params = MANIFEST_COUNTS[name]
    assert len(state) == manifest["num_state_dict_tensors"] == tensors
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == params
    buffers = {k for k, v in manifest["tensors"].items() if v["kind"] == "buffer"}
    assert {k for k, _ in model.named_buffers()} == buffers  # rope freqs only; nothing extra


def test_presets_equal_the_official_configs(reference_dir):
    for name in ("3b", "7b"):
        assert DiTConfig.from_official(_manifest(reference_dir, name)["config"]) == PRESETS[name]


def test_root_module_holds_no_parameters():
    with torch.device("meta"):
        model = build_dit("3b")
    assert not list(model.named_parameters(recurse=False))
    assert not list(model.named_buffers(recurse=False))
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 32


@pytest.mark.parametrize("name", ["3b", "7b"])
def test_detect_from_manifest_shapes(reference_dir, name):
    shapes = {k: tuple(v["shape"]) for k, v in _manifest(reference_dir, name)["tensors"].items()}
    assert detect_dit_config(shapes) == PRESETS[name]


@pytest.mark.parametrize("family", ["3b", "7b"])
def test_detect_tiny_fixture_equals_its_official_config(golden_dir, family):
    with safe_open(str(golden_dir / f"dit{family}_tiny_weights.safetensors"), "pt") as f:
        official = json.loads(f.metadata()["config"])
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert detect_dit_config(shapes) == DiTConfig.from_official(official)


def test_detect_counts_blocks_instead_of_assuming(reference_dir):
    """A 6-block 7B-type model (the distilled 1.4B exists) is detected as 6 blocks."""
    shapes = {k: tuple(v["shape"]) for k, v in _manifest(reference_dir, "7b")["tensors"].items()
              if not k.startswith("blocks.") or int(k.split(".")[1]) < 6}
    config = detect_dit_config(shapes)
    assert config.num_layers == 6 and config.mm_layers == 6 and config.dim == 3072


def test_detect_refuses_non_dit_and_gaps(reference_dir):
    with pytest.raises(CheckpointError, match="not a SeedVR2 DiT checkpoint: key 'vid_in.proj.weight' is missing"):
        detect_dit_config({"encoder.conv_in.weight": (128, 3, 3, 3, 3)}, source="x.safetensors")
    shapes = {k: tuple(v["shape"]) for k, v in _manifest(reference_dir, "3b")["tensors"].items()
              if not k.startswith("blocks.4.")}
    with pytest.raises(CheckpointError, match=r"numbered 0..N-1"):
        detect_dit_config(shapes)


def test_official_config_errors_name_the_key(reference_dir):
    config = dict(_manifest(reference_dir, "3b")["config"])
    with pytest.raises(ValueError, match="mlp_type='normal' is not supported"):
        DiTConfig.from_official({**config, "mlp_type": "normal"})
    with pytest.raises(ValueError, match="missing key 'heads'"):
        DiTConfig.from_official({k: v for k, v in config.items() if k != "heads"})
    with pytest.raises(ValueError, match="window_method"):
        DiTConfig.from_official({**config, "window_method": ["720pwin_by_size_bysize"] * 3})
    with pytest.raises(ValueError, match="emb_dim must be 6 \\* dim"):
        DiTConfig.from_official({**config, "emb_dim": 1000})


def test_build_dit_rejects_unknown_inputs():
    with pytest.raises(ValueError, match="unknown SeedVR2 DiT preset '5b'"):
        build_dit("5b")
    with pytest.raises(TypeError, match="preset name, an official config mapping or a DiTConfig"):
        build_dit(42)
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"):
        with torch.device("meta"):
            build_dit("3b", attention="xformers")
