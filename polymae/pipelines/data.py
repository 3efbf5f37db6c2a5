"""Ray Data stages: find files → scan (decode, quarantine) → per-epoch tokenize + mask.

    scan:   every file is read and decoded once; it ends as a good path or a quarantine row
            (path, modality, stage, reason), so total = tokenized + quarantined.
    stream: an epoch manifest of good files (row i = global sample i, so a resumed run starts
            at row step·batch) → read, decode, augment, tokenize and mask in ``map_batches``,
            each sample seeded by (run seed, sample id, epoch).
"""

from __future__ import annotations

import glob
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
from polymae.pipelines.spec import PipelineSpec, SourceSpec
from polymae.tokenizer.masking import MaskPolicy, MaskSpec, sample_rng
from polymae.tokenizer.stream import TokenStream, streams_to_columns

log = logging.getLogger(__name__)
QUARANTINE_SCHEMA = pa.schema(
    [("path", pa.string()), ("modality", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)


@dataclass
class SampleFile:
    sample_id: str  # stable across machines: the path relative to its source root
    path: str


def discover(source: SourceSpec, extensions: tuple[str, ...]) -> list[SampleFile]:
    """Files named by a source: explicit files as given; folders searched recursively for the
    plugin's extensions; globs expanded. Sorted, without duplicates."""
    found: dict[str, SampleFile] = {}
    for entry in source.paths:
        if os.path.isdir(entry):
            for root, _, names in os.walk(entry):
                for name in names:
                    if name.lower().endswith(extensions):
                        full = os.path.join(root, name)
                        found[full] = SampleFile(os.path.relpath(full, entry), full)
        else:
            for full in sorted(glob.glob(entry)) or [entry]:
                found[full] = SampleFile(os.path.basename(full), full)
    return sorted(found.values(), key=lambda f: f.sample_id)


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
    """map_batches: decode each file once; report ok or the stage and reason it failed."""
    plugin = make_plugin(modality, config)
    stages, reasons = [], []
    for path in batch["path"]:
        stage, reason = "", ""
        try:
            plugin.tokenize(plugin.decode(read_bytes(str(path), plugin), str(path)), None)
        except BadInputError as err:
            stage, reason = err.stage, err.reason
        except Exception as err:  # a decoder bug must not lose the file: quarantine it, loudly
            stage, reason = "decode", f"unexpected {type(err).__name__}: {err}"
        stages.append(stage)
        reasons.append(reason)
    return {**batch, "stage": np.array(stages, dtype=object), "reason": np.array(reasons, dtype=object)}


@dataclass
class ScanResult:
    good: list[SampleFile]
    quarantine: list[dict[str, str]]

    @property
    def counts(self) -> dict[str, int]:
        return {"total": len(self.good) + len(self.quarantine), "tokenized": len(self.good),
                "quarantined": len(self.quarantine)}


def scan(spec: PipelineSpec) -> ScanResult:
    """Decode every file of every source once with Ray Data; split good from quarantined."""
    good: list[SampleFile] = []
    quarantine: list[dict[str, str]] = []
    for source in spec.sources:
        plugin = make_plugin(source.modality, source.config)
        files = discover(source, plugin.extensions)
        if not files:
            continue
        ids = {f.path: f for f in files}
        ds = ray.data.from_items([{"path": f.path} for f in files])
        ds = ds.map_batches(scan_batch, fn_kwargs={"modality": source.modality, "config": source.config},
                            batch_size=8, batch_format="numpy")
        for row in sorted(ds.take_all(), key=lambda r: r["path"]):
            if row["reason"]:
                quarantine.append({"path": row["path"], "modality": source.modality,
                                   "stage": row["stage"], "reason": row["reason"]})
            else:
                good.append(ids[row["path"]])
    return ScanResult(good, quarantine)


def write_quarantine(rows: list[dict[str, str]], path: str) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA), path)


# --- training stream -----------------------------------------------------------------------
def epoch_manifest(files: list[SampleFile], seed: int, start: int, count: int) -> list[dict[str, Any]]:
    """Rows ``start … start+count`` of the endless sequence of seeded epoch permutations."""
    n = len(files)
    rows: list[dict[str, Any]] = []
    orders: dict[int, np.ndarray] = {}
    for index in range(start, start + count):
        epoch, pos = divmod(index, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        f = files[orders[epoch][pos]]
        rows.append({"sample_id": f.sample_id, "path": f.path, "epoch": epoch})
    return rows


def tokenize_sample(
    plugin: ModalityPlugin, policy: MaskPolicy, data: bytes, path: str, sample_id: str,
    epoch: int, seed: int, train: bool = True,
) -> dict[str, TokenStream]:
    """Decode, augment + tokenize and mask one file — the same for every worker."""
    rng = sample_rng(seed, sample_id, epoch, "augment") if train else None
    sample = {plugin.name: plugin.tokenize(plugin.decode(data, path), rng)}
    policy.apply(sample, sample_id, epoch)
    return sample


def tokenize_batch(
    batch: dict[str, np.ndarray], modality: str, config: dict, masks: dict[str, dict], seed: int,
    train: bool = True,
) -> dict[str, np.ndarray]:
    """map_batches: manifest rows → token-stream columns. A file that fails here (changed
    since the scan) is dropped from the batch; the scan already quarantined bad files."""
    plugin = make_plugin(modality, config)
    policy = MaskPolicy({m: MaskSpec(**s) for m, s in masks.items()}, seed)
    streams, kept = [], []
    for i, (sid, path, epoch) in enumerate(zip(batch["sample_id"], batch["path"], batch["epoch"], strict=True)):
        try:
            data = read_bytes(str(path), plugin)
            sample = tokenize_sample(plugin, policy, data, str(path), str(sid), int(epoch), seed, train)
            streams.append(sample[modality])
            kept.append(i)
        except BadInputError as err:  # passed the scan, fails now: the file changed under us
            log.warning("dropped %s (epoch %s) from the stream: %s", path, epoch, err.reason)
    out = {"sample_id": batch["sample_id"][kept], "epoch": batch["epoch"][kept].astype(np.int64)}
    if not streams:  # keep the columns (with zero rows) so the schema never changes
        n, d, c = plugin.token_shape
        empty = TokenStream(np.zeros((n, d)), np.zeros((n, c)), np.zeros(n), np.zeros(n, bool))
        return {**out, **{k: v[:0] for k, v in streams_to_columns(modality, [empty]).items()}}
    return {**out, **streams_to_columns(modality, streams)}


def stream_kwargs(spec: PipelineSpec, train: bool = True) -> dict[str, Any]:
    source = spec.sources[0]
    return {"modality": source.modality, "config": source.config, "seed": spec.seed, "train": train,
            "masks": {m: s.model_dump() for m, s in spec.mask_specs().items()}}


def token_dataset(spec: PipelineSpec, files: list[SampleFile], start: int, count: int) -> ray.data.Dataset:
    """The streaming training dataset: ``count`` samples from global sample index ``start``."""
    manifest = epoch_manifest(files, spec.seed, start, count)
    return ray.data.from_items(manifest).map_batches(
        tokenize_batch, fn_kwargs=stream_kwargs(spec), batch_size=16, batch_format="numpy"
    )


def fixed_batch(spec: PipelineSpec, files: list[SampleFile], size: int = 4) -> dict[str, np.ndarray]:
    """A deterministic evaluation batch (centre view, epoch-0 masks) of the first files."""
    chosen = files[:size]
    rows = {"sample_id": np.array([f.sample_id for f in chosen], dtype=object),
            "path": np.array([f.path for f in chosen], dtype=object),
            "epoch": np.zeros(len(chosen), dtype=np.int64)}
    return tokenize_batch(rows, **stream_kwargs(spec, train=False))


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
    token_dataset(spec, files, 0, len(files)).map_batches(
        _as_arrow_lists, batch_format="numpy", batch_size=16
    ).write_parquet(folder)
