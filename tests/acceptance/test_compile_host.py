"""The DiT loader's `torch_compile` in the real host: inductor-compiled blocks under ComfyUI's own
executor (inference mode, output caching, re-execution), with block swap streaming the blocks.

A server of its own runs with `SEEDVR2_BLOCKSWAP_CPU=1` (as tests/acceptance/test_blockswap_host.py),
so the compiled block bodies run between block swap's hooks as on CUDA. On the image example, with
half the tiny DiT's blocks swapped and one seed:

1. `torch_compile` on: the loader runs, the upscaler logs that every block ran compiled and that
   dynamo compiled at least one graph (its own counter: the compile really ran);
2. `torch_compile` off: the loader re-runs (its input changed), no block runs compiled, and the
   pixels equal the compiled run's within fp32 rounding (uint8 output: at most one level apart);
3. on again: the loader re-runs or is served from cache, every block runs compiled again, and no
   new graph is compiled (all blocks of a structure share one compiled function, also across
   loads).

One inductor compile per run of this module (tens of seconds on a 2-core CPU), so it runs on the
newest selected host only (`SEEDVR2_ACCEPTANCE_HOSTS=0.3.75` runs it there).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from . import media
from .conftest import PACK_FOLDER, comfy_tree, link_models
from .harness import ComfyServer
from .test_blockswap_host import output_pixels, run_ok, swapped_lines, with_blockswap
from .ui_to_api import convert
from .workflow import LOAD_DIT, SMALL, UPSCALE, is_video, only, served_examples, small_prompt

pytestmark = [pytest.mark.acceptance, pytest.mark.newest_host_only]

ENV = {"SEEDVR2_BLOCKSWAP_CPU": "1"}
SEED = 4242  # no other acceptance test uses it
COMPILED_LINE = re.compile(r"SeedVR2 DiT ran (\d+)/(\d+) blocks torch\.compile'd \((\d+) graph\(s\) compiled")


@pytest.fixture(scope="module")
def compile_host(comfy_install, model_files, tmp_path_factory, acceptance_report):
    """(server, uploaded image name): a ComfyUI of its own with block swap's CPU mode on."""
    root = comfy_tree(comfy_install, tmp_path_factory.mktemp("comfyui_compile"))
    link_models(model_files, root)
    server = ComfyServer(comfy_install.python, root, root.parent / "comfyui.log", extra_env=ENV)
    seconds = server.start()
    acceptance_report.add(f"compile host ({' '.join(f'{k}={v}' for k, v in ENV.items())}): up in {seconds:.1f}s, "
                          f"log {server.log_path}")
    image = media.make_input(comfy_install.python, tmp_path_factory.mktemp("compile_inputs") / "compile.png",
                             frames=1, width=SMALL["width"], height=SMALL["height"])
    yield server, server.upload_image(image)
    server.stop()


def compiled_lines(log: str) -> list[tuple[int, int, int]]:
    """(compiled blocks, blocks, graphs compiled so far) of each upscaler line about torch.compile."""
    return [(int(a), int(b), int(c)) for a, b, c in COMPILED_LINE.findall(log)]


def test_torch_compile_in_the_host_equals_eager_and_turns_off(compile_host, comfy_install, model_files,
                                                               acceptance_report):
    server, input_name = compile_host
    python = comfy_install.python
    info = server.object_info()
    name, ui = next((n, ui) for n, ui in served_examples(server, PACK_FOLDER).items()
                    if not is_video(convert(ui, info)))
    prompt = convert(ui, info)
    assert "torch_compile" in info[LOAD_DIT]["input"].get("optional", {}), \
        f"the DiT loader has no optional torch_compile input: {info[LOAD_DIT]['input']}"
    assert "torch_compile" not in prompt[only(prompt, LOAD_DIT)]["inputs"] or \
        prompt[only(prompt, LOAD_DIT)]["inputs"]["torch_compile"] is False, "the example compiles by default"
    from tests.tiny_models import DIT3B_TINY_CONFIG  # noqa: PLC0415  (imports torch)

    blocks = DIT3B_TINY_CONFIG["num_layers"]
    half = blocks // 2
    loader, upscaler = only(prompt, LOAD_DIT), only(prompt, UPSCALE)

    def edit(torch_compile: bool, prefix: str) -> dict:
        edited = small_prompt(with_blockswap(prompt, half), input_name, dit=model_files.dit, vae=model_files.vae,
                              seed=SEED, prefix=f"compile_host_{prefix}")
        edited[loader]["inputs"]["torch_compile"] = torch_compile
        return edited

    # 1. Compiled, half the blocks streamed.
    on_prompt = edit(True, "on")
    on, log_on = run_ok(server, on_prompt, python, 1)
    assert loader not in on.cached_nodes()
    assert [(n, m) for n, m, _ in swapped_lines(log_on)] == [(half, blocks)], log_on[-3000:]
    (compiled,) = compiled_lines(log_on) or [None]
    assert compiled is not None, f"no log line says the DiT ran compiled\n{log_on[-3000:]}"
    assert compiled[:2] == (blocks, blocks) and compiled[2] >= 1, f"compile did not run: {compiled}"
    graphs = compiled[2]
    compiled_pixels = output_pixels(server, on_prompt, on)

    # 2. Turned off: the loader re-runs and the blocks run eager; pixels within fp32 rounding.
    off_prompt = edit(False, "off")
    off, log_off = run_ok(server, off_prompt, python, 1)
    assert loader not in off.cached_nodes(), "the DiT loader did not re-run when torch_compile changed"
    assert upscaler not in off.cached_nodes()
    assert not compiled_lines(log_off), f"blocks still ran compiled with torch_compile off\n{log_off[-3000:]}"
    eager_pixels = output_pixels(server, off_prompt, off)
    assert compiled_pixels.shape == eager_pixels.shape
    diff = np.abs(compiled_pixels.astype(np.int16) - eager_pixels.astype(np.int16))
    assert diff.max() <= 1, f"compiled output differs from eager by up to {diff.max()} levels (uint8)"

    # 3. On again: compiled again, served by the graphs compiled in step 1 (no second compile).
    again_prompt = edit(True, "again")
    again, log_again = run_ok(server, again_prompt, python, 1)
    assert compiled_lines(log_again) == [(blocks, blocks, graphs)], \
        f"expected every block compiled with no new graph ({graphs}): {compiled_lines(log_again)}"
    np.testing.assert_array_equal(output_pixels(server, again_prompt, again), compiled_pixels)
    acceptance_report.add(
        f"torch_compile in the host ('{name}', {half}/{blocks} blocks swapped, inductor on CPU): compiled run "
        f"{on.seconds:.1f}s ({graphs} graph(s)), eager re-run {off.seconds:.1f}s, compiled again "
        f"{again.seconds:.1f}s (loader {'cached' if loader in again.cached_nodes() else 're-ran'}); "
        f"compiled vs eager: {int((diff > 0).sum())} of {diff.size} values differ, max {int(diff.max())} level(s)")
