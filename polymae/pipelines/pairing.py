"""Pairing (the ``pair`` stage): the streams' good files joined into samples by a key.

    key: stem      a file's id (relative to its source's folder) without the extension:
                   ``rgb/0001.png`` and ``depth/0001.png`` make sample ``0001``
    key: template  a pattern per stream (or one for all) that a file's id must match whole;
                   ``{key}`` and any other ``{field}`` make the key: ``"{scene}/rgb_{key}.png"``
    key: manifest  a CSV or Parquet table with columns ``key, stream, path`` (relative paths are
                   relative to the table's folder)

The join is a Ray Data groupby on the key, written as a Parquet table in the stage's folder
(one row per sample, skipped file or quarantined file), which the driver reads by column. A key
that lacks some stream is *unmatched*; ``unmatched`` says what its files become:

    single      a partial sample (the missing streams are absent: fully hidden, no loss)
    drop        skipped, listed with the reason
    quarantine  quarantine rows with the reason ``no partner in <stream>``

Two files of one stream under one key are ambiguous: the first by id pairs, the others are
quarantined. Every good file ends in exactly one place, so the run's counts still add up.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray

from polymae.pipelines.files import Sample, SampleFile
from polymae.pipelines.scan import ScanResult
from polymae.pipelines.spec import TEMPLATE_FIELD as _FIELD
from polymae.pipelines.spec import PairingSpec
from polymae.tokenizer.policies import SHARED_AXES


def _pattern(template: str) -> re.Pattern:
    """``"{scene}/rgb_{key}.png"`` → a regex with one named group per field."""
    parts = _FIELD.split(template)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+?)" if p != "key" else "(?P<key>.+?)"
                              for i, p in enumerate(parts)))


def read_manifest(path: str) -> dict[str, tuple[str, str]]:
    """A pairing manifest → absolute path → (key, stream)."""
    table = pq.read_table(path) if path.endswith(".parquet") else pacsv.read_csv(path)
    missing = {"key", "stream", "path"} - set(table.column_names)
    if missing:
        raise ValueError(f"pairing manifest {path}: missing columns {sorted(missing)}; needs key, stream, path")
    base = Path(path).parent
    return {os.path.normpath(p if os.path.isabs(p) else base / p): (str(k), str(s))
            for k, s, p in zip(*(table.column(c).to_pylist() for c in ("key", "stream", "path")), strict=True)}


def file_key(f: SampleFile, pairing: dict[str, Any], manifest: dict[str, tuple[str, str]] | None) -> tuple[str, str]:
    """(key, "") of a file, or ("", why it has none)."""
    if pairing["key"] == "stem":
        return os.path.splitext(f.relpath or f.sample_id)[0], ""
    if pairing["key"] == "manifest":
        found = (manifest or {}).get(os.path.normpath(f.path))
        if found is None or found[1] != f.stream:
            return "", "not in the pairing manifest" if found is None else f"the manifest lists it under {found[1]}"
        return found[0], ""
    template = pairing["template"]
    template = template if isinstance(template, str) else template.get(f.stream, "")
    match = _pattern(template).fullmatch(f.relpath or f.sample_id) if template else None
    if match is None:
        return "", f"its id {f.relpath!r} does not match the template {template!r}"
    return "/".join(match.groups()), ""


def view_followers(sources: list[Any]) -> tuple[str, ...]:
    """The streams after the first on a clock or a frame: the first draws the views (clips, chips)
    that the others are cut at, so its count is the sample's."""
    seen: set[tuple[str, str]] = set()
    out = []
    for s in sources:
        shared = [(kind, getattr(s, kind)) for kind in SHARED_AXES if getattr(s, kind)]
        if any(k in seen for k in shared):
            out.append(s.name)
        seen.update(shared)
    return tuple(out)


_OUT = ("kind", "key", "stream", "path", "reason", "paths", "num_samples")


def join_group(group: dict[str, np.ndarray], streams: list[str], unmatched: str,
               followers: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Ray Data ``map_groups``: the files of one key → rows of ``kind`` sample / skip / quarantine.
    ``followers``: streams after the first on a clock or a frame, whose views are cut at the first
    stream's spans or chips (their own count does not limit the sample's)."""
    rows: list[tuple] = []
    key = str(group["key"][0])
    order = np.argsort(group["sample_id"].astype(str), kind="stable")
    files = [{c: group[c][i] for c in ("sample_id", "stream", "path", "num_samples", "why")} for i in order]
    if not key:  # no key at all: each file is unmatched on its own
        for f in files:
            _unmatched(rows, {f["stream"]: f}, str(f["sample_id"]), f"no pairing key: {f['why']}", unmatched,
                       followers)
        return _columns(rows)
    chosen: dict[str, dict] = {}
    for f in files:
        if f["stream"] in chosen:
            rows.append(("quarantine", key, f["stream"], f["path"], f"ambiguous pairing: key {key!r} also names "
                         f"{chosen[f['stream']]['path']} in stream {f['stream']}", "", 0))
        else:
            chosen[f["stream"]] = f
    missing = [s for s in streams if s not in chosen]
    if missing:
        _unmatched(rows, chosen, key, f"no partner in {', '.join(missing)}", unmatched, followers)
    else:
        rows.append(_sample_row(key, chosen, "", followers))
    return _columns(rows)


def _unmatched(rows: list[tuple], files: dict[str, dict], key: str, reason: str, policy: str,
               followers: tuple[str, ...]) -> None:
    if policy == "single":
        rows.append(_sample_row(key, files, reason, followers))
    else:
        rows += [("skip" if policy == "drop" else "quarantine", key, s, f["path"], reason, "", 0)
                 for s, f in files.items()]


def _sample_row(key: str, files: dict[str, dict], reason: str, followers: tuple[str, ...]) -> tuple:
    paths = json.dumps({s: str(f["path"]) for s, f in files.items()}, sort_keys=True)
    counted = [f for s, f in files.items() if s not in followers or len(files) == 1]
    views = min(int(f["num_samples"]) for f in counted or files.values())
    return ("sample", key, ",".join(sorted(files)), "", reason, paths, views)


def _columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    return {c: np.array([r[i] for r in rows], dtype=np.int64 if c == "num_samples" else object)
            for i, c in enumerate(_OUT)}


def pair(scanned: ScanResult, streams: dict[str, str], pairing: PairingSpec, folder: Path,
         followers: tuple[str, ...] = ()) -> ScanResult:
    """Join ``scanned``'s good files into samples (written to ``folder/pairs``) → the result with
    the samples, the skipped and unmatched files, and the pairing's quarantine rows added.
    ``streams``: stream name → modality, in spec order; ``followers``: see :func:`join_group`."""
    manifest = read_manifest(pairing.manifest) if pairing.key == "manifest" and pairing.manifest else None
    settings = pairing.model_dump()
    items = []
    for f in scanned.good:
        key, why = file_key(f, settings, manifest)
        items.append({"sample_id": f.sample_id, "stream": f.stream, "path": f.path, "num_samples": f.num_samples,
                      "key": key, "why": why})
    out = str(folder / "pairs")
    if items:
        ray.data.from_items(items).groupby("key").map_groups(
            join_group, fn_kwargs={"streams": list(streams), "unmatched": pairing.unmatched, "followers": followers},
            batch_format="numpy",
        ).write_parquet(out)
    table = pq.read_table(out) if items and os.listdir(out) else pa.table({c: [] for c in _OUT})
    cols = {c: table.column(c).to_pylist() for c in _OUT}
    samples, quarantine, skipped, unmatched, removed = [], list(scanned.quarantine), [], [], set()
    for kind, key, stream, path, reason, paths, count in zip(*(cols[c] for c in _OUT), strict=True):
        if kind == "sample":
            files = json.loads(paths)
            samples.append(Sample(key, files, int(count)))
            unmatched += list(files.items()) if reason else []
            continue
        row = {"path": path, "stream": stream, "modality": streams.get(stream, ""), "stage": "pair", "reason": reason}
        (skipped if kind == "skip" else quarantine).append(row)
        removed.add((stream, path))
        unmatched += [(stream, path)] if not reason.startswith("ambiguous") else []
    good = [f for f in scanned.good if (f.stream, f.path) not in removed]
    return ScanResult(good, sorted(quarantine, key=lambda r: (r["path"], r["stream"])),
                      sorted(skipped, key=lambda r: (r["path"], r["stream"])), sorted(unmatched),
                      sorted(samples, key=lambda s: s.sample_id))
