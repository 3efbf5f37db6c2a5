"""A decoder that crashes its process (a segfault in native code) quarantines its file; the scan
neither hangs (Ray Data would retry the task forever) nor loses the other files.

The crashing plugin is a real third-party package (a dist-info with an entry point) on the
PYTHONPATH of a fresh process with its own Ray, so Ray's worker processes load it too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
import ctypes
from polymae.modalities.image import ImagePlugin

class CrashyPlugin(ImagePlugin):
    name = "crashy"

    def decode(self, data, path):
        if path.endswith("camera.jpg"):
            ctypes.string_at(0)  # read address 0: SIGSEGV, as a native decoder bug would
        return super().decode(data, path)
'''

SCRIPT = '''
import json, ray
from polymae.pipelines.scan import scan
from polymae.pipelines.spec import parse_spec
ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
spec = parse_spec({"name": "crash", "sources": [{"modality": "crashy", "paths": [%r]}]})
result = scan(spec)
print("RESULT " + json.dumps({"counts": result.counts, "quarantine": result.quarantine}))
'''


def test_crashing_decoder_is_quarantined(tmp_path):
    (tmp_path / "crashy_plugin").mkdir()
    (tmp_path / "crashy_plugin" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "crashy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[polymae.modalities]\ncrashy = crashy_plugin:CrashyPlugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SCRIPT % str(ROOT / "examples/data/images")], env=env,
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["counts"] == {"total": 11, "tokenized": 10, "quarantined": 1,
                                "skipped": 0, "unmatched": 0, "samples": 10, "views_skipped": 0}, result["quarantine"]
    (row,) = result["quarantine"]
    assert row["path"].endswith("camera.jpg") and "crashed its process" in row["reason"]
