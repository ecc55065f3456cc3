"""Host master copies: every tensor of a unit (a block or an IO module) packed into one flat buffer.

One flat buffer per unit means one coalesced copy per transfer and one exact-size pinned
registration. Packing copies each tensor once into the buffer and repoints the module at the
new storage, so the old storage is freed as we go: host RAM peaks at the model plus one unit.

Invariants:
* The module keeps its Parameter objects (state_dict keys and identities are unchanged), except
  Parameters created under `torch.inference_mode()` (ComfyUI builds models there): those cannot
  be rebound to normal storage, so they are replaced, once, by normal Parameters over the master.
* Every tensor belongs to exactly one unit (`Ownership`). A tensor reachable from two units (tied
  weights) is packed once, by the first; the other unit depends on it. A swapped unit may share
  nothing: its weights leave the device after each use, so a sharer would compute from the host.
* A unit refers to its modules weakly: the model owns the engine, never the other way round, so
  dropping the model frees it by reference counting alone.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

ALIGN = 256  # bytes; keeps every dtype view aligned and copies on fast paths


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class SharedTensorError(ValueError):
    pass


class Ownership:
    """Which unit owns each tensor (by identity), across all units of one model."""

    def __init__(self) -> None:
        self.owner: dict[int, tuple["HostUnit", str]] = {}


class HostUnit:
    """The flat master of one module subtree and the tensors that point into it."""

    def __init__(self, name: str, module: nn.Module, storage_device: torch.device, *, recurse: bool = True,
                 swapped: bool = False, ownership: Ownership | None = None):
        self.name = name
        self.swapped = swapped
        self.depends_on: list[HostUnit] = []
        ownership = ownership if ownership is not None else Ownership()
        # (weak module, table, key) for every slot that holds one of our tensors, in layout order.
        slots: list[list[tuple[weakref.ref, str, str]]] = []
        tensors: list[torch.Tensor] = []
        index: dict[int, int] = {}
        modules = list(module.named_modules()) if recurse else [("", module)]
        # Parameters first, then buffers.
        for table in ("_parameters", "_buffers"):
            for mod_name, mod in modules:
                for key, tensor in getattr(mod, table).items():
                    if tensor is None:
                        continue
                    where = ".".join(p for p in (name, mod_name, key) if p)
                    if id(tensor) in index:
                        slots[index[id(tensor)]].append((weakref.ref(mod), table, key))
                        continue
                    if self._claimed_elsewhere(tensor, where, ownership):
                        continue
                    if tensor.is_meta:
                        raise ValueError(f"BlockSwap: tensor '{where}' is on the meta device; "
                                         "load the weights before applying block swap")
                    index[id(tensor)] = len(tensors)
                    ownership.owner[id(tensor)] = (self, where)
                    tensors.append(tensor)
                    slots.append([(weakref.ref(mod), table, key)])
        layout: list[tuple[int, torch.dtype, torch.Size]] = []
        offset = 0
        for tensor in tensors:
            layout.append((offset, tensor.dtype, tensor.shape))
            offset = _align(offset + tensor.numel() * tensor.element_size())
        self.layout = layout
        self.nbytes = offset
        self.pinned = False
        self._slots = slots
        with torch.inference_mode(False):  # masters must be normal tensors whatever mode the caller is in
            self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=storage_device)
            self.master_views = self.views_into(self.buffer)
            self.params: list[nn.Parameter | None] = []
            for view, tensor, owners in zip(self.master_views, tensors, slots):
                view.copy_(tensor)
                self.params.append(self._normal_parameter(tensor, view, owners))
        del tensors
        self.bind(self.master_views)

    def _claimed_elsewhere(self, tensor: torch.Tensor, where: str, ownership: Ownership) -> bool:
        claim = ownership.owner.get(id(tensor))
        if claim is None:
            return False
        other, other_where = claim
        if self.swapped or other.swapped:
            raise SharedTensorError(
                f"BlockSwap: '{where}' and '{other_where}' are the same tensor, and "
                f"'{(self if self.swapped else other).name}' is swapped: a swapped block's weights leave the "
                "device after each use, so the module sharing them would compute from the host copy. Swap other "
                "blocks (or none of these), or give the modules their own copies of the tensor.")
        if other not in self.depends_on:
            self.depends_on.append(other)
        return True

    @staticmethod
    def _normal_parameter(tensor: torch.Tensor, view: torch.Tensor, owners: list) -> nn.Parameter | None:
        """The Parameter to keep for `tensor` (None for a buffer): the same object, unless it is an
        inference tensor, which is replaced in every module holding it."""
        if not isinstance(tensor, nn.Parameter):
            return None
        if not tensor.is_inference():
            return tensor
        fresh = nn.Parameter(view, requires_grad=False)
        for mod_ref, table, key in owners:
            getattr(mod_ref(), table)[key] = fresh
        return fresh

    def views_into(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Typed views of this unit's tensors inside `flat` (a uint8 buffer of at least nbytes)."""
        with torch.inference_mode(False):
            return [flat[off:off + shape.numel() * dtype.itemsize].view(dtype).view(shape)
                    for off, dtype, shape in self.layout]

    def bind(self, views: list[torch.Tensor]) -> None:
        """Point the modules' tensors at `views` (host masters or a device copy)."""
        for param, view, owners in zip(self.params, views, self._slots):
            if param is not None:
                param.data = view
                continue
            for mod_ref, table, key in owners:
                mod = mod_ref()
                if mod is not None:
                    getattr(mod, table)[key] = view

    def current(self) -> torch.Tensor | None:
        if not self._slots:
            return None
        if self.params and self.params[0] is not None:
            return self.params[0]
        mod_ref, table, key = self._slots[0][0]
        mod = mod_ref()
        return None if mod is None else getattr(mod, table)[key]

    def on_master(self) -> bool:
        """Whether the module's tensors currently live in the host master (not a device copy)."""
        current = self.current()
        return current is None or current.data_ptr() == self.master_views[0].data_ptr()
