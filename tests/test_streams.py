"""Named streams: specs, sample ids, batches with absent streams, and a model over two streams
of one plugin (two cameras). No Ray here: the manifest is tokenized in this process."""

from pathlib import Path

import numpy as np
import pytest
import torch

from polymae.orchestration.checkpoint import build_model
from polymae.pipelines.data import epoch_manifest, fixed_batch, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample, discover
from polymae.pipelines.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples/data/images"


def _two_cameras(**over) -> dict:
    data = {
        "name": "cams", "seed": 3,
        "sources": [
            {"name": "wide", "modality": "image", "paths": [str(PHOTOS)], "config": {"img_size": 64}},
            {"name": "narrow", "modality": "image", "paths": [str(PHOTOS)], "config": {"img_size": 48}},
        ],
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"batch_size": 8, "precision": "fp32"},
    }
    data.update(over)
    return data


def _files(spec) -> list[Sample]:
    """What the scan would hand on, unpaired: every photo once per stream, ids unique across streams."""
    return [Sample.of(f) for source in spec.sources for f in discover(source, (".jpg",), qualify=True)]


def test_stream_name_defaults_to_the_modality_and_keys_the_masks():
    spec = parse_spec({"name": "t", "sources": [{"modality": "image", "paths": [str(PHOTOS)]}]})
    assert spec.sources[0].name == "image" and list(spec.mask_specs()) == ["image"]
    spec = parse_spec(_two_cameras(tokenizer={"mask": {"narrow": {"ratio": 0.5}}}))
    masks = spec.mask_specs()
    assert masks["narrow"].ratio == 0.5 and masks["wide"].ratio == 0.75  # the image plugin's default


@pytest.mark.parametrize(
    "sources, message",
    [
        ([{"modality": "image", "paths": [str(PHOTOS)]}] * 2, "stream names ['image'] are used twice"),
        ([{"name": "a.b", "modality": "image", "paths": [str(PHOTOS)]}], "stream name 'a.b'"),
    ],
)
def test_bad_stream_names_are_refused(sources, message):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "sources": sources})
    assert message in str(info.value)


def test_masks_name_streams_and_one_stream_must_stay_visible():
    with pytest.raises(SpecError) as info:
        parse_spec(_two_cameras(tokenizer={"mask": {"image": {"ratio": 0.5}}}))
    assert "tokenizer.mask: ['image'] not among the sources' stream names; allowed: wide, narrow" in str(info.value)
    with pytest.raises(SpecError) as info:
        parse_spec(_two_cameras(tokenizer={"mask": {"wide": {"ratio": 1.0}, "narrow": {"ratio": 1.0}}}))
    assert "ratio 1.0 on every stream" in str(info.value)
    parse_spec(_two_cameras(tokenizer={"mask": {"wide": {"ratio": 1.0}}}))  # one fully hidden stream is fine


def test_sample_ids_keep_same_named_files_of_different_folders_apart(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(b"")
    spec = parse_spec({"name": "t", "sources": [
        {"modality": "image", "paths": [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")]}]})
    assert [f.sample_id for f in discover(spec.sources[0], (".jpg",))] == ["a/x.jpg", "b/x.jpg"]
    one_folder = parse_spec({"name": "t", "sources": [{"modality": "image", "paths": [str(PHOTOS)]}]})
    ids = [f.sample_id for f in discover(one_folder.sources[0], (".jpg",))]
    assert "astronaut.jpg" in ids and len(set(ids)) == len(ids)  # relative to the folder, as before


def test_batches_carry_every_stream_and_mark_absent_ones():
    spec = parse_spec(_two_cameras())
    files = _files(spec)
    batch = tokenize_batch(manifest_batch(epoch_manifest(files, spec.seed, 0, 8)), **stream_kwargs(spec))
    assert batch["wide.values"].shape == (8, 16, 768) and batch["narrow.values"].shape == (8, 9, 768)
    has_wide, has_narrow = batch["wide.valid"].any(1), batch["narrow.valid"].any(1)
    assert (has_wide ^ has_narrow).all()  # unpaired: each sample is one file of one stream
    assert [s.startswith("wide:") for s in batch["sample_id"]] == list(has_wide)
    assert not batch["wide.visible"][~has_wide].any()  # an absent stream is never visible
    assert (batch["wide.visible"][has_wide].sum(1) == 4).all()  # 16 patches, 75 % hidden
    shown = fixed_batch(spec, files, size=4)  # the evaluation batch shows both streams
    assert shown["wide.valid"].any(1).sum() == 2 and shown["narrow.valid"].any(1).sum() == 2


def test_two_streams_of_one_plugin_train_together_and_absent_streams_score_nothing():
    spec = parse_spec(_two_cameras(sources=[
        {"name": "wide", "modality": "image", "paths": [str(PHOTOS)], "config": {"img_size": 64}},
        {"name": "narrow", "modality": "image", "paths": [str(PHOTOS)], "config": {"img_size": 48},
         "loss_weight": 0.5}]))
    files = _files(spec)
    model = build_model(spec).train()
    assert set(model.heads) == {"wide", "narrow"} and model.loss_weights == {"narrow": 0.5, "wide": 1.0}
    batch = {k: torch.as_tensor(v) for k, v in
             tokenize_batch(manifest_batch(epoch_manifest(files, spec.seed, 0, 8)), **stream_kwargs(spec)).items()
             if "." in k}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        loss, losses, _ = model(batch)
        assert loss.item() == pytest.approx(losses["wide"].item() + 0.5 * losses["narrow"].item(), rel=1e-5)
        history.append({m: v.item() for m, v in losses.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in ("wide", "narrow"):
        assert history[-1][m] < 0.7 * history[0][m], (m, history[0][m], history[-1][m])

    # a batch without any "narrow" sample: its loss is 0 and its head still gets a (zero) gradient,
    # so DDP finds every parameter used
    wide_only = {k: v[batch["wide.valid"].any(1)] for k, v in batch.items()}
    model.zero_grad()
    loss, losses, _ = model(wide_only)
    loss.backward()
    assert losses["narrow"].item() == 0.0 and losses["wide"].item() > 0
    assert model.heads["narrow"].weight.grad is not None and not model.heads["narrow"].weight.grad.any()
    assert model.heads["wide"].weight.grad.any()


def test_a_fully_hidden_stream_is_scored_on_every_token_and_a_batch_may_bring_one_stream():
    spec = parse_spec(_two_cameras(tokenizer={"mask": {"narrow": {"ratio": 1.0}}}))
    batch = tokenize_batch(manifest_batch(epoch_manifest(_files(spec), spec.seed, 0, 8)), **stream_kwargs(spec))
    narrow = batch["narrow.valid"].any(1)
    assert not batch["narrow.visible"].any()  # ratio 1.0: nothing of it reaches the encoder
    model = build_model(spec).eval()
    tensors = {k: torch.as_tensor(v) for k, v in batch.items() if "." in k}
    with torch.no_grad():
        _, losses, preds = model(tensors)
    assert np.isfinite(losses["narrow"].item()) and preds["narrow"].shape == (8, 9, 768)
    assert narrow.any()
    # encode one stream alone (embedding its files): the model's other stream counts as absent
    wide = {k: v for k, v in tensors.items() if k.startswith("wide.")}
    assert model.embed_batch(wide).shape == (8, 192)


def test_held_out_split_is_seeded_per_stream_set_and_never_empties_training():
    from polymae.pipelines.split import split_samples

    samples = [Sample(f"{s}:{i:02d}.jpg", {s: f"/d/{s}/{i:02d}.jpg"}) for s in ("a", "b") for i in range(10)]
    samples += [Sample(f"{i:02d}", {"a": f"/d/a/p{i:02d}.jpg", "b": f"/d/b/p{i:02d}.jpg"}) for i in range(5)]
    train, held = split_samples(samples, 0.2, [], seed=7)
    assert sorted(s.streams for s in held) == [("a",)] * 2 + [("a", "b")] + [("b",)] * 2  # 20 % of each set
    assert not {s.sample_id for s in train} & {s.sample_id for s in held} and len(train) + len(held) == 25
    again, _ = split_samples(list(reversed(samples)), 0.2, [], seed=7)  # the order samples come in does not matter
    assert {s.sample_id for s in again} == {s.sample_id for s in train}
    assert {s.sample_id for s in split_samples(samples, 0.2, [], seed=8)[1]} != {s.sample_id for s in held}
    _, named = split_samples(samples, 0.0, ["/d/a/0[01].jpg", "/d/b/p03.jpg"], seed=7)
    assert [s.sample_id for s in named] == ["a:00.jpg", "a:01.jpg", "03"]  # a pair goes with either file
    with pytest.raises(ValueError, match="every sample of stream 'b' is held out"):
        split_samples(samples, 0.0, ["/d/b/*"], seed=7)
    one = [Sample("x", {"a": "/x"})]
    assert split_samples(one, 0.5, [], seed=0) == (one, [])  # one sample: it trains
