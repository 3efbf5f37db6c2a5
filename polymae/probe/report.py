"""A probe's result into an MLflow run: metrics, params, confusion PNGs, split and fingerprint."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from polymae.probe.options import ProbeOptions
from polymae.probe.render import render_confusion
from polymae.probe.run import ProbeResult

FINGERPRINT_TAG = "polymae.probe.fingerprint"


def log_probe(client: MlflowClient, run_id: str, result: ProbeResult, options: ProbeOptions, output: Path,
              step: int = 0) -> None:
    """probe/knn_top1, probe/linear_top1, their _baseline and _gain (percent, points), set sizes;
    params probe.k, .tau, .feature, …; renders/probe/confusion_{knn,linear}.png; split.csv,
    probe.json, quarantine.parquet under probe/; the labelled set's fingerprint as a tag."""
    for key, value in result.metrics.items():
        client.log_metric(run_id, key, value, step=step)
    params = {"k": options.k, "tau": options.tau, "feature": options.feature, "test_fraction": options.test_fraction,
              "linear_epochs": options.linear_epochs, "linear_lr": options.linear_lr, "data": options.data,
              "classes": len(result.classes), "train_size": result.sizes["train"], "test_size": result.sizes["test"]}
    for key, value in params.items():
        client.log_param(run_id, f"probe.{key}", str(value))
    client.set_tag(run_id, FINGERPRINT_TAG, result.fingerprint)
    for probe, matrix in result.confusion.items():
        path = output / f"confusion_{probe}.png"
        render_confusion(matrix, result.classes).save(path)
        client.log_artifact(run_id, str(path), "renders/probe")
    for name in ("split.csv", "probe.json", "quarantine.parquet"):
        client.log_artifact(run_id, str(output / name), "probe")


def summary(result: ProbeResult) -> str:
    """One console line per probe: top-1 of the trained encoder, the baseline and the gain."""
    lines = [f"[polymae] probe: {len(result.classes)} classes, {result.sizes['train']} train / "
             f"{result.sizes['test']} test files, {result.sizes['quarantined']} quarantined, "
             f"{result.sizes['skipped']} skipped"]
    for probe in ("knn", "linear"):
        line = f"[polymae]   {probe} top-1 {result.top1[probe]:.2f} %"
        if f"{probe}_baseline" in result.top1:
            base = result.top1[f"{probe}_baseline"]
            line += f" (random init {base:.2f} %, gain {result.top1[probe] - base:+.2f} points)"
        lines.append(line)
    for row in result.quarantine:
        lines.append(f"[polymae]   quarantined {row['path']}: {row['stage']}: {row['reason']}")
    return "\n".join(lines)
