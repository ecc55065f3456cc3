"""Load the models for a run, placed for their device: what the CLI and the ComfyUI loader nodes share.

`load_dit_model` finds (or downloads) the DiT file, checks it is a DiT, loads it on the host and,
on CUDA, hands placement to `blockswap` so that no weight touches the GPU before it is used (all
blocks stay in host memory until their first forward; swapped blocks are streamed per use).
`load_vae_model` does the same for the VAE, which moves whole (it is small) in its phases.

Host conditions (ComfyUI's executor), which both loaders guarantee whatever the caller's mode:

* Grad mode: ComfyUI runs every node inside `torch.inference_mode()`. Parameters created there are
  inference tensors, which block swap cannot rebind (`param.data = ...` leaves tensors without a
  version counter, and every later op fails). The loaders therefore build, load and apply with
  inference mode off (and grad off): the models hold normal tensors and run in any mode.
* Release: `LoadedDiT` removes its block-swap handle when it is garbage (ComfyUI drops a loader's
  cached output when an input changes, before the loader runs again). Neither the loaded object,
  its finalizer nor its placement forms a reference cycle, so with a cycle-free engine reference
  counting alone frees the old model before the next one loads: re-running the loader never
  holds two models.
* `SEEDVR2_BLOCKSWAP_CPU=1` (environment): on a CPU device the DiT is placed by block swap in the
  engine's CPU mode (`allow_cpu_device=True`, synchronous copies), exactly as on CUDA, so the
  streaming schedule can run (and be tested) in a real host without a GPU.

Host RAM: one copy of each model's weights (the loaders read files without a second copy; block
swap packs the DiT into its host masters block by block, so that adds one block transiently).
"""
from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:  # inside the ComfyUI pack, `blockswap` is our sibling package (the pack folder is not on sys.path)
    from .. import blockswap
except ImportError:  # `seedvr2` imported from the repository root (CLI, tests, benchmarks)
    import blockswap

from .models import preflight, resolve_model, resolve_pos_emb
from .pipeline import UpscaleModels, VAETiling
from .pipeline.fit import MemoryFit
from .placement import ModulePlacement, Placement
from .text_embeds import load_pos_emb

log = logging.getLogger("seedvr2")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BLOCKSWAP_CPU_ENV = "SEEDVR2_BLOCKSWAP_CPU"  # public contract (README): "1" streams blocks on a CPU device too
_TRUE = ("1", "true", "yes", "on")


def blockswap_on_cpu() -> bool:
    """Whether `SEEDVR2_BLOCKSWAP_CPU` asks for block swap's CPU mode (1/true/yes/on)."""
    return os.environ.get(BLOCKSWAP_CPU_ENV, "").strip().lower() in _TRUE


@contextmanager
def normal_tensors() -> Iterator[None]:
    """Create tensors that are neither inference tensors nor tracked by autograd, whatever mode the
    caller (ComfyUI: `torch.inference_mode()`) is in."""
    with torch.inference_mode(False), torch.no_grad():
        yield


@dataclass
class LoadedDiT:
    """A DiT ready to run: the module, who places it (block swap on CUDA), its text embedding.

    Owns `block_swap`: the handle is removed by `release()` or, at the latest, when this object is
    garbage (a `weakref.finalize` holding the handle, never this object, so no cycle is formed).
    """

    module: nn.Module
    placement: Placement
    pos_emb: torch.Tensor
    device: torch.device
    path: Path
    block_swap: Any = None  # the blockswap handle when block swap manages placement
    _release: weakref.finalize | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.block_swap is not None:
            # A module-level function and the handle: the finalizer must not reach `self`.
            self._release = weakref.finalize(self, _remove_block_swap, self.block_swap, Path(self.path).name)
            self._release.atexit = False  # the process is ending: nothing to give back

    def release(self) -> None:
        """Give the model back: block swap removed (weights stay on the host). Idempotent."""
        if self._release is not None:
            self._release()


def _remove_block_swap(handle: Any, name: str) -> None:
    """`LoadedDiT`'s finalizer: remove the handle (idempotent), and say so when it was streaming."""
    active = handle.stats().active
    handle.remove()
    if active:
        log.info("SeedVR2: block swap of %s removed (the loaded DiT was released)", name)


@dataclass
class LoadedVAE:
    module: nn.Module
    path: Path
    tiling: VAETiling


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on CUDA (fp16 on GPUs without bf16), fp32 on CPU (bf16 convolutions are slow there)."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
        return DTYPES[name]
    if device.type == "cuda":
        from .dit import default_compute_dtype

        return default_compute_dtype(device)
    return torch.float32


def load_dit_model(name: str, models_dir: str | os.PathLike, *, device: torch.device | str, dtype: str = "auto",
                   attention: str = "sdpa", block_swap: Any = None, download: bool = True,
                   extra_dirs: Iterable[str | os.PathLike] = (), cpu_block_swap: bool | None = None) -> LoadedDiT:
    """Load DiT `name` (a file in `models_dir`/`extra_dirs`, a path, or a known downloadable name).

    block_swap: a `blockswap.BlockSwapConfig` (or its dict). On CUDA the DiT is always placed by
    block swap (None: `default_block_swap`, i.e. ``blocks_to_swap="auto"``, planned for the free
    memory at run time), so loading never puts weights on the GPU; on a CPU or MPS device a given
    config is a logged no-op and the module is used in place.
    cpu_block_swap: on a CPU device, place the DiT by block swap in the engine's CPU mode as CUDA
    does (None: `SEEDVR2_BLOCKSWAP_CPU`).
    Loads and applies with inference mode off, so the model runs in any grad mode.
    """
    with normal_tensors():
        return _load_dit_model(name, models_dir, device=torch.device(device), dtype=dtype, attention=attention,
                               block_swap=block_swap, download=download, extra_dirs=list(extra_dirs),
                               cpu_block_swap=blockswap_on_cpu() if cpu_block_swap is None else cpu_block_swap)


def _load_dit_model(name: str, models_dir: str | os.PathLike, *, device: torch.device, dtype: str, attention: str,
                    block_swap: Any, download: bool, extra_dirs: list[str | os.PathLike],
                    cpu_block_swap: bool) -> LoadedDiT:
    from .dit import load_dit

    preflight(name, None, models_dir, download=download, extra_dirs=extra_dirs)  # DiT + pos_emb, one report
    layout = resolve_model(name, "dit", models_dir, download=download, extra_dirs=extra_dirs)
    dt = compute_dtype(dtype, device)
    # 16-bit compute stores 16-bit weights (an fp32 .pth halves in RAM); fp32 compute keeps the file's
    # dtype and upcasts per layer, so a 16-bit file is not doubled. fp8 always stays fp8.
    storage = dt if dt.itemsize == 2 else None
    module = load_dit(layout.path, device="cpu", dtype=storage, compute_dtype=dt, attention=attention)
    pos_emb = load_pos_emb(resolve_pos_emb(layout, models_dir, download=download, extra_dirs=extra_dirs))
    handle = None
    cpu_mode = cpu_block_swap and device.type == "cpu"
    if device.type == "cuda" or cpu_mode or block_swap is not None:
        config = default_block_swap(device) if block_swap is None else blockswap.BlockSwapConfig.coerce(block_swap)
        handle = blockswap.apply_block_swap(module, config, device, allow_cpu_device=cpu_mode)
    placement = handle if handle is not None and handle.active else ModulePlacement(module, device)
    return LoadedDiT(module, placement, pos_emb, device, layout.path, handle)


def default_block_swap(device: torch.device) -> Any:
    """The block swap config used when none is given: on CUDA ``blocks_to_swap="auto"`` (the run's
    memory plan picks the count for the free VRAM); elsewhere nothing swapped (CPU mode included)."""
    if device.type == "cuda":
        return blockswap.BlockSwapConfig(blocks_to_swap="auto")
    return blockswap.BlockSwapConfig()


def load_vae_model(name: str, models_dir: str | os.PathLike, *, device: torch.device | str, dtype: str = "auto",
                   tiling: VAETiling | None = None, download: bool = True,
                   extra_dirs: Iterable[str | os.PathLike] = ()) -> LoadedVAE:
    """Load VAE `name` (or the VAE inside an all-in-one DiT file) on the host, in the compute dtype
    of `device` (the VAE computes in its weights' dtype). Loads with inference mode off, like the DiT."""
    from .vae import load_vae

    layout = resolve_model(name, "vae", models_dir, download=download, extra_dirs=extra_dirs)
    with normal_tensors():
        module = load_vae(layout.path, device="cpu", dtype=compute_dtype(dtype, torch.device(device)))
    return LoadedVAE(module, layout.path, tiling or VAETiling())


def upscale_models(dit: LoadedDiT, vae: LoadedVAE, memory: MemoryFit | None = None) -> UpscaleModels:
    """What `seedvr2.upscale` needs: both models on the DiT's device, one at a time; `memory`: how
    the run fits the device (`UpscaleModels.memory`, None = defaults)."""
    return UpscaleModels(dit.module, vae.module, dit.pos_emb, dit.device, dit.placement,
                         ModulePlacement(vae.module, dit.device), vae.tiling, memory)
