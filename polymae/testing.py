"""Conformance kit: checks any modality plugin should pass. Use it from a plugin's tests:

    from polymae.testing import check_plugin
    def test_my_plugin():
        check_plugin(MyPlugin(), good=[open("a.wav", "rb").read()], bad=[b"", b"junk"])

Each check raises AssertionError with what went wrong.
"""

from __future__ import annotations

import numpy as np
import torch

from polymae.modalities.base import BadInputError, ModalityPlugin
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
        stream.visible = MaskPolicy({})({plugin.name: stream}, np.random.default_rng(i))[plugin.name]
        check_zero_loss_on_perfect_reconstruction(plugin, stream)
        picture = plugin.render(stream, plugin.target(torch.as_tensor(stream.values)).numpy())
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8, "render is not RGB uint8"
    for data in bad:
        check_bad_input(plugin, data)
