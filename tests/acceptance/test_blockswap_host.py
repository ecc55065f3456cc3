"""Block swap's active path inside the real host, without a GPU.

A second ComfyUI server runs with `SEEDVR2_BLOCKSWAP_CPU=1`, so the DiT loader applies block swap
in the engine's CPU mode and the streaming schedule runs under ComfyUI's own executor (inference
mode, output caching, re-execution), exactly as on CUDA. On it, each example workflow with its
BlockSwap Config connected (half the tiny DiT's blocks swapped):

1. runs and writes the unswapped pixels (the reference comes from the suite's plain server with
   the config bypassed, same seed);
2. runs again with another seed: only the upscaler re-executes, on the loader's cached handle,
   and both runs log `N/M blocks swapped`;
3. runs with a changed config: the loader re-runs, the old handle is removed (logged), and the
   pixels are still the unswapped ones.

Then, on a medium DiT (~160 MiB, so that a model's size stands out of the server's RSS noise), a
changed config must not hold two models: the server's RSS (psutil) and its peak (VmHWM, reset
before the run) grow by well under one model. (That the old model is freed by reference counting
alone, without the collector ComfyUI runs now and then, is tests/test_host_conditions.py's job.)
"""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from . import media
from .conftest import comfy_tree, link_models
from .harness import ComfyServer
from .ui_to_api import convert
from .workflow import (BLOCKSWAP, LOAD_DIT, SMALL, UPSCALE, check_outputs, is_video, nodes_of, only, output_files,
                       output_nodes, small_prompt, without_blockswap)

pytestmark = pytest.mark.acceptance

ENV = {"SEEDVR2_BLOCKSWAP_CPU": "1"}
SEED = 913  # a seed no other acceptance test uses, so the reference run is never a cache hit
SWAPPED_LINE = re.compile(r"SeedVR2 .*?\b(\d+)/(\d+) blocks swapped\b(.*)$", re.MULTILINE)
MEDIUM_DIT = "medium_dit_3b.safetensors"
MEDIUM_BLOCKS = 8


def _tiny_blocks() -> int:
    from tests.tiny_models import DIT3B_TINY_CONFIG  # noqa: PLC0415  (imports torch)

    return DIT3B_TINY_CONFIG["num_layers"]


def write_medium_dit(path: Path) -> int:
    """A 3B-type DiT of width 512 and 8 blocks (~160 MiB fp32) with the tiny DiT's text width, so
    the tiny pos_emb beside it fits. Returns its size in bytes."""
    from safetensors.torch import save_file  # noqa: PLC0415

    from seedvr2.dit import build_dit  # noqa: PLC0415
    from tests.tiny_models import DIT3B_TINY_CONFIG, random_state_dict  # noqa: PLC0415

    n = MEDIUM_BLOCKS
    config = dict(DIT3B_TINY_CONFIG, vid_dim=512, txt_dim=512, emb_dim=6 * 512, heads=8, head_dim=64, rope_dim=64,
                  num_layers=n, mm_layers=n // 2, block_type=["mmdit_sr"] * n, window=[[4, 3, 3]] * n,
                  window_method=["720pwin_by_size_bysize", "720pswin_by_size_bysize"] * (n // 2))
    save_file(random_state_dict(build_dit(config).state_dict(), seed=11), str(path),
              metadata={"config": json.dumps(config)})
    return path.stat().st_size


# ------------------------------------------------------------------------------------------------
# The server with SEEDVR2_BLOCKSWAP_CPU=1: its own copy of the ComfyUI tree and model folder.

class SwapHost:
    def __init__(self, server: ComfyServer, medium_bytes: int):
        self.server, self.medium_bytes = server, medium_bytes


@pytest.fixture(scope="module")
def swap_host(comfy_install, model_files, tmp_path_factory, acceptance_report):
    root = comfy_tree(comfy_install, tmp_path_factory.mktemp("comfyui_blockswap_cpu"))
    folder = link_models(model_files, root)
    medium_bytes = write_medium_dit(folder / MEDIUM_DIT)
    server = ComfyServer(comfy_install.python, root, root.parent / "comfyui.log", extra_env=ENV)
    seconds = server.start()
    acceptance_report.add(f"block swap host ({' '.join(f'{k}={v}' for k, v in ENV.items())}): up in {seconds:.1f}s, "
                          f"RSS {server.rss_mb():.0f} MiB, log {server.log_path}")
    yield SwapHost(server, medium_bytes)
    server.stop()


@pytest.fixture(scope="module")
def host_inputs(comfy, swap_host, comfy_install, tmp_path_factory) -> dict[str, tuple[str, int]]:
    """The small clip and still, uploaded under the same names to both servers."""
    folder = tmp_path_factory.mktemp("blockswap_inputs")
    out = {}
    for kind, frames, suffix in (("video", SMALL["frames"], ".mp4"), ("image", 1, ".png")):
        path = media.make_input(comfy_install.python, folder / f"blockswap_host{suffix}", frames=frames,
                                width=SMALL["width"], height=SMALL["height"], fps=SMALL["fps"])
        names = {comfy.upload_image(path), swap_host.server.upload_image(path)}
        assert len(names) == 1, f"the servers stored the upload under different names: {names}"
        out[kind] = (names.pop(), frames)
    return out


# ------------------------------------------------------------------------------------------------
# Helpers.

def pixels(paths: list[Path]) -> np.ndarray:
    """Every frame of the output files, decoded to RGB uint8 [N, H, W, 3]."""
    frames = []
    for path in paths:
        if path.suffix == ".png":
            from PIL import Image  # noqa: PLC0415

            with Image.open(path) as im:
                frames.append(np.asarray(im.convert("RGB")))
        else:
            import av  # noqa: PLC0415

            with av.open(str(path)) as container:
                frames += [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    return np.stack(frames)


def output_pixels(server: ComfyServer, prompt: dict, result) -> np.ndarray:
    (node,) = output_nodes(prompt, server.object_info())
    return pixels(output_files(result, node, server.root))


def with_blockswap(prompt: dict, blocks_to_swap: int) -> dict:
    prompt = json.loads(json.dumps(prompt))
    ids = nodes_of(prompt, BLOCKSWAP)
    assert ids and "block_swap_config" in prompt[only(prompt, LOAD_DIT)]["inputs"], \
        "the example workflow does not feed a BlockSwap Config to the DiT loader"
    for node_id in ids:
        prompt[node_id]["inputs"].update(blocks_to_swap=blocks_to_swap, mode="manual")
    return prompt


def swapped_lines(log: str) -> list[tuple[int, int, str]]:
    """(swapped, total, rest of line) of each upscaler log line `SeedVR2 ... N/M blocks swapped`."""
    return [(int(n), int(m), rest) for n, m, rest in SWAPPED_LINE.findall(log)]


def forwards(rest: str) -> int | None:
    found = re.search(r"\b(\d+) forwards\b", rest)
    return int(found.group(1)) if found else None


def run_ok(server: ComfyServer, prompt: dict, python: Path, frames: int):
    mark = server.log_size()
    result = server.run(prompt, timeout=900)
    assert result.status == "success", f"{result.describe()}\n{server.log_tail(40)}"
    check_outputs(server, python, prompt, result, frames)
    return result, server.log_text(mark)


class RssSampler:
    """Peak RSS of a process during a block: VmHWM after resetting it (Linux clear_refs "5"), and
    psutil samples every 20 ms as a floor (and the only figure where the reset is not allowed)."""

    def __init__(self, pid: int):
        self.proc, self.pid = psutil.Process(pid), pid
        self.sampled = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            pass
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        if not self.hwm_reset:
            return self.sampled
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(self.sampled, int(line.split()[1]) * 1024)
        return self.sampled


MiB = float(1 << 20)


# ------------------------------------------------------------------------------------------------
# The tests.

EXAMPLE_KINDS = ["image", "video"]


@pytest.mark.parametrize("kind", EXAMPLE_KINDS)
def test_swapped_example_reuses_its_handle_and_matches_unswapped(comfy, swap_host, comfy_install, examples,
                                                                 host_inputs, model_files, acceptance_report, kind):
    found = [(name, ui, prompt) for name, (ui, prompt) in examples.items() if is_video(prompt) == (kind == "video")]
    assert found, f"no {kind} example workflow in {sorted(examples)}"
    name, ui, prompt = found[0]
    host, python = swap_host.server, comfy_install.python
    input_name, frames = host_inputs[kind]
    blocks = _tiny_blocks()
    half = blocks // 2

    def edit(p: dict, seed: int, prefix: str) -> dict:
        return small_prompt(p, input_name, dit=model_files.dit, vae=model_files.vae, seed=seed,
                            prefix=f"bs_host_{kind}_{prefix}")

    # The reference: the suite's plain server (no env var), BlockSwap Config bypassed.
    reference_prompt = edit(convert(without_blockswap(ui), comfy.object_info()), SEED, "reference")
    assert "block_swap_config" not in reference_prompt[only(reference_prompt, LOAD_DIT)]["inputs"]
    reference, _ = run_ok(comfy, reference_prompt, python, frames)
    expected = output_pixels(comfy, reference_prompt, reference)

    # 1. Half the blocks swapped: the streaming schedule ran, the pixels are the unswapped ones.
    first_prompt = edit(with_blockswap(prompt, half), SEED, "first")
    first, log1 = run_ok(host, first_prompt, python, frames)
    loader = only(first_prompt, LOAD_DIT)
    assert loader not in first.cached_nodes(), "the DiT loader was served from cache on its first run"
    lines1 = swapped_lines(log1)
    assert [(n, m) for n, m, _ in lines1] == [(half, blocks)], \
        f"expected one upscaler line '{half}/{blocks} blocks swapped', got {lines1}\n{log1[-3000:]}"
    np.testing.assert_array_equal(output_pixels(host, first_prompt, first), expected,
                                  err_msg="block-swapped run differs from the unswapped reference")

    # 2. Another seed: only the upscaler re-runs, on the same (cached) loader output and handle.
    second_prompt = edit(with_blockswap(prompt, half), SEED + 1, "second")
    second, log2 = run_ok(host, second_prompt, python, frames)
    assert loader in second.cached_nodes(), "the DiT loader ran again though its inputs did not change"
    assert only(second_prompt, UPSCALE) not in second.cached_nodes(), "the upscaler did not re-run"
    lines2 = swapped_lines(log2)
    assert [(n, m) for n, m, _ in lines2] == [(half, blocks)], f"second run: {lines2}\n{log2[-3000:]}"
    f1, f2 = forwards(lines1[0][2]), forwards(lines2[0][2])
    if f1 is not None and f2 is not None:  # the handle's counters run on: the same handle streamed again
        assert f2 > f1, f"forward count went from {f1} to {f2}: not the loader's handle"
    assert "removed (the loaded DiT was released)" not in log2, "the cached loader output was released"

    # 3. A changed config: the loader re-runs, the old handle is removed, the pixels stay exact.
    third_prompt = edit(with_blockswap(prompt, 1), SEED, "changed")
    third, log3 = run_ok(host, third_prompt, python, frames)
    assert loader not in third.cached_nodes(), "the DiT loader did not re-run for a changed BlockSwap Config"
    released = re.findall(rf"block swap of {re.escape(model_files.dit)} removed", log3)
    assert len(released) == 1, f"the old handle was not removed when its loader output was replaced\n{log3[-3000:]}"
    assert [(n, m) for n, m, _ in swapped_lines(log3)] == [(1, blocks)], log3[-3000:]
    np.testing.assert_array_equal(output_pixels(host, third_prompt, third), expected,
                                  err_msg="run with a changed config differs from the unswapped reference")
    # 4. The example as shipped (mode auto): the config reaches the engine as "auto", which without
    # a device to plan against (this CPU host) swaps every block; the pixels stay exact.
    auto_prompt = edit(prompt, SEED, "auto")
    assert all(auto_prompt[n]["inputs"]["mode"] == "auto" for n in nodes_of(auto_prompt, BLOCKSWAP))
    auto, log4 = run_ok(host, auto_prompt, python, frames)
    assert [(n, m) for n, m, _ in swapped_lines(log4)] == [(blocks, blocks)], log4[-3000:]
    np.testing.assert_array_equal(output_pixels(host, auto_prompt, auto), expected,
                                  err_msg="run with the auto config differs from the unswapped reference")
    acceptance_report.add(
        f"block swap in the host, example '{name}': {half}/{blocks} swapped {first.seconds:.1f}s, "
        f"re-run (upscaler only) {second.seconds:.1f}s, changed config 1/{blocks} {third.seconds:.1f}s, "
        f"reference (no block swap) {reference.seconds:.1f}s; pixels equal; log: {lines2[0][2].strip()[:120]}")


def test_changed_config_does_not_hold_two_models(swap_host, comfy_install, examples, host_inputs, model_files,
                                                 acceptance_report):
    """Re-running the loader (a changed BlockSwap Config) lets the old model go as ComfyUI drops the
    cached output: the server never holds two DiTs, its RSS does not grow by a model.

    Every block is swapped in both runs (only `prefetch_blocks` changes), so the run itself adds
    about one ring slot per prefetch block (CPU mode copies into "device" slots in RAM) and the
    load adds its transient (a fraction of the model): well under one model. Holding the old
    model while the new one loads adds a whole model on top."""
    name, (_, prompt) = next((n, e) for n, e in examples.items() if not is_video(e[1]))
    host, python = swap_host.server, comfy_install.python
    input_name, frames = host_inputs["image"]
    model = swap_host.medium_bytes

    def edit(prefetch_blocks: int, prefix: str) -> dict:
        edited = small_prompt(with_blockswap(prompt, MEDIUM_BLOCKS), input_name, dit=MEDIUM_DIT,
                              vae=model_files.vae, seed=SEED, prefix=f"bs_host_rss_{prefix}")
        for node_id in nodes_of(edited, BLOCKSWAP):
            edited[node_id]["inputs"]["prefetch_blocks"] = prefetch_blocks
        return edited

    first, log1 = run_ok(host, edit(2, "first"), python, frames)
    assert [(n, m) for n, m, _ in swapped_lines(log1)] == [(MEDIUM_BLOCKS, MEDIUM_BLOCKS)], log1[-3000:]
    before = psutil.Process(host.pid).memory_info().rss
    with RssSampler(host.pid) as rss:
        second, log2 = run_ok(host, edit(1, "changed"), python, frames)
    after = psutil.Process(host.pid).memory_info().rss
    assert only(prompt, LOAD_DIT) not in second.cached_nodes(), "the DiT loader did not re-run"
    assert [(n, m) for n, m, _ in swapped_lines(log2)] == [(MEDIUM_BLOCKS, MEDIUM_BLOCKS)], log2[-3000:]
    assert f"block swap of {MEDIUM_DIT} removed" in log2, "the old handle was not removed"
    growth, peak_growth = after - before, rss.peak - before
    acceptance_report.add(
        f"changed config on a {model / MiB:.0f} MiB DiT ('{name}', all blocks swapped, K 2 -> 1): RSS "
        f"{before / MiB:.0f} -> {after / MiB:.0f} MiB ({growth / MiB:+.0f}), peak during the run "
        f"{rss.peak / MiB:.0f} MiB ({peak_growth / MiB:+.0f}, {'VmHWM' if rss.hwm_reset else 'sampled'}); "
        f"runs {first.seconds:.1f}s, {second.seconds:.1f}s")
    # Measured on the 2-core CI box: +69 MiB (peak and after) for the 164 MiB DiT; holding the old
    # model while the new one loads adds about 1.3 models (the load's own transient on top).
    limit = 0.75 * model
    assert peak_growth < limit, (f"RSS peaked {peak_growth / MiB:.0f} MiB above the previous run's: the old "
                                 f"{model / MiB:.0f} MiB DiT was alive while the new one loaded")
    assert growth < limit, f"RSS grew {growth / MiB:.0f} MiB over a changed config; the DiT is {model / MiB:.0f} MiB"
