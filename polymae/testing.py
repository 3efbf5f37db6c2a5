"""Conformance kit: checks any modality plugin should pass. Use it from a plugin's tests:

    from polymae.testing import check_plugin
    def test_my_plugin():
        check_plugin(MyPlugin(), good=[open("a.wav", "rb").read()], bad=[b"", b"junk"])

Each check raises AssertionError with what went wrong.
"""

from __future__ import annotations

import numpy as np
import torch

from polymae.modalities.base import VIEWS_SKIPPED, BadInputError, ModalityPlugin
from polymae.ops.crops import TimeSpan
from polymae.tokenizer import MaskPolicy, MaskSpec, available_strategies, get_strategy, sample_rng
from polymae.tokenizer.axes import needs_grid
from polymae.tokenizer.masking import num_visible, without_queries
from polymae.tokenizer.stream import DTYPES, FIELDS, TokenStream


def check_stream(plugin: ModalityPlugin, stream: TokenStream) -> None:
    """Shapes and dtypes match ``token_shape``; at least one valid token."""
    n, d, c = plugin.token_shape
    assert stream.values.shape == (n, d), f"values {stream.values.shape} != {(n, d)}"
    assert stream.coords.shape == (n, c), f"coords {stream.coords.shape} != {(n, c)}"
    for name in FIELDS:
        arr = getattr(stream, name)
        assert arr.dtype == DTYPES[name], f"{name} dtype {arr.dtype} != {DTYPES[name]}"
        assert arr.shape[0] == n, f"{name} has {arr.shape[0]} rows, expected {n}"
    assert stream.valid.any(), "no valid token"
    assert np.isfinite(stream.values[stream.valid]).all(), "non-finite token values"


def check_axes(plugin: ModalityPlugin, stream: TokenStream) -> None:
    """One named axis per coords column, carried by the stream; grid coordinates are whole cell
    indices inside the axis; a plugin that can share a spatial frame has grid y, x axes, one that
    can be on a clock a grid t axis; every strategy that fits the axes runs."""
    axes = plugin.axes
    names = [a.name for a in axes]
    assert len(axes) == plugin.token_shape[2], f"{len(axes)} axes for {plugin.token_shape[2]} coords columns"
    assert len(set(names)) == len(names), f"axis names repeat: {names}"
    assert stream.axes == axes, f"the stream carries axes {stream.axes}, the plugin declares {axes}"
    for i, axis in enumerate(axes):
        column = stream.coords[stream.valid, i]
        if axis.grid:
            assert np.array_equal(column, np.rint(column)), f"grid axis {axis} has fractional coordinates"
            assert column.min() >= 0 and column.max() < axis.size, f"grid axis {axis}: coordinates outside 0…size−1"
    if plugin.has_frame():
        assert needs_grid("y", "x")(axes) is None, "a plugin with a spatial frame needs grid axes y, x"
    if plugin.clock_roles():
        assert needs_grid("t")(axes) is None, "a plugin that can be on a clock needs a grid axis t"
    for name in available_strategies():
        strategy, spec = get_strategy(name), MaskSpec(strategy=name, ratio=0.5)
        if strategy.needs(axes) is None and plugin.check_mask(spec) is None:
            visible = strategy(without_queries(stream), spec, np.random.default_rng(0))
            assert not (visible & ~stream.valid).any(), f"strategy {name} made a padding token visible"


def check_samples(plugin: ModalityPlugin, data: bytes, path: str) -> None:
    """``rng=None`` views are the same on every call; a file yields as many samples whatever the
    rng, and that is the count (with the declared statistics) of ``scan_file``."""
    plain, again = plugin.tokenize_file(data, path, None), plugin.tokenize_file(data, path, None)
    assert all(np.array_equal(a.values, b.values) and np.array_equal(a.valid, b.valid)
               for a, b in zip(plain, again, strict=True)), "the rng=None views differ between calls"
    count, stats = plugin.scan_file(data, path)
    drawn = len(plugin.tokenize_file(data, path, np.random.default_rng(0)))
    assert len(plain) == drawn == count, f"samples: {len(plain)} with rng=None, {drawn} with an rng, scan {count}"
    stats = {k: v for k, v in stats.items() if k != VIEWS_SKIPPED}  # a count of the run, not a statistic
    assert set(stats) == set(plugin.statistics), f"scan_file statistics {sorted(stats)} != {plugin.statistics}"


def check_views(plugin: ModalityPlugin, data: bytes, path: str, array: np.ndarray) -> None:
    """Shared frames and clocks: a drawn frame view tokenizes; a clock's lead gives one span of
    seconds per view, as many as the scan counts; a follower one view per span (here 0–0.5 s)."""
    rng, spans, streams = np.random.default_rng(0), [TimeSpan(0.0, 0.5)], []
    if plugin.has_frame():
        streams.append(plugin.tokenize(array, rng, plugin.frame_view(array, rng)))
    if "lead" in plugin.clock_roles():
        timed, spans = plugin.tokenize_timed(data, path, rng)
        assert len(timed) == len(spans) == plugin.scan_file(data, path)[0], "tokenize_timed: views ≠ spans ≠ scan"
        assert all(0 <= s.start < s.end for s in spans), f"spans {spans} are not forward spans of seconds"
        streams += timed
    if "follow" in plugin.clock_roles():
        cut = plugin.tokenize_spans(data, path, spans)
        assert len(cut) == len(spans), f"tokenize_spans: {len(cut)} views for {len(spans)} spans"
        streams += cut
    for stream in streams:
        check_stream(plugin, stream)


def check_modules(plugin: ModalityPlugin, stream: TokenStream, width: int = 192) -> None:
    """build_embed and build_position give (1, N, width), build_head the target's shape; the loss is finite."""
    values, coords = torch.as_tensor(stream.values)[None], torch.as_tensor(stream.coords)[None]
    with torch.no_grad():
        x, position = plugin.build_embed(width)(values), plugin.build_position(width)(coords)
        assert x.shape == position.shape == (1, len(values[0]), width), f"embed {x.shape}, position {position.shape}"
        pred = plugin.build_head(width)(x)
        assert pred.shape == plugin.target(values).shape, f"build_head gives {tuple(pred.shape)}, not the target's"
        assert torch.isfinite(plugin.loss(pred, values, torch.as_tensor(stream.valid)[None])), "non-finite loss"


def check_bad_input(plugin: ModalityPlugin, data: bytes) -> BadInputError:
    """Bad bytes raise the typed error with a non-empty reason (nothing else)."""
    try:
        plugin.tokenize(plugin.decode(data, "bad-input"), None)
    except BadInputError as err:
        assert err.reason, "BadInputError without a reason"
        return err
    raise AssertionError(f"{plugin.name}: bad input of {len(data)} bytes was accepted")


def check_zero_loss_on_perfect_reconstruction(plugin: ModalityPlugin, stream: TokenStream) -> None:
    """Predicting exactly the target gives zero loss; a wrong prediction gives a positive one."""
    values = torch.as_tensor(stream.values)[None]
    mask = torch.as_tensor(~stream.visible & stream.valid)[None]
    if not bool(mask.any()):
        mask = torch.as_tensor(stream.valid)[None]
    target = plugin.target(values)
    assert float(plugin.loss(target, values, mask)) < 1e-6, "loss of a perfect reconstruction is not 0"
    assert float(plugin.loss(target + 1.0, values, mask)) > 0, "loss of a wrong reconstruction is 0"


def check_masks_respect_units(plugin: ModalityPlugin, stream: TokenStream, ratio: float = 0.75) -> None:
    """``random`` keeps ⌊U·(1−ratio)⌋ whole units visible, never a padding token."""
    policy = MaskPolicy({plugin.name: MaskSpec(strategy="random", ratio=ratio)})
    visible = policy({plugin.name: stream}, sample_rng(0, "conformance", 0, "mask"))[plugin.name]
    assert not (visible & ~stream.valid).any(), "a padding token is visible"
    units = np.unique(stream.unit[stream.valid])
    for u in units:
        flags = visible[(stream.unit == u) & stream.valid]
        assert flags.all() or not flags.any(), f"unit {u} is partly visible"
    kept = len(np.unique(stream.unit[visible]))
    assert kept == num_visible(len(units), ratio), f"{kept} units visible, expected {num_visible(len(units), ratio)}"


def check_plugin(plugin: ModalityPlugin, good: list[bytes], bad: list[bytes]) -> None:
    """All of the above on real good files and real bad ones."""
    assert good, "give at least one good file"
    for i, data in enumerate(good):
        array = plugin.decode(data, f"good-{i}")
        for rng in (None, np.random.default_rng(i)):
            stream = plugin.tokenize(array, rng)
            check_stream(plugin, stream)
            check_axes(plugin, stream)
        check_masks_respect_units(plugin, stream)
        check_samples(plugin, data, f"good-{i}")
        check_views(plugin, data, f"good-{i}", array)
        check_modules(plugin, stream)
        stream.visible = MaskPolicy({})({plugin.name: stream}, np.random.default_rng(i))[plugin.name]
        check_zero_loss_on_perfect_reconstruction(plugin, stream)
        picture = plugin.render(stream, plugin.target(torch.as_tensor(stream.values)).numpy())
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8, "render is not RGB uint8"
    for data in bad:
        check_bad_input(plugin, data)
