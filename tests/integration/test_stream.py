"""The token stream through real Ray Data: masks and crops depend only on (seed, sample,
epoch), not on which task or batch made them; epochs cover every file once."""

from pathlib import Path

import numpy as np
import pytest
import ray

from polymae.pipelines.data import (
    epoch_manifest,
    manifest_batch,
    stream_kwargs,
    token_dataset,
    tokenize_batch,
)
from polymae.pipelines.files import Sample, discover
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_masks_identical_whichever_worker_makes_them(ray_local):
    spec = parse_spec({"name": "s", "seed": 5, "sources": [
        {"modality": "image", "paths": [str(ROOT / "examples/data/images")], "config": {"img_size": 64}}]})
    files = [Sample.of(f) for f in discover(spec.sources[0], (".jpg",))]
    n = len(files)
    rows = ray.get(ray.remote(lambda: token_dataset(spec, files, 0, 2 * n).take_all()).remote())
    # the same manifest rows tokenized in this process, in one batch
    manifest = epoch_manifest(files, spec.seed, 0, 2 * n)
    local = tokenize_batch(manifest_batch(manifest), **stream_kwargs(spec))
    by_key = {(r["sample_id"], int(r["epoch"])): r for r in rows}
    assert len(by_key) == 2 * n  # every file once per epoch
    for i, (sid, epoch) in enumerate(zip(local["sample_id"], local["epoch"], strict=True)):
        remote = by_key[(sid, int(epoch))]
        assert np.array_equal(remote["image.visible"], local["image.visible"][i])
        assert np.array_equal(remote["image.values"], local["image.values"][i])
    # a new epoch draws new masks for the same file
    first = {sid: v for sid, e, v in zip(local["sample_id"], local["epoch"], local["image.visible"], strict=True)
             if e == 0}
    second = {sid: v for sid, e, v in zip(local["sample_id"], local["epoch"], local["image.visible"], strict=True)
              if e == 1}
    assert sum(np.array_equal(first[s], second[s]) for s in first) == 0
