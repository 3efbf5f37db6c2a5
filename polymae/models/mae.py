"""The PolyMAE model: one masked autoencoder over any set of named streams.

    per stream: embed(values) + position(coords) + stream embedding
    ──▶ concat all streams ──▶ keep visible tokens ──▶ encoder (timm Blocks)
    ──▶ decoder: mask tokens back in place, decoder positions ──▶ per-stream heads
    ──▶ per-stream losses on masked, valid tokens, weighted and summed

A stream is one modality plugin's tokens under a name (default: the modality), so two streams
of one plugin (two cameras) have their own embeddings and heads. A single-modality MAE (image,
video, audio...) is the one-stream case. The method names mirror facebookresearch/mae:
``forward_encoder``, ``forward_decoder``, ``forward_loss``. Batches are dicts of tensors keyed
``"<stream>.<field>"`` (see polymae.tokenizer.stream).

``cfg.decoder`` picks the decoder: ``"joint"`` (above: MAE's, one decoder over all streams'
tokens) or ``"per_stream"`` (MultiMAE: each stream's own cross-attention decoder, in
polymae.models.decoders). ``cfg.contrastive_weight`` > 0 adds CAV-MAE's contrastive term between
streams' pooled encoder outputs (``forward_contrastive``). ``reconstruct`` encodes some streams
and predicts others.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from polymae.modalities.base import ModalityPlugin
from polymae.models.decoders import StreamDecoder, gather_tokens
from polymae.models.decoders import transformer_blocks as _blocks
from polymae.models.losses.info_nce import symmetric_info_nce
from polymae.models.presets import ModelConfig
from polymae.tokenizer.stream import column

Batch = dict[str, torch.Tensor]
CONTRASTIVE = "contrastive"  # the key of the contrastive term among the per-stream losses


def _run(blocks: nn.ModuleList, x: torch.Tensor, attn_mask: torch.Tensor | None,
         pos: torch.Tensor | None = None) -> torch.Tensor:
    """The blocks in turn; ``pos`` (same shape as x), if given, is added before every block."""
    for block in blocks:
        x = block(x if pos is None else x + pos, attn_mask=attn_mask)
    return x


def _with_cls(x: torch.Tensor | None) -> torch.Tensor | None:
    """(B, K, W) → (B, 1+K, W) with zeros in the cls slot."""
    return None if x is None else torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x], dim=1)


def _gather(x: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else gather_tokens(x, ids)


def loss_mask(batch: Batch, modality: str) -> torch.Tensor:
    """(B, N) bool: the tokens whose reconstruction counts in ``modality``'s loss."""
    return ~batch[column(modality, "visible")] & batch[column(modality, "decoded")] & batch[column(modality, "valid")]


class PolyMAE(nn.Module):
    def __init__(self, plugins: dict[str, ModalityPlugin], cfg: ModelConfig,
                 loss_weights: dict[str, float] | None = None) -> None:
        """``plugins``: stream name → its plugin; ``loss_weights``: stream name → weight (default 1)."""
        super().__init__()
        self.plugins = plugins
        self.modalities = sorted(plugins)  # the stream names, in a fixed order
        self.loss_weights = {m: float((loss_weights or {}).get(m, 1.0)) for m in self.modalities}
        self.cfg = cfg
        if cfg.contrastive_weight > 0 and (len(self.modalities) < 2 or CONTRASTIVE in plugins):
            raise ValueError(f"contrastive_weight needs two or more streams, none named {CONTRASTIVE!r}; "
                             f"streams: {', '.join(self.modalities)}")
        w, dw = cfg.width, cfg.decoder_width
        # encoder
        self.embed = nn.ModuleDict({m: plugins[m].build_embed(w) for m in self.modalities})
        self.position = nn.ModuleDict({m: plugins[m].build_position(w) for m in self.modalities})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, w)) for m in self.modalities})
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.blocks = _blocks(w, cfg.depth, cfg.heads, cfg)
        self.norm = nn.LayerNorm(w, eps=1e-6)
        if cfg.decoder == "joint":
            self.decoder_embed = nn.Linear(w, dw)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
            self.decoder_position = nn.ModuleDict({m: plugins[m].build_position(dw) for m in self.modalities})
            self.decoder_modality_embed = nn.ParameterDict(
                {m: nn.Parameter(torch.zeros(1, 1, dw)) for m in self.modalities}
            )
            self.decoder_blocks = _blocks(dw, cfg.decoder_depth, cfg.decoder_heads, cfg)
            self.decoder_norm = nn.LayerNorm(dw, eps=1e-6)
        else:  # MultiMAE: a decoder per stream, each of its stream's size with its own position codes
            self.decoders = nn.ModuleDict({m: StreamDecoder(plugins, w, cfg.stream_decoder(m), cfg)
                                           for m in self.modalities})
        head_width = {m: dw if cfg.decoder == "joint" else cfg.stream_decoder(m)[1] for m in self.modalities}
        self.heads = nn.ModuleDict({m: plugins[m].build_head(head_width[m]) for m in self.modalities})
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's init: xavier-uniform linears, unit LayerNorms, N(0, 0.02) tokens."""
        if self.cfg.decoder == "joint":
            tokens = [self.mask_token, *self.decoder_modality_embed.values()]
        else:
            tokens = [p for d in self.decoders.values() for p in [d.mask_token, *d.stream_embed.values()]]
        for p in [self.cls_token, *tokens[:1], *self.modality_embed.values(), *tokens[1:]]:
            nn.init.normal_(p, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # --- helpers ---------------------------------------------------------------------------
    def streams_in(self, batch: Batch) -> list[str]:
        """The model's streams that ``batch`` has columns for (a batch may bring only some:
        embedding one stream's files; the others count as absent)."""
        return [m for m in self.modalities if column(m, "values") in batch]

    def stream_parameters(self, stream: str) -> list[nn.Parameter]:
        """The parameters only ``stream``'s tokens reach: its embedding, positions, stream codes,
        head (and with per-stream decoders its decoder and every decoder's code for it). A batch
        without a valid token of the stream gives each of them an exactly zero gradient."""
        modules: list[nn.Module] = [self.embed[stream], self.position[stream], self.heads[stream]]
        params = [self.modality_embed[stream]]
        if self.cfg.decoder == "joint":
            modules.append(self.decoder_position[stream])
            params.append(self.decoder_modality_embed[stream])
        else:
            modules.append(self.decoders[stream])
            others = [d for m, d in self.decoders.items() if m != stream]
            modules += [d.position[stream] for d in others]
            params += [d.stream_embed[stream] for d in others]
        return params + [p for module in modules for p in module.parameters()]

    def _cat(self, batch: Batch, field: str) -> torch.Tensor:
        return torch.cat([batch[column(m, field)] for m in self.streams_in(batch)], dim=1)

    def _positions(self, modules: nn.ModuleDict, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position codes (B, N, width): the part added once to the input, and the part added
        before every block (modalities whose plugin sets ``position_every_block``, as Point-MAE);
        the second is None when no modality asks for it."""
        names = self.streams_in(batch)
        codes = [modules[m](batch[column(m, "coords")]) for m in names]
        every = [self.plugins[m].position_every_block for m in names]
        if not any(every):
            return torch.cat(codes, dim=1), None
        once = torch.cat([torch.zeros_like(c) if e else c for c, e in zip(codes, every, strict=True)], dim=1)
        return once, torch.cat([c if e else torch.zeros_like(c) for c, e in zip(codes, every, strict=True)], dim=1)

    def _split(self, x: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        names = self.streams_in(batch)
        sizes = [batch[column(m, "valid")].shape[1] for m in names]
        return dict(zip(names, torch.split(x, sizes, dim=1), strict=True))

    # --- the method --------------------------------------------------------------------------
    def forward_encoder(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode visible tokens only.

        Returns latent (B, 1+K, W) with the cls token first, ids_restore (B, N_total) that
        undoes the visible-first shuffle, and keep (B, K) bool: which of the K slots hold a
        visible token (K = the most visible tokens of any sample in the batch; samples with
        fewer are padded and the padding is masked out of attention).
        """
        pos_once, pos_every = self._positions(self.position, batch)
        tokens = pos_once + torch.cat(
            [self.embed[m](batch[column(m, "values")]) + self.modality_embed[m] for m in self.streams_in(batch)], dim=1
        )
        visible = self._cat(batch, "visible") & self._cat(batch, "valid")
        counts = visible.sum(dim=1)
        k = int(counts.max())
        ids_shuffle = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)  # visible first
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :k]
        x = _gather(tokens, ids_keep)
        keep = torch.arange(k, device=x.device)[None] < counts[:, None]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        attn_mask = None
        if not bool(keep.all()):
            with_cls = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
            attn_mask = with_cls[:, None, None, :]
        x = self.norm(_run(self.blocks, x, attn_mask, _with_cls(_gather(pos_every, ids_keep))))
        return x, ids_restore, keep

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, keep: torch.Tensor, batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Put mask tokens where tokens were hidden and predict every token's values.

        Returns per modality pred (B, N_m, D_m).
        """
        if self.cfg.decoder == "per_stream":
            return self.forward_stream_decoders(latent, ids_restore, keep, batch)
        x = self.decoder_embed(latent)
        cls, x = x[:, :1], x[:, 1:]
        b, n_total = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, n_total - x.shape[1], -1)
        x = torch.where(keep[..., None], x, self.mask_token)  # padding slots become mask tokens
        x = torch.cat([x, mask_tokens], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))  # unshuffle
        pos_once, pos_every = self._positions(self.decoder_position, batch)
        x = x + pos_once + torch.cat([self.decoder_modality_embed[m].expand(b, batch[column(m, "valid")].shape[1], -1)
                                      for m in self.streams_in(batch)], dim=1)
        sees = (self._cat(batch, "visible") | self._cat(batch, "decoded")) & self._cat(batch, "valid")
        x = self._decode(cls, x, sees, pos_every)
        return {m: self.heads[m](part) for m, part in self._split(x, batch).items()}

    def forward_stream_decoders(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, keep: torch.Tensor, batch: Batch
    ) -> dict[str, torch.Tensor]:
        """MultiMAE: each stream's decoder cross-attends to every stream's encoded tokens.
        → per stream pred (B, N_m, D_m); tokens the decoder does not see predict from zeros and
        never reach a loss, as in the joint decoder."""
        names = self.streams_in(batch)
        sizes = [(m, batch[column(m, "valid")].shape[1]) for m in names]
        preds = {}
        for m in names:
            pos_once, pos_every = self._positions(self.decoders[m].position, batch)
            sees = (batch[column(m, "visible")] | batch[column(m, "decoded")]) & batch[column(m, "valid")]
            x = self.decoders[m](latent, keep, ids_restore, sizes, pos_once, pos_every, m, sees)
            preds[m] = self.heads[m](x)
        return preds

    def _decode(self, cls: torch.Tensor, x: torch.Tensor, sees: torch.Tensor,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder blocks over cls + the tokens where ``sees`` (B, N) is true.

        x (B, N, dw) → (B, N, dw); tokens the decoder does not see (padding, and VideoMAE V2's
        decoder-dropped tokens) come out as zeros and never reach a loss. When samples keep
        different counts, the kept tokens are gathered first, padded and attention-masked.
        """
        if bool(sees.all()):
            return self.decoder_norm(_run(self.decoder_blocks, torch.cat([cls, x], dim=1), None, _with_cls(pos)))[:, 1:]
        b, n, _ = x.shape
        counts = sees.sum(dim=1)
        k = int(counts.max())
        ids = torch.argsort((~sees).to(torch.int8), dim=1, stable=True)[:, :k]  # seen tokens first
        slot = torch.arange(k, device=x.device)[None] < counts[:, None]
        sub = _gather(x, ids)
        attn_mask = None
        if not bool(slot.all()):
            attn_mask = torch.cat([slot.new_ones(b, 1), slot], dim=1)[:, None, None, :]
        sub_pos = _with_cls(_gather(pos, ids))
        y = self.decoder_norm(_run(self.decoder_blocks, torch.cat([cls, sub], dim=1), attn_mask, sub_pos))[:, 1:]
        y = y * slot[..., None].to(y.dtype)
        return y.new_zeros(b, n, y.shape[-1]).scatter(1, ids[..., None].expand(-1, -1, y.shape[-1]), y)

    def forward_loss(self, batch: Batch, preds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-stream loss on tokens hidden from the encoder and seen by the decoder (and valid):
        MAE's masked tokens, or VideoMAE V2's "masked for the encoder, kept for the decoder".

        A stream with no such token in the batch (every sample lacks it, or shows all of it)
        scores 0, still through its head: under DDP every parameter takes part in every step."""
        losses = {}
        for m in self.streams_in(batch):
            mask = loss_mask(batch, m)
            if len(self.modalities) > 1 and not bool(mask.any()):
                losses[m] = preds[m].sum() * 0.0
            else:
                losses[m] = self.plugins[m].loss(preds[m], batch[column(m, "values")], mask)
        return losses

    def pool_streams(self, latent: torch.Tensor, ids_restore: torch.Tensor, keep: torch.Tensor,
                     batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-stream mean of the encoded visible tokens (CAV-MAE's ``latent_c.mean(dim=1)``).

        → pooled (S, B, W) for the batch's S streams in order and present (S, B) bool: the sample
        showed the encoder at least one token of the stream (else its row is 0)."""
        names = self.streams_in(batch)
        owner = torch.cat([torch.full((batch[column(m, "valid")].shape[1],), i, device=latent.device)
                           for i, m in enumerate(names)])  # (N_total,) which stream each token is
        tokens = latent[:, 1:]
        ids_keep = torch.argsort(ids_restore, dim=1)[:, : tokens.shape[1]]
        slot_owner = owner[ids_keep]  # (B, K)
        member = torch.stack([keep & (slot_owner == i) for i in range(len(names))])  # (S, B, K)
        weights = member.to(tokens.dtype)
        pooled = torch.einsum("sbk,bkw->sbw", weights, tokens) / weights.sum(-1, keepdim=True).clamp(min=1.0)
        return pooled, member.any(-1)

    def forward_contrastive(self, latent: torch.Tensor, ids_restore: torch.Tensor, keep: torch.Tensor,
                            batch: Batch) -> torch.Tensor:
        """CAV-MAE's contrastive term, made symmetric: InfoNCE between two streams' pooled encoder
        outputs, over the samples that show the encoder both; the mean over stream pairs. A pair
        that fewer than two samples share adds 0 (one sample is its own only candidate)."""
        pooled, present = self.pool_streams(latent, ids_restore, keep, batch)
        terms = [symmetric_info_nce(pooled[i], pooled[j], self.cfg.contrastive_temperature, present[i] & present[j])
                 for i, j in itertools.combinations(range(pooled.shape[0]), 2)]
        return torch.stack(terms).mean() if terms else pooled.sum() * 0.0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """→ (total loss: the weighted sum of the streams' (+ contrastive_weight × the contrastive
        term, under the key "contrastive"), per-stream losses, per-stream predictions)."""
        latent, ids_restore, keep = self.forward_encoder(batch)
        preds = self.forward_decoder(latent, ids_restore, keep, batch)
        losses = self.forward_loss(batch, preds)
        total = sum(self.loss_weights[m] * v for m, v in losses.items())
        if self.cfg.contrastive_weight > 0:
            losses[CONTRASTIVE] = self.forward_contrastive(latent, ids_restore, keep, batch)
            total = total + self.cfg.contrastive_weight * losses[CONTRASTIVE]
        return total, losses, preds

    @torch.no_grad()
    def reconstruct(self, batch: Batch, inputs: list[str], targets: list[str], use_mask: bool = False,
                    to_values: bool = False) -> dict[str, torch.Tensor]:
        """Encode the ``inputs`` streams, predict the ``targets`` streams: → per target (B, N_m, D_m).

        Input streams show the encoder every valid token (``use_mask``: only those the batch marks
        visible); every other stream, and an input the batch lacks, is fully hidden. Targets need
        their columns in the batch (coords and valid: where to predict); their values are never
        seen. Predictions are in the head's space (the plugin's ``target``, e.g. norm-pix), which
        depends on the inputs only; ``to_values`` maps them to token values with the plugin's
        ``prediction_values``, which for norm-pix uses each true token's mean and variance (as
        the renders do), so it reads the target's values."""
        allowed = set(self.modalities)
        for what, names in (("input", inputs), ("target", targets)):
            unknown = [m for m in names if m not in allowed]
            if unknown:
                raise ValueError(f"unknown {what} stream(s) {', '.join(unknown)}; the model has "
                                 f"{', '.join(self.modalities)}")
        missing = [m for m in targets if column(m, "values") not in batch]
        if missing:
            raise ValueError(f"target stream(s) {', '.join(missing)} need their columns in the batch (coords, valid)")
        run = dict(batch)
        for m in self.streams_in(batch):
            valid = batch[column(m, "valid")]
            visible = (valid & batch[column(m, "visible")] if use_mask else valid) if m in inputs else valid & False
            run[column(m, "visible")], run[column(m, "decoded")] = visible, valid
        latent, ids_restore, keep = self.forward_encoder(run)
        preds = self.forward_decoder(latent, ids_restore, keep, run)
        out = {m: preds[m] for m in targets}
        if to_values:
            for m in targets:
                values = batch[column(m, "values")].float().cpu().numpy()
                out[m] = torch.as_tensor(np.stack([self.plugins[m].prediction_values(p, v) for p, v in
                                                   zip(out[m].float().cpu().numpy(), values, strict=True)]))
        return out

    @torch.no_grad()
    def embed_batch(self, batch: Batch, feature: str = "cls") -> torch.Tensor:
        """Encoder embedding per sample (B, W): the normalised cls token (``cls``) or the mean of
        the encoded visible tokens (``mean``, padding left out)."""
        latent, _, keep = self.forward_encoder(batch)
        if feature == "cls":
            return latent[:, 0]
        if feature == "mean":
            weights = keep.to(latent.dtype)[..., None]  # (B, K, 1)
            return (latent[:, 1:] * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        raise ValueError(f"feature {feature!r}: allowed cls, mean")
