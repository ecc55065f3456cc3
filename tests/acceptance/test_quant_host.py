"""Quantized DiTs in the real host: the tiny DiT converted (`python -m seedvr2 convert`) to ComfyUI
scaled fp8 and to GGUF Q8_0 (compressed `QuantLinear` layers) is listed by the DiT loader, runs the
example workflow on the suite's plain server, and on the block-swap CPU host
(SEEDVR2_BLOCKSWAP_CPU=1) with half its blocks streamed in their compressed form gives exactly the
same pixels. The GGUF file runs in hosts without the `gguf` package (neither host installs it:
the pack reads GGUF with the standard library), which the test checks first."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from .test_blockswap_host import (SEED, _tiny_blocks, host_inputs, output_pixels, run_ok,  # noqa: F401 (fixtures)
                                  swap_host, swapped_lines, with_blockswap)
from .test_pack import _options
from .ui_to_api import convert as ui_to_api
from .workflow import LOAD_DIT, is_video, only, small_prompt, without_blockswap

pytestmark = pytest.mark.acceptance

# format -> (file name in the host's models/SEEDVR2, the stored type of the block matrices)
FORMATS = {"fp8": ("tiny_dit_fp8_scaled.safetensors", "FP8"), "q8_0": ("tiny_dit-Q8_0.gguf", "Q8_0")}
PUBLISHED_GGUF = ("seedvr2_ema_3b-Q4_K_M.gguf", "seedvr2_ema_7b-Q4_K_M.gguf")  # listed, downloadable on demand


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantized_dit_runs_and_streams_compressed_in_the_host(fmt, comfy, swap_host, comfy_install, examples,
                                                               host_inputs, model_files, acceptance_report):
    from seedvr2.convert import convert  # noqa: PLC0415  (imports torch)

    quant_dit, stored = FORMATS[fmt]
    if fmt == "q8_0":
        has_gguf = subprocess.run([str(comfy_install.python), "-c", "import gguf"], capture_output=True).returncode == 0
        assert not has_gguf, "this host has the gguf package: the test no longer shows GGUF loading without it"
    counts = convert(model_files.folder / model_files.dit, model_files.folder / quant_dit, fmt, force=True)
    assert counts.get(stored, 0) > 0, counts
    host_folder = swap_host.server.root / "models" / "SEEDVR2"  # the plain server's folder is model_files.folder
    (host_folder / quant_dit).unlink(missing_ok=True)
    os.link(model_files.folder / quant_dit, host_folder / quant_dit)
    choices = _options(comfy.object_info(LOAD_DIT)["input"]["required"]["model"])
    assert quant_dit in choices and set(PUBLISHED_GGUF) <= set(choices), f"DiT choices: {choices}"

    name, (ui, prompt) = next((n, e) for n, e in examples.items() if not is_video(e[1]))
    input_name, frames = host_inputs["image"]
    blocks = _tiny_blocks()
    half = blocks // 2

    def edit(p: dict, prefix: str) -> dict:
        return small_prompt(p, input_name, dit=quant_dit, vae=model_files.vae, seed=SEED + 7,
                            prefix=f"quant_{fmt}_{prefix}")

    reference_prompt = edit(ui_to_api(without_blockswap(ui), comfy.object_info()), "reference")
    reference, _ = run_ok(comfy, reference_prompt, comfy_install.python, frames)
    expected = output_pixels(comfy, reference_prompt, reference)
    assert expected.std() > 0, "the quantized DiT produced a blank picture"

    swapped_prompt = edit(with_blockswap(prompt, half), "swapped")
    swapped, log = run_ok(swap_host.server, swapped_prompt, comfy_install.python, frames)
    assert only(swapped_prompt, LOAD_DIT) not in swapped.cached_nodes()
    assert [(n, m) for n, m, _ in swapped_lines(log)] == [(half, blocks)], log[-3000:]
    np.testing.assert_array_equal(output_pixels(swap_host.server, swapped_prompt, swapped), expected,
                                  err_msg="the block-swapped quantized DiT differs from the same file unswapped")
    acceptance_report.add(f"quantized DiT ({quant_dit}, {counts}) in the host, example '{name}': plain "
                          f"{reference.seconds:.1f}s, {half}/{blocks} swapped compressed {swapped.seconds:.1f}s; pixels equal")
