"""Stage fingerprints follow the code: an edit to a plugin's module (or to polymae's own source)
turns `plan`'s "reuse" into "run"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from polymae.cli import main
from polymae.modalities import registry
from polymae.orchestration.run import plan
from polymae.orchestration.tracking import record_stage
from polymae.pipelines import code_version
from polymae.pipelines.dag import fingerprints
from polymae.pipelines.spec import parse_spec, spec_to_yaml

IMAGES = Path(__file__).resolve().parents[1] / "examples/data/images"
PLUGIN = '''from polymae.modalities.image import ImagePlugin


class EditedImagePlugin(ImagePlugin):
    name = "edited_image"
'''


@pytest.fixture
def edited_plugin(tmp_path, monkeypatch):
    """A plugin whose module is a file of the test's own, registered for the test only."""
    path = tmp_path / "edited_image_plugin.py"
    path.write_text(PLUGIN)
    module_spec = importlib.util.spec_from_file_location("edited_image_plugin", path)
    module = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, "edited_image_plugin", module)
    module_spec.loader.exec_module(module)
    monkeypatch.setitem(registry._PLUGINS, "edited_image", module.EditedImagePlugin)
    return path


def _spec(tmp_path):
    return parse_spec({"name": "code", "sources": [{"modality": "edited_image", "paths": [str(IMAGES)]}],
                       "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "code"}})


def _plan_actions(spec_file, capsys) -> list[str]:
    """`polymae plan`'s action column (each stage's last word: "run", or the run id it reuses)."""
    capsys.readouterr()
    assert main(["plan", str(spec_file)]) == 0
    return [line.split()[4] for line in capsys.readouterr().out.splitlines()[1:]]


def test_editing_a_plugins_module_turns_reuse_into_run(tmp_path, edited_plugin, capsys):
    spec = _spec(tmp_path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec_to_yaml(spec))
    client = MlflowClient(spec.tracking.uri)
    run = client.create_run(client.create_experiment("code"))
    for name, fingerprint in fingerprints(spec).items():  # as a finished run records its stages
        record_stage(client, run.info.run_id, name, fingerprint, str(tmp_path / name))
    assert all(s.reuse for s in plan(spec))
    assert _plan_actions(spec_file, capsys) == ["reuse"] * len(spec.stages)

    edited_plugin.write_text(PLUGIN + "    # a changed decoder\n")
    assert not any(s.reuse for s in plan(_spec(tmp_path))), "an edited plugin must run its stages again"
    assert _plan_actions(spec_file, capsys) == ["run"] * len(spec.stages)


def test_the_package_hash_follows_every_source_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/a.py").write_text("x = 1\n")
    (tmp_path / "pkg/notes.txt").write_text("not code\n")
    before = code_version.package_hash(tmp_path / "pkg")
    (tmp_path / "pkg/notes.txt").write_text("still not code\n")
    assert code_version.package_hash(tmp_path / "pkg") == before
    (tmp_path / "pkg/a.py").write_text("x = 2\n")
    assert code_version.package_hash(tmp_path / "pkg") != before


def test_fingerprints_include_the_polymae_source(tmp_path, edited_plugin, monkeypatch):
    before = fingerprints(_spec(tmp_path))
    monkeypatch.setattr(code_version, "package_hash", lambda root=None: "an upgraded polymae")
    after = fingerprints(_spec(tmp_path))
    assert all(before[name] != after[name] for name in before)
