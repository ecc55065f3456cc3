"""A quantized DiT in the real host: the tiny DiT converted to ComfyUI scaled fp8 (`python -m seedvr2
convert --to fp8`, compressed `QuantLinear` layers) runs the example workflow on the suite's plain
server, and on the block-swap CPU host (SEEDVR2_BLOCKSWAP_CPU=1) with half its blocks streamed in
their compressed form gives exactly the same pixels."""
from __future__ import annotations

import os

import numpy as np
import pytest

from .test_blockswap_host import (SEED, _tiny_blocks, host_inputs, output_pixels, run_ok,  # noqa: F401 (fixtures)
                                  swap_host, swapped_lines, with_blockswap)
from .ui_to_api import convert as ui_to_api
from .workflow import LOAD_DIT, is_video, only, small_prompt, without_blockswap

pytestmark = pytest.mark.acceptance

QUANT_DIT = "tiny_dit_fp8_scaled.safetensors"


def test_quantized_dit_runs_and_streams_compressed_in_the_host(comfy, swap_host, comfy_install, examples, host_inputs,
                                                               model_files, acceptance_report):
    from seedvr2.convert import convert  # noqa: PLC0415  (imports torch)

    counts = convert(model_files.folder / model_files.dit, model_files.folder / QUANT_DIT, "fp8", force=True)
    assert counts.get("FP8", 0) > 0
    host_folder = swap_host.server.root / "models" / "SEEDVR2"
    (host_folder / QUANT_DIT).unlink(missing_ok=True)
    os.link(model_files.folder / QUANT_DIT, host_folder / QUANT_DIT)

    name, (ui, prompt) = next((n, e) for n, e in examples.items() if not is_video(e[1]))
    input_name, frames = host_inputs["image"]
    blocks = _tiny_blocks()
    half = blocks // 2

    def edit(p: dict, prefix: str) -> dict:
        return small_prompt(p, input_name, dit=QUANT_DIT, vae=model_files.vae, seed=SEED + 7, prefix=f"quant_{prefix}")

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
    acceptance_report.add(f"quantized DiT ({QUANT_DIT}, {counts}) in the host, example '{name}': plain "
                          f"{reference.seconds:.1f}s, {half}/{blocks} swapped compressed {swapped.seconds:.1f}s; pixels equal")
