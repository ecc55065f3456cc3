"""SeedVR2 BlockSwap: a ComfyUI node pack for the SeedVR2 3B/7B upscalers on small GPUs.

ComfyUI imports this folder as a package (under whatever name the folder has) and calls
``comfy_entrypoint``. The model code (``seedvr2``) and the block-swap engine (``blockswap``)
know nothing of ComfyUI; only ``nodes`` does. Outside ComfyUI this file still imports: it
logs why no nodes were registered and points at the command line instead.
"""
import logging

_COMFY_MODULES = {"comfy", "comfy_api", "comfy_execution", "folder_paths", "server", "nodes"}

if __package__:  # imported as a package: by ComfyUI, or by a test that loads the pack
    try:
        from .nodes import comfy_entrypoint  # noqa: F401
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _COMFY_MODULES:
            raise
        logging.getLogger(__name__).warning(
            "SeedVR2 BlockSwap: ComfyUI is not importable here (%s), so no nodes are registered. "
            "Inside ComfyUI, put this folder in ComfyUI/custom_nodes/; outside it, run "
            "`python -m seedvr2 --help` from this folder.",
            exc,
        )
