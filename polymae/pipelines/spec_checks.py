"""The checks of a pipeline spec that read its plugins: masks against each plugin's axes and
rules, the mask policy's settings, the held-out region, frames, clocks and pairing. Each returns
problem lines naming the field and the allowed values; ``parse_spec`` reports them all at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from polymae.modalities.registry import available_modalities, get_plugin_class
from polymae.tokenizer.axes import describe_axes, needs_grid
from polymae.tokenizer.masking import MaskSpec, get_strategy, strategy_problem
from polymae.tokenizer.policies import SHARED_AXES

if TYPE_CHECKING:
    from polymae.pipelines.spec import PipelineSpec, SourceSpec


def mask_problems(spec: PipelineSpec) -> list[str]:
    """Each stream's mask fits its plugin (its rule, the axes its strategies read), the policy's
    settings, the held-out region, and some stream stays visible."""
    problems: list[str] = []
    masks = spec.mask_specs()
    for i, source in enumerate(spec.sources):
        try:
            plugin = get_plugin_class(source.modality)(source.config)
        except ValidationError:
            continue  # already reported above
        reason = plugin.check_mask(masks[source.name])
        if reason:
            problems.append(f"tokenizer.mask.{source.name} (with sources.{i}.config): {reason}")
        for key in ("strategy", "decoder_strategy"):
            name = getattr(masks[source.name], key)
            reason = name and strategy_problem(name, plugin.axes)
            if reason:
                problems.append(f"tokenizer.mask.{source.name}.{key} (stream {source.name}, {source.modality}): "
                                f"{reason}")
    problems += _policy_problems(spec, masks)
    if spec.split.region > 0:
        flat = [f"{s.name} ({s.modality})" for s in spec.sources
                if not get_plugin_class(s.modality).has_frame()]
        if flat:
            framed = [m for m in available_modalities() if get_plugin_class(m).has_frame()]
            problems.append(f"split.region = {spec.split.region}: streams {', '.join(flat)} have no spatial frame "
                            f"to hold a strip out of; allowed with: {', '.join(framed)} (or split by files)")
    if all(masks[s.name].ratio >= 1.0 for s in spec.sources):
        problems.append(f"tokenizer.mask: ratio 1.0 on every stream ({', '.join(spec.streams)}) leaves the "
                        "encoder nothing to see; allowed: 1.0 on some streams, < 1.0 on at least one")
    return problems


def _policy_problems(spec: PipelineSpec, masks: dict[str, MaskSpec]) -> list[str]:
    """A budget needs strategies that take a count; aligned needs streams sharing a frame or clock."""
    tok, problems = spec.tokenizer, []
    if tok.policy != "independent":
        for name, mask in masks.items():
            if not get_strategy(mask.strategy).counted:
                problems.append(f"tokenizer.mask.{name}.strategy = {mask.strategy!r}: its count is fixed by the "
                                f"ratio, so policy {tok.policy} cannot set it; allowed: independent")
    if tok.policy != "budget" and (tok.visible is not None or tok.alpha != 1.0):
        problems.append(f"tokenizer: visible and alpha split a budget, but tokenizer.policy = {tok.policy!r}; "
                        "allowed: set policy: budget, or leave them out")
    if isinstance(tok.alpha, dict):
        unknown = sorted(set(tok.alpha) - set(spec.streams))
        if unknown:
            problems.append(f"tokenizer.alpha: {unknown} not among the stream names; "
                            f"allowed: {', '.join(spec.streams)}")
    if tok.policy == "aligned":
        groups: dict[tuple[str, str], list[SourceSpec]] = {}
        for source in spec.sources:
            for kind in SHARED_AXES:
                if getattr(source, kind) is not None:
                    groups.setdefault((kind, getattr(source, kind)), []).append(source)
        if not any(len(members) > 1 for members in groups.values()):
            problems.append("tokenizer.policy = 'aligned': no two streams share a spatial frame (sources[].frame) "
                            "or a clock (sources[].clock), so there is nothing to align; allowed: independent, "
                            "budget")
        for (kind, _), members in groups.items():
            for source in members:
                axes = get_plugin_class(source.modality)(source.config).axes
                missing = needs_grid(*SHARED_AXES[kind])(axes)
                if missing and len(members) > 1:
                    problems.append(f"tokenizer.policy = 'aligned': stream {source.name} shares a {kind} but has no "
                                    f"{missing} (it has {describe_axes(axes)})")
    return problems


def pairing_problems(spec: PipelineSpec) -> list[str]:
    """Frames only on plugins that have one; pairing settings that name known streams."""
    problems = []
    for i, source in enumerate(spec.sources):
        if source.frame is not None and not get_plugin_class(source.modality).has_frame():
            framed = [m for m in available_modalities() if get_plugin_class(m).has_frame()]
            problems.append(f"sources.{i}.frame = {source.frame!r}: modality {source.modality} has no spatial "
                            f"frame; allowed on: {', '.join(framed)}")
    clocks: dict[str, list[int]] = {}
    for i, source in enumerate(spec.sources):
        if source.clock is not None:
            clocks.setdefault(source.clock, []).append(i)
    for clock, members in clocks.items():
        for k, i in enumerate(members):
            role, source = "lead" if k == 0 else "follow", spec.sources[i]
            if role not in get_plugin_class(source.modality).clock_roles():
                able = [m for m in available_modalities() if role in get_plugin_class(m).clock_roles()]
                what = "draw a clock's spans (the first stream on it)" if k == 0 else "take a clock's spans"
                problems.append(f"sources.{i}.clock = {clock!r}: modality {source.modality} cannot {what}; "
                                f"allowed: {', '.join(able)}")
        if len(members) > 1 and spec.pairing is None:
            problems.append(f"sources.{members[0]}.clock = {clock!r}: streams on one clock must be paired into "
                            "samples; add `pairing:` (key: stem pairs a video with its own audio track)")
        if len(members) == 1:
            problems.append(f"sources.{members[0]}.clock = {clock!r}: no other stream is on this clock")
    pairing = spec.pairing
    if pairing is not None and isinstance(pairing.template, dict):
        unknown = sorted(set(pairing.template) - set(spec.streams))
        if unknown:
            problems.append(f"pairing.template: {unknown} not among the stream names; "
                            f"allowed: {', '.join(spec.streams)}")
        missing = sorted(set(spec.streams) - set(pairing.template))
        if missing and not unknown:
            problems.append(f"pairing.template: no pattern for streams {missing}; give one per stream or one for all")
    if "pair" in {s.kind for s in spec.stages} and len(spec.sources) < 2:
        problems.append("stages: a pair stage joins several streams; this spec has one (remove it or add sources)")
    return problems


