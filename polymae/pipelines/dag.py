"""Pipeline stages as a DAG, and the fingerprints that decide whether a stage runs again.

A spec's ``stages`` list names stages of registered kinds with ``needs:``; without one, the
spec gets the default chain ``scan → train → evaluate → register`` (``scan → pair → train → …``
when the spec sets ``pairing``). Each stage's fingerprint
is a hash of its kind, the spec fields it reads, the code (:mod:`polymae.pipelines.code_version`)
and its needs' fingerprints (a scan's inputs
are the source (its absolute paths, its config) and the ids, sizes and modification times of
the files its plugin reads), so it can be computed before
anything runs: ``polymae plan`` shows it, and the runner reuses a stage's recorded output
when a finished run logged the same fingerprint for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polymae.pipelines.spec import PipelineSpec, StageSpec


@dataclass(frozen=True)
class StageKind:
    """What a kind of stage needs upstream and which spec fields its result depends on."""

    needs: tuple[str, ...]  # kinds that must be upstream (directly or further up)
    reads: Callable[[PipelineSpec, StageSpec], Any]  # the spec fields its output depends on


# train fields that change how training runs but not what it computes (resume_from does: the
# weights training starts from)
TRAIN_LOGISTICS = {"workers", "cpus_per_worker", "use_gpu", "log_every", "checkpoint_every",
                    "max_failures", "placement_strategy"}


def scan_sources(spec: PipelineSpec, stage: StageSpec) -> list[Any]:
    """The sources a scan stage reads: ``options.source`` (a stream name or index), else all."""
    choice = stage.options.get("source")
    if choice is None:
        return list(spec.sources)
    return [spec.streams[choice] if isinstance(choice, str) else spec.sources[choice]]


def _scan_reads(spec: PipelineSpec, stage: StageSpec) -> Any:
    from polymae.modalities.registry import get_plugin_class

    out = []
    for source in scan_sources(spec, stage):
        reads = {"source": source.model_dump(mode="json"), "files": file_stats(source)}
        if spec.split.region > 0 and get_plugin_class(source.modality).has_frame():
            reads["region"] = spec.split.region  # a frame's views are counted on its training part
        out.append(reads)
    return out


def _train_reads(spec: PipelineSpec, stage: StageSpec) -> Any:
    return {"seed": spec.seed, "model": spec.resolved_model().model_dump(mode="json"),
            "train": spec.train.model_dump(mode="json", exclude=TRAIN_LOGISTICS),
            "split": spec.split.model_dump(mode="json"),
            "mask": {m: s.model_dump(mode="json") for m, s in spec.mask_specs().items()}}


def _pair_reads(spec: PipelineSpec, stage: StageSpec) -> Any:
    pairing = spec.pairing.model_dump(mode="json") if spec.pairing is not None else {}
    manifest = pairing.get("manifest")
    stat = os.stat(manifest) if manifest and os.path.exists(manifest) else None
    return {"pairing": pairing, "streams": list(spec.streams),
            "manifest": (stat.st_size, stat.st_mtime_ns) if stat else None}


def _probe_reads(spec: PipelineSpec, stage: StageSpec) -> Any:
    """The probe's options and its labelled set's files (a table: the table file itself)."""
    data = stage.options.get("data", "")
    found = [data] if os.path.isfile(data) else sorted(
        os.path.join(root, n) for root, _, names in os.walk(data) for n in names)
    stats = [(os.path.relpath(p, data) if p != data else "", os.stat(p).st_size, os.stat(p).st_mtime_ns)
             for p in found]
    return {"options": {k: v for k, v in stage.options.items() if k != "output"}, "files": stats, "seed": spec.seed}


STAGE_KINDS: dict[str, StageKind] = {
    "scan": StageKind((), _scan_reads),
    "pair": StageKind(("scan",), _pair_reads),
    "train": StageKind(("scan",), _train_reads),
    "evaluate": StageKind(("train",), lambda spec, stage: {}),
    "register": StageKind(("train",), lambda spec, stage: {
        "model": spec.tracking.registered_model or spec.name}),
    "embed": StageKind(("train",), lambda spec, stage: stage.options),
    "probe": StageKind(("train",), _probe_reads),
}

DEFAULT_STAGES = [
    {"name": "scan", "kind": "scan"},
    {"name": "train", "kind": "train", "needs": ["scan"]},
    {"name": "evaluate", "kind": "evaluate", "needs": ["train"]},
    {"name": "register", "kind": "register", "needs": ["evaluate"]},
]
PAIRED_STAGES = [  # the default of a spec with ``pairing``
    {"name": "scan", "kind": "scan"},
    {"name": "pair", "kind": "pair", "needs": ["scan"]},
    {"name": "train", "kind": "train", "needs": ["pair"]},
    {"name": "evaluate", "kind": "evaluate", "needs": ["train"]},
    {"name": "register", "kind": "register", "needs": ["evaluate"]},
]


def file_stats(source: Any) -> list[tuple[str, int, int]]:
    """(sample id, size, mtime ns) of every file the source's plugin would read: a scan's inputs."""
    from polymae.modalities.registry import get_plugin_class
    from polymae.pipelines.files import discover

    out = []
    for f in discover(source, get_plugin_class(source.modality).extensions):
        try:
            st = os.stat(f.path)
            out.append((f.sample_id, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((f.sample_id, -1, -1))  # gone or unreadable: the scan will say why
    return out


def check_stages(stages: list[StageSpec], streams: list[str]) -> list[str]:
    """Problems of a stage list, one line each (kinds, names, needs, cycles)."""
    problems = []
    names = [s.name for s in stages]
    for i, stage in enumerate(stages):
        if names.count(stage.name) > 1:
            problems.append(f"stages.{i}.name = {stage.name!r}: used twice; stage names must be unique")
        if stage.kind not in STAGE_KINDS:
            problems.append(f"stages.{i}.kind = {stage.kind!r}: unknown stage kind; "
                            f"allowed: {', '.join(STAGE_KINDS)}")
        for j, need in enumerate(stage.needs):
            if need not in names or need == stage.name:
                others = [n for n in names if n != stage.name]
                problems.append(f"stages.{i}.needs.{j} = {need!r}: not another stage; allowed: {', '.join(others)}")
        paths = stage.options.get("paths")
        if stage.kind == "embed" and not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
            problems.append(f"stages.{i}.options.paths = {paths!r}: an embed stage needs a list of files or folders")
        if stage.kind == "probe":
            problems += probe_problems(f"stages.{i}.options", stage.options, streams)
        source = stage.options.get("source") if stage.kind == "scan" else None
        index_ok = isinstance(source, int) and not isinstance(source, bool) and 0 <= source < len(streams)
        if source is not None and not index_ok and source not in streams:
            problems.append(f"stages.{i}.options.source = {source!r}: a stream name or index; allowed: "
                            f"{', '.join(streams)}, 0 … {len(streams) - 1} (default: every stream)")
    if problems:
        return problems
    try:
        ordered = topological_order(stages)
    except ValueError as err:
        return [f"stages: {err}"]
    by_name = {s.name: s for s in stages}
    for stage in ordered:
        upstream = {by_name[n].kind for n in ancestors(stage, by_name)}
        for kind in STAGE_KINDS[stage.kind].needs:
            if kind not in upstream:
                problems.append(f"stages ({stage.name}): stage kind {stage.kind!r} needs a {kind} stage upstream "
                                f"(add it to needs:)")
    return problems


def probe_problems(where: str, options: dict[str, Any], streams: list[str]) -> list[str]:
    """A probe stage's options against ProbeOptions: one line per bad field, naming what is allowed."""
    from pydantic import ValidationError

    from polymae.probe.options import ProbeOptions

    try:
        probe = ProbeOptions.model_validate(options)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                lines.append(f"{where}.{loc}: unknown field; allowed: {', '.join(ProbeOptions.model_fields)}")
            else:
                lines.append(f"{where}.{loc} = {e.get('input')!r}: {e['msg']}")
        return lines
    if probe.stream is not None and probe.stream not in streams:
        return [f"{where}.stream = {probe.stream!r}: not a stream; allowed: {', '.join(streams)}"]
    return []


def topological_order(stages: list[StageSpec]) -> list[StageSpec]:
    """Stages with every stage after its needs; the spec's order breaks ties. Raises on a cycle."""
    done: list[StageSpec] = []
    pending = list(stages)
    while pending:
        ready = [s for s in pending if all(n in {d.name for d in done} for n in s.needs)]
        if not ready:
            raise ValueError(f"the needs form a cycle among {', '.join(s.name for s in pending)}")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def ancestors(stage: StageSpec, by_name: dict[str, StageSpec]) -> list[str]:
    """Names of every stage upstream of ``stage``, nearest first."""
    seen: list[str] = []
    frontier = list(stage.needs)
    while frontier:
        name = frontier.pop(0)
        if name not in seen:
            seen.append(name)
            frontier += by_name[name].needs
    return seen


def upstream_of_kind(stage: StageSpec, kind: str, by_name: dict[str, StageSpec]) -> StageSpec:
    """The nearest stage of ``kind`` upstream (validation guarantees there is one)."""
    return next(by_name[n] for n in ancestors(stage, by_name) if by_name[n].kind == kind)


def digest(data: Any) -> str:
    """sha256 of a canonical JSON encoding."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def fingerprints(spec: PipelineSpec) -> dict[str, str]:
    """Stage name → fingerprint of its kind, the spec fields it reads, the code (the polymae
    package's source and the spec's plugins' modules) and its needs'."""
    from polymae.pipelines.code_version import code_version

    code = code_version([s.modality for s in spec.sources])
    out: dict[str, str] = {}
    for stage in topological_order(spec.stages):
        kind = STAGE_KINDS[stage.kind]
        out[stage.name] = digest({"kind": stage.kind, "reads": kind.reads(spec, stage), "code": code,
                                  "needs": sorted(out[n] for n in stage.needs)})
    return out


def spec_fingerprint(spec: PipelineSpec) -> str:
    """What the run computes, without where it runs or logs (tracking, outputs, runtime)."""
    return digest(spec.model_dump(mode="json", exclude={"tracking", "outputs", "runtime"}))
