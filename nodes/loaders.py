"""SeedVR2 DiT and VAE loader nodes. The DiT loader applies the BlockSwap Config through
`blockswap`: no weight reaches the GPU at load; blocks move on first use (swapped ones per use).

The DiT loader's `torch_compile` (the LAST widget, optional: saved workflows and API prompts
without it load with it off) compiles the loaded DiT's blocks, or returns them to eager, through
`seedvr2.speed`; it is applied on every execution, so the output always matches the widget, and
changing it re-runs the loader (ComfyUI keys its cache on the inputs)."""
from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management as mm

from ..seedvr2.checkpoint import CheckpointError
from ..seedvr2.loaders import DTYPES, load_dit_model, load_vae_model
from ..seedvr2.models import DEFAULT_DIT, DEFAULT_VAE, ModelFileError, checked_layout, find_model_file
from ..seedvr2.pipeline import VAETiling
from ..seedvr2.speed import SpeedOptions, apply_speed, compile_unavailable
from ..seedvr2.vae import DEFAULT_CHUNK_FRAMES, DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE
from . import model_folder
from .types import CATEGORY, NODE_PREFIX, BlockSwapConfigType, DiTType, VAEType

log = logging.getLogger("seedvr2")
DTYPE_OPTIONS = ["auto", *DTYPES]
TILE_MODES = ("auto", "manual")
COMPILE_TOOLTIP = ("torch.compile the transformer blocks: faster DiT on long runs (works with block swap). The first "
                   "upscale waits for the compile (about a minute); output equals the uncompiled run within "
                   "rounding. Needs Triton on NVIDIA GPUs (pip install triton, or triton-windows).")
DTYPE_TOOLTIP = ("Compute precision. auto: bf16 on GPUs that have it (RTX 30xx and newer), fp16 on older GPUs, "
                 "fp32 on CPU. fp8 checkpoints stay fp8 in memory either way and are upcast layer by layer.")


def device_options() -> list[str]:
    return ["auto", "cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]


def resolve_device(name: str) -> torch.device:
    return mm.get_torch_device() if name == "auto" else torch.device(name)


def model_input(kind: str, default: str, what: str) -> io.Combo.Input:
    options = model_folder.choices(kind)
    return io.Combo.Input(
        "model", options=options, default=default if default in options else (options[0] if options else None),
        tooltip=(f"{what} file in ComfyUI/models/SEEDVR2 (or a 'seedvr2:' folder of extra_model_paths.yaml). "
                 "Known files that are not there yet download from Hugging Face on first use."))


def check_model_file(model: object, kind: str) -> bool | str:
    """Queue-time check of the `model` input (ComfyUI skips its own list check because the loaders
    define `validate_inputs`): the name must be confined to the SeedVR2 model folders or be a known
    download (`model_folder.confined_model`), and a local file must hold a model of `kind` (its
    header only is read). True when fine, else the message ComfyUI shows under the input."""
    if model is None:
        return True  # linked from another node: known only when it runs; `execute` confines it then
    try:
        target = model_folder.confined_model(model, kind)
    except ModelFileError as exc:
        return str(exc)
    if target == model and not os.path.isabs(target) and find_model_file(target, model_folder.model_dirs()) is None:
        return True  # a known name that is not there yet: it downloads on execution
    try:
        checked_layout(target, kind)
    except (CheckpointError, ModelFileError, ValueError) as exc:
        return str(exc)  # ComfyUI shows it under the input name ("model - ...")
    return True


def speed_options(torch_compile: bool, device: torch.device) -> SpeedOptions:
    """The DiT loader's `torch_compile` -> `SpeedOptions`, refused (naming the input) where torch.compile
    cannot run on `device`."""
    if not isinstance(torch_compile, bool):
        raise ValueError(f"Load DiT: torch_compile must be true or false, got {torch_compile!r}")
    if torch_compile:
        reason = compile_unavailable(device)
        if reason is not None:
            raise ValueError(f"Load DiT: torch_compile on {device}: {reason}; or turn torch_compile off")
    return SpeedOptions.from_switches(compile=torch_compile)


def vae_tiling(tile_mode: str, tile_size: int, tile_overlap: int, chunk_frames: int) -> VAETiling:
    """The VAE loader's widgets -> `VAETiling`: tile_mode "auto" lets the run's memory plan pick
    the tile ("auto"), "manual" uses tile_size (0 = whole frames). `tile_mode` is the LAST input
    so that workflows saved before it existed keep their positional widget values."""
    if tile_mode not in TILE_MODES:
        raise ValueError(f"Load VAE: tile_mode must be one of {', '.join(TILE_MODES)}, got {tile_mode!r}")
    tile = "auto" if tile_mode == "auto" else (tile_size or None)
    return VAETiling(tile, tile_overlap, chunk_frames or None)


class LoadDiTNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}LoadDiT",
            display_name="SeedVR2 Load DiT (BlockSwap)",
            category=CATEGORY,
            description=("Loads the SeedVR2 diffusion transformer (3B, 7B, 7B sharp, 1.4B distilled; fp16/bf16/fp8, "
                         "GGUF, or ComfyUI's int8/mxfp8/nvfp4 files, kept compressed) into system RAM. Nothing goes to the GPU "
                         "here: blocks move there when first used, and with a BlockSwap Config the swapped blocks "
                         "stream in for each use, so the model fits GPUs far smaller than it."),
            inputs=[
                model_input("dit", DEFAULT_DIT, "DiT (seedvr2_ema_3b/7b ..., .safetensors, .gguf or .pth)"),
                io.Combo.Input("device", options=device_options(), default="auto",
                               tooltip="GPU to run on (auto: ComfyUI's device). The VAE runs on the same device."),
                io.Combo.Input("dtype", options=DTYPE_OPTIONS, default="auto", tooltip=DTYPE_TOOLTIP),
                io.Combo.Input("attention", options=["sdpa", "flash_attn"], default="sdpa",
                               tooltip="sdpa: PyTorch attention, works everywhere. flash_attn: needs the flash-attn "
                                       "package; the official numerics (bf16 attention)."),
                BlockSwapConfigType.Input(
                    "block_swap_config", optional=True,
                    tooltip="From a SeedVR2 BlockSwap Config node, to set how blocks are swapped. Without it, "
                            "on a GPU the swapped blocks are planned automatically for the free VRAM (as the "
                            "config's mode auto); on CPU nothing is swapped."),
                io.Boolean.Input("torch_compile", default=False, optional=True, tooltip=COMPILE_TOOLTIP),
            ],
            outputs=[DiTType.Output(display_name="dit", tooltip="Connect to SeedVR2 Upscale.")],
        )

    @classmethod
    def validate_inputs(cls, model: str) -> bool | str:
        return check_model_file(model, "dit")

    @classmethod
    def execute(cls, model: str, device: str, dtype: str, attention: str,
                block_swap_config: dict | None = None, torch_compile: bool = False) -> io.NodeOutput:
        where = resolve_device(device)
        speed = speed_options(torch_compile, where)  # before the load: a refusal costs nothing
        model = model_folder.confined_model(model, "dit")  # also when the name came through a link
        dit = load_dit_model(model, model_folder.download_dir(), device=where, dtype=dtype,
                             attention=attention, block_swap=block_swap_config, extra_dirs=model_folder.model_dirs())
        apply_speed(speed, dit=dit.module)  # compiled, or eager: what the widget says
        if torch_compile:
            log.info("SeedVR2 DiT %s: torch.compile on; the blocks compile on the first upscale", os.path.basename(model))
        return io.NodeOutput(dit)


class LoadVAENode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}LoadVAE",
            display_name="SeedVR2 Load VAE (BlockSwap)",
            category=CATEGORY,
            description=("Loads the SeedVR2 causal video VAE. It dominates VRAM at high resolution; tiling bounds "
                         "it to about one tile's worth whatever the frame size."),
            inputs=[
                model_input("vae", DEFAULT_VAE, "VAE (ema_vae ...)"),
                io.Combo.Input("dtype", options=DTYPE_OPTIONS, default="auto", tooltip=DTYPE_TOOLTIP),
                io.Int.Input("tile_size", default=DEFAULT_TILE_SIZE, min=0, max=4096, step=16,
                             tooltip="tile_mode manual only: VAE tile size in pixels; 0 = whole frames (fastest, needs ~16 GB per output "
                                     "megapixel). 512 keeps decode near 2 GB; lower it on 6-8 GB GPUs."),
                io.Int.Input("tile_overlap", default=DEFAULT_TILE_OVERLAP, min=0, max=512, step=8,
                             tooltip="Pixels shared and blended between neighbouring tiles; more hides seams better "
                                     "at some extra time. 64 is a good default."),
                io.Int.Input("chunk_frames", default=DEFAULT_CHUNK_FRAMES, min=0, max=128, step=4,
                             tooltip="Frames per causal VAE chunk (multiple of 4, exact); 0 = the whole batch "
                                     "at once (more memory)."),
                io.Combo.Input("tile_mode", options=list(TILE_MODES), default="auto",
                               tooltip="auto: before each run, pick the largest tile (or whole frames) that fits the "
                                       "free VRAM next to the DiT plan, and retry smaller on out-of-memory. manual: "
                                       "use tile_size as given."),
            ],
            outputs=[VAEType.Output(display_name="vae", tooltip="Connect to SeedVR2 Upscale.")],
        )

    @classmethod
    def validate_inputs(cls, model: str) -> bool | str:
        return check_model_file(model, "vae")

    @classmethod
    def execute(cls, model: str, dtype: str, tile_size: int, tile_overlap: int, chunk_frames: int,
                tile_mode: str = "auto") -> io.NodeOutput:
        tiling = vae_tiling(tile_mode, tile_size, tile_overlap, chunk_frames)
        model = model_folder.confined_model(model, "vae")
        vae = load_vae_model(model, model_folder.download_dir(), device=mm.get_torch_device(), dtype=dtype,
                             tiling=tiling, extra_dirs=model_folder.model_dirs())
        return io.NodeOutput(vae)
