"""The probes' own logic: kNN votes, the linear head, labelled sets and their split."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from polymae.pipelines.spec import SpecError, parse_spec
from polymae.probe import confusion_matrix, knn_predict, linear_probe, top1
from polymae.probe.labels import load_labelled, split_labelled
from polymae.probe.render import render_confusion

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "data" / "images"

PNG = (".png",)

# three training features, two classes; the test feature is [1, 0]: cosine 1 to a (class 0),
# 0.6 to b and 0 to c (both class 1)
TRAIN = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
LABELS = np.array([0, 1, 1])
TEST = np.array([[2.0, 0.0]])  # not unit length: kNN compares directions


def test_knn_matches_hand_computed_weighted_votes():
    # τ = 0.07: class 0 gets e^(1/.07) ≈ 1.6e6, class 1 e^(.6/.07) + e^0 ≈ 5.3e3 → 0
    assert knn_predict(TRAIN, LABELS, TEST, 2, k=3, tau=0.07).tolist() == [0]
    # τ = 10: class 0 gets e^0.1 = 1.105, class 1 e^0.06 + 1 = 2.062 → 1 (the votes, not only the nearest)
    assert math.exp(0.1) < math.exp(0.06) + 1
    assert knn_predict(TRAIN, LABELS, TEST, 2, k=3, tau=10.0).tolist() == [1]
    # k = 1: the nearest alone; k larger than the training set: all of it
    assert knn_predict(TRAIN, LABELS, TEST, 2, k=1, tau=10.0).tolist() == [0]
    assert knn_predict(TRAIN, LABELS, TEST, 2, k=20, tau=10.0).tolist() == [1]


def test_linear_probe_separates_linearly_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    labels = rng.integers(0, 4, size=600)
    feats = centres[labels] + rng.normal(size=(600, 16)) * 0.3 + 5.0  # an offset BatchNorm removes
    pred = linear_probe(feats[:400], labels[:400], feats[400:], 4, epochs=30, seed=0)
    assert top1(pred, labels[400:]) >= 0.99
    again = linear_probe(feats[:400], labels[:400], feats[400:], 4, epochs=30, seed=0)
    assert (pred == again).all()  # seeded


def test_linear_probe_refuses_non_finite_features():
    feats = np.ones((8, 3))
    feats[0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        linear_probe(feats, np.arange(8) % 2, feats, 2, epochs=1, batch_size=8)


def test_confusion_matrix_and_its_picture():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    image = render_confusion(matrix, ["a", "b", "c"])
    assert image.size[0] > 3 * 28 and image.mode == "RGB"


def _class_folders(root, per_class=5):
    paths = []
    for label, value in (("dark", 20), ("light", 230)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            path = root / label / f"{i}.png"
            Image.fromarray(np.full((8, 8), value + i, np.uint8)).save(path)
            paths.append((path, label))
    return paths


def test_folder_labels_and_table_labels_agree(tmp_path):
    files = _class_folders(tmp_path / "set")
    (tmp_path / "set" / "dark" / "notes.txt").write_text("not an image")
    (tmp_path / "set" / "stray.png").write_bytes((tmp_path / "set/dark/0.png").read_bytes())
    folder = load_labelled(tmp_path / "set", PNG)
    rows = [(str(p.relative_to(tmp_path)), label) for p, label in files]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    pq.write_table(pa.table({"path": [r[0] for r in rows], "label": [r[1] for r in rows]}), tmp_path / "labels.parquet")
    table = load_labelled(tmp_path / "labels.csv", PNG)
    parquet = load_labelled(tmp_path / "labels.parquet", PNG)

    def by_path(data):
        return sorted((f.path, f.label) for f in data.files)

    assert by_path(folder) == by_path(table) == by_path(parquet) == sorted((str(p), lab) for p, lab in files)
    assert folder.classes == ["dark", "light"]
    # every file is accounted for: the text file and the file outside a class folder are listed skips
    assert sorted(r["reason"].split(" ")[0] for r in folder.skipped) == ["not", "not"] and len(folder.skipped) == 2


def test_table_rows_without_a_file_or_label_are_quarantined(tmp_path):
    _class_folders(tmp_path / "set", per_class=2)
    rows = [("set/dark/0.png", "dark", ""), ("set/dark/gone.png", "dark", ""), ("set/light/0.png", "", ""),
            ("set/light/1.png", "light", "validation"), ("set/dark/1.png", "dark", "test")]
    with (tmp_path / "t.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    data = load_labelled(tmp_path / "t.csv", PNG)
    assert [(f.sample_id, f.split) for f in data.files] == [("set/dark/0.png", ""), ("set/dark/1.png", "test")]
    assert [(r["path"], r["reason"]) for r in data.quarantine] == [
        ("set/dark/gone.png", "no such file"), ("set/light/0.png", "no label"),
        ("set/light/1.png", "split 'validation': allowed train, test or empty")]
    with pytest.raises(ValueError, match="no column label"):
        (tmp_path / "bad.csv").write_text("path,class\nset/dark/0.png,dark\n")
        load_labelled(tmp_path / "bad.csv", PNG)


def test_split_is_seeded_stratified_and_disjoint(tmp_path):
    _class_folders(tmp_path / "set", per_class=10)

    def split(seed):
        data = split_labelled(load_labelled(tmp_path / "set", PNG), 0.3, seed)
        return {s: sorted(f.sample_id for f in data.labels(s)) for s in ("train", "test")}

    first = split(0)
    assert first == split(0)  # the same seed: the same split
    assert not set(first["train"]) & set(first["test"])
    assert len(first["train"]) + len(first["test"]) == 20
    assert sum(i.startswith("dark/") for i in first["test"]) == 3  # 30 % of each class
    assert split(1) != first


def test_mean_feature_averages_encoded_tokens_and_cls_is_the_first():
    from polymae.modalities.registry import make_plugin
    from polymae.models.mae import PolyMAE
    from polymae.models.presets import PRESETS
    from polymae.orchestration.inference import evaluation_views
    from polymae.tokenizer.stream import streams_to_columns

    torch.manual_seed(0)
    plugin = make_plugin("image", {"img_size": 32, "patch_size": 8})
    model = PolyMAE({"image": plugin}, PRESETS["tiny"], {"image": 1.0}).eval()
    views = [evaluation_views(plugin, str(p), p.name, "image")[0]["image"] for p in sorted(PHOTOS.glob("*.jpg"))[:2]]
    batch = {k: torch.as_tensor(v) for k, v in streams_to_columns("image", views).items()}
    latent, _, _ = model.forward_encoder(batch)
    assert torch.allclose(model.embed_batch(batch, "cls"), latent[:, 0])
    assert torch.allclose(model.embed_batch(batch, "mean"), latent[:, 1:].mean(dim=1), atol=1e-6)
    with pytest.raises(ValueError, match="allowed cls, mean"):
        model.embed_batch(batch, "max")


@pytest.mark.parametrize("options, field, allowed", [
    ({"data": str(PHOTOS), "feature": "max"}, "stages.1.options.feature", "'cls' or 'mean'"),
    ({"data": str(PHOTOS), "kk": 3}, "stages.1.options.kk", "allowed: data, stream"),
    ({"data": str(PHOTOS), "stream": "rgb"}, "stages.1.options.stream", "allowed: image"),
    ({}, "stages.1.options.data", "Field required"),
    ({"data": "/no/such/labels.csv"}, "stages.1.options.data", "no such file"),
])
def test_bad_probe_options_name_the_field_and_allowed_values(options, field, allowed):
    data = {"name": "t", "sources": [{"modality": "image", "paths": [str(PHOTOS)]}],
            "stages": [{"name": "train", "kind": "train"}, {"name": "probe", "kind": "probe", "needs": ["train"],
                                                            "options": options}]}
    data["stages"].insert(0, {"name": "scan", "kind": "scan"})
    data["stages"][1]["needs"] = ["scan"]
    data["stages"][2]["needs"] = ["train"]
    field = field.replace("stages.1", "stages.2")
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert field in str(info.value) and allowed in str(info.value), str(info.value)
