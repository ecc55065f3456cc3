"""The example workflows as the server serves them, and the edits a user makes before queueing
one (pick the input file and the models, a small resolution, a seed; bypass BlockSwap)."""
from __future__ import annotations

import copy
import json
import urllib.parse
from pathlib import Path

from . import media
from .harness import ComfyServer, PromptResult

REPO = Path(__file__).resolve().parents[2]
UPSCALE = "SVR2BS_Upscale"
LOAD_DIT = "SVR2BS_LoadDiT"
LOAD_VAE = "SVR2BS_LoadVAE"
BLOCKSWAP = "SVR2BS_BlockSwapConfig"
LOADERS = {"LoadImage": "image", "LoadVideo": "file"}  # core input loaders -> their file input
OUTPUT_DIRS = {"output": "output", "temp": "temp"}
MODE_BYPASS = 4

# The small run: a 5-frame 64x48 clip at 8 fps (one 64x48 still for an image workflow),
# upscaled to a 96-pixel short side.
SMALL = {"frames": 5, "width": 64, "height": 48, "fps": 8.0, "resolution": 96, "expect_wh": (128, 96)}


def example_files() -> list[Path]:
    return sorted((REPO / "workflows").glob("*.json"))


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


def only(prompt: dict, class_type: str) -> str:
    ids = nodes_of(prompt, class_type)
    assert len(ids) == 1, f"expected one {class_type} node in the workflow, found {ids}"
    return ids[0]


def loader_of(prompt: dict) -> tuple[str, str, str]:
    """(node id, class, file input) of the workflow's single core input loader."""
    found = [(nid, n["class_type"], LOADERS[n["class_type"]])
             for nid, n in prompt.items() if n["class_type"] in LOADERS]
    assert len(found) == 1, f"expected one input loader ({', '.join(LOADERS)}) in the workflow, found {found}"
    return found[0]


def is_video(prompt: dict) -> bool:
    return loader_of(prompt)[1] == "LoadVideo"


def output_nodes(prompt: dict, object_info: dict) -> list[str]:
    return [nid for nid, n in prompt.items() if object_info[n["class_type"]].get("output_node")]


def output_files(result: PromptResult, node_id: str, comfy_root: Path) -> list[Path]:
    """Every file an output node reported (images, videos...), as paths on disk."""
    paths = []
    for value in (result.outputs.get(node_id) or {}).values():
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict) and "filename" in item:
                paths.append(comfy_root / OUTPUT_DIRS[item.get("type", "output")] / item.get("subfolder", "")
                             / item["filename"])
    return paths


def served_examples(comfy: ComfyServer, pack_folder: str) -> dict[str, dict]:
    """The example workflows as the templates menu serves them (name -> UI workflow); checks the
    server lists every file of workflows/ and serves it unchanged."""
    files = example_files()
    assert files, f"no example workflow in {REPO / 'workflows'}"
    served = comfy.get_json("/workflow_templates").get(pack_folder) or []
    assert sorted(served) == sorted(f.stem for f in files), \
        f"/workflow_templates lists {served} for {pack_folder}; workflows/ has {[f.name for f in files]}"
    out = {}
    for path in files:
        ui = comfy.get_json(f"/api/workflow_templates/{urllib.parse.quote(pack_folder)}/{urllib.parse.quote(path.name)}")
        assert ui == json.loads(path.read_text()), f"the served {path.name} differs from the repo's"
        out[path.stem] = ui
    return out


def without_blockswap(ui: dict) -> dict:
    """The UI workflow with its BlockSwap Config node(s) bypassed (Ctrl+B in the editor)."""
    ui = copy.deepcopy(ui)
    found = [n for n in ui["nodes"] if n["type"] == BLOCKSWAP]
    assert found, f"the workflow has no {BLOCKSWAP} node to bypass"
    for node in found:
        node["mode"] = MODE_BYPASS
    return ui


def small_prompt(prompt: dict, input_name: str, *, dit: str, vae: str, seed: int, prefix: str, **upscale) -> dict:
    """The user's edits before queueing: the input file, the model files, a small resolution (no
    cap), a seed, an output prefix; `upscale` overrides more of the upscaler's inputs."""
    prompt = copy.deepcopy(prompt)
    loader, _, file_input = loader_of(prompt)
    prompt[loader]["inputs"][file_input] = input_name
    prompt[only(prompt, LOAD_DIT)]["inputs"]["model"] = dit
    prompt[only(prompt, LOAD_VAE)]["inputs"]["model"] = vae
    up = prompt[only(prompt, UPSCALE)]["inputs"]
    up.update({"seed": seed, "resolution": SMALL["resolution"], "max_resolution": 0} | upscale)
    for node in prompt.values():
        if "filename_prefix" in node["inputs"]:
            old = node["inputs"]["filename_prefix"]
            node["inputs"]["filename_prefix"] = f"{old.rsplit('/', 1)[0]}/{prefix}" if "/" in old else prefix
    return prompt


def check_outputs(comfy: ComfyServer, python: Path, prompt: dict, result: PromptResult, frames: int,
                  expect_wh: tuple[int, int] = SMALL["expect_wh"]) -> list[dict]:
    """Every output node wrote the whole clip at `expect_wh` (and a video at the input's frame
    rate), not a blank picture; returns the probed files."""
    outs = output_nodes(prompt, comfy.object_info())
    assert outs, "the workflow has no output node"
    infos = []
    for node_id in outs:
        paths = output_files(result, node_id, comfy.root)
        assert paths, f"output node {node_id} ({prompt[node_id]['class_type']}) reported no file: {result.outputs}"
        missing = [p for p in paths if not p.is_file()]
        assert not missing, f"reported outputs missing on disk: {missing}"
        info = media.probe(python, paths)
        total = sum(i["frames"] for i in info)
        assert total == frames, f"node {node_id} wrote {total} frame(s) in {len(paths)} file(s), expected {frames}"
        sizes = {(i["width"], i["height"]) for i in info}
        assert sizes == {expect_wh}, f"node {node_id} wrote frames of {sizes}, expected {expect_wh}"
        rates = {i["fps"] for i in info if "fps" in i}
        assert rates <= {SMALL["fps"]}, f"node {node_id} wrote video at {rates} fps, the input is {SMALL['fps']}"
        assert all(i["std"] > 2.0 for i in info), f"blank output: {info}"
        infos += info
    return infos
