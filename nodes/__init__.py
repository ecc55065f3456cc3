"""ComfyUI nodes of the pack (V3 schema). The only package here that imports ComfyUI."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import model_folder, sample_input
from .blockswap_config import BlockSwapConfigNode
from .loaders import LoadDiTNode, LoadVAENode
from .upscale import UpscaleNode

model_folder.register()
sample_input.provide()


class SeedVR2BlockSwapExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [BlockSwapConfigNode, LoadDiTNode, LoadVAENode, UpscaleNode]


async def comfy_entrypoint() -> SeedVR2BlockSwapExtension:
    return SeedVR2BlockSwapExtension()
