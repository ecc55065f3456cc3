"""The example workflows, as the templates menu serves them and the frontend would queue them,
run on a small generated clip/still and write every frame at the requested size. They ship with
a BlockSwap Config node connected (a logged no-op on this CPU host); the same runs with it
bypassed."""
from __future__ import annotations

import re

import pytest

from .ui_to_api import convert
from .workflow import (BLOCKSWAP, LOAD_DIT, SMALL, UPSCALE, check_outputs, example_files, is_video, nodes_of, only,
                       small_prompt, without_blockswap)

pytestmark = pytest.mark.acceptance

EXAMPLES = [p.stem for p in example_files()]


def blockswap_noop_lines(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines()
            if re.search(r"block ?swap", line, re.IGNORECASE) and re.search(r"\bcpu\b", line, re.IGNORECASE)]


@pytest.mark.parametrize("name", EXAMPLES or ["(no example workflow in workflows/)"])
def test_example_workflow_runs(comfy, comfy_install, examples, small_inputs, model_files, acceptance_report, name):
    assert name in examples, f"{name} is not served by the template browser: {sorted(examples)}"
    _, prompt = examples[name]
    input_name, frames = small_inputs["video" if is_video(prompt) else "image"]
    prompt = small_prompt(prompt, input_name, dit=model_files.dit, vae=model_files.vae, seed=1, prefix=f"ex_{name}")
    upscale_id, dit_loader = only(prompt, UPSCALE), only(prompt, LOAD_DIT)
    blockswap = nodes_of(prompt, BLOCKSWAP)
    for node_id in blockswap:  # a value of its own per example, so the DiT loader runs (no cache hit)
        prompt[node_id]["inputs"]["blocks_to_swap"] = 10 + EXAMPLES.index(name)
    mark = comfy.log_size()
    ws = comfy.websocket()
    try:
        result = comfy.run(prompt, timeout=900)
        events = list(ws.events(timeout=0.5))
    finally:
        ws.close()
    assert result.status == "success", result.describe()
    infos = check_outputs(comfy, comfy_install.python, prompt, result, frames)
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == upscale_id]
    noop = blockswap_noop_lines(comfy.log_text(mark))
    acceptance_report.add(
        f"example '{name}': {frames} frame(s) {SMALL['width']}x{SMALL['height']} -> "
        f"{SMALL['expect_wh'][0]}x{SMALL['expect_wh'][1]}, success in {result.seconds:.1f}s, "
        f"{len(progress)} progress update(s), wrote {[i['path'].rsplit('/', 1)[-1] for i in infos]}")
    assert progress, "the upscaler sent no progress events (its progress bar does not reach the UI)"
    assert progress[-1]["value"] == progress[-1]["max"], f"progress did not reach the end: {progress[-1]}"
    assert dit_loader not in result.cached_nodes(), "the DiT loader was served from cache"
    if blockswap:
        assert noop, "BlockSwap Config is connected but no log line says block swap is a no-op on the CPU"
        acceptance_report.add(f"  BlockSwap on CPU: {noop[0]}")


def test_video_example_without_blockswap(comfy, comfy_install, video_example, small_inputs, model_files,
                                         acceptance_report):
    name, ui, _ = video_example
    prompt = convert(without_blockswap(ui), comfy.object_info())
    assert "block_swap_config" not in prompt[only(prompt, LOAD_DIT)]["inputs"], \
        "a bypassed BlockSwap Config still feeds the DiT loader"
    input_name, frames = small_inputs["video"]
    prompt = small_prompt(prompt, input_name, dit=model_files.dit, vae=model_files.vae, seed=2,
                          prefix="ex_no_blockswap")
    mark = comfy.log_size()
    result = comfy.run(prompt, timeout=900)
    assert result.status == "success", result.describe()
    check_outputs(comfy, comfy_install.python, prompt, result, frames)
    assert only(prompt, LOAD_DIT) not in result.cached_nodes(), "the DiT loader was served from cache"
    assert not blockswap_noop_lines(comfy.log_text(mark)), "block swap was applied though its node is bypassed"
    acceptance_report.add(f"example '{name}' with BlockSwap Config bypassed: success in {result.seconds:.1f}s")
