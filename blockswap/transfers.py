"""How a unit's flat host master reaches its device buffer, and how compute waits for it.

Every host->device copy is issued on the backend's side stream and ordered by events:

* `after`: the copy waits for it on the side stream. It is recorded on the compute stream after
  the last kernel that reads the destination (a ring slot's "free" event), or right after the
  destination was allocated (the arena fence: the caching allocator may hand out memory that
  kernels still queued on the compute stream are using). No copy is issued without one.
* `ready`: recorded on the side stream after the copy; compute waits for it (`wait`) before the
  first kernel that reads the destination.

Host masters that are pinned are copied straight from their storage. Unpinned masters, past the
pin budget, go through pinned bounce buffers (staging): a worker thread waits until the bounce
buffer's previous copy has landed (`host_wait` on its event), memcpys the master into it and
issues the async copy, so the Python thread that launches kernels never does the memcpy. `wait`
first joins the worker's job for that event: waiting on an event before it is recorded would be
a no-op. Without staging, unpinned copies are plain pageable copies (the host blocks in them).

Nothing here blocks the host in steady state with pinned masters; `synchronize` (a phase
boundary) joins the worker and both streams.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import torch

from .backend import DeviceBackend
from .pinning import PIN_BUDGET, PinBudget, pin, unpin


class Transfers:
    """Event-ordered copies on a backend's side stream, optional staging, optional timing."""

    def __init__(self, backend: DeviceBackend, measure: bool, budget: PinBudget = PIN_BUDGET):
        self.backend = backend
        self.measure = measure and backend.asynchronous
        self._measure_host = measure and not backend.asynchronous
        self._budget = budget
        self.stream = backend.side_stream()
        self._staging: list[torch.Tensor] = []
        self._staging_done: list[Any] = []
        self._next_staging = 0
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._jobs: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()  # the side stream is fed from two threads with staging
        self._copy_timers: list[tuple[Any, Any]] = []
        self._stall_timers: list[tuple[Any, Any]] = []
        self._transfer_ms = 0.0
        self._stall_ms = 0.0
        self.copies = 0

    # --- events ---------------------------------------------------------------------------------

    def event(self) -> Any:
        return self.backend.event()

    def fence(self, event: Any) -> None:
        """Record `event` on the compute stream now (e.g. right after an allocation)."""
        self.backend.record(event, self.backend.compute_stream())

    record_free = fence

    def wait(self, ready: Any) -> None:
        """Make compute wait for the copy that records `ready`."""
        job = self._jobs.pop(id(ready), None)
        if job is not None:
            job.result()  # the worker has issued that copy (and re-raises its error, if any)
        compute = self.backend.compute_stream()
        if self.measure:
            start, end = self.backend.event(True), self.backend.event(True)
            self.backend.record(start, compute)
            self.backend.stream_wait(compute, ready)
            self.backend.record(end, compute)
            self._stall_timers.append((start, end))
        else:
            self.backend.stream_wait(compute, ready)

    # --- copies ---------------------------------------------------------------------------------

    def enable_staging(self, nbytes: int, count: int) -> bool:
        """Pinned bounce buffers for unpinned masters: all `count` or none (a half-staged set
        would serialise every copy through one buffer)."""
        buffers = []
        for _ in range(count):
            with torch.inference_mode(False):
                buf = torch.empty(nbytes, dtype=torch.uint8)
            if not pin(buf, self.backend, self._budget):
                for b in buffers:
                    unpin(b)
                return False
            buffers.append(buf)
        self._staging = buffers
        self._staging_done = [None] * count
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="blockswap-staging")
        return True

    def ensure_staging(self, nbytes: int, count: int) -> bool:
        """Bounce buffers of at least `nbytes`: the current ones when large enough, else new ones
        (a phase boundary: the old set is joined and unpinned first)."""
        if self._staging and min(b.numel() for b in self._staging) >= nbytes:
            return True
        if self._staging:
            self.close()
        return self.enable_staging(nbytes, count)

    @property
    def staging_bytes(self) -> int:
        return sum(b.numel() for b in self._staging)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, *, pinned: bool, after: Any, ready: Any) -> None:
        """Issue dst <- src on the side stream after `after`; record `ready` when it lands."""
        if after is None and self.backend.asynchronous:
            raise AssertionError("BlockSwap: a copy into device memory needs a fence (internal error)")
        self.copies += 1
        if not pinned and self._worker is not None:
            slot = self._next_staging
            self._next_staging = (slot + 1) % len(self._staging)
            self._jobs[id(ready)] = self._worker.submit(self._staged_copy, dst, src, slot, after, ready)
        else:
            self._issue(dst, src, after, ready)

    def _staged_copy(self, dst: torch.Tensor, src: torch.Tensor, slot: int, after: Any, ready: Any) -> None:
        done = self._staging_done[slot]
        if done is not None:
            self.backend.host_wait(done)  # the bounce buffer's previous copy has landed
        bounce = self._staging[slot][:src.numel()]
        bounce.copy_(src)
        done = self.backend.event()
        self._issue(dst, bounce, after, ready, done)
        self._staging_done[slot] = done

    def _issue(self, dst: torch.Tensor, src: torch.Tensor, after: Any, ready: Any, done: Any = None) -> None:
        backend, stream = self.backend, self.stream
        with self._lock:
            if after is not None:
                backend.stream_wait(stream, after)
            if self.measure:
                start, end = backend.event(True), backend.event(True)
                backend.record(start, stream)
            if self._measure_host:
                t0 = time.perf_counter()
            backend.copy_async(dst, src, stream)
            if self._measure_host:
                self._transfer_ms += (time.perf_counter() - t0) * 1e3
            if self.measure:
                backend.record(end, stream)
                self._copy_timers.append((start, end))
            backend.record(ready, stream)
            if done is not None:
                backend.record(done, stream)
        if len(self._copy_timers) > 4096:  # debug mode only: bound the pending timer list
            self._fold_timers()

    # --- phase boundaries -----------------------------------------------------------------------

    def synchronize(self) -> None:
        """Every issued copy landed and compute finished (also joins the staging worker)."""
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.result()
        self.backend.synchronize()

    def _fold_timers(self) -> None:
        if not self._copy_timers and not self._stall_timers:
            return
        self.synchronize()
        self._transfer_ms += sum(self.backend.elapsed_ms(a, b) for a, b in self._copy_timers)
        self._stall_ms += sum(self.backend.elapsed_ms(a, b) for a, b in self._stall_timers)
        self._copy_timers.clear()
        self._stall_timers.clear()

    def transfer_ms(self) -> float:
        self._fold_timers()
        return self._transfer_ms

    def stall_ms(self) -> float:
        self._fold_timers()
        return self._stall_ms

    def close(self) -> None:
        """Join everything, stop the worker, unpin the bounce buffers. Idempotent."""
        self.synchronize()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        for buf in self._staging:
            unpin(buf)
        self._staging = []
        self._staging_done = []
