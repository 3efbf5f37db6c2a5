"""What ``embed`` and ``reconstruct`` share: a trained model from the registry (or a checkpoint
folder), a stream's plugin as the model was trained with it, and a file's evaluation views."""

from __future__ import annotations

from polymae.modalities.base import ModalityPlugin
from polymae.modalities.registry import make_plugin
from polymae.pipelines.data import tokenize_views
from polymae.pipelines.spec import PipelineSpec
from polymae.tokenizer import MaskPolicy, MaskSpec
from polymae.tokenizer.stream import TokenStream


def resolve_checkpoint(model_uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a checkpoint folder → a local checkpoint folder."""
    from polymae.orchestration.locations import resolve_tracking_uri
    from polymae.orchestration.tracking import download_checkpoint

    return download_checkpoint(model_uri, resolve_tracking_uri(tracking_uri))


def check_streams(spec: PipelineSpec, names: list[str], what: str = "stream") -> None:
    """ValueError naming the model's streams when any of ``names`` is not one of them."""
    unknown = [n for n in names if n not in spec.streams]
    if unknown:
        raise ValueError(f"{what} {', '.join(map(repr, unknown))}: the model has streams {', '.join(spec.streams)}")


def stream_plugin(spec: PipelineSpec, stream: str) -> ModalityPlugin:
    """The plugin of ``stream`` with the settings (and dataset statistics) it was trained with."""
    check_streams(spec, [stream])
    source = spec.source(stream)
    return make_plugin(source.modality, source.config)


def evaluation_views(plugin: ModalityPlugin, path: str, sample_id: str, stream: str,
                     seed: int = 0) -> list[dict[str, TokenStream]]:
    """Every view of one file (``{stream: TokenStream}``), deterministic evaluation crops, every
    token visible (no masking at inference). Raises BadInputError."""
    policy = MaskPolicy({stream: MaskSpec(strategy="random", ratio=0.0)}, seed)
    return tokenize_views(plugin, policy, path, sample_id, epoch=0, seed=0,
                          first=0, count=1 << 30, train=False, stream=stream)
