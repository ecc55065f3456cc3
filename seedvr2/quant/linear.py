"""``QuantLinear``: a Linear layer whose weight stays compressed in memory and is expanded per call.

Design (the invariants block swap and the loaders rely on):

* The compressed weight and its scales are ordinary tensors (uint8 GGML blocks, int8, fp8, ...)
  registered as **persistent buffers** under the checkpoint's own names (``weight``,
  ``weight_scale``, ...), the bias a Parameter. So ``state_dict`` keys equal the file's keys,
  ``load_into`` fills them strictly, and block swap's host masters (which pack every parameter and
  buffer of a unit into one flat buffer) hold and stream the compressed bytes with no engine change.
* ``forward`` dequantizes on the device of the stored weight (the compute device under block swap)
  into a temporary, casts it to the activation dtype and runs ``F.linear``; the expanded weight is
  never stored, so it is freed as soon as the matmul is done.
* What the bytes mean is a ``QuantScheme``: it lists the tensors it needs (name -> shape, dtype) for
  an ``out x in`` weight and expands them to float32 ``[out, in]``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .ggml import GGMLType, dequantize, row_bytes

__all__ = ["QuantScheme", "GGMLScheme", "QuantLinear", "swap_in_quant_linears"]


class QuantScheme(ABC):
    """How a compressed ``out x in`` weight is stored (``tensors``) and expanded (``dequantize``)."""

    name: str = "?"

    @abstractmethod
    def tensors(self, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Buffer name -> (shape, dtype) of every stored tensor; must include ``weight``."""

    @abstractmethod
    def dequantize(self, t: Mapping[str, torch.Tensor], out_features: int, in_features: int) -> torch.Tensor:
        """The float32 ``[out, in]`` weight, computed on the device of ``t['weight']``."""

    def __repr__(self) -> str:
        return self.name


class GGMLScheme(QuantScheme):
    """A GGML block type (Q8_0, Q4_K, ...): ``weight`` holds the rows' raw bytes, uint8 ``[out, row_bytes]``."""

    def __init__(self, qtype: GGMLType):
        self.qtype = qtype
        self.name = qtype.name

    def tensors(self, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"weight": ((out_features, row_bytes(self.qtype, in_features)), torch.uint8)}

    def dequantize(self, t: Mapping[str, torch.Tensor], out_features: int, in_features: int) -> torch.Tensor:
        return dequantize(t["weight"], self.qtype)


class QuantLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` expanded from its compressed buffers at each call (see module doc)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, scheme: QuantScheme):
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self._stored = list(scheme.tensors(out_features, in_features))
        for name, (shape, dtype) in scheme.tensors(out_features, in_features).items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The expanded weight ``[out, in]`` in ``dtype`` (a temporary; nothing is cached)."""
        stored = {name: getattr(self, name) for name in self._stored}
        return self.scheme.dequantize(stored, self.out_features, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"scheme={self.scheme!r}"


def swap_in_quant_linears(model: nn.Module, schemes: Mapping[str, QuantScheme]) -> None:
    """Replace each ``nn.Linear`` named in ``schemes`` (module path -> scheme) by a ``QuantLinear``.

    The new modules are created on the device of the old weight (typically meta, before loading);
    names not found, not Linear layers, or layers the scheme cannot store (an input size that is not
    whole blocks) raise ``KeyError`` naming them, so a damaged checkpoint's names and shapes never
    surface as a bare ``AttributeError`` from torch.
    """
    for path, scheme in schemes.items():
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            parent = None
        old = getattr(parent, attr, None)
        if not isinstance(old, nn.Linear):
            raise KeyError(f"{_shown(path)}: the checkpoint quantizes this weight, but the model has no Linear layer there")
        try:
            with torch.device(old.weight.device):
                new = QuantLinear(old.in_features, old.out_features, old.bias is not None, scheme)
        except ValueError as exc:
            raise KeyError(f"{_shown(path)}: the checkpoint stores this {old.out_features}x{old.in_features} layer as "
                           f"{scheme!r}, which cannot hold it ({exc})") from None
        setattr(parent, attr, new)


def _shown(name: str, limit: int = 120) -> str:
    """A layer name from a file, quoted and shortened for a message (it may hold anything)."""
    text = repr(name)
    return text if len(text) <= limit else text[:limit] + "..."
