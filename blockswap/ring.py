"""The prefetch ring: K device slots shared by the swapped units, in execution order.

A swapped unit is bound to a slot only while it runs. After unit r runs, its slot is refilled
with the unit needed K positions later, cyclically, so the next forward's first units load
while this forward finishes (wrap-around).

Why a slot is never overwritten while compute may still read it, and never read before its copy
landed (the safety argument):
1. Every slot lives in the handle's arena, allocated at a phase start and fenced: the arena fence
   is recorded on the compute stream right after the allocation, and the first copy into a slot
   waits for it. Memory the caching allocator recycled from kernels still queued is therefore
   not written before those kernels finish.
2. After unit r ran, `release` records the slot's `free` event on the compute stream behind r's
   kernels. Any later copy into that slot waits for `free` on the side stream. `freed[s]` says
   whether `free[s]` has been recorded since the arena fence; until then the fence stands in.
3. `acquire` makes the compute stream wait for the slot's `ready` event, recorded on the side
   stream behind the copy, before r's kernels are launched.
4. The victim chosen for a new load is never a slot whose unit is inside the current window
   (needed before the new unit), so a slot holding a unit that is about to run is not refilled.
5. On the exception path `release` only rebinds and records `free`: no new copy is issued while
   the error propagates, and the next `acquire` sees a consistent owner table.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

from .host import HostUnit

if TYPE_CHECKING:
    from .engine import BlockSwapHandle


class SlotRing:
    """K slots for `units` (in the order they run)."""

    def __init__(self, units: list[HostUnit], slots: int, prefetch: bool, engine: "BlockSwapHandle"):
        self.units = units
        self.k = min(slots, len(units))
        self.prefetch = prefetch
        self.engine = weakref.proxy(engine)  # the handle owns the ring: no cycle back
        self.slot_bytes = max(u.nbytes for u in units)
        self.buffers: list[torch.Tensor] = []
        self.fence = None
        self.owner: list[int | None] = [None] * self.k      # rank loaded (or loading) in each slot
        self.slot_of: list[int | None] = [None] * len(units)
        self.views: list[dict[int, list[torch.Tensor]]] = [{} for _ in units]
        self.ready = [engine.transfers.event() for _ in range(self.k)]
        self.free = [engine.transfers.event() for _ in range(self.k)]
        self.freed = [False] * self.k  # whether free[s] was recorded since the arena fence

    @property
    def nbytes(self) -> int:
        return self.slot_bytes * self.k

    @property
    def steady_bytes_per_pass(self) -> int:
        """Bytes loaded per pass once warm: none when every unit keeps its own slot."""
        return 0 if len(self.units) <= self.k else sum(u.nbytes for u in self.units)

    def attach(self, arena_part: torch.Tensor, fence: object) -> None:
        self.buffers = [arena_part[s * self.slot_bytes:(s + 1) * self.slot_bytes] for s in range(self.k)]
        self.fence = fence

    def prime(self, count: int) -> None:
        """Start loading the first `count` units (a phase's first forward, in execution order)."""
        for rank in range(min(count, self.k)):
            if self.slot_of[rank] is None:
                self._load(rank, self._victim(0, list(range(self.k))))

    def acquire(self, rank: int) -> None:
        """Before unit `rank` runs: make sure it (and with prefetch, the next K-1) is loading,
        make compute wait for it, bind its tensors to the slot."""
        if self.slot_of[rank] is None and self.prefetch:  # a prefetch miss (IO units always load on demand)
            self.engine.on_demand_loads += 1
        self._ensure(rank, self.k if self.prefetch else 1)
        slot = self.slot_of[rank]
        self.engine.transfers.wait(self.ready[slot])
        views = self.views[rank].get(slot)
        if views is None:
            views = self.views[rank][slot] = self.units[rank].views_into(self.buffers[slot])
        self.units[rank].bind(views)

    def release(self, rank: int, *, failed: bool = False) -> None:
        """After unit `rank` ran: rebind it to its host master and mark its slot reusable once
        compute is done with it; then (not after a failure) load the unit needed K later."""
        unit = self.units[rank]
        unit.bind(unit.master_views)
        slot = self.slot_of[rank]
        if slot is not None:
            self.engine.transfers.record_free(self.free[slot])
            self.freed[slot] = True
        if self.prefetch and not failed:
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
        after = self.free[slot] if self.freed[slot] else self.fence
        self.engine.transfers.copy(self.buffers[slot][:unit.nbytes], unit.buffer, pinned=unit.pinned,
                                   after=after, ready=self.ready[slot])
        self.owner[slot], self.slot_of[rank] = rank, slot
        self.engine.bytes_this_forward += unit.nbytes
        self.engine.block_loads += 1

    def drop(self) -> None:
        self.buffers = []
        self.fence = None
        self.owner = [None] * self.k
        self.slot_of = [None] * len(self.units)
        self.views = [{} for _ in self.units]
        self.freed = [False] * self.k
