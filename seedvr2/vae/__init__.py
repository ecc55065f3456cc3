"""SeedVR2 causal video VAE (`ema_vae`) with memory-bounded tiled and chunked encode/decode."""
from .causal_conv import CausalCache
from .config import VAEConfig
from .loading import build_vae, load_vae
from .model import (DEFAULT_CHUNK_FRAMES, DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, LATENT_SCALE, LATENT_SHIFT,
                    DiagonalGaussian, VideoVAE)

__all__ = ["build_vae", "load_vae", "VideoVAE", "VAEConfig", "DiagonalGaussian", "CausalCache",
           "LATENT_SCALE", "LATENT_SHIFT", "DEFAULT_TILE_SIZE", "DEFAULT_TILE_OVERLAP", "DEFAULT_CHUNK_FRAMES"]
