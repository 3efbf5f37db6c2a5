"""The lazy epoch manifest: chunks of global sample indices, expanded where Ray Data runs them,
give exactly the eager manifest's views in the same order, wherever the chunk boundaries fall."""

import numpy as np
import pytest

from polymae.pipelines.data import epoch_manifest, manifest_chunk
from polymae.pipelines.files import Sample


def _views(rows) -> list[tuple[str, int, int]]:
    """Manifest rows → one (sample id, epoch, view) per global sample."""
    return [(str(r["sample_id"]), int(r["epoch"]), int(r["first"]) + k) for r in rows for k in range(int(r["count"]))]


def _samples() -> list[Sample]:
    sizes = [1, 16, 3, 1, 7]  # images, a video's 16 clips, audio windows
    return [Sample(f"s{i}", {"image": f"/data/s{i}.png"}, n) for i, n in enumerate(sizes)]


@pytest.mark.parametrize(("start", "count", "chunk"), [(0, 100, 7), (13, 60, 4), (27, 28, 256), (5, 1, 1)])
def test_chunks_expand_to_the_eager_manifest(start, count, chunk):
    samples = _samples()
    eager = _views(epoch_manifest(samples, 3, start, count))
    chunks = -(-count // chunk)
    lazy = []
    for k in range(chunks):
        batch = manifest_chunk({"id": np.array([k])}, samples, 3, start, count, chunk)
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        lazy += _views(rows)
    assert lazy == eager and len(lazy) == count


def test_every_epoch_visits_every_view_once_in_a_new_order():
    samples = _samples()
    per_epoch = sum(s.num_samples for s in samples)
    views = _views(epoch_manifest(samples, 0, 0, 3 * per_epoch))
    epochs = [views[e * per_epoch:(e + 1) * per_epoch] for e in range(3)]
    expected = sorted((s.sample_id, v) for s in samples for v in range(s.num_samples))
    for e, epoch in enumerate(epochs):
        assert sorted((sid, v) for sid, _, v in epoch) == expected and {ep for _, ep, _ in epoch} == {e}
    orders = [[sid for sid, _, v in epoch if v == 0] for epoch in epochs]
    assert len({tuple(o) for o in orders}) > 1  # seeded per epoch, not one fixed order
