"""The nodes' "auto" wiring without a ComfyUI install: the pack's node modules are imported with
minimal stand-ins for `comfy_api.latest.io`, `comfy.model_management` and `folder_paths`, so the
widget -> config mapping, the widget order (UI workflows map values by position) and the upscaler's
request to ComfyUI's model manager are checked here; the real host runs them in tests/acceptance."""
from __future__ import annotations

import importlib
import sys
import types
import uuid
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO


class _Recorder:
    """Stands in for io.Int/io.Combo/...: `.Input(name, **kw)` records the widget."""

    def __init__(self, kind: str):
        self.kind = kind

    def Input(self, name, **kw):  # noqa: N802 - ComfyUI's spelling
        return SimpleNamespace(kind=self.kind, name=name, **kw)

    def Output(self, **kw):  # noqa: N802
        return SimpleNamespace(kind=self.kind, **kw)


def _fake_io() -> types.ModuleType:
    io = types.ModuleType("io")
    io.ComfyNode = type("ComfyNode", (), {})
    io.Schema = lambda **kw: SimpleNamespace(**kw)
    io.NodeOutput = lambda *values: values
    io.Custom = lambda name: _Recorder(name)
    for kind in ("Int", "Float", "Boolean", "Combo", "Image", "String"):
        setattr(io, kind, _Recorder(kind))
    return io


@pytest.fixture
def pack(monkeypatch, tmp_path):
    """The pack's `nodes` package, imported under a fresh name with ComfyUI stand-ins; `mm` records
    the calls the nodes make to comfy.model_management."""
    calls = []
    mm = types.ModuleType("comfy.model_management")
    mm.free_memory = lambda needed, device: calls.append(("free_memory", needed, device))
    mm.soft_empty_cache = lambda: calls.append(("soft_empty_cache",))
    mm.get_free_memory = lambda device: 7 << 30
    mm.unload_all_models = lambda: calls.append(("unload_all_models",))
    mm.get_torch_device = lambda: torch.device("cpu")
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, types.ModuleType("comfy.utils")
    latest = types.ModuleType("comfy_api.latest")
    latest.io = _fake_io()
    stubs = {"comfy_api": types.ModuleType("comfy_api"), "comfy_api.latest": latest, "comfy": comfy,
             "comfy.model_management": mm, "comfy.utils": comfy.utils, "folder_paths": types.ModuleType("folder_paths")}
    stubs["folder_paths"].models_dir = str(tmp_path)
    name = f"pack_{uuid.uuid4().hex[:8]}"
    root = types.ModuleType(name)
    root.__path__ = [str(REPO)]
    nodes = types.ModuleType(f"{name}.nodes")  # not nodes/__init__.py: that registers with ComfyUI
    nodes.__path__ = [str(REPO / "nodes")]
    for key, module in {**stubs, name: root, f"{name}.nodes": nodes}.items():
        monkeypatch.setitem(sys.modules, key, module)
    loaded = SimpleNamespace(calls=calls, mm=mm, name=name)
    for mod in ("blockswap_config", "loaders", "upscale"):
        setattr(loaded, mod, importlib.import_module(f"{name}.nodes.{mod}"))
    monkeypatch.setattr(loaded.loaders.model_folder, "choices", lambda kind: [])  # no model folders here
    yield loaded
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def _input_names(node) -> list[str]:
    return [widget.name for widget in node.define_schema().inputs]


def _config_node_defaults(node) -> dict:
    return {w.name: w.default for w in node.define_schema().inputs}


def test_config_node_defaults_to_auto_with_no_budget(pack):
    node = pack.blockswap_config.BlockSwapConfigNode
    (config,) = node.execute(**_config_node_defaults(node))
    assert config["blocks_to_swap"] == "auto" and config["vram_budget"] is None
    # Older workflows (six widget values) run with the new inputs' defaults: auto as well.
    (old,) = node.execute(16, False, 2, "auto", "spread", False)
    assert old["blocks_to_swap"] == "auto"


def test_config_node_manual_mode_and_budget(pack):
    node = pack.blockswap_config.BlockSwapConfigNode
    (manual,) = node.execute(12, False, 2, "auto", "spread", False, "manual", 0.0)
    assert manual["blocks_to_swap"] == 12 and manual["vram_budget"] is None
    (capped,) = node.execute(12, False, 2, "auto", "spread", False, "auto", 9.5)
    assert capped["blocks_to_swap"] == "auto" and capped["vram_budget"] == 9.5
    with pytest.raises(ValueError, match="mode must be one of auto, manual"):
        node.execute(12, False, 2, "auto", "spread", False, "fast", 0.0)


def test_new_widgets_come_last_so_saved_workflows_keep_their_values(pack):
    assert _input_names(pack.blockswap_config.BlockSwapConfigNode) == [
        "blocks_to_swap", "swap_io_components", "prefetch_blocks", "pin_memory", "placement", "debug",
        "mode", "vram_budget_gb"]
    assert _input_names(pack.loaders.LoadVAENode) == ["model", "dtype", "tile_size", "tile_overlap", "chunk_frames",
                                                      "tile_mode"]
    modes = {w.name: w for w in pack.loaders.LoadVAENode.define_schema().inputs}["tile_mode"]
    assert modes.default == "auto" and modes.tooltip


def test_blocks_to_swap_tooltip_gives_each_models_block_count(pack):
    """3B 32, 7B 36 (the presets), 1.4B distilled 6 (counted from its file in tests/test_distill.py)."""
    from seedvr2.dit.config import PRESETS  # noqa: PLC0415

    from test_distill import DISTILL_BLOCKS  # noqa: PLC0415

    widget = {w.name: w for w in pack.blockswap_config.BlockSwapConfigNode.define_schema().inputs}["blocks_to_swap"]
    text = " ".join(widget.tooltip.split())
    for phrase in (f"3B has {PRESETS['3b'].num_layers} blocks", f"7B has {PRESETS['7b'].num_layers} (",
                   f"1.4B distilled has {DISTILL_BLOCKS} ("):
        assert phrase in text, (phrase, text)
    assert "swaps all its blocks" in text
    assert widget.max == max(PRESETS["3b"].num_layers, PRESETS["7b"].num_layers)


def test_vae_tile_mode(pack):
    tiling = pack.loaders.vae_tiling
    assert tiling("auto", 512, 64, 4).tile_size == "auto"
    assert tiling("manual", 384, 32, 4).tile_size == 384
    assert tiling("manual", 0, 64, 0).tile_size is None and tiling("manual", 0, 64, 0).chunk_frames is None
    with pytest.raises(ValueError, match="tile_mode"):
        tiling("big", 512, 64, 4)


def test_upscaler_asks_comfyui_to_free_only_what_the_plan_needs(pack):
    device = torch.device("cuda", 0)
    assert pack.upscale.make_room(device, 5 << 30) == 7 << 30
    assert pack.calls == [("free_memory", 5 << 30, device), ("soft_empty_cache",)]


def test_upscaler_plans_when_anything_is_auto(pack):
    from blockswap import BlockSwapConfig  # noqa: PLC0415
    from seedvr2.pipeline import VAETiling  # noqa: PLC0415

    def handle(blocks, active=True):
        return SimpleNamespace(active=active, config=BlockSwapConfig(blocks_to_swap=blocks))

    plans = pack.upscale.plans_memory
    fixed, auto = SimpleNamespace(tiling=VAETiling(tile_size=512)), SimpleNamespace(tiling=VAETiling(tile_size="auto"))
    assert plans(SimpleNamespace(block_swap=handle("auto")), fixed)
    assert plans(SimpleNamespace(block_swap=handle(8)), auto)
    assert not plans(SimpleNamespace(block_swap=handle(8)), fixed)
    assert not plans(SimpleNamespace(block_swap=handle("auto", active=False)), fixed)


def test_the_download_staging_folder_is_neither_listed_nor_loadable(pack, monkeypatch, tmp_path):
    """ComfyUI's listing skips only `.git`, so it lists an unverified download under `.downloads/`:
    the loaders' choices leave it out and a prompt naming it is refused."""
    folder_paths = sys.modules["folder_paths"]
    (tmp_path / ".downloads").mkdir()
    staged = tmp_path / ".downloads" / "seedvr2_ema_3b_fp16.safetensors"
    staged.write_bytes(b"unverified")
    (tmp_path / "mine_3b.safetensors").write_bytes(b"x")
    listed = [".downloads/seedvr2_ema_3b_fp16.safetensors", "mine_3b.safetensors"]
    monkeypatch.setattr(folder_paths, "get_filename_list", lambda key: listed, raising=False)
    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda key: [str(tmp_path)], raising=False)
    monkeypatch.setattr(folder_paths, "get_full_path", lambda key, name: str(tmp_path / name), raising=False)
    model_folder = importlib.import_module(f"{pack.name}.nodes.model_folder")
    choices = importlib.reload(model_folder).choices("dit")  # the fixture stubbed `choices`: the real one
    assert ".downloads/seedvr2_ema_3b_fp16.safetensors" not in choices and "mine_3b.safetensors" in choices
    assert model_folder.confined_model("mine_3b.safetensors", "dit") == str((tmp_path / "mine_3b.safetensors").resolve())
    # the registry name still resolves as a download, never as the staged bytes
    assert model_folder.confined_model("seedvr2_ema_3b_fp16.safetensors", "dit") == "seedvr2_ema_3b_fp16.safetensors"
    with pytest.raises(Exception, match="is not a model file in the SeedVR2 model folders"):
        model_folder.confined_model(".downloads/seedvr2_ema_3b_fp16.safetensors", "dit")
