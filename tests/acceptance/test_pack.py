"""ComfyUI imports the pack, and `/object_info` shows the nodes a user sees: ids, sockets, widget
types, defaults, ranges and a tooltip on every input."""
from __future__ import annotations

import pytest

from .conftest import PACK_FOLDER

pytestmark = pytest.mark.acceptance

MODULE = f"custom_nodes.{PACK_FOLDER}"
ANY = object()  # an input whose default is not pinned here (e.g. a model file name)

# node id -> display name, output types, and inputs as {name: (section, type, default)}; the
# defaults are the ones README documents. Sockets have no default (ANY).
EXPECTED = {
    "SVR2BS_BlockSwapConfig": {
        "display_name": "SeedVR2 BlockSwap Config",
        "output": ["SEEDVR2_BLOCKSWAP_CONFIG"],
        "inputs": {
            "blocks_to_swap": ("required", "INT", 16),
            "swap_io_components": ("required", "BOOLEAN", False),
            "prefetch_blocks": ("required", "INT", 2),
            "pin_memory": ("required", "COMBO", "auto"),
            "placement": ("required", "COMBO", "spread"),
            "debug": ("required", "BOOLEAN", False),
            "mode": ("required", "COMBO", "auto"),
            "vram_budget_gb": ("required", "FLOAT", 0.0),
        },
        "options": {"pin_memory": {"auto", "on", "off"}, "placement": {"first", "spread"},
                    "mode": {"auto", "manual"}},
        "ranges": {"blocks_to_swap": (0, 36), "prefetch_blocks": (1, 8), "vram_budget_gb": (0, 4096)},
    },
    "SVR2BS_LoadDiT": {
        "display_name": "SeedVR2 Load DiT (BlockSwap)",
        "output": ["SEEDVR2_DIT"],
        "inputs": {
            "model": ("required", "COMBO", "seedvr2_ema_3b_fp16.safetensors"),
            "device": ("required", "COMBO", "auto"),
            "dtype": ("required", "COMBO", "auto"),
            "attention": ("required", "COMBO", "sdpa"),
            "block_swap_config": ("optional", "SEEDVR2_BLOCKSWAP_CONFIG", ANY),
            "torch_compile": ("optional", "BOOLEAN", False),  # last and optional: old workflows load unchanged
        },
        # a CPU-only host: no cuda:N choices
        "options": {"device": {"auto", "cpu"}, "dtype": {"auto", "bf16", "fp16", "fp32"},
                    "attention": {"sdpa", "flash_attn"}},
    },
    "SVR2BS_LoadVAE": {
        "display_name": "SeedVR2 Load VAE (BlockSwap)",
        "output": ["SEEDVR2_VAE"],
        "inputs": {
            "model": ("required", "COMBO", "ema_vae_fp16.safetensors"),
            "dtype": ("required", "COMBO", "auto"),
            "tile_size": ("required", "INT", 512),
            "tile_overlap": ("required", "INT", 64),
            "chunk_frames": ("required", "INT", 4),
            "tile_mode": ("required", "COMBO", "auto"),
        },
        "options": {"dtype": {"auto", "bf16", "fp16", "fp32"}, "tile_mode": {"auto", "manual"}},
        "ranges": {"tile_size": (0, 4096), "tile_overlap": (0, 512), "chunk_frames": (0, 128)},
    },
    "SVR2BS_Upscale": {
        "display_name": "SeedVR2 Upscale (BlockSwap)",
        "output": ["IMAGE"],
        "inputs": {
            "dit": ("required", "SEEDVR2_DIT", ANY),
            "vae": ("required", "SEEDVR2_VAE", ANY),
            "image": ("required", "IMAGE", ANY),
            "seed": ("required", "INT", 0),
            "resolution": ("required", "INT", 1080),
            "max_resolution": ("required", "INT", 0),
            "batch_size": ("required", "INT", 5),
            "temporal_overlap": ("required", "INT", 0),
            "color_correction": ("required", "COMBO", "wavelet"),
        },
        "options": {"color_correction": {"wavelet", "adain", "lab", "none"}},
        "ranges": {"seed": (0, 2**64 - 1), "resolution": (16, 16384), "batch_size": (1, 1001)},
        "seed_inputs": ["seed"],
    },
}


def _type_of(spec: list) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def _options(spec: list) -> list:
    return spec[0] if isinstance(spec[0], list) else (spec[1] or {}).get("options", [])


def test_pack_imports_without_errors(comfy, acceptance_report):
    log = comfy.log_text()
    block = log.split("Import times for custom nodes:", 1)
    assert len(block) == 2, "the server log has no 'Import times for custom nodes' block"
    ours = [line for line in block[1].splitlines() if line.rstrip().endswith(f"/custom_nodes/{PACK_FOLDER}")]
    assert ours, f"{PACK_FOLDER} is not in the import-times block:\n{block[1][:1500]}"
    assert "IMPORT FAILED" not in ours[0], ours[0]
    for marker in (f"Cannot import {comfy.root}/custom_nodes/{PACK_FOLDER}",
                   f"Error while calling comfy_entrypoint in {comfy.root}/custom_nodes/{PACK_FOLDER}",
                   f"Skip {comfy.root}/custom_nodes/{PACK_FOLDER}"):
        assert marker not in log, f"server log says: {marker}"
    acceptance_report.add(f"pack import: {ours[0].strip()}")


def test_object_info_lists_exactly_our_nodes(comfy, acceptance_report):
    info = comfy.object_info()
    ours = sorted(k for k, v in info.items() if v.get("python_module") == MODULE)
    acceptance_report.add(f"nodes seen ({len(ours)} of {len(info)} registered): {', '.join(ours)}")
    assert ours == sorted(EXPECTED), f"pack registered {ours}, expected {sorted(EXPECTED)}"
    for node_id, want in EXPECTED.items():
        assert info[node_id]["display_name"] == want["display_name"]
        assert info[node_id]["output"] == want["output"], f"{node_id} outputs"


def test_display_names_tell_ours_from_core(comfy):
    """In node search our nodes sit beside core's own SeedVR2 nodes (0.33.0): each of ours carries
    the BlockSwap mark, and no other node (core or another pack) shows a name of ours."""
    info = comfy.object_info()
    ours = {k: v["display_name"] for k, v in info.items() if v.get("python_module") == MODULE}
    unmarked = sorted(name for name in ours.values() if "BlockSwap" not in name)
    assert not unmarked, f"display names without the BlockSwap mark: {unmarked}"
    others = {v.get("display_name") or k: k for k, v in info.items() if v.get("python_module") != MODULE}
    clashes = {name: others[name] for name in ours.values() if name in others}
    assert not clashes, f"other nodes show the same display name as ours: {clashes}"


@pytest.mark.parametrize("node_id", sorted(EXPECTED))
def test_node_schema(comfy, node_id):
    node = comfy.object_info(node_id)
    want = EXPECTED[node_id]
    got = {name: (section, spec) for section in ("required", "optional")
           for name, spec in (node["input"].get(section) or {}).items()}
    assert set(got) == set(want["inputs"]), f"{node_id} inputs {sorted(got)} != {sorted(want['inputs'])}"
    for name, (section, kind, default) in want["inputs"].items():
        got_section, spec = got[name]
        opts = spec[1] if len(spec) > 1 else {}
        assert got_section == section, f"{node_id}.{name} is {got_section}, expected {section}"
        assert _type_of(spec) == kind, f"{node_id}.{name} type {_type_of(spec)}, expected {kind}"
        if default is not ANY:
            assert opts.get("default") == default, f"{node_id}.{name} default {opts.get('default')!r} != {default!r}"
        tooltip = opts.get("tooltip") or ""
        assert len(tooltip.strip()) >= 15, f"{node_id}.{name} has no (useful) tooltip: {tooltip!r}"
    for name, options in want.get("options", {}).items():
        assert set(_options(got[name][1])) == options, f"{node_id}.{name} options"
    for name, (lo, hi) in want.get("ranges", {}).items():
        opts = got[name][1][1]
        assert (opts.get("min"), opts.get("max")) == (lo, hi), f"{node_id}.{name} range"
    for name in want.get("seed_inputs", ()):
        assert got[name][1][1].get("control_after_generate") is True, f"{node_id}.{name} lacks control_after_generate"
    assert node.get("description", "").strip(), f"{node_id} has no description"
    tooltips = node.get("output_tooltips") or []
    assert len(tooltips) == len(node["output"]) and all(tooltips), f"{node_id} output tooltips {tooltips}"


def test_model_folder_lists_checkpoints_by_kind(comfy, model_files):
    """models/SEEDVR2 and a `seedvr2:` folder of extra_model_paths.yaml both feed the loaders'
    combos: DiT files in the DiT loader, VAE files in the VAE loader, nothing else."""
    folder = comfy.get_json("/models/seedvr2")
    assert {model_files.dit, model_files.vae, model_files.extra_dit} <= set(folder), f"/models/seedvr2: {folder}"
    assert "README.txt" not in folder, f"a non-model file is listed: {folder}"
    dit_choices = _options(comfy.object_info("SVR2BS_LoadDiT")["input"]["required"]["model"])
    vae_choices = _options(comfy.object_info("SVR2BS_LoadVAE")["input"]["required"]["model"])
    assert model_files.dit in dit_choices and model_files.extra_dit in dit_choices, f"DiT choices: {dit_choices}"
    assert model_files.vae in vae_choices, f"VAE choices: {vae_choices}"
    assert not {model_files.vae, model_files.embedding} & set(dit_choices), f"DiT choices: {dit_choices}"
    assert not {model_files.dit, model_files.extra_dit, model_files.embedding} & set(vae_choices), \
        f"VAE choices: {vae_choices}"
