"""Fitting a run to the device: resolve "auto" with the memory plan, retry out-of-memory batches smaller.

Before the run (`RunFit.start`), when the DiT's block swap asks for ``blocks_to_swap="auto"`` or the
VAE tiling for ``tile_size="auto"``:

1. the budget is the device's free memory (torch's cached but unused blocks count as free),
   capped by the configured ``vram_budget``. A host may first make room: ``MemoryFit.make_room(
   device, needed)`` is called with what the best plan under the cap needs (ComfyUI:
   ``comfy.model_management.free_memory(needed, device)``, which unloads only as many of its
   models as that takes) and returns the free bytes afterwards;
2. `seedvr2.plan_memory` picks blocks to swap, K, the DiT tiles (single frames too large for the
   budget) and the VAE tile for that budget; the handle is reconfigured
   (`BlockSwapHandle.reconfigure`, valid between phases), the DiT tiles (with auto blocks) and the
   VAE tile applied;
3. the plan is logged in one line. A plan that does not fit still runs with its smallest
   settings (with a warning saying why and what would fit): the prediction may be pessimistic,
   and the out-of-memory fallback below is the last word.

During the run (`RunFit.retry`), a ``torch.OutOfMemoryError``:

* in a VAE phase retries the batch with half the tile (whole frames first become one tile, so the
  canvases leave the device), down to `MIN_AUTO_TILE`;
* in the DiT phase retries the batch with more blocks swapped (+1/4 of the blocks, then K = 1),
  then (every block swapped, or no block swap) in spatial DiT tiles (`seedvr2.dit.tiling`): whole
  frames become tiles of at most half the frame's tokens, and each further failure halves the
  tile's token budget, down to the floor tiles;
each fallback is logged and stays for the rest of the run. The result is unchanged except for the
VAE and DiT tiling: batches are pure functions of the frames, the settings and the per-batch noise, and a
retried decode has pushed nothing into the crossfade yet. Only when the smallest plan fails too is
the error raised. Without a device plan (CPU, nothing "auto") the fallback still applies.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn

from ..vae.model import DEFAULT_TILE_SIZE
from .settings import UpscaleSettings

log = logging.getLogger("seedvr2")

AUTO = "auto"
T = TypeVar("T")
MakeRoom = Callable[[torch.device, int], int]


@dataclass(frozen=True)
class MemoryFit:
    """How a run fits its device (`UpscaleModels.memory`).

    vram_budget: bytes the run may use; None = the block swap config's ``vram_budget``, else the
        free memory at run time. make_room(device, needed_bytes) -> free bytes: the host's way to
        make room before the run (None: just read the free memory). reserve_bytes: kept free
        (None: `seedvr2.planner.default_reserve_bytes`). oom_fallback: retry out-of-memory
        batches with smaller settings. plan_on_cpu: plan on a CPU device too (tests, emulation).
    """

    vram_budget: int | None = None
    make_room: MakeRoom | None = None
    reserve_bytes: int | None = None
    oom_fallback: bool = True
    plan_on_cpu: bool = False


def free_device_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, counting torch's cached but unallocated blocks as free."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def total_device_memory(device: torch.device) -> int:
    return int(torch.cuda.mem_get_info(device)[1])


class RunFit:
    """The run's current memory settings (VAE tiling, swapped blocks) and their fallbacks."""

    def __init__(self, vae_tiling: Any, handle: Any, canvas_hw: tuple[int, int], fit: MemoryFit, device: torch.device):
        self.vae_tiling = vae_tiling
        self.handle = handle if handle is not None and callable(getattr(handle, "reconfigure", None)) else None
        self.canvas_hw = canvas_hw
        self.fit = fit
        self.device = device
        self.plan = None
        self.fallbacks: list[str] = []
        self.dit_tile: int | None = None  # DiT tile budget, tokens per latent frame (None: whole frames)
        self.dit_windows: tuple[int, int, int] = (4, 3, 3)

    # --- before the run --------------------------------------------------------------------------

    @classmethod
    def start(cls, dit: nn.Module, vae: nn.Module, vae_tiling: Any, dit_placement: Any, frames_shape: tuple[int, ...],
              canvas_hw: tuple[int, int], settings: UpscaleSettings, device: torch.device,
              fit: MemoryFit | None) -> "RunFit":
        """Resolve "auto" (see the module docstring) and return the run's fit state."""
        fit = fit or MemoryFit()
        run = cls(vae_tiling, dit_placement, canvas_hw, fit, device)
        run.dit_windows = tuple(getattr(getattr(dit, "config", None), "num_windows", run.dit_windows))
        config = getattr(run.handle, "config", None)
        auto_blocks = bool(getattr(config, "auto", False)) and getattr(run.handle, "active", False)
        auto_tiles = vae_tiling.tile_size == AUTO
        can_plan = device.type == "cuda" or fit.plan_on_cpu
        if (auto_blocks or auto_tiles) and can_plan:
            run._resolve(dit, vae, frames_shape, settings, config, auto_blocks, auto_tiles)
        if run.vae_tiling.tile_size == AUTO:  # nothing to plan against (CPU): the default tile
            run.vae_tiling = replace(run.vae_tiling, tile_size=DEFAULT_TILE_SIZE)
        return run

    def _resolve(self, dit: nn.Module, vae: nn.Module, frames_shape: tuple[int, ...], settings: UpscaleSettings,
                 config: Any, auto_blocks: bool, auto_tiles: bool) -> None:
        from ..planner import plan_memory

        budget = self.fit.vram_budget
        if budget is None and config is not None:
            budget = config.vram_budget_bytes
        prefetch = getattr(config, "prefetch_blocks", 2)
        placement = getattr(config, "placement", "spread")
        overlap = self.vae_tiling.tile_overlap

        def plan_for(vram: int):
            return plan_memory(dit, vae, frames_shape, settings, vram, reserve_bytes=self.fit.reserve_bytes,
                               prefetch_blocks=prefetch, tile_overlap=overlap, placement=placement)

        if self.device.type == "cuda":
            # What the best plan under the cap needs, made room for by the host, then what is free.
            cap = budget if budget is not None else total_device_memory(self.device)
            ideal = plan_for(cap)
            needed = min(cap, max(ideal.peak_bytes.values()) + ideal.reserve_bytes)
            free = (self.fit.make_room(self.device, needed) if self.fit.make_room is not None
                    else free_device_memory(self.device))
            budget = min(cap, int(free))
        elif budget is None:
            if self.fit.make_room is None:
                raise ValueError("a memory plan on a CPU device needs MemoryFit.vram_budget or make_room")
            budget = self.fit.make_room(self.device, 0)
        plan = plan_for(int(budget))
        self.plan = plan
        if auto_blocks:
            self.handle.reconfigure(plan.blocks_to_swap, prefetch_blocks=plan.prefetch_blocks)
            self.dit_tile = plan.dit_tile_tokens
        if auto_tiles:
            self.vae_tiling = replace(self.vae_tiling, tile_size=plan.vae_tile_size, tile_overlap=plan.vae_tile_overlap,
                                      chunk_frames=plan.vae_chunk_frames)
        log.info("SeedVR2 memory plan: %s", plan.summary())
        if not plan.fits:
            log.warning("SeedVR2: the memory plan does not fit (%s); running with the smallest settings, and "
                        "retrying smaller on out-of-memory", plan.reason)

    # --- during the run --------------------------------------------------------------------------

    def retry(self, phase: str, attempt: Callable[[], T]) -> T:
        """Run `attempt`; on out-of-memory, shrink the settings of `phase` and run it again."""
        while True:
            try:
                return attempt()
            except torch.OutOfMemoryError:
                if not self.fit.oom_fallback:
                    raise
                change = self._shrink_vae() if phase in ("encode", "decode") else self._shrink_dit()
                if change is None:
                    raise
            # Outside the handler: the traceback (and the failed attempt's tensors) is gone now.
            self._release_cache()
            message = f"out of memory in the {phase} phase; retrying the batch with {change}"
            self.fallbacks.append(message)
            log.warning("SeedVR2: %s", message)

    def _shrink_vae(self) -> str | None:
        from ..planner import MIN_AUTO_TILE, tile_overlap_for

        tile = self.vae_tiling.tile_size
        if tile is None:
            side = max(self.canvas_hw)
            new = max(MIN_AUTO_TILE, -(-side // 64) * 64)  # one tile: the canvases leave the device
        elif tile > MIN_AUTO_TILE:
            new = max(MIN_AUTO_TILE, tile // 2 // 8 * 8)
        else:
            return None
        overlap = tile_overlap_for(new, self.vae_tiling.tile_overlap)
        self.vae_tiling = replace(self.vae_tiling, tile_size=new, tile_overlap=overlap)
        return f"VAE tiles of {new} px (overlap {overlap})"

    def _shrink_dit(self) -> str | None:
        handle = self.handle
        if handle is None or not getattr(handle, "active", False):
            return self._shrink_dit_tile()
        stats = handle.stats()
        total, swapped = stats.blocks_total, stats.blocks_swapped
        k = stats.prefetch_blocks or handle.config.prefetch_blocks
        if swapped < total:
            new = min(total, swapped + max(1, total // 4))
            handle.reconfigure(new)
            return f"{new}/{total} DiT blocks swapped"
        if k > 1:
            handle.reconfigure(total, prefetch_blocks=1)
            return f"all {total} DiT blocks swapped and K=1"
        return self._shrink_dit_tile()

    def _shrink_dit_tile(self) -> str | None:
        """Whole frames -> tiles of at most half the frame's tokens; tiles -> half the budget;
        None at the floor (`seedvr2.dit.tiling.plan_dit_tiles`)."""
        from ..dit.tiling import plan_dit_tiles

        latent = (self.canvas_hw[0] // 8, self.canvas_hw[1] // 8)
        current = plan_dit_tiles(latent, self.dit_tile, self.dit_windows)
        smaller = plan_dit_tiles(latent, max(1, current.tile_tokens // 2), self.dit_windows)
        if smaller.tile_tokens >= current.tile_tokens:
            return None
        self.dit_tile = smaller.tile_tokens
        return f"the DiT in {smaller.describe()}"

    def _release_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
