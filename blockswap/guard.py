"""Protection of a swapped model from stray placement calls.

While block swap is active the engine owns where every weight lives. A host (ComfyUI) or user
calling ``model.to("cuda")`` would load every block at once: a device move is ignored with a
warning (the engine already puts weights on the device when they are used). A dtype change
cannot be honoured without rewriting the host masters, so it raises with what to do instead.
"""
from __future__ import annotations

import logging
import types
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
        self._saved: list[tuple[nn.Module, str, Any]] = []
        self._warned = False
        self._owner = owner
        for module in modules:
            for name in _MOVES:
                self._saved.append((module, name, module.__dict__.get(name, _MISSING)))
            module.__dict__["to"] = types.MethodType(self._to, module)
            module.__dict__["cuda"] = types.MethodType(self._ignore_move, module)
            module.__dict__["cpu"] = types.MethodType(self._ignore_move, module)
            module.__dict__["_apply"] = types.MethodType(self._apply, module)

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning("BlockSwap: ignoring a device move of %s: block swap places the weights itself "
                        "(blocks load on use). Call handle.remove() to take the model back.", self._owner)

    def _ignore_move(self, module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        self._warn_once()
        return module

    def _to(self, module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None or memory_format is not None:
            raise _blocked(f"{self._owner}.to({', '.join(map(repr, args))}) (a dtype/format change)")
        self._warn_once()
        return module

    def _apply(self, module: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
        raise _blocked(f"converting {self._owner} (half()/float()/type()/...)")

    def restore(self) -> None:
        for module, name, previous in self._saved:
            if previous is _MISSING:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = previous
        self._saved.clear()
