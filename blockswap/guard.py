"""Protection of a swapped model from stray placement calls.

While block swap is active the engine owns where every weight lives. A host (ComfyUI) or user
calling ``model.to("cuda")`` would load every block at once: a device move is ignored with a
warning (the engine already puts weights on the device when they are used). A dtype change
cannot be honoured without rewriting the host masters, so it raises with what to do instead;
a "conversion" to the dtype the weights already have (e.g. ``model.to(some_tensor)`` of the same
dtype) is a move, not a change.

The patched methods are closures over a weak reference to their module, so they form no
reference cycle: the module stays freeable by reference counting alone.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import nn

log = logging.getLogger("blockswap")

_MOVES = ("to", "cuda", "cpu", "_apply")
_MISSING = object()


def _blocked(what: str) -> RuntimeError:
    return RuntimeError(f"BlockSwap is active on this model, so {what} is not allowed: the engine keeps the "
                        "host copies in their storage dtype. Call handle.remove() first, change the model, "
                        "then apply block swap again.")


class MoveGuard:
    """Patches placement methods on a set of modules; `restore()` puts back exactly what was there."""

    def __init__(self, modules: list[nn.Module], owner: str):
        self._saved: list[tuple[weakref.ref, str, Any]] = []
        self._state = {"warned": False}
        for module in modules:
            for name in _MOVES:
                self._saved.append((weakref.ref(module), name, module.__dict__.get(name, _MISSING)))
            ref = weakref.ref(module)
            module.__dict__["to"] = _make_to(ref, owner, self._state)
            module.__dict__["cuda"] = module.__dict__["cpu"] = _make_ignore(ref, owner, self._state)
            module.__dict__["_apply"] = _make_apply(owner)

    def restore(self) -> None:
        for module_ref, name, previous in self._saved:
            module = module_ref()
            if module is None:
                continue
            if previous is _MISSING:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = previous
        self._saved.clear()


def _warn_once(owner: str, state: dict) -> None:
    if not state["warned"]:
        state["warned"] = True
        log.warning("BlockSwap: ignoring a device move of %s: block swap places the weights itself "
                    "(blocks load on use). Call handle.remove() to take the model back.", owner)


def _make_ignore(ref: weakref.ref, owner: str, state: dict):
    def ignore_move(*args: Any, **kwargs: Any) -> nn.Module:
        _warn_once(owner, state)
        return ref()

    return ignore_move


def _make_to(ref: weakref.ref, owner: str, state: dict):
    def to(*args: Any, **kwargs: Any) -> nn.Module:
        module = ref()
        _, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        floating = {t.dtype for t in module.parameters() if t.is_floating_point()}
        floating |= {t.dtype for t in module.buffers() if t.is_floating_point()}
        if memory_format is not None or (dtype is not None and floating - {dtype}):
            raise _blocked(f"{owner}.to({', '.join(map(repr, args))}) (a dtype/format change)")
        _warn_once(owner, state)
        return module

    return to


def _make_apply(owner: str):
    def apply(fn: Any, recurse: bool = True) -> nn.Module:
        raise _blocked(f"converting {owner} (half()/float()/type()/...)")

    return apply
