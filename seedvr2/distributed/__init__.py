"""Running an upscale on many processes, GPUs and machines through Ray (the optional `ray` extra).

Nothing here imports `ray` until a distributed run starts (`ray_run._ray()`): `import seedvr2`
and the ComfyUI pack never load it. `upscale_on_ray` is the entry point, `RayWorkers` a pool of
workers kept for several runs, `ModelSpec` the model files each worker loads.
"""
from __future__ import annotations

from .ray_run import RAY_HINT, RayRunStats, RayWorkers, WorkersLostError, upscale_on_ray
from .spec import ModelSpec


def check_ray() -> None:
    """Raise UpscaleInputError with the install command when Ray is not installed."""
    from .ray_run import _ray

    _ray()


__all__ = ["ModelSpec", "RAY_HINT", "RayRunStats", "RayWorkers", "WorkersLostError", "check_ray", "upscale_on_ray"]
