"""What changed between the spec a run was started with and the spec it is reopened with.

A run reopened by name (or ``--resume``) continues its own checkpoint, so a spec that
changes what the run computes is refused (``polymae run --fork`` starts a new run from the
old run's checkpoint instead). The changes that may pass are those that cannot change the
result, plus a longer ``train.steps`` (continuing a run for more steps):

    tracking.*, runtime.*, outputs.token_shards       where the run logs and runs
    train.workers, cpus_per_worker, use_gpu, log_every, checkpoint_every, max_failures,
    placement_strategy                                how training runs (as in the train
                                                      stage's fingerprint)
    train.steps, when it grows                        the schedule then has the new length
"""

from __future__ import annotations

from typing import Any

from polymae.pipelines.dag import TRAIN_LOGISTICS

# the train logistics are the train stage fingerprint's own list, so the two cannot drift apart
ALLOWED_ON_RESUME = ("tracking", "runtime", "outputs.token_shards", *sorted(f"train.{f}" for f in TRAIN_LOGISTICS))


class SpecChangedError(ValueError):
    """A reused run name (or ``--resume``) with a spec that changes what the run computes."""

    def __init__(self, run_name: str, changes: list[str]) -> None:
        lines = "\n".join(f"  - {c}" for c in changes)
        super().__init__(
            f"run {run_name!r} was started with a different spec; resuming it would train its checkpoint "
            f"under the new one. Changed:\n{lines}\nUse another --run-name for a new run, --fork to start a "
            f"new run from this run's last checkpoint, or the run's own spec to continue it.")
        self.changes = changes


class ForkError(ValueError):
    """``--fork`` without a run to fork, a checkpoint to start from, or with a used name."""


def flat_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists → {dotted path: leaf value} (``train.lr``, ``sources.0.paths.1``)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat_fields(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and data:
        out = {}
        for i, value in enumerate(data):
            out.update(flat_fields(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every changed field as ``path: old → new`` (``<absent>`` for a field one side lacks), in
    sorted order."""
    a, b = flat_fields(old), flat_fields(new)
    missing = "<absent>"
    return [f"{path}: {a.get(path, missing)} → {b.get(path, missing)}"
            for path in sorted(set(a) | set(b)) if a.get(path, missing) != b.get(path, missing)]


def _allowed(change: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    path = change.split(":", 1)[0]
    if path == "train.steps":
        return new["train"]["steps"] >= old["train"]["steps"]
    return any(path == p or path.startswith(p + ".") for p in ALLOWED_ON_RESUME)


def refused_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The changes (``path: old → new``) a reopened run may not take; [] when it may continue."""
    return [c for c in spec_changes(old, new) if not _allowed(c, old, new)]
