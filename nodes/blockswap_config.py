"""The "SeedVR2 BlockSwap Config" node: emits a `blockswap.BlockSwapConfig` (as its dict) for
the DiT loader, which applies it. Validation lives in `BlockSwapConfig`, not here.

`mode` ("auto" by default) lets the run's memory plan pick the swapped blocks (and K) for the
free VRAM, capped by `vram_budget_gb` (0 = no cap); "manual" uses `blocks_to_swap` as given.
The two are the LAST inputs: UI-format workflows map widget values by position, so workflows
saved before they existed still load (their missing trailing values take these defaults)."""
from __future__ import annotations

from comfy_api.latest import io

from ..blockswap import BlockSwapConfig
from ..blockswap.config import MAX_PREFETCH, MAX_VRAM_BUDGET_GIB, PIN_MODES, PLACEMENTS
from .types import CATEGORY, NODE_PREFIX, BlockSwapConfigType

_DEFAULTS = BlockSwapConfig(blocks_to_swap=16)
MODES = ("auto", "manual")
DEFAULT_MODE = "auto"


def config_from_inputs(blocks_to_swap: int, swap_io_components: bool, prefetch_blocks: int, pin_memory: str,
                       placement: str, debug: bool, mode: str = DEFAULT_MODE,
                       vram_budget_gb: float = 0.0) -> BlockSwapConfig:
    """The node's widgets -> a validated config: mode "auto" swaps ``"auto"`` blocks (the plan
    decides), "manual" swaps `blocks_to_swap`; `vram_budget_gb` 0 means no cap (None)."""
    if mode not in MODES:
        raise ValueError(f"BlockSwap Config: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return BlockSwapConfig(blocks_to_swap="auto" if mode == "auto" else blocks_to_swap,
                           swap_io_components=swap_io_components, prefetch_blocks=prefetch_blocks,
                           pin_memory=pin_memory, placement=placement, debug=debug,
                           vram_budget=float(vram_budget_gb) if vram_budget_gb else None)


class BlockSwapConfigNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}BlockSwapConfig",
            display_name="SeedVR2 BlockSwap Config",
            category=CATEGORY,
            description=(
                "Run SeedVR2 on a GPU too small for the whole model: swapped transformer blocks stay in "
                "system RAM and stream to the GPU just before they run, loaded ahead on a side stream. "
                "Connect to the DiT loader's block_swap_config input. No effect on CPU/Mac."),
            inputs=[
                io.Int.Input(
                    "blocks_to_swap", default=_DEFAULTS.blocks_to_swap, min=0, max=36,
                    tooltip=(
                        "mode manual only: transformer blocks kept in RAM and streamed in for each use (0 = "
                        "none, all load to the GPU on first use). 3B has 32 blocks (~6.8 GB fp16), 7B has 36 (~16.5 GB "
                        "fp16), the 1.4B distilled has 6 (~2.9 GB fp16); a number above the loaded model's count swaps "
                        "all its blocks (logged). GGUF and other quantized files stream their blocks compressed. "
                        "Rough guide for the DiT alone: 3B on 8 GB: 20-32, 12 GB: 8-16, 16 GB+: 0. "
                        "7B on 8-12 GB: 36, 16 GB: 20-28, 24 GB: 8-16. Higher = less VRAM, more PCIe traffic."),
                ),
                io.Boolean.Input(
                    "swap_io_components", default=_DEFAULTS.swap_io_components,
                    tooltip=(
                        "Also stream the embeddings and output head (~0.1-0.2 GB) for each use instead of "
                        "keeping them on the GPU. Only worth it when every last 100 MB counts."),
                ),
                io.Int.Input(
                    "prefetch_blocks", default=_DEFAULTS.prefetch_blocks, min=1, max=MAX_PREFETCH,
                    tooltip=(
                        "How many swapped blocks are loaded ahead of use (GPU slots, each the size of the "
                        "largest block: ~0.32 GB for 3B, ~0.45 GB for 7B in fp16). 2 hides transfers in most "
                        "cases; 3 helps the 3B (uneven block sizes) and slow PCIe links; 1 saves VRAM."),
                ),
                io.Combo.Input(
                    "pin_memory", options=list(PIN_MODES), default=_DEFAULTS.pin_memory,
                    tooltip=(
                        "Page-lock the swapped blocks in RAM so copies run in the background. auto: pin "
                        "within a safe share of RAM (Windows counts it as shared GPU memory, ~40% of RAM), "
                        "staged copies beyond. on: pin all swapped blocks. off: never pin (slow, "
                        "for systems where pinning fails)."),
                ),
                io.Combo.Input(
                    "placement", options=list(PLACEMENTS), default=_DEFAULTS.placement,
                    tooltip=(
                        "Which blocks to swap. spread: evenly between the GPU-resident blocks, so their "
                        "compute hides the transfers (faster). first: blocks 0..N-1, as other SeedVR2 nodes do. "
                        "Same VRAM either way."),
                ),
                io.Boolean.Input(
                    "debug", default=_DEFAULTS.debug,
                    tooltip="Time transfers and GPU stalls and log a summary after each upscale (slight overhead).",
                ),
                io.Combo.Input(
                    "mode", options=list(MODES), default=DEFAULT_MODE,
                    tooltip=(
                        "auto: before each run, plan the swapped blocks and prefetch for the free VRAM (the plan "
                        "is logged in one line; out-of-memory retries with more swapped). manual: swap exactly "
                        "blocks_to_swap."),
                ),
                io.Float.Input(
                    "vram_budget_gb", default=0.0, min=0.0, max=MAX_VRAM_BUDGET_GIB, step=0.5,
                    tooltip=(
                        "mode auto: the most GPU memory (GiB) the run may use, to leave room for other work. "
                        "0 = what is free after ComfyUI unloads just enough of its other models."),
                ),
            ],
            outputs=[BlockSwapConfigType.Output(
                display_name="block_swap_config",
                tooltip="Connect to the SeedVR2 DiT loader's block_swap_config input.")],
        )

    @classmethod
    def execute(cls, blocks_to_swap: int, swap_io_components: bool, prefetch_blocks: int, pin_memory: str,
                placement: str, debug: bool, mode: str = DEFAULT_MODE, vram_budget_gb: float = 0.0) -> io.NodeOutput:
        config = config_from_inputs(blocks_to_swap, swap_io_components, prefetch_blocks, pin_memory, placement,
                                    debug, mode, vram_budget_gb)
        return io.NodeOutput(config.to_dict())
