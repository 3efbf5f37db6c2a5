import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polymae.pipelines.spec import SpecError, apply_override, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def _spec(**over):
    data = {"name": "t", "sources": [{"modality": "image", "paths": [str(ROOT / "examples/data/images")]}]}
    data.update(over)
    return data


@pytest.mark.parametrize(
    "data, field, allowed",
    [
        (_spec(sources=[{"modality": "imgae", "paths": ["."]}]), "sources.0.modality", "image"),
        (_spec(train={"precision": "fp16"}), "train.precision", "'bf16'"),
        (_spec(train={"stepz": 3}), "train.stepz", "steps"),
        (_spec(model={"preset": "huge"}), "model.preset", "'tiny'"),
        (_spec(tokenizer={"mask": {"image": {"strategy": "spiral"}}}), "tokenizer.mask.image.strategy", "random"),
        (_spec(sources=[{"modality": "image", "paths": ["."], "config": {"patchsize": 8}}]),
         "sources.0.config.patchsize", "patch_size"),
        (_spec(sources=[{"modality": "image", "paths": ["/no/such/dir"]}]), "sources.0.paths.0", "no such"),
        (_spec(train={"batch_size": 5, "workers": 2}), "train", "multiple of workers"),
    ],
)
def test_bad_spec_names_field_and_allowed_values(data, field, allowed):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    message = str(info.value)
    assert field in message and allowed in message, message


def test_overrides_and_relative_paths(tmp_path):
    spec_file = tmp_path / "s.yaml"
    (tmp_path / "imgs").mkdir()
    spec_file.write_text(yaml.safe_dump({"name": "t", "sources": [{"modality": "image", "paths": ["imgs"]}]}))
    spec = load_spec(spec_file, ["train.steps=7", "model.preset=tiny", "sources.0.config.img_size=64"])
    assert spec.train.steps == 7 and spec.model.preset == "tiny"
    assert spec.sources[0].config == {"img_size": 64}
    assert spec.sources[0].paths == [str(tmp_path / "imgs")]
    data = {"a": [{"b": 1}]}
    apply_override(data, "a.0.b=[1, 2]")
    assert data == {"a": [{"b": [1, 2]}]}


def test_default_learning_rate_follows_mae_scaling():
    spec = parse_spec(_spec(train={"batch_size": 512}))
    assert spec.train.learning_rate == pytest.approx(1.5e-4 * 2)


def test_cli_rejects_bad_spec_before_starting(tmp_path):
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(train={"precision": "fp16"})))
    proc = subprocess.run([sys.executable, "-m", "polymae.cli", "run", str(spec_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.precision" in proc.stderr and "'bf16'" in proc.stderr
    assert "ray" not in proc.stdout.lower()  # nothing started


def test_example_spec_is_valid():
    spec = load_spec(ROOT / "examples/image_mae.yaml")
    assert spec.modalities == ["image"]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.sources and all(Path(p).exists() for s in spec.sources for p in s.paths)


def test_rgbd_example_is_multimae():
    spec = load_spec(ROOT / "examples/rgbd_mae.yaml")
    assert [s.modality for s in spec.sources] == ["image", "depth"] and {s.frame for s in spec.sources} == {"cam"}
    assert spec.tokenizer.policy == "budget" and spec.split.region == 0.25
    assert [s.kind for s in spec.stages] == ["scan", "pair", "train", "evaluate", "register"]


def test_depth_example_spec_is_valid_with_the_plugins_multimae_defaults():
    from polymae.modalities import make_plugin
    from polymae.modalities.depth import DepthConfig
    from polymae.pipelines.files import discover

    spec = load_spec(ROOT / "examples/depth_mae.yaml")
    assert spec.modalities == ["depth"] and list(spec.streams) == ["depth"] and spec.pairing is None
    source = spec.sources[0]
    assert source.paths == [str(ROOT / "examples/data/rgbd/depth")]
    config = DepthConfig(**source.config)
    assert config == DepthConfig()  # MultiMAE's depth settings: the plugin's defaults, nothing changed
    mask = spec.mask_specs()["depth"]
    assert (mask.strategy, mask.ratio) == ("random", 0.75)
    files = discover(source, make_plugin("depth").extensions)
    assert sorted(Path(f.path).name for f in files) == ["kinect_0001.png", "motorcycle.png"]


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("train.steps=[1", "the value of train.steps is not valid YAML"),  # was a raw yaml traceback
        ("train.steps", "expected KEY=VALUE"),
    ],
)
def test_bad_set_is_one_clear_line(tmp_path, assignment, expected):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(_spec()))
    with pytest.raises(SpecError) as info:
        load_spec(spec_file, [assignment])
    assert info.value.problems == [info.value.problems[0]] and expected in info.value.problems[0]
    assert str(info.value).count("invalid pipeline spec") == 1, str(info.value)  # not nested


def test_cli_bad_set_prints_no_traceback(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(_spec()))
    proc = subprocess.run([sys.executable, "-m", "polymae.cli", "validate", str(spec_file), "--set", "train.steps=[1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "train.steps" in proc.stderr, proc.stderr


def test_typo_inside_a_mask_lists_the_mask_fields():
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(tokenizer={"mask": {"image": {"ration": 0.5}}}))
    line = next(p for p in info.value.problems if "ration" in p)
    assert "tokenizer.mask.image.ration" in line and "allowed: strategy, ratio" in line, line
