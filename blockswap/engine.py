"""The block-swap engine: lazy residency, a prefetch ring for swapped blocks, and the handle.

At apply time every tensor of the model is packed into per-unit host masters (a unit is one
transformer block, one IO module, or the loose tensors of the root) and NOTHING is on the
compute device. Forward wrappers then place weights on use:

* at a phase start (`load()`, or the first forward after `offload()`), ONE device arena is
  allocated for the resident units and the ring slots, before the phase's activations exist (no
  fragmentation), and fenced on the compute stream;
* the first forward of a phase issues every resident unit's copy on the side stream in execution
  order, interleaved with the ring's first K swapped blocks; each unit's first use waits only for
  its own copy, and residents stay until `offload()`;
* swapped blocks are bound to one of K slots only while they run (see `ring.py` for the ordering
  argument); swapped IO modules use one slot of their own, loaded on use.

`reconfigure()` changes the swap set and K between phases (how "auto" is resolved and how the
pipeline's out-of-memory fallback swaps more): the block wrappers look each block's role up per
call, so only residency, the ring, the arena size and pins change.

Weights are never copied back: inference never changes them, so dropping a device copy is just
rebinding the Parameter to its host master.

Ownership: the model owns the handle (`model._blockswap_handle`) through its wrapped forwards;
the handle refers to the model and its modules weakly. Dropping the model therefore frees model,
handle, masters and pins by reference counting alone, and `remove()` leaves no reference behind.

Host conditions: everything is allocated with inference mode off (ComfyUI runs nodes under
`torch.inference_mode()`); the hooks are excluded from `torch.compile`; a forward in grad mode
with trainable weights, or from a second thread while one runs, is refused with a clear error.
"""
from __future__ import annotations

import functools
import logging
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from .backend import CudaBackend, DeviceBackend, ImmediateBackend
from .config import BlockSwapConfig
from .guard import MoveGuard
from .host import HostUnit, Ownership, _align
from .pinning import PIN_BUDGET, PinBudget, pin, unpin
from .ring import SlotRing
from .transfers import Transfers

log = logging.getLogger("blockswap")

GiB = float(1 << 30)
_MISSING = object()
STAGING_BUFFERS = 2


@dataclass
class BlockSwapStats:
    """What the engine did, in units a user can read (`summary()` for a log line).

    bytes_streamed_per_forward: bytes copied per forward once warm (0 when every swapped unit
    keeps a slot of its own); bytes_streamed_last_forward: what the last forward copied.
    """

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


class _Resident:
    """A unit that stays on the device for a phase once loaded."""

    def __init__(self, unit: HostUnit, ready: Any):
        self.unit = unit
        self.ready = ready
        self.view: torch.Tensor | None = None   # its part of the arena
        self.issued = False                      # copy issued this phase
        self.waited = False                      # compute waited for it this phase


class BlockSwapHandle:
    """Returned by `apply_block_swap`. `load()`/`offload()` follow the pipeline's placement
    protocol; `remove()` restores the model; `stats()` reports."""

    def __init__(self, model: nn.Module, config: BlockSwapConfig, device: torch.device,
                 offload_device: torch.device, blocks_attr: str, active: bool, note: str = "",
                 backend: DeviceBackend | None = None, pin_budget: PinBudget = PIN_BUDGET):
        self._model = weakref.ref(model)
        self._model_name = type(model).__name__
        self.config = config
        self.device = device
        self.offload_device = offload_device
        self.active = active
        self.removed = False
        self._notes = [note] if note else []
        self.block_loads = self.on_demand_loads = self.forwards = 0
        self.bytes_this_forward = self.bytes_last_forward = 0
        self._device_peak = 0
        self.pinned_bytes = 0
        self.copy_mode = ""
        if not active:
            return
        blocks = _get_blocks(model, blocks_attr)
        self.swapped = config.swapped_indices(len(blocks))
        swapped_set = set(self.swapped)
        self.backend = backend or (CudaBackend(device) if device.type == "cuda" else ImmediateBackend(device))
        self.transfers = Transfers(self.backend, config.debug, pin_budget)
        self._budget = pin_budget
        self._wrapped: list[tuple[weakref.ref, Any]] = []
        self._running: int | None = None          # thread id of the forward in progress
        self._enter_lock = threading.Lock()
        self._arena: torch.Tensor | None = None
        self._fence: Any = None
        self._phase_started = False

        # 1. Host masters for every unit; the model's tensors end up in them, nothing on the device.
        io_modules, root_modules = _io_modules(model, blocks)
        io_modules = [(name, m) for name, m in io_modules if _has_tensors(m)]
        swap_io = config.swap_io_components
        owners = Ownership()
        self.blocks = [HostUnit(f"{blocks_attr}.{i}", b, offload_device, swapped=i in swapped_set, ownership=owners)
                       for i, b in enumerate(blocks)]
        self.io = [HostUnit(name, m, offload_device, swapped=swap_io, ownership=owners) for name, m in io_modules]
        self.loose = [HostUnit(name or "<root>", m, offload_device, recurse=False, ownership=owners)
                      for name, m in root_modules if m._parameters or m._buffers]
        swapped_units = [self.blocks[i] for i in self.swapped]
        swapped_io = self.io if swap_io else []
        resident_units = self.loose + ([] if swap_io else self.io) + [u for u in self.blocks if not u.swapped]
        self.residents = {id(u): _Resident(u, self.transfers.event()) for u in resident_units if u.nbytes}

        # 2. Pin what is streamed repeatedly, then the residents (loaded once per phase), within
        #    the process-wide budget; stage the swapped rest.
        self._pin(swapped_units + swapped_io, resident_units)

        # 3. Rings, arena layout, wrappers, move guard.
        self.ring = SlotRing(swapped_units, config.prefetch_blocks, prefetch=True, engine=self) if swapped_units else None
        self.io_ring = SlotRing(swapped_io, 1, prefetch=False, engine=self) if swapped_io else None
        self._rank = {i: r for r, i in enumerate(self.swapped)}
        self._arena_bytes = self._layout_bytes()
        self._wrap(model, self._enter, self._exit)
        for i, module in enumerate(blocks):
            self._wrap(module, _call(self, "_enter_block", i), _call(self, "_exit_block", i))
        for rank, (_, module) in enumerate(io_modules if swapped_io else []):
            self._wrap(module, _call(self, "_acquire_io", rank), _call(self, "_release_io", rank))
        self.guard = MoveGuard([model, *blocks, *(m for _, m in io_modules)], self._model_name)
        log.info(self.stats().summary())

    @property
    def model(self) -> nn.Module | None:
        return self._model()

    def _rings(self) -> list[SlotRing]:
        return [r for r in (self.ring, self.io_ring) if r is not None]

    # --- wrappers -------------------------------------------------------------------------------

    def _wrap(self, module: nn.Module, before: Callable[[], None], after: Callable[..., None] | None) -> None:
        """Replace `module.forward` (instance attribute): `before` places the weights, `after`
        drops them again, also on an exception (ComfyUI's interrupt is a BaseException), where it
        only rebinds and fences (`failed=True`). Both are excluded from torch.compile graphs."""
        previous = module.__dict__.get("forward", _MISSING)
        self._wrapped.append((weakref.ref(module), previous))
        original = previous if previous is not _MISSING else _class_forward(module)
        before = torch.compiler.disable(before)
        if after is None:
            def forward(*args: Any, **kwargs: Any) -> Any:
                before()
                return original(*args, **kwargs)
        else:
            after = torch.compiler.disable(after)

            def forward(*args: Any, **kwargs: Any) -> Any:
                before()
                try:
                    out = original(*args, **kwargs)
                except BaseException:
                    after(failed=True)
                    raise
                after()
                return out

        module.__dict__["forward"] = forward

    def _enter(self) -> None:
        me = threading.get_ident()
        with self._enter_lock:
            if self._running is not None and self._running != me:
                raise RuntimeError(f"BlockSwap: {self._model_name} is already running a forward in another thread; "
                                   "a block-swapped model serves one forward at a time (its device slots are "
                                   "shared). Use one model per thread.")
            self._running = me
        if torch.is_grad_enabled():
            trainable = next((n for n, p in self._named_params() if p.requires_grad), None)
            if trainable is not None:
                self._running = None
                raise RuntimeError(f"BlockSwap is for inference, but this forward runs with autograd on and "
                                   f"'{trainable}' requires grad: autograd would keep weights whose device copy "
                                   "is reused. Run under torch.inference_mode() or torch.no_grad(), or call "
                                   "model.requires_grad_(False).")
        try:
            self.forwards += 1
            self.bytes_last_forward, self.bytes_this_forward = self.bytes_this_forward, 0
            self._ensure_arena()
            self._issue_phase_copies()
            for unit in self.loose + ([] if self.config.swap_io_components else self.io):
                self._use_resident(unit)
        except BaseException:
            self._running = None
            raise

    def _exit(self, failed: bool = False) -> None:
        self._running = None

    def _named_params(self):
        model = self.model
        return model.named_parameters() if model is not None else iter(())

    # --- placement ------------------------------------------------------------------------------

    def _ensure_arena(self) -> None:
        """One device allocation for residents and slots, fenced on the compute stream."""
        if self._arena is not None or self._arena_bytes == 0:
            return
        arena = self.backend.allocate(self._arena_bytes)
        fence = self.transfers.event()
        self.transfers.fence(fence)
        offset = 0
        for res in self.residents.values():
            res.view = arena[offset:offset + res.unit.nbytes]
            offset += _align(res.unit.nbytes)
        for ring in self._rings():
            ring.attach(arena[offset:offset + ring.nbytes], fence)
            offset += ring.nbytes
        self._fence = fence
        self._arena = arena
        self.note_device_bytes()

    def _issue_phase_copies(self) -> None:
        """First forward of a phase: every resident copy, in execution order (IO and root first,
        then the blocks), with the ring's first K swapped blocks at their places."""
        if self._phase_started:
            return
        self._phase_started = True
        for unit in self.loose + ([] if self.config.swap_io_components else self.io):
            self._issue_resident(unit)
        primed = 0
        for unit in self.blocks:
            if unit.swapped:
                if self.ring is not None and primed < self.ring.k:
                    primed += 1
                    self.ring.prime(primed)
            else:
                self._issue_resident(unit)

    def _issue_resident(self, unit: HostUnit) -> None:
        res = self.residents.get(id(unit))
        if res is None or res.issued:
            return
        self._ensure_arena()
        self.transfers.copy(res.view, unit.buffer, pinned=unit.pinned, after=self._fence, ready=res.ready)
        res.issued = True
        self.bytes_this_forward += unit.nbytes

    def _use_resident(self, unit: HostUnit) -> None:
        """Before a resident unit runs: its copy issued (on demand when called outside a model
        forward), compute ordered after it (and after the units it shares tensors with), bound."""
        for dep in unit.depends_on:
            self._use_resident(dep)
        res = self.residents.get(id(unit))
        if res is None or res.waited:
            return
        if not res.issued:
            self._issue_resident(unit)
        self.transfers.wait(res.ready)
        res.waited = True
        unit.bind(unit.views_into(res.view))

    def _layout_bytes(self) -> int:
        return (sum(_align(r.unit.nbytes) for r in self.residents.values())
                + sum(ring.nbytes for ring in self._rings()))

    def _enter_block(self, index: int) -> None:
        rank = self._rank.get(index)
        if rank is None:
            self._use_resident(self.blocks[index])
        else:
            self._acquire_block(rank)

    def _exit_block(self, index: int, failed: bool = False) -> None:
        rank = self._rank.get(index)
        if rank is not None:
            self._release_block(rank, failed=failed)

    def _acquire_block(self, rank: int) -> None:
        self._ensure_arena()
        self.ring.acquire(rank)

    def _release_block(self, rank: int, failed: bool = False) -> None:
        self.ring.release(rank, failed=failed)

    def _acquire_io(self, rank: int) -> None:
        self._ensure_arena()
        self.io_ring.acquire(rank)

    def _release_io(self, rank: int, failed: bool = False) -> None:
        self.io_ring.release(rank, failed=failed)

    def _can_pin(self) -> bool:
        return self.backend.asynchronous and self.offload_device.type == "cpu" and self.config.pin_memory != "off"

    def _pin(self, streamed: list[HostUnit], residents: list[HostUnit]) -> None:
        """At apply: pin what is streamed repeatedly, then the residents (loaded once per phase),
        within the process-wide budget; stage the streamed rest."""
        if not self._can_pin():
            self.copy_mode = "synchronous" if not self.backend.asynchronous else "pageable"
            return
        self._pin_units(streamed, force=self.config.pin_memory == "on")
        self._pin_units([u for u in residents if u.nbytes], force=False)
        self._stage_unpinned(streamed)

    def _pin_streamed(self, streamed: list[HostUnit]) -> None:
        """After a reconfigure: pin newly swapped units within the budget, stage the rest."""
        if not self._can_pin() or not streamed:
            return
        self._pin_units([u for u in streamed if not u.pinned], force=self.config.pin_memory == "on")
        self.pinned_bytes = sum(u.nbytes for u in self.blocks + self.io + self.loose if u.pinned)
        unpinned = [u for u in streamed if not u.pinned]
        if unpinned:
            staging = self.transfers.ensure_staging(max(u.nbytes for u in unpinned), STAGING_BUFFERS)
            self.copy_mode = "pinned+staged" if staging else "pageable"

    def _pin_units(self, units: list[HostUnit], force: bool) -> None:
        """`force` ("on"): past the budget if need be (still counted)."""
        for unit in units:
            unit.pinned = pin(unit.buffer, self.backend, self._budget, force=force)

    def _stage_unpinned(self, streamed: list[HostUnit]) -> None:
        """Staging buffers for the streamed units that could not be pinned; sets the copy mode."""
        self.pinned_bytes = sum(u.nbytes for u in self.blocks + self.io + self.loose if u.pinned)
        unpinned = [u for u in streamed if not u.pinned]
        if not unpinned:
            self.copy_mode = "pinned" if streamed else "pinned residents"
            return
        staging = self.transfers.ensure_staging(max(u.nbytes for u in unpinned), STAGING_BUFFERS)
        any_pinned = any(u.pinned for u in streamed)
        self.copy_mode = ("pinned+staged" if any_pinned else "staged") if staging else "pageable"
        log.warning("BlockSwap: %d of %d swapped units are not pinned (the pin budget of %.1f GiB is spent or the "
                    "driver refused); they use %s copies, which are slower.", len(unpinned), len(streamed),
                    self._budget.limit / GiB, "staged" if staging else "pageable (host-blocking)")

    def note_device_bytes(self) -> None:
        self._device_peak = max(self._device_peak, self._device_bytes())

    def _device_bytes(self) -> int:
        return self._arena.numel() if self.active and self._arena is not None else 0

    # --- public ----------------------------------------------------------------------------------

    def load(self) -> None:
        """Placement protocol, at a phase start: reserve the device arena (one allocation, before
        the phase's activations exist). No weight is copied until the first forward."""
        if self.active and not self.removed:
            self._ensure_arena()

    def offload(self) -> None:
        """Drop every device copy (arena, slots); the next forward loads again. Waits for
        in-flight copies and compute first (a phase boundary, not the hot path)."""
        if not self.active or self.removed:
            return
        self.transfers.synchronize()
        for res in self.residents.values():
            res.unit.bind(res.unit.master_views)
            res.view, res.issued, res.waited = None, False, False
        for ring in self._rings():
            for unit in ring.units:
                unit.bind(unit.master_views)
            ring.drop()
        if self._arena is not None:
            self.backend.free(self._arena)
        self._arena = None
        self._fence = None
        self._phase_started = False

    def remove(self) -> None:
        """Restore the model as it was: original forwards, every tensor on the offload device,
        placement methods back, pins and budget returned, no reference left. Idempotent."""
        if self.removed:
            return
        if not self.active:
            self.removed = True
            return
        self.offload()
        self.removed = True
        for module_ref, previous in reversed(self._wrapped):
            module = module_ref()
            if module is None:
                continue
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous
        self._wrapped.clear()
        self.guard.restore()
        self.transfers.close()
        for unit in self.blocks + self.io + self.loose:
            if unit.pinned:
                unpin(unit.buffer)
                unit.pinned = False
        model = self.model
        if model is not None:
            model.__dict__.pop("_blockswap_handle", None)
        self.active = False
        self._notes.append("removed")
        self.blocks, self.io, self.loose, self.residents = [], [], [], {}
        self.ring = self.io_ring = None

    def reconfigure(self, blocks_to_swap: int, prefetch_blocks: int | None = None) -> None:
        """Change how many blocks are swapped (and K), between phases: how "auto" is resolved
        and how an out-of-memory DiT phase retries with more blocks swapped.

        Valid whenever no forward is running; it offloads first (waits for copies in flight and
        drops the arena), so the next forward starts a new phase with the new layout. Nothing is
        repacked: host masters are per unit and do not depend on the swap set. What changes is
        which units are resident, the ring (its slots and K), the arena size and, for blocks that
        become swapped, pinning (within the budget; staged copies past it). The block wrappers
        look the role up per call, so none is rewrapped. `config.blocks_to_swap` keeps what the
        user asked for ("auto" stays "auto"); `stats()` reports the count in force.

        Invariant afterwards, as after `apply_block_swap`: device weights = IO + residents +
        K x largest swapped block, nothing on the device until the next forward or `load()`.
        """
        if not self.active or self.removed:
            return
        if self._running is not None:
            raise RuntimeError("BlockSwap: reconfigure() was called while a forward is running; call it between "
                               "phases (before the DiT phase, or after an error has propagated)")
        trial = BlockSwapConfig(blocks_to_swap=blocks_to_swap, prefetch_blocks=prefetch_blocks or self.config.prefetch_blocks,
                                placement=self.config.placement)  # validates both numbers, naming them
        swapped = trial.swapped_indices(len(self.blocks))
        for i in swapped:
            unit = self.blocks[i]
            sharers = [u.name for u in self.blocks + self.io + self.loose if unit in u.depends_on]
            if unit.depends_on or sharers:
                raise ValueError(f"BlockSwap: cannot swap '{unit.name}': it shares tensors with "
                                 f"{sharers or [d.name for d in unit.depends_on]}, and a swapped block's weights "
                                 "leave the device after each use")
        self.offload()
        self.swapped = swapped
        self._rank = {i: r for r, i in enumerate(swapped)}
        for i, unit in enumerate(self.blocks):
            unit.swapped = i in self._rank
        if prefetch_blocks is not None:
            self.config = replace(self.config, prefetch_blocks=prefetch_blocks)
        swap_io = self.config.swap_io_components
        resident_units = self.loose + ([] if swap_io else self.io) + [u for u in self.blocks if not u.swapped]
        old = self.residents
        self.residents = {id(u): old.get(id(u)) or _Resident(u, self.transfers.event())
                          for u in resident_units if u.nbytes}
        swapped_units = [self.blocks[i] for i in swapped]
        self._pin_streamed(swapped_units)
        self.ring = (SlotRing(swapped_units, self.config.prefetch_blocks, prefetch=True, engine=self)
                     if swapped_units else None)
        self._arena_bytes = self._layout_bytes()
        log.info("BlockSwap reconfigured: %s", self.stats().summary())

    def placement(self) -> list[str]:
        """Per block: "device" while its tensors are bound to device memory, else "offload"."""
        if not self.active:
            return []
        return ["offload" if u.on_master() else "device" for u in self.blocks]

    def stats(self) -> BlockSwapStats:
        if not self.active:
            return BlockSwapStats(active=False, device=str(self.device), notes=list(self._notes))
        return BlockSwapStats(
            active=True, device=str(self.device), blocks_total=len(self.blocks),
            blocks_swapped=len(self.swapped), blocks_resident=len(self.blocks) - len(self.swapped),
            swapped_indices=self.swapped, io_swapped=self.io_ring is not None,
            prefetch_blocks=self.ring.k if self.ring else 0,
            bytes_streamed_per_forward=sum(r.steady_bytes_per_pass for r in self._rings()),
            bytes_streamed_last_forward=self.bytes_last_forward,
            device_weight_bytes=self._device_bytes(), device_weight_bytes_peak=self._device_peak,
            host_weight_bytes=sum(u.nbytes for u in self.blocks + self.io + self.loose),
            pinned_bytes=self.pinned_bytes, copy_mode=self.copy_mode, forwards=self.forwards,
            block_loads=self.block_loads, on_demand_loads=self.on_demand_loads,
            transfer_ms=self.transfers.transfer_ms() if self.config.debug else None,
            stall_ms=self.transfers.stall_ms() if self.config.debug else None,
            notes=list(self._notes))


def _call(handle: BlockSwapHandle, method: str, *args: Any) -> Callable[..., None]:
    """A hook calling `handle.<method>(*args, **kw)` (the model owns the handle through it; the
    handle holds nothing of the model strongly)."""
    return functools.partial(getattr(handle, method), *args)


def _class_forward(module: nn.Module) -> Callable[..., Any]:
    """`module.forward` without a strong reference to `module` (a bound method stored in the
    module's own __dict__ would be a reference cycle)."""
    forward, ref = type(module).forward, weakref.ref(module)

    def original(*args: Any, **kwargs: Any) -> Any:
        return forward(ref(), *args, **kwargs)

    return original


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
    ancestors of the blocks (the root included), whose own loose tensors form resident units.
    Iterative (a recursive closure would be a reference cycle holding the model)."""
    io: list[tuple[str, nn.Module]] = []
    ancestors: list[tuple[str, nn.Module]] = []
    pending = [("", model)]
    while pending:
        prefix, module = pending.pop(0)
        ancestors.append((prefix, module))
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if child is blocks:
                continue
            if any(m is blocks for m in child.modules()):
                pending.append((path, child))
            else:
                io.append((path, child))
    return io, ancestors


def apply_block_swap(model: nn.Module, config: BlockSwapConfig | dict | None, device: torch.device | str,
                     offload_device: torch.device | str = "cpu", *, blocks_attr: str = "blocks",
                     allow_cpu_device: bool = False, backend: DeviceBackend | None = None,
                     pin_budget: PinBudget = PIN_BUDGET) -> BlockSwapHandle:
    """Keep every weight of `model` on `offload_device` and move it to `device` inside the forward.

    `config.blocks_to_swap` blocks are streamed in for each use through a ring of
    `config.prefetch_blocks` device slots and dropped after; the other blocks and the IO modules
    move to `device` in the first forward of each phase and stay until `offload()` (IO modules
    are streamed too with `swap_io_components`). On a CPU or MPS device this is a logged no-op,
    unless `allow_cpu_device` runs the same streaming schedule with synchronous copies (tests,
    `SEEDVR2_BLOCKSWAP_CPU=1`). `backend` replaces the device primitives (emulation, tests);
    `pin_budget` the process-wide pinned-memory budget. Returns a handle: `remove()` restores
    the model, `offload()` frees the device, `stats()` reports.
    """
    config = BlockSwapConfig.coerce(config)
    device, offload_device = torch.device(device), torch.device(offload_device)
    if getattr(model, "_blockswap_handle", None) is not None:
        raise RuntimeError("BlockSwap is already applied to this model; call handle.remove() before applying it again")
    if device.type == "cuda" and backend is None:
        if not torch.backends.cuda.is_built():
            raise ValueError(f"BlockSwap: device {device} was asked for, but this torch build has no CUDA support "
                             "(install a CUDA build of torch)")
        if not torch.cuda.is_available():
            raise ValueError(f"BlockSwap: device {device} was asked for, but no CUDA GPU is visible on this machine "
                             "(check the driver and CUDA_VISIBLE_DEVICES)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda" and not allow_cpu_device and backend is None:
        note = f"compute device is {device.type}: block swap does nothing there (weights already share memory)"
        log.info("BlockSwap: %s", note)
        return BlockSwapHandle(model, config, device, offload_device, blocks_attr, active=False, note=note)
    with torch.inference_mode(False):
        handle = BlockSwapHandle(model, config, device, offload_device, blocks_attr, active=True, backend=backend,
                                 pin_budget=pin_budget)
    model.__dict__["_blockswap_handle"] = handle
    return handle
