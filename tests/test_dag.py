import os
import shutil
from pathlib import Path

import pytest

from polymae.pipelines.dag import fingerprints, spec_fingerprint, topological_order
from polymae.pipelines.spec import SpecError, StageSpec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples/data/images"
DEFAULT_ORDER = ["scan", "train", "evaluate", "register"]


def _spec(paths=None, config=None, **over):
    data = {"name": "t", "sources": [{"modality": "image", "paths": paths or [str(IMAGES)], "config": config or {}}]}
    data.update(over)
    return data


def _stages(*triples):
    """(name, kind, needs) → stage dicts."""
    return [{"name": n, "kind": k, "needs": list(needs)} for n, k, needs in triples]


def _fps(**over):
    return fingerprints(parse_spec(_spec(**over)))


def _changed(a, b):
    return {name for name in a if a[name] != b[name]}


def test_default_stages_are_the_scan_train_evaluate_register_chain():
    spec = parse_spec(_spec())
    assert [s.name for s in topological_order(spec.stages)] == DEFAULT_ORDER
    assert [s.kind for s in spec.stages] == DEFAULT_ORDER
    assert list(fingerprints(spec)) == DEFAULT_ORDER


CHAIN = [("scan", "scan", []), ("train", "train", ["scan"])]


@pytest.mark.parametrize(
    "stages, field, expected",
    [
        (_stages(("scan", "scan", []), ("train", "trian", ["scan"])),
         "stages.1.kind = 'trian'", "allowed: scan, pair, train, evaluate, register, embed"),
        (_stages(*CHAIN, ("evaluate", "evaluate", ["trainn"])),
         "stages.2.needs.0 = 'trainn'", "allowed: scan, train"),
        (_stages(*CHAIN, ("evaluate", "evaluate", ["evaluate"])),
         "stages.2.needs.0 = 'evaluate'", "allowed: scan, train"),
        (_stages(*CHAIN, ("train", "evaluate", ["scan"])), "stages.1.name = 'train'", "unique"),
        (_stages(("scan", "scan", []), ("a", "train", ["scan", "b"]), ("b", "evaluate", ["a"])), "stages:", "cycle"),
        (_stages(("scan", "scan", []), ("train", "train", []), ("evaluate", "evaluate", ["train"])),
         "stages (train)", "needs a scan stage upstream"),
        ([{"name": "scan", "kind": "scan", "options": {"source": 1}}], "stages.0.options.source = 1",
         "allowed: image, 0 … 0"),
        ([{"name": "scan", "kind": "scan", "options": {"source": "0"}}], "stages.0.options.source = '0'", "allowed"),
    ],
)
def test_bad_stage_lists_name_the_field_and_allowed_values(stages, field, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(stages=stages))
    lines = [p for p in info.value.problems if p.startswith(field)]
    assert lines and expected in lines[0], info.value.problems


def test_topological_order_follows_needs_not_listing_order():
    listed = _stages(("register", "register", ["evaluate"]), ("evaluate", "evaluate", ["train"]),
                     ("train", "train", ["scan"]), ("scan", "scan", []))
    spec = parse_spec(_spec(stages=listed))
    assert [s.name for s in topological_order(spec.stages)] == DEFAULT_ORDER
    assert fingerprints(spec) == _fps()  # same DAG, same fingerprints, whatever the listing order
    with pytest.raises(ValueError, match="cycle"):
        topological_order([StageSpec(name="a", kind="scan", needs=["b"]),
                           StageSpec(name="b", kind="scan", needs=["a"])])


def test_fingerprints_are_stable_and_follow_what_each_stage_reads():
    base = _fps()
    assert base == _fps() and len(set(base.values())) == 4
    assert _changed(base, _fps(train={"steps": 7})) == {"train", "evaluate", "register"}
    for logistics in ({"workers": 2, "batch_size": 64}, {"log_every": 3}, {"checkpoint_every": 5}):
        assert _fps(train=logistics) == base, logistics
    assert _changed(base, _fps(config={"img_size": 64})) == set(DEFAULT_ORDER)
    assert _changed(base, _fps(tracking={"registered_model": "other"})) == {"register"}


def test_touching_a_data_file_changes_the_scan_fingerprint(tmp_path):
    shutil.copytree(IMAGES, tmp_path / "imgs")
    spec = parse_spec(_spec(paths=[str(tmp_path / "imgs")]))
    base = fingerprints(spec)
    photo = tmp_path / "imgs" / "moon.jpg"
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = fingerprints(spec)
    assert _changed(base, touched) == set(DEFAULT_ORDER)
    photo.write_bytes(photo.read_bytes() + b"\0")
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same mtime as before: only the size differs
    assert fingerprints(spec)["scan"] != touched["scan"]


def test_touching_a_file_matched_by_a_glob_changes_the_scan_fingerprint(tmp_path):
    shutil.copytree(IMAGES, tmp_path / "imgs")
    spec = parse_spec(_spec(paths=[str(tmp_path / "imgs" / "*.jpg")]))
    base = fingerprints(spec)
    photo = tmp_path / "imgs" / "moon.jpg"
    photo.write_bytes(photo.read_bytes() + b"\0")
    assert fingerprints(spec)["scan"] != base["scan"]


def test_spec_fingerprint_ignores_tracking_and_outputs_but_not_seed():
    base = spec_fingerprint(parse_spec(_spec()))
    assert spec_fingerprint(parse_spec(_spec())) == base
    assert spec_fingerprint(parse_spec(_spec(tracking={"experiment": "elsewhere"}))) == base
    assert spec_fingerprint(parse_spec(_spec(outputs={"dir": "/tmp/other-runs"}))) == base
    assert spec_fingerprint(parse_spec(_spec(seed=1))) != base
    assert _changed(_fps(), _fps(seed=1)) == {"train", "evaluate", "register"}


def test_custom_dag_with_an_embed_stage():
    def stages(options):
        return _stages(*CHAIN, ("evaluate", "evaluate", ["train"])) + [
            {"name": "embed", "kind": "embed", "needs": ["train"], "options": options}]

    spec = parse_spec(_spec(stages=stages({"paths": [str(IMAGES)], "output": "a"})))
    assert [s.name for s in topological_order(spec.stages)] == ["scan", "train", "evaluate", "embed"]
    fps = fingerprints(spec)
    assert len(set(fps.values())) == 4
    other = fingerprints(parse_spec(_spec(stages=stages({"paths": [str(IMAGES)], "output": "b"}))))
    assert _changed(fps, other) == {"embed"}
    longer = parse_spec(_spec(stages=stages({"paths": [str(IMAGES)], "output": "a"}), train={"steps": 7}))
    assert _changed(fps, fingerprints(longer)) == {"train", "evaluate", "embed"}
    with pytest.raises(SpecError, match=r"stages \(embed\): stage kind 'embed' needs a train stage upstream"):
        scan_only = _stages(("scan", "scan", []), ("embed", "embed", ["scan"]))
        scan_only[1]["options"] = {"paths": [str(IMAGES)]}
        parse_spec(_spec(stages=scan_only))
    with pytest.raises(SpecError, match=r"stages.3.options.paths = None: an embed stage needs a list"):
        parse_spec(_spec(stages=stages({})))
    with pytest.raises(SpecError, match=r"stages.3.options.paths.0 = 'nowhere': no such file"):
        parse_spec(_spec(stages=stages({"paths": ["nowhere"]})))
