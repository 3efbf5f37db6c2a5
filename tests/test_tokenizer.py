import numpy as np
import pytest

from polymae.tokenizer import MaskPolicy, MaskSpec, TokenStream, grid_axis, metric_axis, sample_rng
from polymae.tokenizer.masking import num_visible


def grid_stream(h: int = 14, w: int = 14, units=None) -> TokenStream:
    rows, cols = np.divmod(np.arange(h * w), w)
    return TokenStream(
        values=np.zeros((h * w, 3)), coords=np.stack([rows, cols], 1),
        unit=np.arange(h * w) if units is None else units, valid=np.ones(h * w, bool),
        axes=(grid_axis("y", "px", h), grid_axis("x", "px", w)),
    )


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 0.95])
@pytest.mark.parametrize("strategy", ["random", "block"])
def test_exact_visible_count_per_sample(strategy, ratio):
    policy = MaskPolicy({"image": MaskSpec(strategy=strategy, ratio=ratio)}, seed=3)
    for i in range(20):
        sample = {"image": grid_stream()}
        policy.apply(sample, f"sample-{i}", epoch=0)
        assert sample["image"].visible.sum() == int(196 * (1 - ratio) + 1e-9)


def test_num_visible_matches_mae_floor():
    assert num_visible(196, 0.75) == 49
    assert num_visible(196, 0.9) == 19  # MAE's int(L * (1 - r)); VideoMAE's tube keeps 20
    assert num_visible(512, 0.8) == 102


def test_masks_reproducible_by_seed_sample_epoch():
    policy = MaskPolicy({"image": MaskSpec()}, seed=7)

    def mask(seed_policy, sid, epoch):
        sample = {"image": grid_stream()}
        seed_policy.apply(sample, sid, epoch)
        return sample["image"].visible

    a = mask(policy, "x.jpg", 0)
    assert np.array_equal(a, mask(MaskPolicy({"image": MaskSpec()}, seed=7), "x.jpg", 0))
    assert not np.array_equal(a, mask(policy, "x.jpg", 1))
    assert not np.array_equal(a, mask(policy, "y.jpg", 0))
    assert not np.array_equal(a, mask(MaskPolicy({"image": MaskSpec()}, seed=8), "x.jpg", 0))


def test_sample_rng_streams_are_independent_by_purpose():
    a = sample_rng(0, "s", 0, "mask").random(4)
    b = sample_rng(0, "s", 0, "augment").random(4)
    assert not np.allclose(a, b)


def test_random_hides_whole_units():
    units = np.repeat(np.arange(49), 4)  # 4 tokens per unit, like time slices of a tube
    stream = grid_stream(units=units)
    policy = MaskPolicy({"m": MaskSpec(ratio=0.75)})
    visible = policy({"m": stream}, np.random.default_rng(0))["m"]
    per_unit = visible.reshape(49, 4)
    assert (per_unit.all(1) | ~per_unit.any(1)).all()
    assert per_unit.all(1).sum() == 12


def test_padding_is_never_visible():
    stream = grid_stream()
    stream.valid[100:] = False
    visible = MaskPolicy({"m": MaskSpec(ratio=0.5)})({"m": stream}, np.random.default_rng(0))["m"]
    assert not visible[100:].any()
    assert visible.sum() == 50


def test_block_masks_are_blockier_than_random():
    """Masked cells of ``block`` have more masked 4-neighbours than those of ``random``."""

    def neighbour_score(strategy):
        scores = []
        for i in range(30):
            v = MaskPolicy({"m": MaskSpec(strategy=strategy, ratio=0.4)})(
                {"m": grid_stream()}, np.random.default_rng(i))["m"]
            m = ~v.reshape(14, 14)
            same = (m[1:] & m[:-1]).sum() + (m[:, 1:] & m[:, :-1]).sum()
            scores.append(same / m.sum())
        return np.mean(scores)

    assert neighbour_score("block") > neighbour_score("random") + 0.3


def test_unknown_strategy_names_allowed_values():
    with pytest.raises(ValueError, match="allowed: block, frequency, radial, random, running_cell, time, tube"):
        MaskSpec(strategy="tube-ish")


def _ring(n: int = 4000, seed: int = 0):
    """Metric (x, y) token centres all around a sensor at the origin, 2–50 m away."""
    rng = np.random.default_rng(seed)
    angle, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(2, 50, n)
    coords = np.stack([dist * np.cos(angle), dist * np.sin(angle), rng.normal(0, 1, n)], axis=1)
    return TokenStream(np.zeros((n, 3)), coords, np.arange(n), np.ones(n, bool),
                       axes=(metric_axis("x"), metric_axis("y"), metric_axis("z")))


def test_radial_sectors_cover_the_full_circle_and_keep_the_fraction():
    stream = _ring()
    spec = MaskSpec(strategy="radial", ratio=0.8, sector_degrees=1.0)
    kept = MaskPolicy({"lidar": spec})({"lidar": stream}, np.random.default_rng(1))["lidar"]
    angle = np.degrees(np.arctan2(stream.coords[:, 1], stream.coords[:, 0])) % 360
    kept_sectors = np.unique(np.floor(angle[kept]).astype(int))
    assert len(kept_sectors) == num_visible(360, 0.8) == 72  # 20 % of the 360 one-degree sectors
    assert kept_sectors.min() < 90 and kept_sectors.max() >= 270  # all four quadrants, not 0–90°
    assert {int(q) for q in kept_sectors // 90} == {0, 1, 2, 3}
    for s in kept_sectors:  # whole sectors: every token of a kept sector is kept, none of the others
        in_sector = np.floor(angle).astype(int) == s
        assert kept[in_sector].all()
    assert abs(kept.mean() - 0.2) < 1 / 360 + 0.02  # token fraction ≈ 20 % (uniform ring)


def test_radial_never_keeps_padding_and_hides_whole_sectors():
    stream = _ring(720)
    stream.valid[:100] = False
    spec = MaskSpec(strategy="radial", ratio=0.8, sector_degrees=10.0)
    kept = MaskPolicy({"lidar": spec})({"lidar": stream}, np.random.default_rng(0))["lidar"]
    assert not kept[:100].any()
    sector = (np.degrees(np.arctan2(stream.coords[:, 1], stream.coords[:, 0])) % 360 // 10).astype(int)
    assert len(np.unique(sector[kept])) == num_visible(36, 0.8)
