"""The scan: every file of every stream is read and decoded once, with Ray Data.

A file ends as a good file (with the number of samples it yields: clips of a video, windows of
a recording) or a quarantine row (path, stream, modality, stage, reason); pairing (the ``pair``
stage, :mod:`polymae.pipelines.pairing`) may later skip or quarantine unmatched files. So
``total = tokenized + quarantined + skipped``, per stream (:class:`ScanResult`). Plugins that
need dataset statistics get them totalled here.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from polymae.modalities.base import VIEWS_SKIPPED, BadInputError, ModalityPlugin
from polymae.modalities.registry import make_plugin
from polymae.pipelines.files import Sample, SampleFile, discover
from polymae.pipelines.spec import PipelineSpec, SourceSpec

log = logging.getLogger(__name__)
QUARANTINE_SCHEMA = pa.schema([("path", pa.string()), ("stream", pa.string()), ("modality", pa.string()),
                               ("stage", pa.string()), ("reason", pa.string())])


def read_bytes(path: str, plugin: ModalityPlugin) -> bytes:
    """The file's bytes, or BadInputError when it cannot be read or is over the size limit."""
    try:
        size = os.path.getsize(path)
        if size > plugin.config.max_file_bytes:
            raise BadInputError(
                f"oversized file: {size} bytes > max_file_bytes {plugin.config.max_file_bytes}", "read"
            )
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise BadInputError(f"unreadable: {err}", "read") from err


def scan_batch(batch: dict[str, np.ndarray], modality: str, config: dict,
               region: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """map_batches: decode each file once; report its sample count, the views it left out and
    its statistics, or the stage and reason it failed (a failed file's statistics are 0, so totals
    cover good files). ``region``: the part of each frame training reads (``split.region``; frame
    plugins only), whose views the count is of."""
    plugin = make_plugin(modality, config)
    stages, reasons, counts, digests, left_out = [], [], [], [], []
    stats: dict[str, list[float]] = {key: [] for key in plugin.statistics}
    for path in batch["path"]:
        stage, reason, count, found, digest = "", "", 0, {}, ""
        try:
            data = read_bytes(str(path), plugin)
            digest = hashlib.sha256(data).hexdigest()  # the dataset fingerprint's part
            args = (data, str(path)) if region is None else (data, str(path), region)
            count, found = plugin.scan_file(*args)
            if count < 1:
                raise BadInputError("yields no samples")
        except BadInputError as err:
            stage, reason, count, found = err.stage, err.reason, 0, {}
        except Exception as err:  # a decoder bug must not lose the file: quarantine it, loudly
            stage, reason, count, found = "decode", f"unexpected {type(err).__name__}: {err}", 0, {}
        stages.append(stage)
        reasons.append(reason)
        counts.append(count)
        digests.append(digest)
        left_out.append(int(found.get(VIEWS_SKIPPED, 0)))
        for key in plugin.statistics:
            stats[key].append(float(found.get(key, 0.0)))
    return {**batch, "stage": np.array(stages, dtype=object), "reason": np.array(reasons, dtype=object),
            "num_samples": np.array(counts, dtype=np.int64), "sha256": np.array(digests, dtype=object),
            VIEWS_SKIPPED: np.array(left_out, dtype=np.int64),
            **{f"statistic_{key}": np.array(v, dtype=np.float64) for key, v in stats.items()}}


@ray.remote(max_retries=0)
def _scan_one(path: str, kwargs: dict) -> dict[str, Any]:
    out = scan_batch({"path": np.array([path], dtype=object)}, **kwargs)
    return {key: value[0] for key, value in out.items()}


def scan_isolated(paths: list[str], kwargs: dict) -> list[dict[str, Any]]:
    """The scan with one process per file: a file whose decoder kills its process becomes a
    quarantine row instead of taking the run down."""
    keys = [f"statistic_{k}" for k in make_plugin(kwargs["modality"], kwargs["config"]).statistics]
    died = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
    rows = []
    for path, ref in [(p, _scan_one.remote(p, kwargs)) for p in paths]:
        try:
            try:
                rows.append(ray.get(ref))
                continue
            except died:  # once more: a node that died under the task is not the file's fault
                rows.append(ray.get(_scan_one.remote(path, kwargs)))
                continue
        except ray.exceptions.RayTaskError as err:  # raised outside the per-file handling (plugin set-up)
            reason = f"the scan task failed: {type(err.cause).__name__}: {err.cause}"
        except died as err:  # twice: the decoder kills its process (a real crash repeats)
            reason = f"the decoder crashed its process ({type(err).__name__})"
        rows.append({"path": path, "stage": "decode", "reason": reason, "num_samples": 0, "sha256": "",
                     VIEWS_SKIPPED: 0, **dict.fromkeys(keys, 0.0)})
    return rows


@dataclass
class ScanResult:
    """What the data stages found: good files, quarantine rows, skipped files (with their reason),
    unmatched files (no partner in some stream) and, after pairing, the samples.

    One counts schema for every run, per stream and in total: ``total = tokenized + quarantined +
    skipped`` files; ``unmatched`` counts the files that had no partner wherever they ended
    (trained alone, skipped or quarantined); ``samples`` per epoch; ``views_skipped`` the views the
    good files' plugins left out (a scene's chips over the no-data threshold: a file's chips are
    its samples + its views skipped)."""

    good: list[SampleFile]
    quarantine: list[dict[str, str]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (stream, path): one file may be two streams
    paired: list[Sample] | None = None  # None: not paired, each good file is a sample

    @classmethod
    def merge(cls, scans: list[ScanResult]) -> ScanResult:
        """Several scans (one per stream, say) as one."""
        if len(scans) == 1:
            return scans[0]
        paired = None if all(s.paired is None for s in scans) else [x for s in scans for x in s.samples]
        return cls([f for s in scans for f in s.good], [r for s in scans for r in s.quarantine],
                   [r for s in scans for r in s.skipped], [p for s in scans for p in s.unmatched], paired)

    @property
    def samples(self) -> list[Sample]:
        """The training samples: the paired ones, or every good file alone."""
        return self.paired if self.paired is not None else [Sample.of(f) for f in self.good]

    @property
    def dataset_fingerprint(self) -> str:
        """sha256 over the good files' ids and contents: the same data gives the same value anywhere."""
        return hashlib.sha256("\n".join(f"{f.sample_id} {f.sha256}" for f in self.good).encode()).hexdigest()

    @property
    def streams(self) -> list[str]:
        return sorted({f.stream for f in self.good} | {r["stream"] for r in self.quarantine + self.skipped})

    @property
    def counts(self) -> dict[str, int]:
        """The run's totals (see the class docstring)."""
        return self._counts(None)

    @property
    def counts_by_stream(self) -> dict[str, dict[str, int]]:
        """The same counts for each stream (logged as ``data/<stream>/<count>``)."""
        return {name: self._counts(name) for name in self.streams}

    def _counts(self, stream: str | None) -> dict[str, int]:
        def mine(rows: list[dict[str, str]]) -> int:
            return sum(1 for r in rows if stream is None or r["stream"] == stream)

        good = [f for f in self.good if stream is None or f.stream == stream]
        counts = {"tokenized": len(good), "quarantined": mine(self.quarantine), "skipped": mine(self.skipped)}
        counts["unmatched"] = sum(1 for s, _ in set(self.unmatched) if stream is None or s == stream)
        samples = [s for s in self.samples if stream is None or stream in s.paths]
        return {"total": counts["tokenized"] + counts["quarantined"] + counts["skipped"], **counts,
                "samples": samples_per_epoch(samples), VIEWS_SKIPPED: sum(f.views_skipped for f in good)}


def samples_per_epoch(samples: list[Sample] | list[SampleFile]) -> int:
    return sum(s.num_samples for s in samples)


def scan(spec: PipelineSpec, sources: list[SourceSpec] | None = None,
         progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Decode every file of every source (or of ``sources``) once with Ray Data; split good
    from quarantined. ``progress(files done, files in all)`` is called as results arrive.

    A plugin with ``statistics`` gets their totals over the good files (an exact sum, so the
    same whatever order the results arrive in) turned into config fields by ``with_statistics``;
    they are written into the spec's source config, so the training stream and the saved spec
    use them. Under ``split.region`` a frame plugin counts the views of the part of each frame
    that training reads (:func:`scan_region`).
    """
    good: list[SampleFile] = []
    quarantine: list[dict[str, str]] = []
    found = []
    for source in spec.sources if sources is None else sources:
        plugin = make_plugin(source.modality, source.config)
        files = discover(source, plugin.extensions, qualify=len(spec.sources) > 1)
        if files:
            found.append((source, plugin, files))
    total, done = sum(len(files) for _, _, files in found), 0
    report = progress or (lambda done, total: None)
    for source, plugin, files in found:
        ids = {f.path: f for f in files}
        kwargs = {"modality": source.modality, "config": source.config, "region": scan_region(spec, plugin)}
        rows: list[dict[str, Any]] = []
        try:
            ds = ray.data.from_items([{"path": f.path} for f in files]).map_batches(
                scan_batch, fn_kwargs=kwargs, batch_size=8, batch_format="numpy",
                ray_remote_args_fn=lambda: {"max_retries": 0},  # Ray Data retries a crashed task forever
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # streams: progress as it goes
                rows += [{key: column[i] for key, column in batch.items()} for i in range(len(batch["path"]))]
                report(done + len(rows), total)
        except Exception as err:  # a decoder crashed its process (a segfault): find the file(s)
            log.warning("scan: a decoder crashed (%s); rescanning one file per process", type(err).__name__)
            rows = scan_isolated([f.path for f in files], kwargs)
        done += len(files)
        report(done, total)
        rows.sort(key=lambda r: str(r["path"]))
        for row in rows:
            if row["reason"]:
                quarantine.append({"path": str(row["path"]), "stream": source.name, "modality": source.modality,
                                   "stage": str(row["stage"]), "reason": str(row["reason"])})
            else:
                f = ids[str(row["path"])]
                good.append(SampleFile(f.sample_id, str(row["path"]), int(row["num_samples"]), str(row["sha256"]),
                                       source.name, f.relpath, int(row.get(VIEWS_SKIPPED, 0))))
        if plugin.statistics:  # a failed file's statistics are 0
            totals = {key: math.fsum(float(r[f"statistic_{key}"]) for r in rows) for key in plugin.statistics}
            source.config.update(plugin.with_statistics(totals))
    return ScanResult(good, quarantine)


def scan_region(spec: PipelineSpec, plugin: ModalityPlugin) -> tuple[float, float] | None:
    """The part of a frame that training reads (``split.region``), for a plugin with a frame; else None."""
    held = spec.split.region
    return (0.0, 1.0 - held) if held > 0 and plugin.has_frame() else None


def write_quarantine(rows: list[dict[str, str]], path: str) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA), path)

