"""Ray Data stages: find files → scan (decode, quarantine) → per-epoch tokenize + mask.

    scan:   every file is read and decoded once; it ends as a good file (with the number of
            samples it yields: clips of a video, windows of a recording) or a quarantine row
            (path, stream, modality, stage, reason), so total = tokenized + quarantined, per
            stream. Plugins that need dataset statistics get them totalled here with a Ray Data
            aggregation.
    stream: an epoch manifest of good files (global sample i is a fixed (file, view) pair, so a
            resumed run starts at sample step·batch) → read, decode once, sample views, tokenize
            and mask in ``map_batches``, each sample seeded by (run seed, sample id, epoch).
            Every batch has the columns of every stream; a sample without a stream carries it
            as absent (no valid token: never visible, never scored).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from polymae.modalities.base import BadInputError, ModalityPlugin
from polymae.modalities.registry import make_plugin
from polymae.pipelines.files import SampleFile, discover, view_id
from polymae.pipelines.spec import PipelineSpec, SourceSpec
from polymae.tokenizer.masking import MaskPolicy, MaskSpec, sample_rng
from polymae.tokenizer.stream import TokenStream, streams_to_columns

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


# --- scan ----------------------------------------------------------------------------------
def scan_batch(batch: dict[str, np.ndarray], modality: str, config: dict) -> dict[str, np.ndarray]:
    """map_batches: decode each file once; report its sample count and statistics, or the
    stage and reason it failed (a failed file's statistics are 0, so totals cover good files)."""
    plugin = make_plugin(modality, config)
    stages, reasons, counts, digests = [], [], [], []
    stats: dict[str, list[float]] = {key: [] for key in plugin.statistics}
    for path in batch["path"]:
        stage, reason, count, found, digest = "", "", 0, {}, ""
        try:
            data = read_bytes(str(path), plugin)
            digest = hashlib.sha256(data).hexdigest()  # the dataset fingerprint's part
            count, found = plugin.scan_file(data, str(path))
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
        for key in plugin.statistics:
            stats[key].append(float(found.get(key, 0.0)))
    return {**batch, "stage": np.array(stages, dtype=object), "reason": np.array(reasons, dtype=object),
            "num_samples": np.array(counts, dtype=np.int64), "sha256": np.array(digests, dtype=object),
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
                     **dict.fromkeys(keys, 0.0)})
    return rows


@dataclass
class ScanResult:
    good: list[SampleFile]
    quarantine: list[dict[str, str]]

    @classmethod
    def merge(cls, scans: list[ScanResult]) -> ScanResult:
        """Several scans (one per stream, say) as one."""
        return cls([f for s in scans for f in s.good], [r for s in scans for r in s.quarantine])

    @property
    def dataset_fingerprint(self) -> str:
        """sha256 over the good files' ids and contents: the same data gives the same value anywhere."""
        return hashlib.sha256("\n".join(f"{f.sample_id} {f.sha256}" for f in self.good).encode()).hexdigest()

    @property
    def streams(self) -> list[str]:
        return sorted({f.stream for f in self.good} | {r["stream"] for r in self.quarantine})

    @property
    def counts(self) -> dict[str, int]:
        """The run's totals: ``total = tokenized + quarantined`` files, ``samples`` per epoch."""
        return _counts(self.good, self.quarantine)

    @property
    def counts_by_stream(self) -> dict[str, dict[str, int]]:
        """The same counts for each stream (logged as ``data/<stream>/<count>``)."""
        return {name: _counts([f for f in self.good if f.stream == name],
                              [r for r in self.quarantine if r["stream"] == name]) for name in self.streams}


def _counts(good: list[SampleFile], quarantine: list[dict[str, str]]) -> dict[str, int]:
    return {"total": len(good) + len(quarantine), "tokenized": len(good), "quarantined": len(quarantine),
            "samples": samples_per_epoch(good)}


def samples_per_epoch(files: list[SampleFile]) -> int:
    return sum(f.num_samples for f in files)


def scan(spec: PipelineSpec, sources: list[SourceSpec] | None = None) -> ScanResult:
    """Decode every file of every source (or of ``sources``) once with Ray Data; split good
    from quarantined.

    A plugin with ``statistics`` gets their totals over the good files (a Ray Data sum) turned
    into config fields by ``with_statistics``; they are written into the spec's source config,
    so the training stream and the saved spec use them.
    """
    good: list[SampleFile] = []
    quarantine: list[dict[str, str]] = []
    for source in spec.sources if sources is None else sources:
        plugin = make_plugin(source.modality, source.config)
        files = discover(source, plugin.extensions)
        if not files:
            continue
        if len(spec.sources) > 1:  # ids unique across streams (two folders may both hold 0001.png)
            for f in files:
                f.sample_id = f"{source.name}:{f.sample_id}"
        ids = {f.path: f for f in files}
        kwargs = {"modality": source.modality, "config": source.config}
        try:
            ds = ray.data.from_items([{"path": f.path} for f in files]).map_batches(
                scan_batch, fn_kwargs=kwargs, batch_size=8, batch_format="numpy",
                ray_remote_args_fn=lambda: {"max_retries": 0},  # Ray Data retries a crashed task forever
            ).materialize()
        except Exception as err:  # a decoder crashed its process (a segfault): find the file(s)
            log.warning("scan: a decoder crashed (%s); rescanning one file per process", type(err).__name__)
            ds = ray.data.from_items(scan_isolated([f.path for f in files], kwargs))
        for row in sorted(ds.take_all(), key=lambda r: r["path"]):
            if row["reason"]:
                quarantine.append({"path": row["path"], "stream": source.name, "modality": source.modality,
                                   "stage": row["stage"], "reason": row["reason"]})
            else:
                good.append(SampleFile(ids[row["path"]].sample_id, row["path"], int(row["num_samples"]),
                                       str(row["sha256"]), source.name))
        if plugin.statistics:
            columns = [f"statistic_{key}" for key in plugin.statistics]
            totals = ds.sum(columns)  # {"sum(<column>)": total}, or the bare total for one column
            totals = totals if isinstance(totals, dict) else {f"sum({columns[0]})": totals}
            source.config.update(plugin.with_statistics(
                {key: float(totals[f"sum(statistic_{key})"] or 0.0) for key in plugin.statistics}))
    return ScanResult(good, quarantine)


def write_quarantine(rows: list[dict[str, str]], path: str) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA), path)


# --- training stream -----------------------------------------------------------------------
def epoch_manifest(files: list[SampleFile], seed: int, start: int, count: int) -> list[dict[str, Any]]:
    """Samples ``start … start+count`` of the endless sequence of seeded epoch permutations.

    Each epoch visits the files in a seeded order and takes every sample of each file, so one
    row is a file with the range of its samples to emit: ``first`` and ``count`` (a file is
    decoded once for all of its samples; only the first and last rows may be partial).
    """
    sizes = np.array([f.num_samples for f in files], dtype=np.int64)
    per_epoch = int(sizes.sum())
    rows: list[dict[str, Any]] = []
    layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    index, end = start, start + count
    while index < end:
        epoch, offset = divmod(index, per_epoch)
        if epoch not in layouts:
            order = np.random.default_rng([seed, epoch]).permutation(len(files))
            layouts[epoch] = order, np.cumsum(sizes[order])
        order, ends = layouts[epoch]
        pos = int(np.searchsorted(ends, offset, side="right"))
        f = files[order[pos]]
        first = offset - int(ends[pos] - f.num_samples)
        take = min(f.num_samples - first, end - index)
        rows.append({"sample_id": f.sample_id, "stream": f.stream, "path": f.path, "epoch": epoch,
                     "first": first, "count": take})
        index += take
    return rows


def manifest_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Manifest rows → the column batch ``tokenize_batch`` takes."""
    return {key: np.array([r[key] for r in rows], dtype=object if key in ("sample_id", "stream", "path") else np.int64)
            for key in rows[0]}


def tokenize_views(
    plugin: ModalityPlugin, policy: MaskPolicy, data: bytes, path: str, sample_id: str,
    epoch: int, seed: int, first: int, count: int, train: bool = True, stream: str | None = None,
) -> list[dict[str, TokenStream]]:
    """Decode one file once, sample its views (augmented with one seeded generator), keep
    views ``first … first+count`` and mask each — the same for every worker. Each sample is
    ``{stream: TokenStream}`` (``stream`` defaults to the plugin's modality)."""
    rng = sample_rng(seed, sample_id, epoch, "augment") if train else None
    samples = []
    for view, tokens in enumerate(plugin.tokenize_file(data, path, rng)[first : first + count], start=first):
        sample = {stream or plugin.name: tokens}
        policy.apply(sample, view_id(sample_id, view), epoch)
        samples.append(sample)
    return samples


def absent_stream(plugin: ModalityPlugin) -> TokenStream:
    """The stream of a sample that lacks it: no valid token, so never visible and never scored."""
    n, d, c = plugin.token_shape
    return TokenStream(np.zeros((n, d)), np.zeros((n, c)), np.zeros(n), np.zeros(n, bool))


def tokenize_batch(
    batch: dict[str, np.ndarray], streams: dict[str, dict], masks: dict[str, dict], seed: int,
    train: bool = True,
) -> dict[str, np.ndarray]:
    """map_batches: manifest rows → token-stream columns of every stream in ``streams`` (name →
    modality and config). A file that fails here (changed since the scan) is dropped from the
    batch; the scan already quarantined bad files."""
    plugins = {name: make_plugin(s["modality"], s["config"]) for name, s in streams.items()}
    policy = MaskPolicy({m: MaskSpec(**s) for m, s in masks.items()}, seed)
    only = next(iter(plugins)) if len(plugins) == 1 else None
    samples, ids, epochs = [], [], []
    rows = zip(batch["sample_id"], batch["stream"], batch["path"], batch["epoch"], batch["first"], batch["count"],
               strict=True)
    for sid, name, path, epoch, first, count in rows:
        name = str(name) or only  # "": a hand-made manifest of a one-stream spec
        try:
            data = read_bytes(str(path), plugins[name])
            views = tokenize_views(plugins[name], policy, data, str(path), str(sid), int(epoch), seed,
                                   int(first), int(count), train, stream=name)
        except BadInputError as err:  # passed the scan, fails now: the file changed under us
            log.warning("dropped %s (epoch %s) from the stream: %s", path, epoch, err.reason)
            continue
        samples += views
        ids += [view_id(str(sid), int(first) + k) for k in range(len(views))]
        epochs += [int(epoch)] * len(views)
    out = {"sample_id": np.array(ids, dtype=object), "epoch": np.array(epochs, dtype=np.int64)}
    for name, plugin in plugins.items():
        absent = absent_stream(plugin)
        # zero samples: keep the columns (with zero rows) so the schema never changes
        columns = streams_to_columns(name, [s.get(name, absent) for s in samples] or [absent])
        out.update({k: v[: len(samples)] for k, v in columns.items()})
    return out


def stream_kwargs(spec: PipelineSpec, train: bool = True) -> dict[str, Any]:
    return {"streams": {s.name: {"modality": s.modality, "config": s.config} for s in spec.sources},
            "seed": spec.seed, "train": train,
            "masks": {m: s.model_dump() for m, s in spec.mask_specs().items()}}


def token_dataset(spec: PipelineSpec, files: list[SampleFile], start: int, count: int) -> ray.data.Dataset:
    """The streaming training dataset: ``count`` samples from global sample index ``start``."""
    manifest = epoch_manifest(files, spec.seed, start, count)
    return ray.data.from_items(manifest).map_batches(
        tokenize_batch, fn_kwargs=stream_kwargs(spec), batch_size=4, batch_format="numpy",
        ray_remote_args_fn=lambda: {"max_retries": 3},  # bounded: a crashing file fails the run, no hang
    )


def fixed_batch(spec: PipelineSpec, files: list[SampleFile], size: int = 4) -> dict[str, np.ndarray]:
    """A deterministic evaluation batch (evaluation views, epoch-0 masks): the first sample
    of each of the first files of every stream in turn, then further samples of the same files
    if there are few."""
    order = _round_robin(files)
    rows: list[dict[str, Any]] = []
    for view in range(max(f.num_samples for f in order)):
        for f in order:
            if view < f.num_samples and len(rows) < size:
                rows.append({"sample_id": f.sample_id, "stream": f.stream, "path": f.path, "epoch": 0,
                             "first": view, "count": 1})
    return tokenize_batch(manifest_batch(rows), **stream_kwargs(spec, train=False))


def _round_robin(files: list[SampleFile]) -> list[SampleFile]:
    """Files interleaved by stream (a1, b1, a2, b2, …), so a small batch shows every stream."""
    by_stream: dict[str, list[SampleFile]] = {}
    for f in files:
        by_stream.setdefault(f.stream, []).append(f)
    lists = list(by_stream.values())
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def _as_arrow_lists(batch: dict[str, np.ndarray]) -> pa.Table:
    """Tensor columns → nested fixed-size Arrow lists, readable by any Parquet tool."""
    columns = {}
    for name, arr in batch.items():
        if arr.ndim == 1:
            columns[name] = pa.array(arr.tolist() if arr.dtype == object else arr)
            continue
        nested = pa.array(np.ascontiguousarray(arr).reshape(-1))
        for size in reversed(arr.shape[1:]):
            nested = pa.FixedSizeListArray.from_arrays(nested, size)
        columns[name] = nested
    return pa.table(columns)


def write_token_shards(spec: PipelineSpec, files: list[SampleFile], folder: str) -> None:
    """The first epoch's token streams (with masks) as Parquet shards of plain Arrow lists."""
    token_dataset(spec, files, 0, samples_per_epoch(files)).map_batches(
        _as_arrow_lists, batch_format="numpy", batch_size=16
    ).write_parquet(folder)
