"""Socket types shared by the pack's nodes. Ids carry the `SVR2BS_` prefix so they can never
collide with ComfyUI core's own `SeedVR2*` nodes (a colliding custom id is dropped silently)."""
from comfy_api.latest import io

NODE_PREFIX = "SVR2BS_"
CATEGORY = "SeedVR2 BlockSwap"

BlockSwapConfigType = io.Custom("SEEDVR2_BLOCKSWAP_CONFIG")
DiTType = io.Custom("SEEDVR2_DIT")
VAEType = io.Custom("SEEDVR2_VAE")
