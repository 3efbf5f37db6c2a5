"""Encoder embeddings of files with a trained model, written to Parquet by Ray Data.

    files ──▶ Ray Data map_batches (actors that load the model once): read → decode →
    tokenize (evaluation views, every token visible) → encoder → normalised cls token (or the
    mean of the encoded tokens) ──▶ Parquet: sample_id, path, embedding (list<float>); bad files ──▶ quarantine.parquet
    ──▶ embed.done.json (written last: the checkpoint, its step and the counts)

An embed replaces what its output folder held, so two models' rows never mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from polymae.modalities.base import BadInputError
from polymae.modalities.registry import make_plugin
from polymae.orchestration.checkpoint import checkpoint_step, load_model
from polymae.orchestration.inference import check_streams, evaluation_views, stream_plugin
from polymae.pipelines.files import discover, empty_folder, view_id
from polymae.pipelines.scan import write_quarantine
from polymae.pipelines.spec import SourceSpec
from polymae.tokenizer.stream import streams_to_columns

DONE_MARKER = "embed.done.json"  # written last: checkpoint, step and counts of a finished embed


class Embedder:
    """A Ray Data actor: the model is loaded once per actor, not once per batch."""

    def __init__(self, checkpoint: str, stream: str, feature: str = "cls") -> None:
        torch.set_num_threads(1)
        self.model, self.spec = load_model(checkpoint)
        self.stream, self.feature = stream, feature
        self.plugin = stream_plugin(self.spec, stream)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, paths, streams, reasons = [], [], [], []
        for sid, path in zip(batch["sample_id"], batch["path"], strict=True):
            try:
                # every view, evaluation crops; no masking at inference: the encoder sees every token
                samples = evaluation_views(self.plugin, str(path), str(sid), self.stream, self.spec.seed)
            except BadInputError as err:
                reasons.append({"path": str(path), "stage": err.stage, "reason": err.reason})
                continue
            except Exception as err:  # a decoder bug must not lose the file
                reasons.append({"path": str(path), "stage": "decode",
                                "reason": f"unexpected {type(err).__name__}: {err}"})
                continue
            for view, sample in enumerate(samples):
                ids.append(view_id(str(sid), view))
                paths.append(str(path))
                streams.append(sample[self.stream])
        embeddings = np.zeros((0, self.model.cfg.width), np.float32)
        if streams:
            columns = streams_to_columns(self.stream, streams)  # the model's other streams: absent
            with torch.no_grad():
                embeddings = self.model.embed_batch({k: torch.as_tensor(v) for k, v in columns.items()},
                                                     self.feature).numpy()
        padding = np.zeros((len(reasons), embeddings.shape[1]), np.float32)  # bad files' rows, dropped later
        return {"sample_id": np.array(ids + [r["path"] for r in reasons], dtype=object),
                "path": np.array(paths + [r["path"] for r in reasons], dtype=object),
                "embedding": np.concatenate([embeddings.astype(np.float32), padding]),
                "stage": np.array([""] * len(ids) + [r["stage"] for r in reasons], dtype=object),
                "reason": np.array([""] * len(ids) + [r["reason"] for r in reasons], dtype=object)}


def embed_files(checkpoint: str | Path, paths: list[str], output: str, concurrency: int = 1,
                stream: str | None = None) -> dict[str, Any]:
    """Embed every file under ``paths`` as ``stream`` (default: the model's first stream) with the
    model of ``checkpoint`` → Parquet shards in ``output/embeddings`` (replacing what was there),
    ``output/quarantine.parquet`` and, last, ``output/embed.done.json``; → counts (files,
    embedded, quarantined, rows: a video or long recording gives a row per clip or window)."""
    _, spec = load_model(checkpoint)
    stream = stream or spec.sources[0].name
    check_streams(spec, [stream])
    trained = spec.source(stream)
    source = SourceSpec(name=stream, modality=trained.modality, paths=[str(Path(p).resolve()) for p in paths],
                        config=trained.config)
    files = discover(source, make_plugin(source.modality, source.config).extensions)
    if not files:
        raise FileNotFoundError(f"no {source.modality} files under {paths}")
    rows = _embedded(checkpoint, [(f.sample_id, f.path) for f in files], stream, "cls", concurrency)
    good = rows.filter(lambda r: not r["reason"])
    bad = rows.filter(lambda r: bool(r["reason"])).take_all()
    marker = Path(output) / DONE_MARKER
    marker.unlink(missing_ok=True)  # until it is written again, the folder is incomplete
    good.drop_columns(["stage", "reason"]).write_parquet(empty_folder(Path(output) / "embeddings"))
    write_quarantine([{"path": r["path"], "stream": stream, "modality": source.modality, "stage": r["stage"],
                       "reason": r["reason"]} for r in bad], str(Path(output) / "quarantine.parquet"))
    quarantined = len({r["path"] for r in bad})
    counts = {"files": len(files), "embedded": len(files) - quarantined, "quarantined": quarantined,
              "rows": good.count()}
    marker.write_text(json.dumps({"checkpoint": str(checkpoint), "step": checkpoint_step(checkpoint), **counts}))
    return counts


def complete_embeddings(output: str | Path, checkpoint: str | Path) -> bool:
    """Whether ``output`` holds a finished embed by ``checkpoint``: its marker (written last)
    names that checkpoint, and the Parquet rows are as many as it counts (a shared output folder
    another model wrote since, or a write cut short, is not)."""
    marker = Path(output) / DONE_MARKER
    try:
        done = json.loads(marker.read_text())
        found = sum(pq.read_metadata(p).num_rows for p in (Path(output) / "embeddings").glob("*.parquet"))
    except (OSError, ValueError):
        return False
    return done.get("checkpoint") == str(checkpoint) and found == done.get("rows")


def embed_rows(checkpoint: str | Path, files: list[tuple[str, str]], stream: str, feature: str = "cls",
               concurrency: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(sample id, path) pairs → (rows of sample_id, path, embedding: a row per view; quarantine
    rows of the files that failed: path, stream, modality, stage, reason). For sets that fit in
    the driver's memory (probes); ``embed_files`` writes its rows to Parquet instead."""
    rows = _embedded(checkpoint, files, stream, feature, concurrency).take_all()
    modality = load_model(checkpoint)[1].source(stream).modality
    good = [{k: r[k] for k in ("sample_id", "path", "embedding")} for r in rows if not r["reason"]]
    bad = [{"path": r["path"], "stream": stream, "modality": modality, "stage": r["stage"], "reason": r["reason"]}
           for r in rows if r["reason"]]
    return good, bad


def _embedded(checkpoint: str | Path, files: list[tuple[str, str]], stream: str, feature: str,
              concurrency: int) -> ray.data.Dataset:
    """The materialised embedding rows of ``files``: bad files' rows have a stage and reason."""
    return ray.data.from_items([{"sample_id": sid, "path": path} for sid, path in files]).map_batches(
        Embedder, fn_constructor_kwargs={"checkpoint": str(checkpoint), "stream": stream, "feature": feature},
        batch_size=8, batch_format="numpy", concurrency=concurrency,
    ).materialize()
