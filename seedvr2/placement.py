"""Who moves model weights: the pipeline asks, a placement object does.

The pipeline never calls ``.to()`` on the DiT or the VAE. For each model it receives a
``Placement`` and calls ``load()`` before the model's phase and ``offload()`` after it, so only
one model occupies the compute device at a time. ``ModulePlacement`` is the plain version (move
the whole module); a block-swap handle implements the same two methods (``load()`` does nothing
because blocks load lazily, ``offload()`` drops the device copies).
"""
from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import torch
from torch import nn

log = logging.getLogger(__name__)


@runtime_checkable
class Placement(Protocol):
    """Puts a model's weights on the compute device (`load`) and takes them off (`offload`).

    Both must be idempotent: the pipeline may offload a model that is not loaded (on error paths).
    """

    def load(self) -> None: ...

    def offload(self) -> None: ...


class ModulePlacement:
    """Moves a whole module between `device` (compute) and `offload_device` with `.to()`.

    VRAM: the full module while loaded, nothing after `offload()` (the caching allocator keeps
    the freed blocks for reuse; `empty_cache` is the host's decision). When `device` equals
    `offload_device` both calls are no-ops, so CPU runs never copy weights.
    """

    def __init__(self, module: nn.Module, device: torch.device | str, offload_device: torch.device | str = "cpu"):
        self.module = module
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)

    def load(self) -> None:
        if self.device != self.offload_device:
            self.module.to(self.device)

    def offload(self) -> None:
        if self.device != self.offload_device:
            self.module.to(self.offload_device)

    def __repr__(self) -> str:
        return f"ModulePlacement({type(self.module).__name__}, device={self.device}, offload_device={self.offload_device})"
