"""One SeedVR2 transformer block (``NaMMSRTransformerBlock``, model-spec.md 3.3.5 and 6).

Both streams (video, text) go through ``norm -> ada in -> windowed attention -> ada gate ->
residual``, then ``norm -> ada in -> MLP -> ada gate -> residual``. The 3B's last block is built
"vid only" (upstream quirk): its text stream is attended with plain ``RMSNorm(txt)`` (no
modulation), gets no gate and no MLP, and the block returns the text unchanged (the official code
returns a meaningless value there, and nothing reads it).
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import WindowAttention
from .config import DiTConfig
from .layers import AdaSingle, GeluMLP, PerStream, SwiGLU, rms_norm
from .windows import WindowPlan

__all__ = ["MMBlock"]


class MMBlock(nn.Module):
    """Block ``idx`` of a DiT described by ``config``; call as ``block(vid, txt, emb, plan)``."""

    def __init__(self, config: DiTConfig, idx: int):
        super().__init__()
        shared = not config.block_has_mm_weights(idx)
        self.vid_only = config.block_is_vid_only(idx)
        self.eps = config.norm_eps
        self.attn = WindowAttention(config.dim, config.heads, config.head_dim, shared=shared, eps=config.norm_eps,
                                    rope=config.rope, rope_axis_dim=config.rope_axis_dim)
        mlp = SwiGLU if config.mlp == "swiglu" else GeluMLP
        self.mlp = PerStream(lambda: mlp(config.dim, config.mlp_hidden), shared)
        self.ada = PerStream(lambda: AdaSingle(config.dim), shared)
        self.compiled_body = None  # a torch.compile'd `body` (seedvr2.dit.model.compile_blocks), or None

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, emb: torch.Tensor,
                plan: WindowPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """``vid (L, dim)``, ``txt (Lt, dim)``, ``emb (b, 6*dim)`` -> new ``(vid, txt)``.

        Runs `body`, compiled when ``compiled_body`` is set: the compiled code sits inside
        ``forward``, so block swap's hooks around ``forward`` stay outside the graph."""
        body = self.compiled_body or MMBlock.body
        return body(self, vid, txt, emb, plan)

    def body(self, vid: torch.Tensor, txt: torch.Tensor, emb: torch.Tensor,
             plan: WindowPlan) -> tuple[torch.Tensor, torch.Tensor]:
        ada_v, ada_t = self.ada.pick("vid"), self.ada.pick("txt")
        vc, tc = plan.vid_counts, plan.txt_counts

        # 1. Attention
        vid_in = ada_v.modulate(rms_norm(vid, None, self.eps), emb, "attn", vc)  # (L, dim)
        txt_in = rms_norm(txt, None, self.eps)  # (Lt, dim)
        if not self.vid_only:
            txt_in = ada_t.modulate(txt_in, emb, "attn", tc)
        vid_attn, txt_attn = self.attn(vid_in, txt_in, plan, txt_out=not self.vid_only)
        vid = vid + ada_v.gate(vid_attn, emb, "attn", vc)

        # 2. MLP
        mlp_v = self.mlp.pick("vid")
        vid = vid + ada_v.gate(mlp_v(ada_v.modulate(rms_norm(vid, None, self.eps), emb, "mlp", vc)), emb, "mlp", vc)
        if self.vid_only:
            return vid, txt

        txt = txt + ada_t.gate(txt_attn, emb, "attn", tc)
        mlp_t = self.mlp.pick("txt")
        txt = txt + ada_t.gate(mlp_t(ada_t.modulate(rms_norm(txt, None, self.eps), emb, "mlp", tc)), emb, "mlp", tc)
        return vid, txt
