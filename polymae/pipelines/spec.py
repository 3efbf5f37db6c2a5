"""The pipeline spec: YAML → one validated pydantic model, defaults merged with overrides.

Every error names the field, the value given and what is allowed, and is raised before any
work starts (:class:`SpecError`). The resolved spec is saved with each run.
"""

from __future__ import annotations

import copy
import glob
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polymae.modalities.registry import available_modalities, get_plugin_class
from polymae.models.presets import ModelConfig, resolve_model_config
from polymae.pipelines.dag import DEFAULT_STAGES, PAIRED_STAGES, check_stages
from polymae.pipelines.spec_checks import mask_problems, pairing_problems
from polymae.tokenizer.masking import MaskSpec
from polymae.tokenizer.policies import available_policies


class SpecError(ValueError):
    """A bad pipeline spec. ``problems`` holds one line per bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid pipeline spec:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # no dots: stream names prefix column names ("rgb.values")
# spec, stage and run names: no '/', no leading '.', no quotes or spaces (a run name becomes a
# folder under outputs.dir, a shell word of a Ray Job's entrypoint and a value in MLflow filters)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def check_run_name(name: str, field: str = "--run-name") -> str:
    """``name`` if it is a valid run name; else a SpecError naming ``field`` and the rule."""
    if not re.fullmatch(ID_PATTERN, name):
        raise SpecError([f"{field} = {name!r}: letters, digits, '_', '-' and '.' only, starting with a "
                         "letter or digit (it names a folder, a shell word and an MLflow tag value)"])
    return name


class SourceSpec(_Strict):
    """One named stream of the samples: a modality plugin, its files and its settings. Columns,
    masks, losses, heads, renders and metrics are keyed by ``name`` (default: the modality), so
    two streams of one plugin (two cameras, two optical sensors) coexist."""

    name: str = Field("", description="the stream's name; default: the modality")
    modality: str
    paths: list[str] = Field(min_length=1, description="files, folders (searched recursively) or globs")
    config: dict[str, Any] = Field(default_factory=dict, description="plugin settings over its defaults")
    loss_weight: float = Field(1.0, ge=0, description="weight of this stream's loss in the total (MultiMAE: 1)")
    frame: str | None = Field(None, description="streams with the same frame are co-registered (an RGB image "
                              "and its depth map): one crop and flip per sample for all of them")
    clock: str | None = Field(None, description="streams with the same clock cover the same seconds: the "
                              "first (a video) draws its clips, the others (its audio track) take their spans")

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, value: str) -> str:
        if value not in available_modalities():
            raise ValueError(f"unknown modality {value!r}; allowed: {', '.join(available_modalities())}")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> SourceSpec:
        self.name = self.name or self.modality
        if not re.match(NAME_PATTERN, self.name):
            raise ValueError(f"stream name {self.name!r}: letters, digits, '_' and '-' only (it prefixes "
                             "column names)")
        return self


class TokenizerSpec(_Strict):
    """Per stream a mask (strategy and ratio), and the policy deciding how many of each stream's
    tokens stay visible (``tokenizer.policies``)."""

    mask: dict[str, MaskSpec] = Field(default_factory=dict, description="per stream name, over its plugin's mask")
    policy: str = Field("independent", description="independent | budget | aligned")
    alpha: float | dict[str, float] = Field(1.0, description="budget: Dirichlet α, one or per stream")
    visible: int | None = Field(None, ge=1, description="budget: visible groups per sample; None: Σ ratios")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in available_policies():
            raise ValueError(f"unknown mask policy {value!r}; allowed: {', '.join(available_policies())}")
        return value

    @field_validator("alpha")
    @classmethod
    def _positive_alpha(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        values = value.values() if isinstance(value, dict) else [value]
        if any(v <= 0 for v in values):
            raise ValueError(f"Dirichlet α must be > 0, got {value}")
        return value


class ModelSpec(_Strict):
    preset: Literal["tiny", "small", "base", "large"] = "base"
    overrides: dict[str, Any] = Field(default_factory=dict, description="fields of the preset to change")

    @field_validator("overrides")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ModelConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown model fields {unknown}; allowed: {', '.join(ModelConfig.model_fields)}")
        return value


class TrainSpec(_Strict):
    steps: int = Field(200, gt=0)
    batch_size: int = Field(64, gt=0, description="global batch, split across workers")
    lr: float | None = Field(None, gt=0, description="absolute learning rate; default blr·batch/256")
    blr: float = Field(1.5e-4, gt=0, description="MAE's base learning rate")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(20, ge=0)
    workers: int = Field(1, gt=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    checkpoint_every: int = Field(100, gt=0)
    log_every: int = Field(10, gt=0)
    resume_from: str | None = Field(None, description="a checkpoint folder to continue from")
    max_failures: int = Field(3, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the training workers on nodes")
    nonfinite: Literal["error", "skip"] = Field(
        "error", description="a step whose loss is non-finite: stop the run naming the step and samples "
        "(never retried), or skip its update")
    max_skipped_fraction: float = Field(0.05, ge=0, le=1, description="nonfinite: skip — a run that skips "
                                        "more than this fraction of train.steps fails")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainSpec:
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of workers {self.workers}")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256


class TrackingSpec(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlflow.db here")
    experiment: str = "polymae"
    registered_model: str | None = Field(None, description="default: the spec's name")
    run_name: str | None = Field(None, pattern=ID_PATTERN, description="same name again = continue that run")


class SplitSpec(_Strict):
    """What training never reads and ``evaluate`` (and the eval renders) score: whole files, and/or
    for a few large frames (an RGB-D scene, a satellite tile) a strip of every frame."""

    holdout: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of each stream's files, seeded")
    files: list[str] = Field(default_factory=list, description="files or globs held out (relative to the spec)")
    region: float = Field(0.0, ge=0.0, le=0.5, description="fraction of every spatial frame's width held out: "
                          "training never crops its right-hand strip, evaluation scores it")


TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {key}, {scene} … of a pairing template


class PairingSpec(_Strict):
    """How the streams' files are joined into samples (``pairing:`` in a spec)."""

    key: Literal["stem", "template", "manifest"] = Field("stem", description="what joins files into a sample")
    template: str | dict[str, str] | None = Field(None, description="key: template — one pattern or one per stream")
    manifest: str | None = Field(None, description="key: manifest — a CSV or Parquet table: key, stream, path")
    unmatched: Literal["single", "drop", "quarantine"] = Field(
        "single", description="files without a partner: partial samples, skipped, or quarantined")

    @model_validator(mode="after")
    def _settings_of_the_key(self) -> PairingSpec:
        if self.key == "template":
            if not self.template:
                raise ValueError("key 'template' needs `template`: a pattern with {key}, or one per stream")
            patterns = [self.template] if isinstance(self.template, str) else list(self.template.values())
            fields = {tuple(TEMPLATE_FIELD.findall(p)) for p in patterns}
            if any("key" not in f for f in fields) or len(fields) > 1:
                raise ValueError(f"template {self.template!r}: every pattern needs {{key}} and the same fields")
        if self.key == "manifest" and not self.manifest:
            raise ValueError("key 'manifest' needs `manifest`: a CSV or Parquet file with columns key, stream, path")
        return self


class OutputSpec(_Strict):
    dir: str = "runs"
    token_shards: bool = Field(False, description="also write the first epoch's tokens as Parquet")


class RuntimeSpec(_Strict):
    address: str | None = Field(None, description="Ray address; default: an embedded local Ray")
    num_cpus: int | None = Field(None, gt=0, description="logical CPUs of the embedded Ray")
    object_store_memory: int = Field(1 << 30, gt=0)


class StageSpec(_Strict):
    name: str = Field(pattern=ID_PATTERN)
    kind: str = Field(description="a registered stage kind: scan, pair, train, evaluate, register, embed")
    needs: list[str] = Field(default_factory=list, description="stages that must finish first")
    options: dict[str, Any] = Field(default_factory=dict, description="kind-specific settings")


class PipelineSpec(_Strict):
    name: str = Field(pattern=ID_PATTERN)
    seed: int = 0
    sources: list[SourceSpec] = Field(min_length=1, description="the named streams of the samples")
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    pairing: PairingSpec | None = Field(None, description="join the streams' files into samples (a pair "
                                        "stage); None: every file is a sample of its own stream")
    split: SplitSpec = Field(default_factory=SplitSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    stages: list[StageSpec] = Field(default_factory=lambda: [StageSpec(**s) for s in DEFAULT_STAGES])

    @model_validator(mode="after")
    def _pair_stage_by_default(self) -> PipelineSpec:
        """A spec with ``pairing`` and no stage list gets scan → pair → train → evaluate → register."""
        if self.pairing is not None and "stages" not in self.model_fields_set:
            self.stages = [StageSpec(**s) for s in PAIRED_STAGES]
        return self

    @model_validator(mode="after")
    def _unique_streams(self) -> PipelineSpec:
        names = [s.name for s in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"sources: stream names {twice} are used twice; give each source its own `name`")
        return self

    @property
    def modalities(self) -> list[str]:
        return [s.modality for s in self.sources]

    @property
    def streams(self) -> dict[str, SourceSpec]:
        """Stream name → its source, in spec order."""
        return {s.name: s for s in self.sources}

    def source(self, stream: str) -> SourceSpec:
        return self.streams[stream]

    def resolved_model(self) -> ModelConfig:
        """The model's settings: the preset, a one-stream run's reference decoder, the overrides."""
        references = {s.name: get_plugin_class(s.modality).reference_decoder for s in self.sources}
        return resolve_model_config(self.model.preset, self.model.overrides, references)

    def mask_specs(self) -> dict[str, MaskSpec]:
        """Per stream: the fields the spec sets over its plugin's reference mask."""
        out = {}
        for source in self.sources:
            given = self.tokenizer.mask.get(source.name)
            fields = given.model_dump(include=given.model_fields_set) if given is not None else {}
            out[source.name] = MaskSpec(**{**get_plugin_class(source.modality).default_mask, **fields})
        return out


# --- loading -----------------------------------------------------------------------------
def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``a.b.0.c=value`` (value parsed as YAML) set into nested dicts/lists, in place."""
    if "=" not in assignment:
        raise SpecError([f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.steps=50"])
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        where = getattr(err, "problem", None) or "not valid YAML"
        raise SpecError([f"--set {assignment!r}: the value of {dotted.strip()} is not valid YAML ({where}): "
                         f"{raw!r}"]) from None
    node: Any = data
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def _format(err: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        loc = prefix + ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc} = {e.get('input')!r}: {msg}")
    return lines


def _allowed_fields(model: type[BaseModel], loc: tuple) -> str:
    """For an unknown field: the fields allowed where it stands."""
    keyed = False  # the part after a dict field is a key (a stream name), not a field
    for part in loc[:-1]:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return ""
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return ""
        keyed = getattr(ann, "__origin__", None) is dict
        model = candidates[0]
    return ", ".join(model.model_fields)


def _resolve(paths: list[str], field: str, base_dir: Path, problems: list[str]) -> list[str]:
    """Absolute paths (relative ones are relative to the spec file); a path that names nothing
    existing is a problem line."""
    resolved = []
    for j, path in enumerate(paths):
        full = path if os.path.isabs(path) else str((base_dir / path).resolve())
        if not (os.path.exists(full) or glob.glob(full)):
            problems.append(f"{field}.{j} = {path!r}: no such file, folder or glob match")
        resolved.append(full)
    return resolved


def resolve_paths(spec: PipelineSpec, base_dir: Path) -> None:
    """Resolve and check every path a spec names (sources, embed and probe stages' data) before use."""
    problems: list[str] = []
    for i, source in enumerate(spec.sources):
        source.paths = _resolve(source.paths, f"sources.{i}.paths", base_dir, problems)
    spec.split.files = [p if os.path.isabs(p) else str((base_dir / p).resolve()) for p in spec.split.files]
    if spec.pairing is not None and spec.pairing.manifest:
        spec.pairing.manifest = _resolve([spec.pairing.manifest], "pairing.manifest", base_dir, problems)[0]
    for i, stage in enumerate(spec.stages):
        if stage.kind == "embed":
            stage.options["paths"] = _resolve(stage.options["paths"], f"stages.{i}.options.paths", base_dir, problems)
        if stage.kind == "probe":
            stage.options["data"] = _resolve([stage.options["data"]], f"stages.{i}.options.data", base_dir, problems)[0]
        if stage.kind in ("embed", "probe") and stage.options.get("output"):
            stage.options["output"] = str((base_dir / stage.options["output"]).resolve())
    if problems:
        raise SpecError(problems)


def parse_spec(data: dict[str, Any], base_dir: Path | str = ".") -> PipelineSpec:
    """Validate a spec dict (with plugin configs) and resolve its paths."""
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as err:
        problems = []
        for e, line in zip(err.errors(), _format(err), strict=True):
            if e["type"] == "extra_forbidden":
                allowed = _allowed_fields(PipelineSpec, e["loc"])
                line += f"; allowed: {allowed}" if allowed else ""
            problems.append(line)
        raise SpecError(problems) from None
    problems = []
    for i, source in enumerate(spec.sources):
        config_cls = get_plugin_class(source.modality).Config
        try:
            config_cls(**source.config)
        except ValidationError as err:
            lines = _format(err, prefix=f"sources.{i}.config.")
            problems += [ln + (f"; allowed: {', '.join(config_cls.model_fields)}" if "unknown field" in ln else "")
                         for ln in lines]
    problems += mask_problems(spec)
    problems += check_stages(spec.stages, list(spec.streams))
    problems += pairing_problems(spec)
    unknown = sorted(set(spec.tokenizer.mask) - set(spec.streams))
    if unknown:
        problems.append(f"tokenizer.mask: {unknown} not among the sources' stream names; allowed: "
                        f"{', '.join(spec.streams)}")
    if problems:
        raise SpecError(problems)
    resolve_paths(spec, Path(base_dir))
    spec.tokenizer.mask = spec.mask_specs()  # the plugins' reference masks made explicit: saved with the run
    return spec


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PipelineSpec:
    """Read a YAML spec, apply ``--set`` overrides, validate. Raises SpecError."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError([f"{path}: not valid YAML: {err}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}: the top level must be a mapping of fields"])
    data = copy.deepcopy(data)
    for assignment in overrides or []:
        try:
            apply_override(data, assignment)
        except SpecError:
            raise
        except (IndexError, ValueError, TypeError, AttributeError) as err:
            raise SpecError([f"--set {assignment!r}: {err}"]) from None
    return parse_spec(data, base_dir=path.parent.resolve())


def spec_to_yaml(spec: PipelineSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
