"""MultiMAE's per-stream decoders (its ``SpatialOutputAdapter``), for ``decoder="per_stream"``.

Each stream has its own small decoder:

    encoder output (cls + visible tokens of ALL streams) ──proj_context──▶ decoder width
    + this decoder's stream embedding + the decoder position code of each token  = context
    queries = this stream's tokens in place: its visible tokens (from the context, as MultiMAE's
    ``use_task_queries``) and a mask token wherever one was hidden, with the same embeddings
    ──▶ cross-attention (queries → context) ──▶ MLP ──▶ self-attention blocks over the stream's
    tokens ──▶ (the stream's head, in PolyMAE)

Layer norms sit where MultiMAE's do: ``query_norm`` and ``context_norm`` before the
cross-attention, ``out_norm`` before its MLP; the cross-attention output has no residual to the
queries (MultiMAE takes ``x = xattn(...)``, then ``x = x + mlp(out_norm(x))``), and no norm
follows the last block. A stream's reconstruction reads other streams only through the
cross-attention, which is what makes it cross-modal.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from polymae.modalities.base import ModalityPlugin
from polymae.models.presets import DecoderSize, ModelConfig


def transformer_blocks(width: int, depth: int, heads: int, cfg: ModelConfig) -> nn.ModuleList:
    """``depth`` timm pre-norm Blocks (MAE's: qkv bias, LayerNorm eps 1e-6)."""
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList(
        Block(width, heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm, drop_path=cfg.drop_path)
        for _ in range(depth)
    )


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, W), ids (B, K) → (B, K, W)."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Q, W) to a context (B, M, W); ``context_mask``
    (B, M) bool: the context tokens that may be attended to (each row needs at least one)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        b, q, w = x.shape
        m = context.shape[1]
        head = w // self.heads
        queries = self.q(x).reshape(b, q, self.heads, head).transpose(1, 2)  # (B, H, Q, w/H)
        k, v = self.kv(context).reshape(b, m, 2, self.heads, head).permute(2, 0, 3, 1, 4)  # each (B, H, M, w/H)
        mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, q, w))


class StreamDecoder(nn.Module):
    """One stream's decoder of ``size`` (depth, width, heads). ``plugins``: every stream of the
    model (the context may hold any), each with its decoder position code at this width."""

    def __init__(self, plugins: dict[str, ModalityPlugin], enc_width: int, size: DecoderSize,
                 cfg: ModelConfig) -> None:
        super().__init__()
        depth, w, heads = size
        streams = sorted(plugins)
        self.position = nn.ModuleDict({m: plugins[m].build_position(w) for m in streams})
        self.proj_context = nn.Linear(enc_width, w)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, w))
        # MultiMAE's task embeddings: this decoder's code for "a token of stream m"
        self.stream_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, w)) for m in streams})
        self.query_norm = nn.LayerNorm(w, eps=1e-6)
        self.context_norm = nn.LayerNorm(w, eps=1e-6)
        self.out_norm = nn.LayerNorm(w, eps=1e-6)
        self.cross_attn = CrossAttention(w, heads)
        self.mlp = Mlp(w, int(w * cfg.mlp_ratio))
        self.blocks = transformer_blocks(w, depth, heads, cfg)

    def forward(
        self, latent: torch.Tensor, keep: torch.Tensor, ids_restore: torch.Tensor, sizes: list[tuple[str, int]],
        pos_once: torch.Tensor, pos_every: torch.Tensor | None, stream: str, sees: torch.Tensor,
    ) -> torch.Tensor:
        """Decoder features of ``stream``'s tokens.

        latent (B, 1+K, W_enc) and keep (B, K) as forward_encoder returns them; ids_restore
        (B, N_total); sizes: (stream, N_m) of the batch's streams in order; pos_once, pos_every
        (B, N_total, w) this decoder's position codes (``self.position``; pos_every: added before
        every block, or None);
        sees (B, N_s) bool: the stream's tokens the decoder reconstructs (valid, and visible or
        decoded). → (B, N_s, w), zeros at tokens it does not see.
        """
        b, n_total = ids_restore.shape
        x = self.proj_context(latent)
        glob, x = x[:, :1], x[:, 1:]
        k = x.shape[1]
        # every token in place: visible ones from the encoder, a mask token elsewhere
        x = torch.where(keep[..., None], x, self.mask_token)
        x = torch.cat([x, self.mask_token.expand(b, n_total - k, -1)], dim=1)
        x = gather_tokens(x, ids_restore)
        emb = torch.cat([self.stream_embed[m].expand(b, n, -1) for m, n in sizes], dim=1)
        x = x + emb + (pos_once if pos_every is None else pos_once + pos_every)  # (B, N_total, w)
        # context: the global token and the visible tokens (padding slots masked out)
        ids_keep = torch.argsort(ids_restore, dim=1)[:, :k]
        context = torch.cat([glob, gather_tokens(x, ids_keep)], dim=1)
        context_mask = torch.cat([keep.new_ones(b, 1), keep], dim=1)
        # queries: this stream's tokens the decoder sees, gathered first and padded
        names = [m for m, _ in sizes]
        start = sum(n for _, n in sizes[: names.index(stream)])
        n_s = sees.shape[1]
        queries = x[:, start : start + n_s]
        every = None if pos_every is None else pos_every[:, start : start + n_s]
        counts = sees.sum(dim=1)
        slots = max(1, int(counts.max()))  # ≥ 1: a stream no sample has still runs (DDP: every parameter)
        ids = torch.argsort((~sees).to(torch.int8), dim=1, stable=True)[:, :slots]
        slot = torch.arange(slots, device=x.device)[None] < counts[:, None]
        y = self.cross_attn(self.query_norm(gather_tokens(queries, ids)), self.context_norm(context), context_mask)
        y = y + self.mlp(self.out_norm(y))
        attn_mask = None
        if not bool(slot.all()):
            # a sample without the stream has no real key: let its (discarded) slots see slot 0,
            # so no attention row is all masked (NaN); real tokens always come first
            key_ok = slot.clone()
            key_ok[:, 0] = True
            attn_mask = key_ok[:, None, None, :]
        sub_every = None if every is None else gather_tokens(every, ids)
        for block in self.blocks:
            y = block(y if sub_every is None else y + sub_every, attn_mask=attn_mask)
        y = y * slot[..., None].to(y.dtype)
        return y.new_zeros(b, n_s, y.shape[-1]).scatter(1, ids[..., None].expand(-1, -1, y.shape[-1]), y)
