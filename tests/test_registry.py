import json
import subprocess
import sys
import textwrap

import pytest

from polymae.modalities import available_modalities, get_plugin_class, register_modality
from polymae.modalities.image import ImagePlugin


def test_builtin_image_registered_through_entry_point():
    assert "image" in available_modalities()
    assert get_plugin_class("image") is ImagePlugin


def test_unknown_modality_lists_allowed():
    with pytest.raises(KeyError, match="allowed: .*image"):
        get_plugin_class("smell")


def test_duplicate_name_refused():
    class Other(ImagePlugin):
        name = "image"

    with pytest.raises(ValueError, match="already registered"):
        register_modality(Other)


def test_third_party_plugin_through_entry_point(tmp_path):
    """A separately installed distribution (a real dist-info on sys.path) adds a modality."""
    pkg = tmp_path / "thermal_plugin.py"
    pkg.write_text(textwrap.dedent("""
        from polymae.modalities.image import ImagePlugin
        class ThermalPlugin(ImagePlugin):
            name = "thermal"
            reference = "test plugin"
    """))
    dist = tmp_path / "thermal_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thermal-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[polymae.modalities]\nthermal = thermal_plugin:ThermalPlugin\n")
    code = "import json; from polymae.modalities import available_modalities as a; print(json.dumps(a()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert json.loads(out.stdout) == ["audio", "depth", "image", "lidar", "multispectral", "points", "thermal", "video"]


def test_cli_lists_modalities_with_defaults():
    out = subprocess.run([sys.executable, "-m", "polymae.cli", "modalities", "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    image = next(m for m in info["modalities"] if m["name"] == "image")
    assert image["config"]["img_size"] == 224 and image["config"]["patch_size"] == 16
    assert image["tokens"] == {"N": 196, "D": 768, "C": 2}
    assert "random" in info["mask_strategies"] and "block" in info["mask_strategies"]
