"""Bad files end in the quarantine table with a reason; good ones are all tokenized."""

import shutil

import pyarrow.parquet as pq
import pytest

from polymae.pipelines.scan import scan, write_quarantine
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration


def test_scan_quarantines_every_bad_file_and_counts_add_up(tmp_path, photo_paths, bad_image_files, ray_local):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in photo_paths:
        shutil.copy(p, folder / p.name)
    for name, data in bad_image_files.items():
        (folder / name).write_bytes(data)
    spec = parse_spec({"name": "q", "sources": [{"modality": "image", "paths": [str(folder)],
                                                 "config": {"max_pixels": 1_000_000}}]})
    result = scan(spec)

    assert result.counts == {"total": len(photo_paths) + 5, "tokenized": len(photo_paths), "quarantined": 5,
                             "skipped": 0, "unmatched": 0,
                             "samples": len(photo_paths), "views_skipped": 0}
    assert sorted(f.sample_id for f in result.good) == sorted(p.name for p in photo_paths)
    reasons = {row["path"].rsplit("/", 1)[1]: row for row in result.quarantine}
    assert set(reasons) == set(bad_image_files)
    assert "empty" in reasons["empty.jpg"]["reason"]
    assert "oversized" in reasons["huge.png"]["reason"]
    assert "not a recognised image" in reasons["not_an_image.jpg"]["reason"]
    for row in reasons.values():
        assert row["modality"] == "image" and row["stage"] == "decode" and row["reason"]

    write_quarantine(result.quarantine, str(tmp_path / "q.parquet"))
    table = pq.read_table(tmp_path / "q.parquet")
    assert table.column_names == ["path", "stream", "modality", "stage", "reason"] and table.num_rows == 5


def test_oversized_file_quarantined_at_read(tmp_path, photo_paths, ray_local):
    shutil.copy(photo_paths[0], tmp_path / "ok.jpg")
    (tmp_path / "big.jpg").write_bytes(photo_paths[1].read_bytes() + b"\0" * 50_000)
    spec = parse_spec({"name": "q", "sources": [{"modality": "image", "paths": [str(tmp_path)],
                                                 "config": {"max_file_bytes": 45_000}}]})
    result = scan(spec)
    assert result.counts["total"] == 2 and result.counts["quarantined"] == 1
    assert result.quarantine[0]["stage"] == "read" and "oversized file" in result.quarantine[0]["reason"]
