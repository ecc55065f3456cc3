"""The host itself: the server runs core prompts, and our UI->API converter turns a UI workflow
into the prompt the frontend would send (checked on core nodes, against the live node registry)."""
from __future__ import annotations

import pytest

from . import media
from .ui_to_api import ConversionError, convert

pytestmark = pytest.mark.acceptance


def test_server_runs_a_core_prompt(comfy, comfy_install, comfy_root):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 3, "color": 0x336699}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "host_check"}},
    }
    result = comfy.run(prompt, timeout=120)
    assert result.status == "success", result.describe()
    files = result.files("2")
    assert len(files) == 3, f"SaveImage wrote {files}"
    info = media.probe(comfy_install.python, [comfy_root / "output" / f["filename"] for f in files])
    assert {(i["width"], i["height"]) for i in info} == {(40, 24)}
    assert all(abs(i["mean"] - (0x33 + 0x66 + 0x99) / 3) < 1 for i in info), info


def _ui_workflow(image_name: str) -> dict:
    """Core-node graph using what the converter must get right: an upload combo, seed controls
    (explicit and by name), a Reroute, a bypassed and a muted node, a widget driven by a link,
    a Note."""
    nodes = [
        {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1, 5]},
                     {"name": "MASK", "type": "MASK", "links": []}],
         "widgets_values": [image_name, "image"]},
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "IMAGE", "links": [2]}], "widgets_values": []},
        {"id": 3, "type": "ImageInvert", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}], "widgets_values": []},
        {"id": 4, "type": "ImageScale", "mode": 0, "title": "Resize",
         "inputs": [{"name": "image", "type": "IMAGE", "link": 3},
                    {"name": "height", "type": "INT", "widget": {"name": "height"}, "link": 6}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}],
         "widgets_values": ["nearest-exact", 32, 512, "disabled"]},
        {"id": 5, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
         "outputs": [], "widgets_values": ["converter_check"]},
        {"id": 6, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["a note"]},
        {"id": 7, "type": "RandomNoise", "mode": 0, "inputs": [],
         "outputs": [{"name": "NOISE", "type": "NOISE", "links": []}], "widgets_values": [1234, "fixed"]},
        {"id": 8, "type": "ImageBlur", "mode": 2, "inputs": [{"name": "image", "type": "IMAGE", "link": 5}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}], "widgets_values": [3, 1.5]},
        {"id": 9, "type": "PrimitiveInt", "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [6]}], "widgets_values": [40, "fixed"]},
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"],
             [4, 4, 0, 5, 0, "IMAGE"], [5, 1, 0, 8, 0, "IMAGE"], [6, 9, 0, 4, 1, "INT"]]
    return {"last_node_id": 9, "last_link_id": 6, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def test_converter_matches_the_frontend_on_core_nodes(comfy, comfy_install, comfy_root, tmp_path):
    name = comfy.upload_image(media.make_input(comfy_install.python, tmp_path / "conv_in.png",
                                               frames=1, width=64, height=48))
    workflow = _ui_workflow(name)
    prompt = convert(workflow, comfy.object_info())
    assert prompt == {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}, "_meta": {"title": "Load Image"}},
        "4": {"class_type": "ImageScale", "_meta": {"title": "Resize"},
              "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "width": 32, "height": ["9", 0],
                         "crop": "disabled"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "converter_check"},
              "_meta": {"title": "Save Image"}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1234}, "_meta": {"title": "RandomNoise"}},
        "9": {"class_type": "PrimitiveInt", "inputs": {"value": 40}, "_meta": {"title": "Int"}},
    }
    result = comfy.run(prompt, timeout=120)
    assert result.status == "success", result.describe()
    (out,) = result.files("5")
    (info,) = media.probe(comfy_install.python, [comfy_root / "output" / out["filename"]])
    assert (info["width"], info["height"]) == (32, 40)

    # A workflow saved before a node gained a trailing widget: that widget takes its default, as
    # in the frontend. More values than widgets would shift them: refused.
    workflow["nodes"][3]["widgets_values"] = ["nearest-exact", 32, 512]
    assert convert(workflow, comfy.object_info())["4"]["inputs"]["crop"] == "disabled"
    workflow["nodes"][3]["widgets_values"] = ["nearest-exact", 32, 512, "disabled", "extra"]
    with pytest.raises(ConversionError, match="ImageScale"):
        convert(workflow, comfy.object_info())
