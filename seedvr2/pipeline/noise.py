"""Per-batch Gaussian noise that depends only on (seed, batch index, purpose).

Upstream draws its noise from the CUDA generator in one global stream, so results depend on the
device and on everything drawn before. Here each batch gets its own CPU `torch.Generator`,
seeded by mixing (seed, batch index, stream id) with splitmix64, and the float32 draw is moved
to the compute device afterwards: the same seed gives the same noise on CPU, CUDA or MPS, and a
batch's noise does not change when batch sizes before it change.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

_MASK64 = (1 << 64) - 1
STREAM_LATENT = 1     # x_T of the one-step sampler
STREAM_POSTERIOR = 2  # the VAE posterior sample of the condition latent


@runtime_checkable
class NoiseSource(Protocol):
    """Supplies float32 CPU noise of a given shape for batch `batch_index`."""

    def latent_noise(self, batch_index: int, shape: tuple[int, ...]) -> torch.Tensor:
        """x_T for the DiT, channel-last latent shape (t, h, w, 16)."""
        ...

    def posterior_noise(self, batch_index: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Posterior sample noise, VAE layout (1, 16, t, h, w)."""
        ...


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def batch_seed(seed: int, batch_index: int, stream: int) -> int:
    """A 63-bit generator seed for one (seed, batch, stream); distinct inputs give unrelated seeds."""
    x = _splitmix64(seed & _MASK64)
    x = _splitmix64(x ^ (batch_index & _MASK64))
    x = _splitmix64(x ^ stream)
    return x >> 1  # torch.Generator.manual_seed takes values < 2**63 without wrapping surprises


class SeededNoise:
    """Default noise: N(0, 1) float32 on the CPU from a generator per (seed, batch, stream)."""

    def __init__(self, seed: int):
        self.seed = seed

    def _draw(self, batch_index: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(batch_seed(self.seed, batch_index, stream))
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)

    def latent_noise(self, batch_index: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self._draw(batch_index, STREAM_LATENT, shape)

    def posterior_noise(self, batch_index: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self._draw(batch_index, STREAM_POSTERIOR, shape)
