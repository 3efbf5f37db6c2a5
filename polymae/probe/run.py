"""A probe of one trained encoder on a labelled set, and of a random-init encoder of the same
architecture beside it (the baseline): what ``kind: probe`` stages and ``polymae probe`` run.

    labelled set ─▶ seeded train/test split (recorded: split.csv)
                 ─▶ features of every file through embed's Ray Data actors (evaluation views,
                    no masking; a row per view, labelled by its file), bad files quarantined
                 ─▶ kNN + linear probe: top-1 on the test split, confusion matrix
    the same on the random-init encoder (build_model's seed init: where pre-training started),
    cached by a fingerprint of architecture, seed, data and probe options
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polymae.orchestration.checkpoint import build_model, load_model, save_checkpoint
from polymae.orchestration.embed import embed_rows
from polymae.orchestration.inference import check_streams, stream_plugin
from polymae.pipelines.dag import digest
from polymae.pipelines.scan import write_quarantine
from polymae.pipelines.spec import PipelineSpec
from polymae.probe.classifiers import confusion_matrix, knn_predict, linear_probe, top1
from polymae.probe.labels import LabelledSet, load_labelled, split_labelled
from polymae.probe.options import ProbeOptions

PROBES = ("knn", "linear")


@dataclass
class ProbeResult:
    top1: dict[str, float]  # knn, linear (percent) of the trained encoder, and *_baseline
    confusion: dict[str, np.ndarray]  # knn, linear: (C, C) of the trained encoder
    classes: list[str]
    sizes: dict[str, int]  # train, test (files), train_rows, test_rows, quarantined, skipped
    fingerprint: str  # of the labelled set and its split
    quarantine: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        """MLflow metric name → value: probe/knn_top1, probe/linear_top1, their baselines and gains."""
        out = {f"probe/{p}_top1": self.top1[p] for p in PROBES}
        for p in PROBES:
            if f"{p}_baseline" in self.top1:
                out[f"probe/{p}_top1_baseline"] = self.top1[f"{p}_baseline"]
                out[f"probe/{p}_top1_gain"] = self.top1[p] - self.top1[f"{p}_baseline"]
        return out | {f"probe/{k}": float(v) for k, v in self.sizes.items()}


def run_probe(checkpoint: str | Path, options: ProbeOptions, output: str | Path, cache: str | Path) -> ProbeResult:
    """Probe the encoder of ``checkpoint`` (and a random-init one, unless ``options.baseline`` is
    off) on ``options.data``; writes split.csv, quarantine.parquet and probe.json to ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    _, spec = load_model(checkpoint)
    stream = options.stream or spec.sources[0].name
    check_streams(spec, [stream])
    data = split_labelled(load_labelled(options.data, stream_plugin(spec, stream).extensions),
                          options.test_fraction, spec.seed)
    write_split(data, output / "split.csv")
    fingerprint = digest({"data": data.fingerprint(), "stream": stream})
    feats, bad = _features(checkpoint, data, stream, options.feature)
    modality = spec.source(stream).modality
    quarantine = [{"path": r["path"], "stream": stream, "modality": modality, "stage": r["stage"],
                   "reason": r["reason"]} for r in data.quarantine] + bad
    top, confusion = _probe_all(feats, data, options, spec.seed)
    if options.baseline:
        base = _baseline(spec, stream, options, data, fingerprint, Path(cache))
        top |= {f"{p}_baseline": base[p] for p in PROBES}
    write_quarantine(quarantine, str(output / "quarantine.parquet"))
    bad = {r["path"] for r in quarantine}
    sizes = {"train": sum(f.path not in bad for f in data.labels("train")),
             "test": sum(f.path not in bad for f in data.labels("test")),
             "train_rows": len(feats["train"][1]), "test_rows": len(feats["test"][1]),
             "quarantined": len(quarantine), "skipped": len(data.skipped)}
    result = ProbeResult(top, confusion, data.classes, sizes, fingerprint, quarantine, data.skipped)
    (output / "probe.json").write_text(json.dumps({"metrics": result.metrics, "top1": top, "sizes": sizes,
                                                   "classes": data.classes,
                                                   "fingerprint": fingerprint, "skipped": data.skipped,
                                                   "options": options.model_dump(mode="json")}, indent=1))
    return result


def write_split(data: LabelledSet, path: Path) -> None:
    """The recorded split: one row per labelled file (sample_id, path, label, split)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", "path", "label", "split"])
        writer.writerows([f.sample_id, f.path, f.label, f.split] for f in data.files)


Features = dict[str, tuple[np.ndarray, np.ndarray]]  # split → (features (R, W), labels (R,))


def _features(checkpoint: str | Path, data: LabelledSet, stream: str,
              feature: str) -> tuple[Features, list[dict[str, str]]]:
    """Features of every labelled file (a row per view) through embed's actors, and the
    quarantine rows of the files that failed to decode."""
    good, bad = embed_rows(checkpoint, [(f.sample_id, f.path) for f in data.files], stream, feature)
    index = {c: i for i, c in enumerate(data.classes)}
    by_path = {f.path: f for f in data.files}
    rows = sorted(good, key=lambda r: r["sample_id"])  # a fixed order: the probes are seeded
    out: Features = {}
    for split in ("train", "test"):
        chosen = [r for r in rows if by_path[r["path"]].split == split]
        x = np.stack([np.asarray(r["embedding"], np.float32) for r in chosen]) if chosen else np.zeros((0, 1))
        out[split] = (x, np.array([index[by_path[r["path"]].label] for r in chosen], np.int64))
    if not len(out["train"][1]) or not len(out["test"][1]):
        raise ValueError(f"probe data {data.files[0].path!r}…: the split has {len(out['train'][1])} training "
                         f"and {len(out['test'][1])} test rows after quarantine; both need some")
    if not all(np.isfinite(x).all() for x, _ in out.values()):
        raise FloatingPointError(f"probe: the encoder of {checkpoint} gives non-finite features")
    return out, bad


def _probe_all(feats: Features, data: LabelledSet, options: ProbeOptions,
               seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    (x_train, y_train), (x_test, y_test) = feats["train"], feats["test"]
    n = len(data.classes)
    preds = {"knn": knn_predict(x_train, y_train, x_test, n, k=options.k, tau=options.tau),
             "linear": linear_probe(x_train, y_train, x_test, n, epochs=options.linear_epochs,
                                    batch_size=options.linear_batch_size, lr=options.linear_lr, seed=seed)}
    return ({p: 100 * top1(pred, y_test) for p, pred in preds.items()},
            {p: confusion_matrix(pred, y_test, n) for p, pred in preds.items()})


def _baseline(spec: PipelineSpec, stream: str, options: ProbeOptions, data: LabelledSet,
              fingerprint: str, cache: Path) -> dict[str, Any]:
    """Top-1 of the random-init encoder: read from ``cache`` when an earlier probe computed it for
    the same architecture, seed, plugin settings, data and probe options."""
    source = spec.source(stream)
    key = digest({"model": spec.resolved_model().model_dump(mode="json"), "seed": spec.seed,
                  "sources": [s.model_dump(mode="json") for s in spec.sources], "data": fingerprint,
                  "options": options.model_dump(mode="json", exclude={"baseline", "output"})})
    folder = cache / f"probe-baseline-{key[:16]}"
    record = folder / "baseline.json"
    if record.is_file():
        return json.loads(record.read_text())
    save_checkpoint(folder / "random-init", build_model(spec), None, 0, spec)  # the seed's init
    feats, _ = _features(folder / "random-init", data, source.name, options.feature)
    top, _ = _probe_all(feats, data, options, spec.seed)
    record.write_text(json.dumps(top))
    return top
