"""The training stream: samples → per-epoch manifest → read, decode, tokenize and mask in Ray Data.

An epoch manifest of samples (global sample i is a fixed (sample, view) pair, so a resumed run
starts at sample step·batch), generated lazily inside Ray Data from chunks of global indices
(the driver holds the sample table, never the steps × batch rows) → ``map_batches``: read each
of a sample's files, decode once, sample views, tokenize and mask, each sample seeded by (run
seed, sample id, epoch). Every batch has the columns of every stream; a sample without a stream
carries it as absent (no valid token: never visible, never scored). Streams that share a spatial
frame (``sources[].frame``: an RGB image and its depth map, the band groups of a scene) get the
same views (a crop and flip; a scene's chips), drawn by the frame's first stream with
``frame_views``; streams on one clock (``sources[].clock``: a video and its own audio track)
cover the same seconds, those of the first stream's clips.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from polymae.modalities.base import BadInputError, ModalityPlugin
from polymae.modalities.registry import make_plugin
from polymae.ops.crops import FrameView, TimeSpan
from polymae.pipelines.files import Sample, view_id
from polymae.pipelines.scan import read_bytes, samples_per_epoch
from polymae.pipelines.spec import PipelineSpec
from polymae.tokenizer import MaskPolicy, MaskSpec, sample_rng
from polymae.tokenizer.policies import SHARED_AXES
from polymae.tokenizer.stream import TokenStream, streams_to_columns

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _epoch_layout(seed: int, epoch: int, sizes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(sample order, cumulative views) of one epoch. Cached: the lazy manifest's chunks of one
    epoch share it, so a chunk costs O(its rows), not a permutation of every sample."""
    views = np.frombuffer(sizes, dtype=np.int64)
    order = np.random.default_rng([seed, epoch]).permutation(len(views))
    return order, np.cumsum(views[order])


def epoch_manifest(samples: list[Sample], seed: int, start: int, count: int) -> list[dict[str, Any]]:
    """Samples ``start … start+count`` of the endless sequence of seeded epoch permutations.

    Each epoch visits the samples in a seeded order and takes every view of each (a file is
    decoded once for all of its views), so one row is a sample with the range of its views to
    emit: ``first`` and ``count`` (only the first and last rows may be partial). ``paths`` is the
    sample's stream → file map as JSON (one Arrow type whatever streams a sample has).
    """
    sizes = np.array([s.num_samples for s in samples], dtype=np.int64)
    per_epoch, key = int(sizes.sum()), sizes.tobytes()
    rows: list[dict[str, Any]] = []
    index, end = start, start + count
    while index < end:
        epoch, offset = divmod(index, per_epoch)
        order, ends = _epoch_layout(seed, epoch, key)
        pos = int(np.searchsorted(ends, offset, side="right"))
        s = samples[order[pos]]
        first = offset - int(ends[pos] - s.num_samples)
        take = min(s.num_samples - first, end - index)
        rows.append({"sample_id": s.sample_id, "paths": json.dumps(s.paths, sort_keys=True), "epoch": epoch,
                     "first": first, "count": take})
        index += take
    return rows


def manifest_chunk(batch: dict[str, np.ndarray], samples: list[Sample], seed: int, start: int, count: int,
                   chunk: int) -> dict[str, np.ndarray]:
    """map_batches over chunk numbers k → the manifest rows of global samples
    ``start + k·chunk …`` (``chunk`` of them; the last chunk stops at ``start + count``)."""
    rows = []
    for k in batch["id"]:
        first = start + int(k) * chunk
        rows += epoch_manifest(samples, seed, first, min(chunk, start + count - first))
    return manifest_batch(rows)


def manifest_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Manifest rows → the column batch ``tokenize_batch`` takes."""
    return {key: np.array([r[key] for r in rows], dtype=object if key in ("sample_id", "paths") else np.int64)
            for key in rows[0]}


def tokenize_sample(
    plugins: dict[str, ModalityPlugin], shares: dict[str, dict[str, str | None]], policy: MaskPolicy,
    paths: dict[str, str], sample_id: str, epoch: int, seed: int, first: int, count: int, train: bool = True,
    region: tuple[float, float] | None = None,
) -> list[dict[str, TokenStream]]:
    """Read and decode each file of one sample once, sample its views (augmented with seeded
    generators), keep views ``first … first+count`` and mask each — the same on every worker.

    → one ``{stream: TokenStream}`` per view. View k of every stream pairs up. ``shares[stream]``
    holds the stream's ``frame`` and ``clock``: a stream of a spatial frame tokenizes every view
    (crop and flip; a scene's chips) that the frame's first stream (in spec order) drew with
    ``frame_views``; a stream on a clock takes the seconds of
    the clock's first stream's views (an audio track the seconds of its video's clips). ``region``
    (fractions of the width, ``split.region``): every stream sees only that strip of its frame.
    Raises BadInputError from any of the files.
    """
    names = [n for n in plugins if n in paths]  # spec order: a frame's or clock's first stream draws
    views: dict[str, list[TokenStream]] = {}
    drawn: dict[str, list[FrameView]] = {}
    timed: dict[str, list[TimeSpan]] = {}
    for name in names:
        plugin, share = plugins[name], shares.get(name, {})
        frame, clock = share.get("frame"), share.get("clock")
        # a sample of one stream draws as it always did; paired streams each get their own generator
        purpose = "augment" if len(names) == 1 else f"augment:{name}"
        rng = sample_rng(seed, sample_id, epoch, purpose) if train else None
        data = read_bytes(paths[name], plugin)
        if frame is not None or region is not None:
            array = plugin.decode(data, paths[name])
            if region is not None:  # cut before any view is drawn: training never sees the held-out strip
                array = plugin.region(array, *region)
            key = frame if frame is not None else f"\0{name}"  # a stream in no frame draws its own views
            if key not in drawn:
                drawn[key] = plugin.frame_views(array, rng)
            views[name] = [plugin.tokenize(array, rng, view) for view in drawn[key]]
        elif clock is not None and clock in timed:
            views[name] = plugin.tokenize_spans(data, paths[name], timed[clock])
        elif clock is not None:
            views[name], timed[clock] = plugin.tokenize_timed(data, paths[name], rng)
        else:
            views[name] = plugin.tokenize_file(data, paths[name], rng)
        views[name] = views[name][first : first + count]
    samples = []
    for k in range(min(len(v) for v in views.values())):
        sample = {name: views[name][k] for name in names}
        policy.apply(sample, view_id(sample_id, first + k), epoch)
        samples.append(sample)
    return samples


def tokenize_views(
    plugin: ModalityPlugin, policy: MaskPolicy, path: str, sample_id: str, epoch: int, seed: int,
    first: int, count: int, train: bool = True, stream: str | None = None,
) -> list[dict[str, TokenStream]]:
    """:func:`tokenize_sample` of one file as ``stream`` (default: the plugin's modality)."""
    name = stream or plugin.name
    return tokenize_sample({name: plugin}, {}, policy, {name: path}, sample_id, epoch, seed, first, count, train)


def absent_stream(plugin: ModalityPlugin) -> TokenStream:
    """The stream of a sample that lacks it: no valid token, so never visible and never scored."""
    n, d, c = plugin.token_shape
    return TokenStream(np.zeros((n, d)), np.zeros((n, c)), np.zeros(n), np.zeros(n, bool), axes=plugin.axes)


def tokenize_batch(
    batch: dict[str, np.ndarray], streams: dict[str, dict], masks: dict[str, dict], seed: int,
    train: bool = True, policy: dict[str, Any] | None = None, region: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """map_batches: manifest rows → token-stream columns of every stream in ``streams`` (name →
    modality, config, frame and clock), masked by ``policy`` (``tokenizer.policy``, ``alpha``,
    ``visible``), cut to ``region`` (``split.region``). A sample that fails here (a file changed
    since the scan) is dropped from the batch; the scan already quarantined bad files."""
    plugins, shares, mask_policy = _built(streams, masks, seed, policy or {})
    samples, ids, epochs = [], [], []
    rows = zip(batch["sample_id"], batch["paths"], batch["epoch"], batch["first"], batch["count"], strict=True)
    for sid, paths, epoch, first, count in rows:
        try:
            views = tokenize_sample(plugins, shares, mask_policy, json.loads(str(paths)), str(sid), int(epoch), seed,
                                    int(first), int(count), train, region)
        except BadInputError as err:  # passed the scan, fails now: a file changed under us
            log.warning("dropped sample %s (epoch %s) from the stream: %s", sid, epoch, err.reason)
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


_BUILT: dict[str, tuple[dict[str, ModalityPlugin], dict[str, dict[str, str | None]], MaskPolicy]] = {}


def _built(streams: dict[str, dict], masks: dict[str, dict], seed: int,
           policy: dict[str, Any]) -> tuple[dict[str, ModalityPlugin], dict[str, dict[str, str | None]], MaskPolicy]:
    """(plugins, frame/clock shares, mask policy) of ``tokenize_batch``'s settings, built once per
    worker process rather than per batch (plugin configs validate; some load tables)."""
    key = json.dumps([streams, masks, seed, policy], sort_keys=True, default=repr)
    if key not in _BUILT:
        if len(_BUILT) >= 8:
            _BUILT.clear()
        plugins = {name: make_plugin(s["modality"], s["config"]) for name, s in streams.items()}
        shares = {name: {"frame": s.get("frame"), "clock": s.get("clock")} for name, s in streams.items()}
        _BUILT[key] = plugins, shares, MaskPolicy({m: MaskSpec(**s) for m, s in masks.items()}, seed,
                                                  shared=shared_axes(streams), **policy)
    return _BUILT[key]


def shared_axes(streams: dict[str, dict]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The groups of streams that share axes, in spec order: one per frame (y, x) and clock (t)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, s in streams.items():
        for kind in SHARED_AXES:
            if s.get(kind) is not None:
                groups.setdefault((kind, s[kind]), []).append(name)
    return [(tuple(names), SHARED_AXES[kind]) for (kind, _), names in groups.items()]


def stream_kwargs(spec: PipelineSpec, train: bool = True) -> dict[str, Any]:
    """``tokenize_batch``'s settings of a spec: training (augmented views of the training part of
    each frame) or evaluation (evaluation views of the held-out strip, when ``split.region``)."""
    streams = {s.name: {"modality": s.modality, "config": s.config, "frame": s.frame, "clock": s.clock}
               for s in spec.sources}
    tok, held = spec.tokenizer, spec.split.region
    return {"streams": streams, "seed": spec.seed, "train": train,
            "region": None if held == 0 else (0.0, 1.0 - held) if train else (1.0 - held, 1.0),
            "masks": {m: s.model_dump() for m, s in spec.mask_specs().items()},
            "policy": {"policy": tok.policy, "alpha": tok.alpha, "visible": tok.visible}}


MANIFEST_CHUNK = 256  # global samples per manifest chunk: one epoch-layout lookup serves them all
TOKEN_BLOCK_BYTES = 8 << 20  # Ray Data's default is 128 MiB


def token_dataset(spec: PipelineSpec, samples: list[Sample], start: int, count: int) -> ray.data.Dataset:
    """The streaming training dataset: ``count`` samples from global sample index ``start``.

    Ray Data generates the manifest from chunk numbers (``ray.data.range``), so the driver's
    memory is the sample table whatever ``count`` is (an 800-epoch schedule is 10⁹ rows)."""
    chunks = -(-count // MANIFEST_CHUNK)
    manifest = ray.data.range(chunks, override_num_blocks=min(chunks, 64)).map_batches(
        manifest_chunk, fn_kwargs={"samples": samples, "seed": spec.seed, "start": start, "count": count,
                                   "chunk": MANIFEST_CHUNK}, batch_size=1, batch_format="numpy")
    tokens = manifest.map_batches(
        tokenize_batch, fn_kwargs=stream_kwargs(spec), batch_size=4, batch_format="numpy",
        ray_remote_args_fn=lambda: {"max_retries": 3},  # bounded: a crashing file fails the run, no hang
    )
    # Blocks bounded in bytes, not by a task's share of ``count``: a consumer (driver or trainer)
    # holds a few blocks at a time, so its memory does not grow with the schedule's length, and
    # the first batch arrives after a few samples rather than after 128 MiB of them.
    tokens.context.target_max_block_size = TOKEN_BLOCK_BYTES
    return tokens


def fixed_batch(spec: PipelineSpec, samples: list[Sample], size: int = 4) -> dict[str, np.ndarray]:
    """A deterministic evaluation batch (evaluation views, epoch-0 masks): the first view of each
    of the first samples of every stream set in turn, then further views of the same samples if
    there are few."""
    order = _round_robin(samples)
    rows: list[dict[str, Any]] = []
    for view in range(max(s.num_samples for s in order)):
        for s in order:
            if view < s.num_samples and len(rows) < size:
                rows.append({"sample_id": s.sample_id, "paths": json.dumps(s.paths, sort_keys=True), "epoch": 0,
                             "first": view, "count": 1})
    return tokenize_batch(manifest_batch(rows), **stream_kwargs(spec, train=False))


def _round_robin(samples: list[Sample]) -> list[Sample]:
    """Samples interleaved by their set of streams (a1, b1, ab1, a2, …), so a small batch shows
    every stream and every pairing."""
    by_streams: dict[tuple[str, ...], list[Sample]] = {}
    for s in samples:
        by_streams.setdefault(s.streams, []).append(s)
    lists = list(by_streams.values())
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


def write_token_shards(spec: PipelineSpec, samples: list[Sample], folder: str) -> None:
    """The first epoch's token streams (with masks) as Parquet shards of plain Arrow lists."""
    token_dataset(spec, samples, 0, samples_per_epoch(samples)).map_batches(
        _as_arrow_lists, batch_format="numpy", batch_size=16
    ).write_parquet(folder)
