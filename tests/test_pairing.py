"""Pairing: keys (stem, template, manifest), the join of one key's files, unmatched files, and
co-registered streams sharing one crop. No Ray here: the join of one group is a plain function
(tests/integration/test_pairing_pipeline.py runs the Ray Data join on real files)."""

from pathlib import Path

import numpy as np
import pytest

from polymae.pipelines.data import epoch_manifest, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample, SampleFile
from polymae.pipelines.pairing import file_key, join_group, read_manifest
from polymae.pipelines.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples/data/images"


def _file(stream: str, rel: str, views: int = 1) -> SampleFile:
    return SampleFile(f"{stream}:{rel}", f"/d/{stream}/{rel}", views, "", stream, rel)


def _group(files: list[SampleFile], keys: list[str]) -> dict[str, np.ndarray]:
    cols = {"sample_id": [f.sample_id for f in files], "stream": [f.stream for f in files],
            "path": [f.path for f in files], "num_samples": [f.num_samples for f in files],
            "key": keys, "why": ["" if k else "no match" for k in keys]}
    return {k: np.array(v, dtype=np.int64 if k == "num_samples" else object) for k, v in cols.items()}


def _rows(out: dict[str, np.ndarray]) -> list[dict]:
    return [{k: out[k][i] for k in out} for i in range(len(out["kind"]))]


def test_stem_template_and_manifest_keys(tmp_path):
    rgb, depth = _file("rgb", "scene1/0001.png"), _file("depth", "scene1/0001.tiff")
    stem = {"key": "stem"}
    assert file_key(rgb, stem, None) == file_key(depth, stem, None) == ("scene1/0001", "")
    template = {"key": "template", "template": {"rgb": "{scene}/{key}.png", "depth": "{scene}/{key}.tiff"}}
    assert file_key(rgb, template, None) == ("scene1/0001", "")
    assert file_key(_file("rgb", "scene1/0001.jpg"), template, None)[1].startswith("its id 'scene1/0001.jpg' does not")
    (tmp_path / "pairs.csv").write_text("key,stream,path\nk1,rgb,/d/rgb/scene1/0001.png\nk1,depth,d.tiff\n")
    manifest = read_manifest(str(tmp_path / "pairs.csv"))
    assert manifest[str(tmp_path / "d.tiff")] == ("k1", "depth")  # relative to the manifest's folder
    assert file_key(rgb, {"key": "manifest"}, manifest) == ("k1", "")
    assert file_key(depth, {"key": "manifest"}, manifest) == ("", "not in the pairing manifest")
    as_depth = SampleFile("depth:x", rgb.path, 1, "", "depth", "x")  # the rgb file, found by the depth source
    assert file_key(as_depth, {"key": "manifest"}, manifest) == ("", "the manifest lists it under rgb")


def test_a_complete_key_is_one_sample_with_the_fewest_views():
    files = _group([_file("rgb", "a.png", 3), _file("depth", "a.png", 2)], ["a", "a"])
    out = _rows(join_group(files, ["rgb", "depth"], "single"))
    assert len(out) == 1 and out[0]["kind"] == "sample" and out[0]["num_samples"] == 2 and not out[0]["reason"]
    out = _rows(join_group(files, ["rgb", "depth"], "single", followers=("depth",)))
    assert out[0]["num_samples"] == 3  # a stream on rgb's clock is cut at rgb's views: its own count does not limit


@pytest.mark.parametrize("policy, kind", [("single", "sample"), ("drop", "skip"), ("quarantine", "quarantine")])
def test_unmatched_files_end_where_the_option_says(policy, kind):
    out = _rows(join_group(_group([_file("rgb", "a.png")], ["a"]), ["rgb", "depth"], policy))
    assert [r["kind"] for r in out] == [kind] and out[0]["reason"] == "no partner in depth"


def test_ambiguous_and_keyless_files():
    files = [_file("rgb", "x/a.png"), _file("rgb", "y/a.png"), _file("depth", "a.png")]
    out = _rows(join_group(_group(files, ["a"] * 3), ["rgb", "depth"], "drop"))
    assert sorted(r["kind"] for r in out) == ["quarantine", "sample"]
    bad = next(r for r in out if r["kind"] == "quarantine")
    assert bad["path"] == "/d/rgb/y/a.png" and "ambiguous pairing: key 'a' also names /d/rgb/x/a.png" in bad["reason"]
    keyless = _rows(join_group(_group([_file("rgb", "p.png"), _file("depth", "q.png")], ["", ""]),
                               ["rgb", "depth"], "single"))
    assert [r["kind"] for r in keyless] == ["sample", "sample"]  # each alone, under its own id
    assert all(r["reason"] == "no pairing key: no match" for r in keyless)


def _paired_spec(**over) -> dict:
    data = {"name": "pairs", "seed": 1,
            "sources": [{"name": "rgb", "modality": "image", "paths": [str(PHOTOS)], "frame": "cam",
                         "config": {"img_size": 64}},
                        {"name": "copy", "modality": "image", "paths": [str(PHOTOS)], "frame": "cam",
                         "config": {"img_size": 64}}],
            "pairing": {"key": "stem"}, "model": {"preset": "tiny"}}
    data.update(over)
    return data


def test_a_shared_frame_gives_every_stream_the_same_crop_and_flip():
    spec = parse_spec(_paired_spec())
    assert [s.kind for s in spec.stages][:3] == ["scan", "pair", "train"]  # pairing puts a pair stage in
    photos = sorted(PHOTOS.glob("*.jpg"))[:4]
    samples = [Sample(p.stem, {"rgb": str(p), "copy": str(p)}) for p in photos]
    batch = tokenize_batch(manifest_batch(epoch_manifest(samples, spec.seed, 0, 4)), **stream_kwargs(spec))
    assert np.array_equal(batch["rgb.values"], batch["copy.values"])  # one random crop + flip for both
    apart = parse_spec(_paired_spec(sources=[{**s, "frame": None} for s in _paired_spec()["sources"]]))
    batch = tokenize_batch(manifest_batch(epoch_manifest(samples, apart.seed, 0, 4)), **stream_kwargs(apart))
    assert not np.array_equal(batch["rgb.values"], batch["copy.values"])  # without a frame: own crops


def test_bad_pairing_specs_name_the_field():
    cases = [
        ({"pairing": {"key": "template"}}, "pairing = ", "key 'template' needs `template`"),
        ({"pairing": {"key": "template", "template": "{scene}.png"}}, "pairing", "every pattern needs {key}"),
        ({"pairing": {"key": "template", "template": {"rgb": "{key}.png", "cam": "{key}.png"}}},
         "pairing.template", "['cam'] not among the stream names; allowed: rgb, copy"),
        ({"pairing": {"unmatched": "keep"}}, "pairing.unmatched", "'single', 'drop' or 'quarantine'"),
        ({"sources": [{"modality": "audio", "paths": [str(ROOT / "examples/data/audio")], "frame": "cam"},
                      {"modality": "image", "paths": [str(PHOTOS)]}]},
         "sources.0.frame", "modality audio has no spatial frame; allowed on: depth, image"),
    ]
    for over, field, message in cases:
        with pytest.raises(SpecError) as info:
            parse_spec(_paired_spec(**over))
        assert any(p.startswith(field) and message in p for p in info.value.problems), (over, info.value.problems)


def test_a_video_and_its_own_audio_track_cover_the_same_seconds():
    """opencv_cup.mp4 (26.8 fps, AAC track) as two streams on one clock: each audio view is the
    fbank of its clip's seconds, so the evaluation clip starting at 0 s has the first fbank frames
    of the track, and training clips drawn at random carry their own seconds."""
    cup = ROOT / "examples/data/video/opencv_cup.mp4"
    spec = parse_spec({"name": "av", "seed": 4, "pairing": {}, "sources": [
        {"name": "video", "modality": "video", "paths": [str(cup)], "clock": "cup",
         "config": {"img_size": 64, "decode_short_side": 73}},
        {"name": "audio", "modality": "audio", "paths": [str(cup)], "clock": "cup",
         "config": {"from_video": True, "target_length": 256}}]})
    from polymae.modalities.registry import make_plugin

    video = make_plugin("video", spec.source("video").config)
    audio = make_plugin("audio", spec.source("audio").config)
    data = cup.read_bytes()
    clips, spans = video.tokenize_timed(data, str(cup), None)
    assert len(clips) == len(spans) == 2 and spans[0].start == 0.0
    assert spans[0].end == pytest.approx(64 / 26.777, rel=1e-3)  # 16 frames at stride 4
    assert spans[1].end == pytest.approx(217 / 26.777, rel=1e-3)  # the last clip ends with the video
    sample = Sample("opencv_cup", {"video": str(cup), "audio": str(cup)}, 2)
    batch = tokenize_batch(manifest_batch(epoch_manifest([sample], spec.seed, 0, 2)), **stream_kwargs(spec, False))
    alone = audio.tokenize_file(data, str(cup), None)[0]  # the track's first 256 fbank frames
    rows = int(64 / 26.777 * 100) // 16  # whole 16-frame patch rows inside the first clip's seconds
    per_row = audio.grid[1]
    first = batch["audio.values"][0]
    assert np.allclose(first[: rows * per_row], alone.values[: rows * per_row], atol=1e-5)
    assert batch["audio.valid"][0].sum() == (rows + 1) * per_row  # then the padding of the window rule
    train = tokenize_batch(manifest_batch(epoch_manifest([sample], spec.seed, 0, 2)), **stream_kwargs(spec))
    assert not np.allclose(train["audio.values"][0], first)  # a random clip: other seconds of the track
    with pytest.raises(SpecError, match="sources.0.clock = 'cup': modality image cannot draw"):
        parse_spec({"name": "av", "pairing": {}, "sources": [
            {"modality": "image", "paths": [str(PHOTOS)], "clock": "cup"},
            {"modality": "video", "paths": [str(cup)], "clock": "cup"}]})


def test_cav_mae_pairing_audio_window_leads_and_frames_fall_inside_it():
    """Audio listed first on the clock (CAV-MAE): the 10.24 s window leads — opencv_cup's track
    (8.1 s) is one window — and the video stream's 16 frames are spread evenly over its seconds."""
    cup = ROOT / "examples/data/video/opencv_cup.mp4"
    spec = parse_spec({"name": "cav", "seed": 0, "pairing": {}, "sources": [
        {"name": "audio", "modality": "audio", "paths": [str(cup)], "clock": "cup", "config": {"from_video": True}},
        {"name": "video", "modality": "video", "paths": [str(cup)], "clock": "cup",
         "config": {"img_size": 64, "decode_short_side": 73}}]})
    from polymae.modalities.registry import make_plugin

    audio = make_plugin("audio", spec.source("audio").config)
    video = make_plugin("video", spec.source("video").config)
    data = cup.read_bytes()
    windows, spans = audio.tokenize_timed(data, str(cup), None)
    assert len(windows) == 1 and spans[0].start == 0.0
    assert spans[0].end == pytest.approx(217 / 26.777, rel=0.02)  # the track ends with the video
    clip = video.tokenize_spans(data, str(cup), spans)[0]
    frames = video.read_clips(data, str(cup), None)  # for the decoded frame size only
    assert clip.values.shape == video.tokenize(frames[0], None).values.shape
    reader_frames = np.linspace(0, 216, 16).round().astype(int)
    direct = video._frames(video._open(data, str(cup)), [reader_frames])[0]
    assert np.allclose(clip.values, video.tokenize(direct, None).values)  # frames 0, 14, …, 216
    sample = Sample("opencv_cup", {"audio": str(cup), "video": str(cup)}, 1)
    batch = tokenize_batch(manifest_batch(epoch_manifest([sample], 0, 0, 1)), **stream_kwargs(spec, False))
    assert np.allclose(batch["video.values"][0], clip.values) and np.allclose(batch["audio.values"][0],
                                                                              windows[0].values)
