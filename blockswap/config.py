"""`BlockSwapConfig`: what to swap and how, validated once where it enters.

ComfyUI passes the config between nodes as a plain dict (``to_dict``/``from_dict``); the engine
only ever sees a validated, immutable instance.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

log = logging.getLogger("blockswap")

PIN_MODES = ("auto", "on", "off")
PLACEMENTS = ("first", "spread")
MAX_PREFETCH = 8
AUTO = "auto"            # blocks_to_swap="auto": the run's memory plan picks the count
MAX_VRAM_BUDGET_GIB = 4096.0


def _check_int(name: str, value: Any, lo: int, hi: int | None) -> None:
    # bool is an int subclass; True as a block count is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"BlockSwapConfig.{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < lo or (hi is not None and value > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"BlockSwapConfig.{name} must be in {allowed}, got {value}")


def _check_budget(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"BlockSwapConfig.vram_budget must be a number of GiB or None (= free memory at run time), "
                         f"got {value!r} ({type(value).__name__})")
    if not 0 < value <= MAX_VRAM_BUDGET_GIB:
        raise ValueError(f"BlockSwapConfig.vram_budget must be in GiB, greater than 0 and at most "
                         f"{MAX_VRAM_BUDGET_GIB:g}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"BlockSwapConfig.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True)
class BlockSwapConfig:
    """How many transformer blocks to stream from host memory, and how.

    blocks_to_swap: blocks kept in host memory and streamed to the GPU for each use (0 = none;
        every block still starts on the host and moves to the GPU on first use). Larger than the
        model's block count is clamped, with a warning. "auto": the pipeline plans the count for
        the run (`seedvr2.plan_memory`) and sets it with `handle.reconfigure()` before the DiT
        phase; until then the engine treats "auto" as "every block swapped" (the smallest
        footprint, and nothing is on the device before the first forward anyway).
    vram_budget: with "auto", the device memory the run may use, in GiB (float); None = the
        free memory at run time (ComfyUI's, after freeing its own models, else
        `torch.cuda.mem_get_info`). Set it to leave room for other work on the GPU.
    swap_io_components: also stream the modules outside the blocks (embeddings, output head)
        for each use instead of keeping them on the GPU after first use. Saves little VRAM.
    prefetch_blocks: K, the number of device slots swapped blocks are loaded into ahead of use.
    pin_memory: "auto" pins swapped blocks' host copies within a RAM budget (staged copies past
        it), "on" pins them all, "off" never pins (plain pageable copies, slowest).
    placement: "first" swaps blocks 0..N-1 (the classic choice); "spread" spaces swapped blocks
        evenly between resident ones so resident compute hides their transfers.
    debug: time transfers and compute stalls with CUDA events (adds a little overhead).
    """

    blocks_to_swap: int | str = 0
    swap_io_components: bool = False
    prefetch_blocks: int = 2
    pin_memory: str = "auto"
    placement: str = "spread"
    debug: bool = False
    vram_budget: float | None = None

    def __post_init__(self) -> None:
        if self.blocks_to_swap != AUTO:
            if isinstance(self.blocks_to_swap, str):
                raise ValueError(f"BlockSwapConfig.blocks_to_swap must be an integer >= 0 or {AUTO!r}, "
                                 f"got {self.blocks_to_swap!r}")
            _check_int("blocks_to_swap", self.blocks_to_swap, 0, None)
        _check_budget(self.vram_budget)
        _check_int("prefetch_blocks", self.prefetch_blocks, 1, MAX_PREFETCH)
        _check_choice("pin_memory", self.pin_memory, PIN_MODES)
        _check_choice("placement", self.placement, PLACEMENTS)
        for name in ("swap_io_components", "debug"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BlockSwapConfig.{name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BlockSwapConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"BlockSwapConfig got unknown field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def coerce(cls, value: "BlockSwapConfig | Mapping[str, Any] | None") -> "BlockSwapConfig":
        """Accept a config, its dict form, or None (= swap nothing)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ValueError(f"expected a BlockSwapConfig or a dict, got {type(value).__name__}")

    @property
    def auto(self) -> bool:
        """Whether the run's memory plan chooses `blocks_to_swap`."""
        return self.blocks_to_swap == AUTO

    @property
    def vram_budget_bytes(self) -> int | None:
        return None if self.vram_budget is None else int(self.vram_budget * (1 << 30))

    def swapped_indices(self, num_blocks: int) -> tuple[int, ...]:
        """Indices of the blocks to swap in a model of `num_blocks` blocks (clamped; "auto":
        all of them until the plan sets a count)."""
        n = num_blocks if self.auto else self.blocks_to_swap
        if n > num_blocks:
            log.warning("BlockSwap: blocks_to_swap=%d but the model has %d blocks; swapping all %d",
                        n, num_blocks, num_blocks)
            n = num_blocks
        if n == 0:
            return ()
        if self.placement == "first":
            return tuple(range(n))
        # Midpoints of n equal segments: distinct because the spacing num_blocks/n is >= 1.
        return tuple(((2 * i + 1) * num_blocks) // (2 * n) for i in range(n))
