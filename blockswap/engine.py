"""The block-swap engine: lazy residency, a prefetch ring for swapped blocks, and the handle.

At apply time every tensor of the model is packed into per-unit host masters (a unit is one
transformer block, one IO module, or the loose tensors of the root) and NOTHING is on the
compute device. Forward hooks then place weights on use:

* resident units copy their master into a device buffer on first use and stay there;
* swapped blocks are bound to one of K preallocated device slots only while they run. After a
  block runs, its slot is refilled with the swapped block needed K positions later, cyclically,
  so the next forward's first blocks load while this forward finishes (wrap-around);
* swapped IO modules use one slot of their own, loaded on use.

Weights are never copied back: inference never changes them, so dropping a device copy is just
rebinding the Parameter to its host master.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .config import BlockSwapConfig
from .guard import MoveGuard
from .host import HostUnit, default_pin_budget, pin, unpin
from .transfers import CudaTransfers, SyncTransfers

log = logging.getLogger("blockswap")

GiB = float(1 << 30)
_MISSING = object()


class _Ring:
    """K device slots shared by the swapped units, in execution order `units`."""

    def __init__(self, units: list[HostUnit], slots: int, prefetch: bool, engine: "BlockSwapHandle"):
        self.units = units
        self.k = min(slots, len(units))
        self.prefetch = prefetch
        self.engine = engine
        self.slot_bytes = max(u.nbytes for u in units)
        self.buffers: list[torch.Tensor] = []
        self.owner: list[int | None] = [None] * self.k      # rank loaded (or loading) in each slot
        self.slot_of: list[int | None] = [None] * len(units)
        self.views: list[dict[int, list[torch.Tensor]]] = [{} for _ in units]
        self.ready = [engine.transfers.event() for _ in range(self.k)]
        self.free = [engine.transfers.event() for _ in range(self.k)]
        self.freed = [False] * self.k  # whether `free[s]` has been recorded since allocation

    @property
    def device_bytes(self) -> int:
        return self.slot_bytes * len(self.buffers)

    def acquire(self, rank: int) -> None:
        """Before unit `rank` runs: make sure it (and with prefetch, the next K-1) is loading,
        make compute wait for it, bind its tensors to the slot."""
        if not self.buffers:
            self._allocate()
        if self.slot_of[rank] is None and self.prefetch:  # a prefetch miss (IO units always load on demand)
            self.engine.on_demand_loads += 1
        self._ensure(rank, self.k if self.prefetch else 1)
        slot = self.slot_of[rank]
        self.engine.transfers.wait(self.ready[slot])
        views = self.views[rank].get(slot)
        if views is None:
            views = self.views[rank][slot] = self.units[rank].views_into(self.buffers[slot])
        self.units[rank].bind(views)

    def release(self, rank: int) -> None:
        """After unit `rank` ran: rebind to the host master, mark its slot reusable once compute
        is done with it, and start loading the unit needed K positions later."""
        unit = self.units[rank]
        unit.bind(unit.master_views)
        slot = self.slot_of[rank]
        self.engine.transfers.record_free(self.free[slot])
        self.freed[slot] = True
        if self.prefetch:
            self._ensure((rank + 1) % len(self.units), self.k)

    def _ensure(self, first: int, count: int) -> None:
        n = len(self.units)
        window = [(first + j) % n for j in range(count)]
        for rank in window:
            if self.slot_of[rank] is None:
                self._load(rank, self._victim(first, window))

    def _victim(self, first: int, window: list[int]) -> int:
        """The slot to overwrite: an empty one, else the one whose unit is needed last."""
        n = len(self.units)
        best, best_distance = 0, -1
        for slot, owner in enumerate(self.owner):
            if owner is None:
                return slot
            if owner in window:
                continue
            distance = (owner - first) % n
            if distance > best_distance:
                best, best_distance = slot, distance
        return best

    def _load(self, rank: int, slot: int) -> None:
        previous = self.owner[slot]
        if previous is not None:
            self.slot_of[previous] = None
        unit = self.units[rank]
        self.engine.transfers.copy(self.buffers[slot][:unit.nbytes], unit.buffer, pinned=unit.pinned,
                                   after=self.free[slot] if self.freed[slot] else None, ready=self.ready[slot])
        self.owner[slot], self.slot_of[rank] = rank, slot
        self.engine.bytes_this_forward += unit.nbytes
        self.engine.block_loads += 1

    def _allocate(self) -> None:
        with torch.inference_mode(False):
            self.buffers = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.engine.device)
                            for _ in range(self.k)]
        self.engine.note_device_bytes()

    def drop(self) -> None:
        self.buffers = []
        self.owner = [None] * self.k
        self.slot_of = [None] * len(self.units)
        self.views = [{} for _ in self.units]
        self.freed = [False] * self.k


@dataclass
class BlockSwapStats:
    """What the engine did, in units a user can read (`summary()` for a log line)."""

    active: bool
    device: str
    blocks_total: int = 0
    blocks_swapped: int = 0
    blocks_resident: int = 0
    swapped_indices: tuple[int, ...] = ()
    io_swapped: bool = False
    prefetch_blocks: int = 0
    bytes_streamed_per_forward: int = 0
    bytes_streamed_last_forward: int = 0
    device_weight_bytes: int = 0
    device_weight_bytes_peak: int = 0
    host_weight_bytes: int = 0
    pinned_bytes: int = 0
    copy_mode: str = ""
    forwards: int = 0
    block_loads: int = 0
    on_demand_loads: int = 0
    transfer_ms: float | None = None
    stall_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.active:
            return f"BlockSwap inactive on {self.device}" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        text = (f"BlockSwap on {self.device}: {self.blocks_swapped}/{self.blocks_total} blocks swapped "
                f"(K={self.prefetch_blocks}, {self.copy_mode}), {self.bytes_streamed_per_forward / GiB:.2f} GiB "
                f"streamed per forward, weights on device {self.device_weight_bytes / GiB:.2f} GiB "
                f"(peak {self.device_weight_bytes_peak / GiB:.2f}), pinned {self.pinned_bytes / GiB:.2f} GiB, "
                f"{self.forwards} forwards, {self.on_demand_loads} on-demand loads")
        if self.transfer_ms is not None:
            text += f", transfers {self.transfer_ms:.1f} ms, compute stalls {self.stall_ms:.1f} ms"
        return text


class BlockSwapHandle:
    """Returned by `apply_block_swap`. `load()`/`offload()` follow the pipeline's placement
    protocol; `remove()` restores the model; `stats()` reports."""

    def __init__(self, model: nn.Module, config: BlockSwapConfig, device: torch.device,
                 offload_device: torch.device, blocks_attr: str, active: bool, note: str = ""):
        self.model = model
        self.config = config
        self.device = device
        self.offload_device = offload_device
        self.active = active
        self.removed = False
        self._notes = [note] if note else []
        self.block_loads = self.on_demand_loads = self.forwards = 0
        self.bytes_this_forward = self.bytes_last_forward = 0
        self._device_peak = 0
        if not active:
            return
        blocks = _get_blocks(model, blocks_attr)
        self.swapped = config.swapped_indices(len(blocks))
        self.transfers = CudaTransfers(device, config.debug) if device.type == "cuda" else SyncTransfers(device, config.debug)
        self._wrapped: list[tuple[nn.Module, Any]] = []

        # 1. Host masters for every unit; the model's tensors end up in them, nothing on the device.
        self.blocks = [HostUnit(f"{blocks_attr}.{i}", b, offload_device) for i, b in enumerate(blocks)]
        io_modules, root_modules = _io_modules(model, blocks)
        io_modules = [(name, m) for name, m in io_modules if _has_tensors(m)]
        self.io = [HostUnit(name, m, offload_device) for name, m in io_modules]
        self.loose = [HostUnit(name or "<root>", m, offload_device, recurse=False) for name, m in root_modules
                      if m._parameters or m._buffers]
        swapped_set = set(self.swapped)
        swapped_units = [self.blocks[i] for i in self.swapped]
        swapped_io = self.io if config.swap_io_components else []
        self.resident = [u for i, u in enumerate(self.blocks) if i not in swapped_set]
        self.resident_io = self.loose + ([] if config.swap_io_components else self.io)
        self._device_copies: dict[int, torch.Tensor] = {}

        # 2. Pin the masters that are streamed repeatedly; fall back to staging past the budget.
        self._pin(swapped_units + swapped_io)

        # 3. Rings and hooks.
        self.ring = _Ring(swapped_units, config.prefetch_blocks, prefetch=True, engine=self) if swapped_units else None
        self.io_ring = _Ring(swapped_io, 1, prefetch=False, engine=self) if swapped_io else None
        self._wrap(model, self._before_model, None)
        for i, (unit, module) in enumerate(zip(self.blocks, blocks)):
            if i in swapped_set:
                rank = self.swapped.index(i)
                self._wrap(module, lambda r=rank: self.ring.acquire(r), lambda r=rank: self.ring.release(r))
            else:
                self._wrap(module, lambda u=unit: self._make_resident(u), None)
        for rank, (_, module) in enumerate(io_modules if swapped_io else []):
            self._wrap(module, lambda r=rank: self.io_ring.acquire(r), lambda r=rank: self.io_ring.release(r))
        self.guard = MoveGuard([model, *blocks, *(m for _, m in io_modules)], type(model).__name__)
        log.info(self.stats().summary())

    # --- placement ------------------------------------------------------------------------------

    def _wrap(self, module: nn.Module, before: Callable[[], None], after: Callable[[], None] | None) -> None:
        """Wrap `module.forward`: `before` places the weights, `after` (in a finally, so also on
        an interrupt, which ComfyUI raises as a BaseException) drops them again."""
        self._wrapped.append((module, module.__dict__.get("forward", _MISSING)))
        original = module.forward

        if after is None:
            def forward(*args: Any, **kwargs: Any) -> Any:
                before()
                return original(*args, **kwargs)
        else:
            def forward(*args: Any, **kwargs: Any) -> Any:
                before()
                try:
                    return original(*args, **kwargs)
                finally:
                    after()

        module.__dict__["forward"] = forward

    def _before_model(self) -> None:
        self.forwards += 1
        self.bytes_last_forward, self.bytes_this_forward = self.bytes_this_forward, 0
        for unit in self.resident_io:
            self._make_resident(unit)

    def _make_resident(self, unit: HostUnit) -> None:
        if id(unit) in self._device_copies:
            return
        with torch.inference_mode(False):
            flat = torch.empty(unit.nbytes, dtype=torch.uint8, device=self.device)
        flat.copy_(unit.buffer, non_blocking=unit.pinned)
        self._device_copies[id(unit)] = flat
        unit.bind(unit.views_into(flat))
        self.note_device_bytes()

    def _pin(self, units: list[HostUnit]) -> None:
        self.pinned_bytes = 0
        mode = self.config.pin_memory
        if self.device.type != "cuda" or self.offload_device.type != "cpu" or not units or mode == "off":
            self.copy_mode = "pageable" if self.device.type == "cuda" and units else "synchronous"
            return
        budget = float("inf") if mode == "on" else default_pin_budget()
        refused = 0
        for unit in units:
            if self.pinned_bytes + unit.nbytes > budget:
                continue
            if pin(unit.buffer):
                unit.pinned = True
                self.pinned_bytes += unit.nbytes
            else:
                refused += 1
        unpinned = [u for u in units if not u.pinned]
        if not unpinned:
            self.copy_mode = "pinned"
            return
        staging = self.transfers.enable_staging(max(u.nbytes for u in unpinned), 2)
        self.copy_mode = "pinned+staged" if staging and self.pinned_bytes else ("staged" if staging else "pageable")
        why = f"the driver refused {refused}" if refused else f"the pin budget of {budget / GiB:.1f} GiB was reached"
        log.warning("BlockSwap: %d of %d swapped units are not pinned (%s); they use %s copies, which are slower.",
                    len(unpinned), len(units), why, "staged" if staging else "pageable (host-blocking)")

    def note_device_bytes(self) -> None:
        self._device_peak = max(self._device_peak, self._device_bytes())

    def _device_bytes(self) -> int:
        if not self.active:
            return 0
        rings = [r for r in (self.ring, self.io_ring) if r is not None]
        return sum(t.numel() for t in self._device_copies.values()) + sum(r.device_bytes for r in rings)

    # --- public ----------------------------------------------------------------------------------

    def load(self) -> None:
        """Placement protocol: nothing to do, weights load on first use."""

    def offload(self) -> None:
        """Drop every device copy (residents, slots); the next forward loads lazily again.
        Waits for in-flight copies and compute first (a phase boundary, not the hot path)."""
        if not self.active or self.removed:
            return
        self.transfers.synchronize()
        for unit in self.resident + self.resident_io:
            unit.bind(unit.master_views)
        self._device_copies.clear()
        for ring in (self.ring, self.io_ring):
            if ring is not None:
                ring.drop()

    def remove(self) -> None:
        """Restore the model as it was: original forwards (no hooks), every tensor on the offload
        device, placement methods back. Idempotent."""
        if self.removed:
            return
        if not self.active:
            self.removed = True
            return
        self.offload()
        self.removed = True
        for module, previous in reversed(self._wrapped):
            if previous is _MISSING:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = previous
        self._wrapped.clear()
        self.guard.restore()
        self.transfers.close()
        for unit in self.blocks + self.io:
            if unit.pinned:
                unpin(unit.buffer)
                unit.pinned = False
        self.model.__dict__.pop("_blockswap_handle", None)
        # The model's tensors keep their (host) storage; drop ours so a later re-apply or the
        # model's own deletion frees it at once instead of at the next cyclic garbage collection.
        self.active = False
        self._notes.append("removed")
        self.blocks, self.io, self.loose, self.resident, self.resident_io = [], [], [], [], []
        self.ring = self.io_ring = None

    def placement(self) -> list[str]:
        """Per block: "device" while its tensors are bound to device memory, else "offload"."""
        if not self.active:
            return []
        return ["offload" if u.on_master() else "device" for u in self.blocks]

    def stats(self) -> BlockSwapStats:
        if not self.active:
            return BlockSwapStats(active=False, device=str(self.device), notes=list(self._notes))
        swapped_io = self.io if self.config.swap_io_components else []
        return BlockSwapStats(
            active=True, device=str(self.device), blocks_total=len(self.blocks),
            blocks_swapped=len(self.swapped), blocks_resident=len(self.blocks) - len(self.swapped),
            swapped_indices=self.swapped, io_swapped=bool(swapped_io),
            prefetch_blocks=self.ring.k if self.ring else 0,
            bytes_streamed_per_forward=sum(self.blocks[i].nbytes for i in self.swapped) + sum(u.nbytes for u in swapped_io),
            bytes_streamed_last_forward=self.bytes_last_forward,
            device_weight_bytes=self._device_bytes(), device_weight_bytes_peak=self._device_peak,
            host_weight_bytes=sum(u.nbytes for u in self.blocks + self.io + self.loose),
            pinned_bytes=self.pinned_bytes, copy_mode=self.copy_mode, forwards=self.forwards,
            block_loads=self.block_loads, on_demand_loads=self.on_demand_loads,
            transfer_ms=self.transfers.transfer_ms() if self.config.debug else None,
            stall_ms=self.transfers.stall_ms() if self.config.debug else None,
            notes=list(self._notes))


def _has_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _get_blocks(model: nn.Module, attr: str) -> nn.ModuleList:
    target: Any = model
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not isinstance(target, nn.ModuleList) or len(target) == 0:
        raise ValueError(f"BlockSwap needs the model's transformer blocks as a non-empty nn.ModuleList at "
                         f"'{attr}'; {type(model).__name__} has {type(target).__name__} there. "
                         "Pass blocks_attr=<path> if the blocks live elsewhere.")
    return target


def _io_modules(model: nn.Module, blocks: nn.ModuleList) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """Split the modules outside `blocks`: IO subtrees that do not contain the blocks, and the
    ancestors of the blocks (the root included), whose own loose tensors form resident units."""
    io: list[tuple[str, nn.Module]] = []
    ancestors: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        ancestors.append((prefix, module))
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if child is blocks:
                continue
            if any(m is blocks for m in child.modules()):
                walk(path, child)
            else:
                io.append((path, child))

    walk("", model)
    return io, ancestors


def apply_block_swap(model: nn.Module, config: BlockSwapConfig | dict | None, device: torch.device | str,
                     offload_device: torch.device | str = "cpu", *, blocks_attr: str = "blocks",
                     allow_cpu_device: bool = False) -> BlockSwapHandle:
    """Keep every weight of `model` on `offload_device` and move it to `device` inside the forward.

    `config.blocks_to_swap` blocks are streamed in for each use through a ring of
    `config.prefetch_blocks` device slots and dropped after; the other blocks and the IO modules
    move to `device` on first use and stay (IO modules are streamed too with
    `swap_io_components`). On a CPU or MPS device this is a logged no-op, unless
    `allow_cpu_device` (tests, benchmarks) runs the same streaming schedule with synchronous
    copies. Returns a handle: `remove()` restores the model, `offload()` frees the device,
    `stats()` reports.
    """
    config = BlockSwapConfig.coerce(config)
    device, offload_device = torch.device(device), torch.device(offload_device)
    if getattr(model, "_blockswap_handle", None) is not None:
        raise RuntimeError("BlockSwap is already applied to this model; call handle.remove() before applying it again")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"BlockSwap: device {device} was asked for but CUDA is not available in this torch build")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda" and not allow_cpu_device:
        note = f"compute device is {device.type}: block swap does nothing there (weights already share memory)"
        log.info("BlockSwap: %s", note)
        return BlockSwapHandle(model, config, device, offload_device, blocks_attr, active=False, note=note)
    handle = BlockSwapHandle(model, config, device, offload_device, blocks_attr, active=True)
    model.__dict__["_blockswap_handle"] = handle
    return handle
