"""Page-locked host memory: one process-wide budget, exact-size registrations, no leaks.

Pinned (page-locked) memory is what lets a host->device copy run in the background. It is also
memory the OS can no longer page, so it is rationed:

* One `PinBudget` for the whole process (`PIN_BUDGET`), shared by every handle: two models with
  block swap never pin more together than one is allowed. The default leaves room to run
  (`default_pin_budget`); Windows counts pinned memory against a WDDM budget of about half the RAM.
* `pin(buffer, backend)` registers our own buffer in place (`cudaHostRegister`, exact size, no
  second copy) after reserving its bytes in the budget; a refusal by the driver returns the
  reservation and clears CUDA's sticky error (see `CudaBackend.register_host`).
* The registration is undone by `unpin`, or by a finalizer when the buffer is garbage collected
  (freeing registered memory without unregistering it would leak the pin); either way the budget
  gets its bytes back exactly once.
"""
from __future__ import annotations

import os
import platform
import threading
import weakref

import torch

from .backend import DeviceBackend

GiB = 1 << 30


def total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        try:
            import psutil
            return int(psutil.virtual_memory().total)
        except ImportError:
            return 16 * GiB


def default_pin_budget() -> int:
    """Pinned bytes the process allows itself: 40 % of RAM on Windows (WDDM), else up to 90 %
    while leaving 4 GiB to run (at least 40 %)."""
    ram = total_ram_bytes()
    if platform.system() == "Windows":
        return int(0.4 * ram)
    return int(max(0.4 * ram, min(0.9 * ram, ram - 4 * GiB)))


class PinBudget:
    """Thread-safe reservation of pinned bytes against a limit."""

    def __init__(self, limit: int | None = None):
        self._limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return default_pin_budget() if self._limit is None else self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._limit = value

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, nbytes: int, force: bool = False) -> bool:
        with self._lock:
            if not force and self._used + nbytes > self.limit:
                return False
            self._used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)


PIN_BUDGET = PinBudget()


def _undo(backend: DeviceBackend, ptr: int, nbytes: int, budget: PinBudget) -> None:
    backend.unregister_host(ptr)
    budget.release(nbytes)


def pin(buffer: torch.Tensor, backend: DeviceBackend, budget: PinBudget = PIN_BUDGET, *, force: bool = False) -> bool:
    """Page-lock `buffer` (a contiguous host tensor we own) within `budget` (past it with
    `force`, still counted). False when the budget is spent or the driver refuses; nothing is
    left reserved or registered then."""
    nbytes = buffer.numel() * buffer.element_size()
    if nbytes == 0 or getattr(buffer, "_blockswap_unpin", None) is not None:
        return nbytes > 0
    if not budget.reserve(nbytes, force):
        return False
    if not backend.register_host(buffer):
        budget.release(nbytes)
        return False
    buffer._blockswap_unpin = weakref.finalize(buffer, _undo, backend, buffer.data_ptr(), nbytes, budget)
    return True


def unpin(buffer: torch.Tensor) -> None:
    """Undo `pin` (idempotent)."""
    finalizer = getattr(buffer, "_blockswap_unpin", None)
    if finalizer is not None:
        finalizer()
        buffer._blockswap_unpin = None


def is_pinned_by_us(buffer: torch.Tensor) -> bool:
    finalizer = getattr(buffer, "_blockswap_unpin", None)
    return finalizer is not None and finalizer.alive
