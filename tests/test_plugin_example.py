"""The third-party plugin example (examples/plugin_example) loads without being installed, passes
the conformance kit, validates in a spec and trains through PolyMAE's data and model code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from polymae.modalities import get_plugin_class, make_plugin, register_modality, registry
from polymae.models import PolyMAE
from polymae.pipelines.data import tokenize_views
from polymae.pipelines.spec import parse_spec
from polymae.testing import check_modules, check_plugin, check_samples
from polymae.tokenizer import MaskPolicy, streams_to_columns

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_example"
DATA = EXAMPLE / "data"


@pytest.fixture
def plugin_class(monkeypatch):
    """The example's class, importable from its folder and registered for this test only (the
    registry is restored afterwards, so other tests see the built-ins alone)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setattr(registry, "_PLUGINS", dict(registry._PLUGINS))
    from polymae_timeseries import TimeseriesPlugin

    assert register_modality(TimeseriesPlugin) is TimeseriesPlugin
    assert get_plugin_class("timeseries") is TimeseriesPlugin
    return TimeseriesPlugin


def test_example_passes_the_kit(plugin_class):
    good = [(DATA / name).read_bytes() for name in ("eeg.csv", "membrane.csv")]
    rows = good[1].split(b"\n")
    bad = [b"", rows[0] + b"\n", b"\n".join(rows[:1001] + rows[1101:]),  # header only; 50 ms missing
           (ROOT / "examples/data/audio/alsa_Front_Center.wav").read_bytes()]  # not text
    check_plugin(plugin_class(), good=good, bad=bad)


def test_example_in_a_spec_and_a_training_step(plugin_class):
    spec = parse_spec({"name": "signals", "sources": [{"modality": "timeseries", "paths": [str(DATA)]}],
                       "model": {"preset": "tiny", "overrides": {"depth": 1}}})
    masks = spec.mask_specs()
    assert (masks["timeseries"].strategy, masks["timeseries"].ratio) == ("random", 0.4)  # PatchTST's
    plugin = make_plugin("timeseries", spec.sources[0].config)
    policy = MaskPolicy(masks)
    streams = [tokenize_views(plugin, policy, str(DATA / name), name, 0, spec.seed, 0, 1)[0]["timeseries"]
               for name in ("eeg.csv", "membrane.csv")]
    assert [int(s.visible.sum()) for s in streams] == [int(4 * 42 * 0.6), int(42 * 0.6)]
    batch = {k: torch.as_tensor(v) for k, v in streams_to_columns("timeseries", streams).items()}
    torch.manual_seed(0)
    model = PolyMAE({"timeseries": plugin}, spec.resolved_model()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss, _, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]


def test_the_kit_catches_what_an_author_gets_wrong(plugin_class):
    """The example, broken three ways a plugin author might: a sample count that follows the rng,
    statistics it does not declare, a head that does not fit the target."""
    class Windows(plugin_class):
        def tokenize_file(self, data, path, rng):
            return [self.tokenize(self.decode(data, path), rng)] * (1 if rng is None else 2)

    class Undeclared(plugin_class):
        def scan_file(self, data, path):
            return 1, {"sum": 1.0}

    class WrongHead(plugin_class):
        def build_head(self, width):
            return nn.Linear(width, 5)

    eeg = (DATA / "eeg.csv").read_bytes()
    with pytest.raises(AssertionError, match="1 with rng=None, 2 with an rng"):
        check_samples(Windows(), eeg, "eeg.csv")
    with pytest.raises(AssertionError, match="statistics"):
        check_samples(Undeclared(), eeg, "eeg.csv")
    stream = WrongHead().tokenize(WrongHead().decode(eeg, "eeg.csv"), None)
    with pytest.raises(AssertionError, match="build_head gives"):
        check_modules(WrongHead(), stream)
