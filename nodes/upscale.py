"""The SeedVR2 upscaler node: IMAGE (frames) in, IMAGE out, through `seedvr2.upscale`."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils

from ..seedvr2.batching import plan_batches
from ..seedvr2.color import COLOR_CORRECTIONS
from ..seedvr2.loaders import LoadedDiT, LoadedVAE, upscale_models
from ..seedvr2.pipeline import UpscaleInputError, UpscaleSettings, upscale, validate_upscale_inputs
from ..seedvr2.pipeline.fit import MemoryFit
from ..seedvr2.pipeline.settings import MAX_SEED
from .types import CATEGORY, NODE_PREFIX, DiTType, VAEType

log = logging.getLogger("seedvr2")
PHASES = ("encode", "dit", "decode")


def make_room(device: torch.device, needed: int) -> int:
    """`MemoryFit.make_room` for ComfyUI: ask its model manager to unload only as many of its own
    models as the plan needs (the rest of the graph's models stay loaded when there is room), then
    report the free bytes."""
    mm.free_memory(needed, device)
    mm.soft_empty_cache()
    return int(mm.get_free_memory(device))


def plans_memory(dit: LoadedDiT, vae: LoadedVAE) -> bool:
    """Whether the run's memory plan sizes it ("auto" blocks or VAE tiles), so `make_room` frees
    just what it needs; otherwise (all manual) ComfyUI's models are unloaded as before."""
    handle = dit.block_swap
    auto_blocks = handle is not None and handle.active and getattr(handle.config, "auto", False)
    return bool(auto_blocks) or vae.tiling.tile_size == "auto"


def compiled_blocks(dit: LoadedDiT) -> int:
    """How many of the DiT's blocks run a torch.compile'd body (the loader's torch_compile)."""
    return sum(getattr(block, "compiled_body", None) is not None for block in getattr(dit.module, "blocks", ()))


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (dynamo's own counter): proof the compile ran."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class UpscaleNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}Upscale",
            display_name="SeedVR2 Upscale (BlockSwap)",
            category=CATEGORY,
            description=("One-step SeedVR2 upscaling of an image or a video (frames as an IMAGE batch). Runs VAE "
                         "encode, the DiT and VAE decode over all batches in turn, so only one model is on the GPU "
                         "at a time. RGBA in gives RGBA out."),
            inputs=[
                DiTType.Input("dit", tooltip="From SeedVR2 Load DiT (BlockSwap)."),
                VAEType.Input("vae", tooltip="From SeedVR2 Load VAE (BlockSwap)."),
                io.Image.Input("image", tooltip="Frames to upscale: one image, or a video's frames as a batch."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed. The same seed gives the same result on any GPU."),
                io.Int.Input("resolution", default=1080, min=16, max=16384, step=2,
                             tooltip="Output short side in pixels (e.g. 1080 for 1920x1080 from 16:9); "
                                     "the aspect ratio is kept and the output is exactly this size."),
                io.Int.Input("max_resolution", default=0, min=0, max=16384, step=2,
                             tooltip="Cap on the output long side in pixels, 0 = no cap. Useful for tall or "
                                     "panoramic inputs."),
                io.Int.Input("batch_size", default=5, min=1, max=1001, step=4,
                             tooltip="Frames per model call, 4n+1 (1, 5, 9, ... 21, ...). More frames: steadier "
                                     "video and faster per frame, more memory. Use 1 for single images."),
                io.Int.Input("temporal_overlap", default=0, min=0, max=1000,
                             tooltip="Frames shared by consecutive batches and crossfaded, to hide batch "
                                     "boundaries in video (e.g. 2-4). Must be smaller than batch_size."),
                io.Combo.Input("color_correction", options=list(COLOR_CORRECTIONS), default="wavelet",
                               tooltip="Match colours to the input: wavelet (official), adain (global statistics), "
                                       "lab (per-channel in Lab space), none."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="Upscaled frames, same count as the input.")],
        )

    @classmethod
    def validate_inputs(cls, batch_size: int | None, temporal_overlap: int | None) -> bool | str:
        # Only what widget min/max cannot express (4n+1, overlap < batch_size); naming an input here
        # skips ComfyUI's own range check for it, so the pipeline's check covers it instead.
        # Linked inputs arrive as None (unknown until the run, checked then).
        if batch_size is None:
            return True
        try:
            UpscaleSettings(batch_size=batch_size, temporal_overlap=temporal_overlap or 0)
        except UpscaleInputError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, dit: LoadedDiT, vae: LoadedVAE, image: torch.Tensor, seed: int, resolution: int,
                max_resolution: int, batch_size: int, temporal_overlap: int, color_correction: str) -> io.NodeOutput:
        settings = UpscaleSettings(resolution=resolution, max_resolution=max_resolution, batch_size=batch_size,
                                   temporal_overlap=temporal_overlap, color_correction=color_correction, seed=seed)
        validate_upscale_inputs(image, settings)  # before touching the GPU
        if dit.device.type == "cuda" and not plans_memory(dit, vae):
            mm.unload_all_models()  # manual settings: sized for the whole card, so ComfyUI's models leave it
            mm.soft_empty_cache()
        steps = len(plan_batches(image.shape[0], batch_size, temporal_overlap))
        bar = comfy.utils.ProgressBar(len(PHASES) * steps)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update_absolute(PHASES.index(phase) * total + done, len(PHASES) * total)

        memory = MemoryFit(make_room=make_room)  # the cap: the BlockSwap Config's vram_budget
        out = upscale(image, upscale_models(dit, vae, memory), settings, progress=progress,
                      check_interrupt=mm.throw_exception_if_processing_interrupted)
        if dit.block_swap is not None and dit.block_swap.active:
            log.info("SeedVR2 %s", dit.block_swap.stats().summary())
        if compiled_blocks(dit):
            log.info("SeedVR2 DiT ran %d/%d blocks torch.compile'd (%d graph(s) compiled in this process so far)",
                     compiled_blocks(dit), len(dit.module.blocks), compiled_graphs())
        mm.soft_empty_cache()
        dtype = getattr(mm, "intermediate_dtype", lambda: torch.float32)()  # ComfyUI >= 0.4 has it
        return io.NodeOutput(out.to(mm.intermediate_device(), dtype))
