"""An embed output counts as done only when complete and by the same checkpoint; writes replace
what an output folder held."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from polymae.orchestration.embed import DONE_MARKER, complete_embeddings
from polymae.pipelines.files import empty_folder


def _embeddings(folder, rows, marker_rows=None, checkpoint="/ckpt/a"):
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(rows)]}), folder / "embeddings/part0.parquet")
    if marker_rows is not None:
        (folder / DONE_MARKER).write_text(json.dumps({"checkpoint": checkpoint, "rows": marker_rows}))
    return folder


def test_an_embed_output_is_done_only_with_its_marker_its_rows_and_its_checkpoint(tmp_path):
    assert complete_embeddings(_embeddings(tmp_path / "done", 3, 3), "/ckpt/a")
    assert not complete_embeddings(_embeddings(tmp_path / "no_marker", 3), "/ckpt/a")  # cut short
    assert not complete_embeddings(_embeddings(tmp_path / "short", 2, 3), "/ckpt/a")
    assert not complete_embeddings(_embeddings(tmp_path / "other", 3, 3, "/ckpt/b"), "/ckpt/a")  # rewritten since
    assert not complete_embeddings(tmp_path / "missing", "/ckpt/a")


def test_empty_folder_removes_what_an_earlier_write_left(tmp_path):
    old = _embeddings(tmp_path, 3) / "embeddings"
    assert empty_folder(old) == str(old) and list(old.iterdir()) == []
    assert empty_folder(tmp_path / "new/deeper") and (tmp_path / "new/deeper").is_dir()
