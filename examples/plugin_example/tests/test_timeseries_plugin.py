"""The plugin's own tests: PolyMAE's conformance kit on the shipped recordings and real bad files
made from them, the entry point, and a pipeline spec that names the modality."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import numpy as np
import pytest
from polymae.modalities import BadInputError, available_modalities, get_plugin_class, register_modality
from polymae.pipelines.spec import SpecError, parse_spec
from polymae.testing import check_plugin

from polymae_timeseries import TimeseriesPlugin

HERE = Path(__file__).resolve().parents[1]
DATA = HERE / "data"
WAV = HERE.parents[1] / "examples" / "data" / "audio" / "alsa_Front_Center.wav"  # PolyMAE's, when beside it


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    """Installed (``pip install -e .``), the entry point registers the plugin; this makes the tests
    run from a plain checkout too. (The same class either way, so registering twice is allowed.)"""
    register_modality(TimeseriesPlugin)


def recordings() -> list[bytes]:
    return [(DATA / name).read_bytes() for name in ("eeg.csv", "membrane.csv")]


def bad_files() -> dict[str, bytes]:
    """Real bad files: the recordings truncated, with a gap, with a dropout, and not CSV at all."""
    eeg, membrane = recordings()
    lines = eeg.split(b"\n")
    dropout = b"\n".join(lines[:300] + [b"3.7375,0.1021,nan,0.2210,0.0305"] + lines[301:])
    rows = membrane.split(b"\n")
    files = {
        "empty.csv": b"",
        "header_only.csv": lines[0] + b"\n",
        "no_header.csv": b"\n".join(lines[1:]),
        "truncated.csv": eeg[: eeg.index(b",", len(eeg) // 2)],  # cut mid-row
        "gap.csv": b"\n".join(rows[:1001] + rows[1101:]),  # 50 ms of samples missing
        "dropout.csv": dropout,
        "too_short.csv": b"\n".join(lines[:6]),
    }
    if WAV.is_file():
        files["not_text.csv"] = WAV.read_bytes()
    return files


def test_conformance_kit():
    check_plugin(TimeseriesPlugin(), good=recordings(), bad=list(bad_files().values()))


@pytest.mark.parametrize("name, reason", [
    ("empty.csv", "empty file"), ("header_only.csv", "no data rows"), ("no_header.csv", "no header row"),
    ("truncated.csv", "number of columns changed"), ("gap.csv", "irregular sampling"),
    ("dropout.csv", "non-finite values"), ("too_short.csv", "too short"), ("not_text.csv", "not a text file"),
])
def test_bad_files_have_reasons(name, reason):
    files = bad_files()
    if name not in files:
        pytest.skip(f"{name}: PolyMAE's example audio is not beside this package")
    with pytest.raises(BadInputError, match=reason):
        TimeseriesPlugin().decode(files[name], name)


def test_more_channels_than_configured_is_refused():
    with pytest.raises(BadInputError, match="too many channels: 4 > max_channels 2"):
        TimeseriesPlugin({"max_channels": 2}).decode(recordings()[0], "eeg.csv")


def test_tokens_are_patches_of_the_normalised_channels():
    plugin = TimeseriesPlugin()
    eeg = plugin.decode(recordings()[0], "eeg.csv")
    assert eeg.shape == (800, 4)  # the time column is checked and dropped
    stream = plugin.tokenize(eeg, None)
    assert plugin.token_shape == (8 * 42, 12, 2) and stream.valid.sum() == 4 * 42  # channels 4–7 are padding
    window = (eeg[:504] - eeg[:504].mean(0)) / np.sqrt(eeg[:504].var(0) + 1e-5)
    np.testing.assert_allclose(stream.values[42 + 5], window[60:72, 1], atol=1e-5)  # channel 1, patch 5
    assert tuple(stream.coords[42 + 5]) == (5, 1)
    moved = plugin.tokenize(eeg, np.random.default_rng(0))  # a random window of the 800 samples
    assert not np.allclose(moved.values, stream.values)
    assert plugin.scan_file(recordings()[0], "eeg.csv") == (1, {})


def test_entry_point_names_the_plugin():
    declared = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["entry-points"]
    module, _, attr = declared["polymae.modalities"]["timeseries"].partition(":")
    assert getattr(importlib.import_module(module), attr) is TimeseriesPlugin
    assert "timeseries" in available_modalities() and get_plugin_class("timeseries") is TimeseriesPlugin


def test_pipeline_spec_with_the_modality():
    spec = parse_spec({"name": "eeg", "sources": [{"modality": "timeseries", "paths": [str(DATA)]}]})
    assert spec.tokenizer.mask["timeseries"].ratio == 0.4  # PatchTST's mask, made explicit
    with pytest.raises(SpecError, match="mask strategy 'radial' needs metric axes x, y"):
        parse_spec({"name": "eeg", "sources": [{"modality": "timeseries", "paths": [str(DATA)]}],
                    "tokenizer": {"mask": {"timeseries": {"strategy": "radial"}}}})
    with pytest.raises(SpecError, match="max_channels is 1"):
        parse_spec({"name": "eeg", "sources": [{"modality": "timeseries", "paths": [str(DATA)],
                                                "config": {"max_channels": 1}}],
                    "tokenizer": {"mask": {"timeseries": {"strategy": "block"}}}})
