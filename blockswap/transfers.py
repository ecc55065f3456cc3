"""Copy engines: how a unit's flat master reaches its device buffer, and how compute waits for it.

`CudaTransfers` issues every host->device copy on a private stream and orders it with events:
the copy waits for the slot's "free" event (compute finished reading the old contents), compute
waits for the slot's "ready" event (the copy landed). Nothing blocks the host in steady state.
`SyncTransfers` runs the same schedule with plain synchronous copies, so the slot/ordering logic
is exercised on a CPU-only machine (tests, benchmarks).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from .host import pin, unpin


class SyncTransfers:
    """Synchronous copies; events are inert. Times copies on the host clock when measuring."""

    def __init__(self, device: torch.device, measure: bool):
        self.device = device
        self.measure = measure
        self._transfer_ms = 0.0

    def event(self) -> Any:
        return None

    def copy(self, dst: torch.Tensor, src: torch.Tensor, *, pinned: bool, after: Any, ready: Any) -> None:
        t0 = time.perf_counter() if self.measure else 0.0
        dst.copy_(src)
        if self.measure:
            self._transfer_ms += (time.perf_counter() - t0) * 1e3

    def wait(self, ready: Any) -> None:
        pass

    def record_free(self, free: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def transfer_ms(self) -> float:
        return self._transfer_ms

    def stall_ms(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


class CudaTransfers:
    """Event-ordered copies on a side CUDA stream; optional staging for unpinned masters."""

    def __init__(self, device: torch.device, measure: bool):
        self.device = device
        self.measure = measure
        self.stream = torch.cuda.Stream(device)
        self._staging: list[torch.Tensor] = []
        self._staging_done: list[torch.cuda.Event] = []
        self._next_staging = 0
        self._copy_timers: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._stall_timers: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._transfer_ms = 0.0
        self._stall_ms = 0.0

    def event(self) -> torch.cuda.Event:
        return torch.cuda.Event()

    def enable_staging(self, nbytes: int, count: int) -> bool:
        """Pinned bounce buffers for masters that could not be pinned: a host memcpy into pinned
        memory, then an async copy. Costs a host wait only when a staging buffer is still in flight."""
        for _ in range(count):
            buf = torch.empty(nbytes, dtype=torch.uint8)
            if not pin(buf):
                return False
            self._staging.append(buf)
            self._staging_done.append(torch.cuda.Event())
        return True

    @property
    def staging_bytes(self) -> int:
        return sum(b.numel() for b in self._staging)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, *, pinned: bool, after: torch.cuda.Event | None,
             ready: torch.cuda.Event) -> None:
        staged = None
        if not pinned and self._staging:
            staged = self._next_staging
            self._next_staging = (staged + 1) % len(self._staging)
            self._staging_done[staged].synchronize()  # fallback path only: this buffer's previous copy
            src = self._staging[staged][:src.numel()].copy_(src)
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            if self.measure:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(self.stream)
            dst.copy_(src, non_blocking=True)
            if self.measure:
                end.record(self.stream)
                self._copy_timers.append((start, end))
            ready.record(self.stream)
            if staged is not None:
                self._staging_done[staged].record(self.stream)
        if len(self._copy_timers) > 4096:  # debug mode only: bound the pending timer list
            self._fold_timers()

    def wait(self, ready: torch.cuda.Event) -> None:
        compute = torch.cuda.current_stream(self.device)
        if self.measure:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(compute)
            compute.wait_event(ready)
            end.record(compute)
            self._stall_timers.append((start, end))
        else:
            compute.wait_event(ready)

    def record_free(self, free: torch.cuda.Event) -> None:
        free.record(torch.cuda.current_stream(self.device))

    def synchronize(self) -> None:
        self.stream.synchronize()
        torch.cuda.current_stream(self.device).synchronize()

    def _fold_timers(self) -> None:
        self.synchronize()
        self._transfer_ms += sum(a.elapsed_time(b) for a, b in self._copy_timers)
        self._stall_ms += sum(a.elapsed_time(b) for a, b in self._stall_timers)
        self._copy_timers.clear()
        self._stall_timers.clear()

    def transfer_ms(self) -> float:
        self._fold_timers()
        return self._transfer_ms

    def stall_ms(self) -> float:
        self._fold_timers()
        return self._stall_ms

    def close(self) -> None:
        self.synchronize()
        for buf in self._staging:
            unpin(buf)
        self._staging.clear()
        self._staging_done.clear()
