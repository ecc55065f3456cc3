"""Running an upscale on many processes, GPUs and machines through Ray (the optional `ray` extra).

Nothing here imports `ray` until a distributed run starts: `import seedvr2` and the ComfyUI pack
never load it. `upscale_on_ray` is the entry point (see `seedvr2.distributed.ray_run`);
`ModelSpec` says which model files each worker loads.
"""
from __future__ import annotations

from .spec import ModelSpec

RAY_HINT = 'distributed runs (--workers, --ray-address) need Ray: pip install ".[ray]" (or pip install "ray>=2.9")'


class WorkersLostError(RuntimeError):
    """Every Ray worker of a run died; the message says how many there were and the last error."""


def check_ray() -> None:
    """Raise UpscaleInputError with the install command when Ray is not installed."""
    from ..pipeline import UpscaleInputError

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UpscaleInputError(RAY_HINT) from None


def upscale_on_ray(*args, **kwargs):
    """`seedvr2.distributed.ray_run.upscale_on_ray` (imported on first use: it imports Ray)."""
    check_ray()
    from .ray_run import upscale_on_ray as run

    return run(*args, **kwargs)


__all__ = ["ModelSpec", "RAY_HINT", "WorkersLostError", "check_ray", "upscale_on_ray"]
