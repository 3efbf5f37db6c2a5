"""Cross-stream mask policies (budget, aligned), strategy counts chosen by the policy, and the
axes a strategy needs checked when a spec is validated."""

from pathlib import Path

import numpy as np
import pytest

from polymae.pipelines.data import epoch_manifest, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample
from polymae.pipelines.spec import SpecError, parse_spec
from polymae.tokenizer import MaskPolicy, MaskSpec, TokenStream, get_strategy, grid_axis, metric_axis
from polymae.tokenizer.policies import split_budget

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples/data/images"


def grid(h: int, w: int, names=("y", "x"), slices: int = 0) -> TokenStream:
    """A (slices ×) h × w grid stream; with ``slices`` a t axis first (a video's tubelets)."""
    if slices:
        t, y, x = np.meshgrid(np.arange(slices), np.arange(h), np.arange(w), indexing="ij")
        coords = np.stack([t.ravel(), y.ravel(), x.ravel()], 1)
        axes = (grid_axis("t", "s", slices), grid_axis(names[0], "px", h), grid_axis(names[1], "px", w))
    else:
        y, x = np.divmod(np.arange(h * w), w)
        coords, axes = np.stack([y, x], 1), (grid_axis(names[0], "px", h), grid_axis(names[1], "px", w))
    n = len(coords)
    return TokenStream(np.zeros((n, 2)), coords, np.arange(n), np.ones(n, bool), axes=axes)


def visible_groups(stream: TokenStream, spec: MaskSpec) -> int:
    group = get_strategy(spec.strategy).groups(stream, spec)
    return len(np.unique(group[stream.visible]))


def test_split_budget_is_exact_capped_and_proportional():
    assert split_budget(10, np.array([0.5, 0.5]), np.array([100, 100])).tolist() == [5, 5]
    assert split_budget(100, np.array([0.9, 0.1]), np.array([10, 196])).tolist() == [10, 90]  # capped, rest moved
    assert split_budget(500, np.array([0.3, 0.7]), np.array([10, 20])).tolist() == [10, 20]  # more than there is
    assert split_budget(7, np.array([1 / 3, 1 / 3, 1 / 3]), np.array([9, 9, 9])).sum() == 7
    rng = np.random.default_rng(0)
    for _ in range(500):
        caps = rng.integers(0, 50, size=4)
        counts = split_budget(int(rng.integers(0, 150)), rng.dirichlet(np.ones(4)), caps)
        assert (counts <= caps).all() and (counts >= 0).all()


def test_budget_is_exact_for_every_sample_of_a_batch():
    """98 visible of 3 × 196 patches (MultiMAE's RGB + depth + semseg setting), for every sample,
    whatever λ drew; each stream's share is whole units of its strategy (tubes for a video)."""
    specs = {"rgb": MaskSpec(strategy="random"), "depth": MaskSpec(strategy="block"),
             "video": MaskSpec(strategy="tube")}
    policy = MaskPolicy(specs, seed=5, policy="budget", visible=98)
    shares = []
    for i in range(64):
        sample = {"rgb": grid(14, 14), "depth": grid(14, 14), "video": grid(14, 14, slices=2)}
        policy.apply(sample, f"s{i}", epoch=0)
        counts = {n: visible_groups(s, specs[n]) for n, s in sample.items()}
        assert sum(counts.values()) == 98, counts
        video = sample["video"].visible.reshape(2, 196)
        assert (video[0] == video[1]).all()  # tube: a cell is visible in every time slice or none
        shares.append(counts["rgb"])
    assert len(set(shares)) > 10  # λ varies per sample


def test_budget_defaults_to_what_the_ratios_keep_and_skips_hidden_and_absent_streams():
    specs = {"a": MaskSpec(ratio=0.75), "b": MaskSpec(ratio=0.75), "c": MaskSpec(ratio=1.0)}
    for visible, expected in ((None, 49), (98, 98)):  # default: what the present streams' ratios keep
        policy = MaskPolicy(specs, seed=1, policy="budget", visible=visible)
        for i in range(20):
            absent = grid(14, 14)
            absent.valid[:] = False
            sample = {"a": grid(14, 14), "b": absent, "c": grid(14, 14)}
            policy.apply(sample, str(i), 0)
            assert sample["a"].visible.sum() == expected  # b has nothing to show: a takes the budget
            assert not sample["b"].visible.any() and not sample["c"].visible.any()  # absent; ratio 1.0


def test_mean_dirichlet_proportions_match_alpha():
    """α = (1, 3): E[λ] = (0.25, 0.75). 2000 samples, seed 0; the standard error of the mean
    share is √(3/80)/√2000 ≈ 0.0043, the tolerance 0.02 (≈ 4.6 standard errors)."""
    specs = {"a": MaskSpec(ratio=0.5), "b": MaskSpec(ratio=0.5)}
    policy = MaskPolicy(specs, seed=0, policy="budget", alpha={"a": 1.0, "b": 3.0}, visible=200)
    share = []
    for i in range(2000):
        sample = {"a": grid(32, 32), "b": grid(32, 32)}
        out = policy(sample, np.random.default_rng([0, i]))
        share.append(out["a"].sum() / 200)
    assert abs(np.mean(share) - 0.25) < 0.02
    assert 0.15 < np.std(share) < 0.24  # Beta(1, 3): σ ≈ 0.194 — a spread, not a fixed split


def test_aligned_frames_hide_the_same_locations_at_the_coarsest_grid():
    policy = MaskPolicy({"rgb": MaskSpec(ratio=0.75), "depth": MaskSpec(ratio=0.75), "coarse": MaskSpec()},
                        seed=2, policy="aligned", shared=[(("rgb", "depth", "coarse"), ("y", "x"))])
    for i in range(10):
        sample = {"rgb": grid(14, 14), "depth": grid(14, 14), "coarse": grid(7, 7)}
        policy.apply(sample, str(i), 0)
        rgb, depth, coarse = (sample[n].visible.reshape(g, g) for n, g in (("rgb", 14), ("depth", 14), ("coarse", 7)))
        assert np.array_equal(rgb[::2, ::2], coarse) and np.array_equal(rgb, depth)
        assert np.array_equal(rgb, np.kron(coarse, np.ones((2, 2), bool)))  # one coarse cell = 2 × 2 fine ones
        assert coarse.sum() == 12  # ⌊49 · 0.25⌋ cells of the coarsest grid


def test_aligned_clock_hides_the_same_seconds_in_video_and_audio():
    """A video of 8 tubelet steps and its audio of 64 patch rows × 8 mel patches: the same eighths
    of the clip's seconds are visible in both, whole (every y, x of a step; every f of a row)."""
    video, audio = grid(4, 4, slices=8), grid(64, 8, names=("t", "f"))
    audio.axes = (grid_axis("t", "s", 64), grid_axis("f", "mel", 8))
    policy = MaskPolicy({"video": MaskSpec(ratio=0.75), "audio": MaskSpec(ratio=0.75)}, seed=3,
                        policy="aligned", shared=[(("video", "audio"), ("t",))])
    sample = {"video": video, "audio": audio}
    policy.apply(sample, "clip", 0)
    steps = sample["video"].visible.reshape(8, 16)
    rows = sample["audio"].visible.reshape(64, 8)
    assert (steps.all(1) | ~steps.any(1)).all() and (rows.all(1) | ~rows.any(1)).all()
    assert np.array_equal(np.repeat(steps[:, 0], 8), rows[:, 0])  # the same seconds
    assert steps[:, 0].sum() == 2


def test_policy_keeps_single_stream_masks_unchanged():
    """`independent` is today's behaviour: the counts of every strategy are the ratio's."""
    stream = grid(14, 14)
    for strategy in ("random", "block"):
        v = MaskPolicy({"m": MaskSpec(strategy=strategy, ratio=0.9)})({"m": stream}, np.random.default_rng(0))
        assert v["m"].sum() == 19
    tube = MaskPolicy({"v": MaskSpec(strategy="tube", ratio=0.9)})({"v": grid(14, 14, slices=8)},
                                                                    np.random.default_rng(0))
    assert tube["v"].reshape(8, 196)[0].sum() == 20  # VideoMAE's count


def test_a_strategy_without_its_axes_is_refused():
    points = TokenStream(np.zeros((4, 3)), np.random.default_rng(0).normal(size=(4, 3)), np.arange(4),
                         np.ones(4, bool), axes=(metric_axis("x"), metric_axis("y"), metric_axis("z")))
    with pytest.raises(ValueError, match="'tube' needs grid axes y, x or two grid axes"):
        MaskPolicy({"p": MaskSpec(strategy="tube")})({"p": points}, np.random.default_rng(0))


def _two_photos(**over) -> dict:
    data = {"name": "pol", "seed": 1, "pairing": {"key": "stem"}, "model": {"preset": "tiny"},
            "sources": [{"name": "rgb", "modality": "image", "paths": [str(PHOTOS)], "frame": "cam",
                         "config": {"img_size": 64}},
                        {"name": "copy", "modality": "image", "paths": [str(PHOTOS)], "frame": "cam",
                         "config": {"img_size": 64}}]}
    data.update(over)
    return data


@pytest.mark.parametrize("over, field, message", [
    ({"sources": [{"modality": "image", "paths": [str(PHOTOS)]}], "pairing": None,
      "tokenizer": {"mask": {"image": {"strategy": "time"}}}},
     "tokenizer.mask.image.strategy", "'time' needs grid axes t; the stream has y (px, grid of 14)"),
    ({"sources": [{"modality": "points", "paths": [str(ROOT / "examples/data/points")]}], "pairing": None,
      "tokenizer": {"mask": {"points": {"strategy": "block", "decoder_strategy": "running_cell"}}}},
     "tokenizer.mask.points.decoder_strategy", "'running_cell' needs grid axes t, y, x"),
    ({"tokenizer": {"mask": {"rgb": {"strategy": "radial"}}}},
     "tokenizer.mask.rgb.strategy", "needs metric axes x, y; the stream has y (px, grid of 4), x (px, grid of 4); "
                                    "allowed for it: block, random, tube"),
    ({"tokenizer": {"policy": "shared"}}, "tokenizer.policy", "allowed: aligned, budget, independent"),
    ({"tokenizer": {"policy": "aligned"}, "sources": [{**s, "frame": None} for s in _two_photos()["sources"]]},
     "tokenizer.policy", "no two streams share a spatial frame"),
    ({"tokenizer": {"policy": "budget", "alpha": {"rgb": 1.0, "depth": 2.0}}}, "tokenizer.alpha",
     "['depth'] not among the stream names"),
    ({"tokenizer": {"policy": "budget", "alpha": 0}}, "tokenizer.alpha", "must be > 0"),
    ({"tokenizer": {"visible": 10}}, "tokenizer:", "policy = 'independent'; allowed: set policy: budget"),
])
def test_bad_policy_specs_name_the_field(over, field, message):
    with pytest.raises(SpecError) as info:
        parse_spec(_two_photos(**over))
    assert any(p.startswith(field) and message in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("policy", ["budget", "aligned"])
def test_policies_run_in_the_training_stream(policy):
    """Through ``tokenize_batch`` (what Ray Data runs): one frame, so aligned masks match exactly."""
    spec = parse_spec(_two_photos(tokenizer={"policy": policy, **({"visible": 8} if policy == "budget" else {})}))
    photos = sorted(PHOTOS.glob("*.jpg"))[:4]
    samples = [Sample(p.stem, {"rgb": str(p), "copy": str(p)}) for p in photos]
    batch = tokenize_batch(manifest_batch(epoch_manifest(samples, spec.seed, 0, 4)), **stream_kwargs(spec))
    seen = batch["rgb.visible"].sum(1) + batch["copy.visible"].sum(1)
    if policy == "budget":
        assert (seen == 8).all()
    else:
        assert np.array_equal(batch["rgb.visible"], batch["copy.visible"]) and (seen == 2 * 4).all()
