"""Host-agnostic block swap for inference: stream transformer blocks between host and GPU.

    from blockswap import BlockSwapConfig, apply_block_swap
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=16), "cuda")
    ...                      # model(...) as usual; blocks load on use
    print(handle.stats().summary())
    handle.remove()          # the model is as it was, every tensor on the offload device

Works on any nn.Module whose transformer blocks are an ordered nn.ModuleList (`blocks` by
default) run in index order once per forward. Nothing here imports ComfyUI.
"""
from .config import BlockSwapConfig
from .engine import BlockSwapHandle, BlockSwapStats, apply_block_swap

__all__ = ["BlockSwapConfig", "BlockSwapHandle", "BlockSwapStats", "apply_block_swap"]
