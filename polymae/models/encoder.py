"""One stream's PolyMAE encoder on its own: what ``polymae export --format torch`` writes, for
fine-tuning elsewhere.

    values (B, N, D) ──embed──▶ + position(coords) + stream embedding ──▶ [cls | tokens]
    ──▶ encoder blocks (invalid tokens masked out of attention) ──▶ LayerNorm ──▶ (B, 1+N, W)

Unlike :meth:`PolyMAE.forward_encoder` nothing is hidden: every valid token is encoded in place
(no visible-first gather), so token i of the output is token i of the input. Parameter names are
PolyMAE's with the stream dropped (``embed.image.weight`` → ``embed.weight``,
``modality_embed.image`` → ``stream_embed``), so the weights are a renamed subset of a checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from polymae.modalities.base import ModalityPlugin
from polymae.models.decoders import transformer_blocks
from polymae.models.presets import ModelConfig


class StreamEncoder(nn.Module):
    def __init__(self, plugin: ModalityPlugin, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.position_every_block = plugin.position_every_block  # Point-MAE: the code before every block
        self.embed = plugin.build_embed(w)
        self.position = plugin.build_position(w)
        self.stream_embed = nn.Parameter(torch.zeros(1, 1, w))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.blocks = transformer_blocks(w, cfg.depth, cfg.heads, cfg)
        self.norm = nn.LayerNorm(w, eps=1e-6)

    @staticmethod
    def weights_from(state: dict[str, torch.Tensor], stream: str) -> dict[str, torch.Tensor]:
        """A PolyMAE state dict → this module's: ``stream``'s embedding, positions and code, the
        cls token and the shared encoder blocks and norm."""
        renamed = {f"modality_embed.{stream}": "stream_embed", "cls_token": "cls_token"}
        out = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if key in renamed:
                out[renamed[key]] = value
            elif head in ("embed", "position") and rest.startswith(stream + "."):
                out[f"{head}.{rest[len(stream) + 1:]}"] = value
            elif head in ("blocks", "norm"):
                out[key] = value
        return out

    def forward(self, values: torch.Tensor, coords: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """values (B, N, D), coords (B, N, C), valid (B, N) bool (None: all) → (B, 1+N, W), the cls
        token first; rows of invalid tokens are padding (they attend, nothing attends to them)."""
        pos = self.position(coords)
        x = self.embed(values) + self.stream_embed + (0 if self.position_every_block else pos)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        attn_mask = None
        if valid is not None and not bool(valid.all()):
            attn_mask = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)[:, None, None, :]
        every = torch.cat([pos.new_zeros(pos.shape[0], 1, pos.shape[2]), pos], dim=1) if self.position_every_block \
            else None
        for block in self.blocks:
            x = block(x if every is None else x + every, attn_mask=attn_mask)
        return self.norm(x)
