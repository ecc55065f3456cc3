"""Host master copies: every tensor of a unit (a block or an IO module) packed into one flat buffer.

One flat buffer per unit means one coalesced copy per transfer and one exact-size pinned
registration. Packing copies each tensor once into the buffer and repoints the module at the
new storage, so the old storage is freed as we go: host RAM peaks at the model plus one unit.
The module keeps its Parameter objects (state_dict keys and identities are unchanged).
"""
from __future__ import annotations

import logging
import os
import platform
import weakref

import torch
from torch import nn

log = logging.getLogger("blockswap")

ALIGN = 256  # bytes; keeps every dtype view aligned and copies on fast paths


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class HostUnit:
    """The flat master of one module subtree and the tensors that point into it."""

    def __init__(self, name: str, module: nn.Module, storage_device: torch.device, recurse: bool = True):
        self.name = name
        self.params: list[nn.Parameter] = []
        self.buffers: list[tuple[nn.Module, str]] = []
        layout: list[tuple[int, torch.dtype, torch.Size]] = []
        seen: set[int] = set()
        offset = 0
        tensors: list[torch.Tensor] = []
        modules = list(module.named_modules()) if recurse else [("", module)]
        # Parameters first, then buffers: `bind` relies on this order.
        for kind in ("param", "buffer"):
            for mod_name, mod in modules:
                table = mod._parameters if kind == "param" else mod._buffers
                for key, tensor in table.items():
                    if tensor is None or id(tensor) in seen:
                        continue
                    if tensor.is_meta:
                        where = ".".join(p for p in (name, mod_name, key) if p)
                        raise ValueError(f"BlockSwap: tensor '{where}' is on the meta device; "
                                         "load the weights before applying block swap")
                    seen.add(id(tensor))
                    if kind == "param":
                        self.params.append(tensor)
                    else:
                        self.buffers.append((mod, key))
                    tensors.append(tensor)
                    layout.append((offset, tensor.dtype, tensor.shape))
                    offset = _align(offset + tensor.numel() * tensor.element_size())
        self.layout = layout
        self.nbytes = offset
        self.pinned = False
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; masters must stay normal tensors
            self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=storage_device)
            self.master_views = self.views_into(self.buffer)
            for view, tensor in zip(self.master_views, tensors):
                view.copy_(tensor)
        del tensors
        self.bind(self.master_views)

    def views_into(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Typed views of this unit's tensors inside `flat` (a uint8 buffer of at least nbytes)."""
        with torch.inference_mode(False):
            return [flat[off:off + shape.numel() * dtype.itemsize].view(dtype).view(shape)
                    for off, dtype, shape in self.layout]

    def bind(self, views: list[torch.Tensor]) -> None:
        """Point the module's tensors at `views` (host masters or a device copy)."""
        n = len(self.params)
        for param, view in zip(self.params, views):
            param.data = view
        for (mod, key), view in zip(self.buffers, views[n:]):
            mod._buffers[key] = view

    def on_master(self) -> bool:
        """Whether the module's tensors currently live in the host master (not a device copy)."""
        if self.params:
            current = self.params[0]
        elif self.buffers:
            current = self.buffers[0][0]._buffers[self.buffers[0][1]]
        else:
            return True
        return current.data_ptr() == self.master_views[0].data_ptr()


# --- pinning: exact-size registration of our own buffers, within a budget --------------------

def total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        try:
            import psutil
            return int(psutil.virtual_memory().total)
        except ImportError:
            return 16 << 30


def default_pin_budget() -> int:
    """Pinned bytes we allow ourselves: Windows counts pinned memory against a WDDM budget of
    about half the RAM (0.4 keeps headroom); Linux can pin more but must leave room to run."""
    ram = total_ram_bytes()
    if platform.system() == "Windows":
        return int(0.4 * ram)
    return int(max(0.4 * ram, min(0.9 * ram, ram - (4 << 30))))


def pin(buffer: torch.Tensor) -> bool:
    """Page-lock `buffer` in place (cudaHostRegister, exact size: no power-of-two rounding,
    no second copy). Returns False when the driver refuses. The registration is undone by
    `unpin`, or when `buffer` is garbage collected (freeing registered memory leaks the pin)."""
    if buffer.numel() == 0 or buffer.is_pinned():
        return buffer.is_pinned()
    ptr = buffer.data_ptr()
    if int(torch.cuda.cudart().cudaHostRegister(ptr, buffer.numel() * buffer.element_size(), 0)) != 0:
        return False
    buffer._blockswap_unpin = weakref.finalize(buffer, torch.cuda.cudart().cudaHostUnregister, ptr)
    return True


def unpin(buffer: torch.Tensor) -> None:
    finalizer = getattr(buffer, "_blockswap_unpin", None)
    if finalizer is not None:
        finalizer()
