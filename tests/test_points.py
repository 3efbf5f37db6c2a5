"""Point-cloud plugin (Point-MAE) on the shipped bunny mesh and kitten scan, the same data written
in other formats with open3d and numpy, and bad files made from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from pydantic import ValidationError

from polymae.modalities import BadInputError
from polymae.modalities.points import (
    PANEL,
    PointNetEmbed,
    PointsPlugin,
    farthest_points,
    pc_norm,
    sample_surface,
    sniff,
)
from polymae.models.losses.chamfer import chamfer_l2
from polymae.models.pos_embed import MLPPosition
from polymae.testing import check_plugin
from polymae.tokenizer import MaskPolicy, MaskSpec
from polymae.tokenizer.masking import num_visible
from polymae.tokenizer.stream import TokenStream

ROOT = Path(__file__).resolve().parents[1]
POINTS = ROOT / "examples" / "data" / "points"
BUNNY = POINTS / "bunny_npm_lowres.obj"  # 1,839 vertices, 3,674 faces
KITTEN = POINTS / "kitten.xyz"  # 5,210 points, x y z nx ny nz


def xyz_text(points: np.ndarray) -> bytes:
    return "".join(" ".join(repr(float(c)) for c in p) + "\n" for p in points).encode()


@pytest.fixture(scope="module")
def kitten() -> np.ndarray:
    return np.loadtxt(KITTEN)[:, :3]


@pytest.fixture(scope="module")
def files(tmp_path_factory, kitten) -> dict[str, Path]:
    """Name → path of the kitten and bunny in other formats, and of bad files made from them."""
    d = tmp_path_factory.mktemp("points")
    cloud = o3d.io.read_point_cloud(str(KITTEN))
    cloud.normals = o3d.utility.Vector3dVector(np.loadtxt(KITTEN)[:, 3:])
    for name, ascii_ in [("kitten.ply", False), ("kitten.pcd", False), ("kitten_ascii.pcd", True),
                         ("kitten.xyzn", True), ("kitten.pts", True)]:
        assert o3d.io.write_point_cloud(str(d / name), cloud, write_ascii=ascii_)
    np.save(d / "kitten.npy", np.loadtxt(KITTEN).astype(np.float32))  # 6 columns: the first 3 are xyz
    mesh = o3d.io.read_triangle_mesh(str(BUNNY))
    assert o3d.io.write_triangle_mesh(str(d / "bunny.off"), mesh)
    assert o3d.io.write_triangle_mesh(str(d / "bunny.stl"), mesh.compute_triangle_normals())
    vertices = np.asarray(mesh.vertices)
    (d / "bunny_vertices.obj").write_bytes(b"# vertices only\n" + b"".join(
        b"v " + xyz_text(v[None]) for v in vertices))
    (d / "bunny_vertices.off").write_bytes(f"OFF\n{len(vertices)} 0 0\n".encode() + xyz_text(vertices))
    nan = kitten.copy()
    nan[100, 1] = np.nan
    bad = {
        "empty.ply": b"",
        "garbage.ply": b"this is a text file, not a PLY\n" * 20,
        "garbage.obj": b"this is a text file, not an OBJ\n" * 20,
        "nan.xyz": xyz_text(nan),
        "inf.npy": None,
        "five.xyz": xyz_text(kitten[:5]),
        "identical.xyz": xyz_text(np.repeat(kitten[:1], 100, axis=0)),
        "kitten.las": KITTEN.read_bytes(),
        "objects.npy": None,
        "flat.npy": None,
    }
    for name, data in bad.items():
        if data is not None:
            (d / name).write_bytes(data)
    inf = kitten.copy()
    inf[7, 0] = np.inf
    np.save(d / "inf.npy", inf)
    np.save(d / "flat.npy", kitten[:, :2])
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return {p.name: p for p in d.iterdir()}


def test_decode_every_format(files, kitten):
    plugin = PointsPlugin()
    reference = plugin.decode(KITTEN.read_bytes(), str(KITTEN))
    assert reference.dtype == np.float32 and reference.shape == (5210, 3)
    assert np.allclose(reference, pc_norm(kitten), atol=1e-6)
    for name in ["kitten.ply", "kitten.pcd", "kitten_ascii.pcd", "kitten.xyzn", "kitten.pts", "kitten.npy"]:
        path = files[name]
        cloud = plugin.decode(path.read_bytes(), str(path))
        assert cloud.dtype == np.float32 and cloud.shape == (5210, 3) and np.isfinite(cloud).all(), name
        assert np.allclose(cloud, reference, atol=1e-5), name  # pcd and npy store float32
        elsewhere = plugin.decode(path.read_bytes(), f"/nonexistent/{name}")  # bytes only: a temp file
        assert np.array_equal(elsewhere, cloud), name
    bunny = plugin.decode(BUNNY.read_bytes(), str(BUNNY))
    assert bunny.shape == (8192, 3) and np.isfinite(bunny).all()
    for name in ["bunny.off", "bunny.stl"]:
        cloud = plugin.decode(files[name].read_bytes(), name)
        assert cloud.shape == (8192, 3) and np.isfinite(cloud).all(), name
        assert np.allclose(cloud.mean(axis=0), 0, atol=1e-5)
    for name in ["bunny_vertices.obj", "bunny_vertices.off"]:  # no faces: the vertices themselves
        vertices = np.asarray(o3d.io.read_triangle_mesh(str(BUNNY)).vertices)
        cloud = plugin.decode(files[name].read_bytes(), name)
        assert cloud.shape == (1839, 3) and np.allclose(cloud, pc_norm(vertices), atol=1e-6), name


def test_formats_are_sniffed_without_extension(files):
    plugin = PointsPlugin()
    cases = {"kitten.ply": ".ply", "kitten.pcd": ".pcd", "kitten_ascii.pcd": ".pcd", "kitten.npy": ".npy",
             "bunny.off": ".off", "bunny.stl": ".stl", "bunny_vertices.obj": ".obj", "bunny_vertices.off": ".off"}
    for name, ext in cases.items():
        data = files[name].read_bytes()
        assert sniff(data) == ext, name
        assert np.array_equal(plugin.decode(data, "sample"), plugin.decode(data, name)), name
    assert sniff(KITTEN.read_bytes()) == ".xyz" and sniff(BUNNY.read_bytes()) == ".obj"
    assert sniff(b"hello world\n") is None


def test_mesh_sampling_is_deterministic_and_on_the_surface(files):
    plugin = PointsPlugin()
    data = BUNNY.read_bytes()
    first = plugin.decode(data, str(BUNNY))
    assert np.array_equal(first, plugin.decode(data, "copy.obj"))  # seeded by the bytes, not the path
    changed = plugin.decode(data + b"\n# another comment\n", "other.obj")  # other bytes: other samples
    assert not np.array_equal(first, changed)
    mesh = o3d.io.read_triangle_mesh(str(BUNNY))
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    samples = sample_surface(vertices, triangles, 8192, data)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    distance = scene.compute_distance(o3d.core.Tensor(samples.astype(np.float32))).numpy()
    assert distance.max() < 1e-4  # on the surface (the bunny is ~0.15 units across)
    assert np.allclose(pc_norm(samples), first, atol=1e-6)
    # triangles are chosen by area: a 1×1 and a 3×… triangle pair share the samples 1 : 3
    quad = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 2, 0]], float)
    pts = sample_surface(quad, np.array([[0, 1, 2], [3, 4, 5]]), 40000, b"seed")
    assert abs((pts[:, 0] < 5).mean() - 0.5 / 3.5) < 0.01
    assert (pts[pts[:, 0] < 5].sum(axis=1) <= 1 + 1e-9).all()  # inside the first triangle


def test_pc_norm_unit_sphere(kitten):
    normed = pc_norm(kitten * 37.0 + [1e5, -3e4, 12.0])
    assert np.allclose(normed.mean(axis=0), 0, atol=1e-9)
    assert np.isclose(np.linalg.norm(normed, axis=1).max(), 1.0)
    assert np.allclose(normed, pc_norm(kitten), atol=1e-6)


def test_tokens_are_fps_centres_with_knn_groups(kitten):
    plugin = PointsPlugin()
    assert plugin.token_shape == (64, 96, 3)
    array = plugin.decode(KITTEN.read_bytes(), str(KITTEN))
    view = plugin.view(array, None)
    stream = plugin.tokenize(array, None)
    assert stream.values.shape == (64, 96) and stream.coords.shape == (64, 3)
    assert np.array_equal(stream.unit, np.arange(64)) and stream.valid.all()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(view))
    assert np.allclose(stream.coords, np.asarray(cloud.farthest_point_down_sample(64).points), atol=1e-6)
    groups = stream.values.reshape(64, 32, 3)
    assert np.linalg.norm(groups, axis=2).max() <= 2.0 + 1e-5  # offsets inside the unit sphere's diameter
    assert np.abs(groups).max() < 0.5  # and local: a group is a small patch
    for g in range(64):
        d2 = ((view - stream.coords[g]) ** 2).sum(axis=1)
        nearest = np.sort(d2)[:32]  # brute force: the 32 smallest squared distances
        assert np.allclose(np.sort((groups[g] ** 2).sum(axis=1)), nearest, atol=1e-5)
        assert np.allclose(groups[g, 0], 0, atol=1e-6)  # the centre is a cloud point: its own nearest
        members = groups[g] + stream.coords[g]
        assert np.abs(members[:, None, :] - view[None].astype(np.float32)).max(axis=2).min(axis=1).max() < 1e-5
    spread = lambda c: np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1) + np.eye(len(c)) * 9).min()  # noqa: E731
    random_subset = view[np.random.default_rng(0).choice(len(view), 64, replace=False)]
    assert spread(stream.coords) > 2 * spread(random_subset)  # FPS spreads centres out


def test_eval_view_deterministic_training_view_augmented():
    plugin = PointsPlugin()
    array = plugin.decode(BUNNY.read_bytes(), str(BUNNY))
    a, b = plugin.tokenize(array, None), plugin.tokenize(array, None)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.coords, b.coords)
    assert np.allclose(plugin.view(array, None), pc_norm(farthest_points(array, 1024)))
    s1, s2 = plugin.tokenize(array, np.random.default_rng(1)), plugin.tokenize(array, np.random.default_rng(1))
    s3 = plugin.tokenize(array, np.random.default_rng(2))
    assert np.array_equal(s1.values, s2.values) and np.array_equal(s1.coords, s2.coords)
    assert not np.allclose(s1.coords, s3.coords)
    # the augmentation is Point-MAE's per-axis scale U(2/3, 3/2) then translation U(-0.2, 0.2)
    plain = PointsPlugin({"scale_range": (1.0, 1.0), "translate": 0.0}).view(array, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    subset = rng.choice(len(array), 1024, replace=False)  # a random subset without repeats, then pc_norm
    assert np.allclose(plain, pc_norm(array[subset].astype(np.float64)))
    scale, shift = rng.uniform(2 / 3, 3 / 2, size=3), rng.uniform(-0.2, 0.2, size=3)
    assert np.allclose(plugin.view(array, np.random.default_rng(5)), plain * scale + shift)


def test_small_and_repetitive_clouds(kitten):
    plugin = PointsPlugin()
    small = pc_norm(kitten[::52][:100]).astype(np.float32)  # 100 points < 1024: kept, some repeated
    view = plugin.view(small, None)
    assert view.shape == (1024, 3) and len(np.unique(view.round(6), axis=0)) == 100
    assert len(np.unique(plugin.view(small, np.random.default_rng(0)).round(6), axis=0)) == 100  # none dropped
    stream = plugin.tokenize(small, np.random.default_rng(0))
    assert stream.values.shape == (64, 96) and np.isfinite(stream.values).all()
    few = np.repeat(kitten[:40], 3, axis=0)  # 40 distinct points < 64 groups: FPS centres repeat
    stream = plugin.tokenize(plugin.decode(xyz_text(few), "few.xyz"), None)
    assert stream.coords.shape == (64, 3) and len(np.unique(stream.coords, axis=0)) == 40


def test_chamfer_l2_matches_point_mae_definition():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 12)), rng.normal(size=(2, 3, 12))  # 4 points per token
    mask = np.array([[True, False, True], [False, True, False]])
    d1, d2 = [], []
    for b, n in zip(*np.nonzero(mask), strict=True):
        p, t = pred[b, n].reshape(4, 3), target[b, n].reshape(4, 3)
        d = ((p[:, None] - t[None]) ** 2).sum(-1)
        d1 += list(d.min(axis=1))
        d2 += list(d.min(axis=0))
    expected = np.mean(d1) + np.mean(d2)  # torch.mean(dist1) + torch.mean(dist2) over all points
    tp, tt, tm = torch.tensor(pred), torch.tensor(target), torch.tensor(mask)
    assert np.isclose(float(chamfer_l2(tp, tt, tm)), expected, rtol=1e-5)
    assert float(chamfer_l2(tt, tt, tm)) == 0.0
    perm = tp.reshape(2, 3, 4, 3)[:, :, [2, 0, 3, 1]].reshape(2, 3, 12)  # reorder points within tokens
    assert np.isclose(float(chamfer_l2(perm, tt, tm)), expected, rtol=1e-6)
    moved = tp.clone()
    moved[0, 1] += 100.0  # an unmasked token's prediction does not count
    assert float(chamfer_l2(moved, tt, tm)) == float(chamfer_l2(tp, tt, tm))
    assert float(chamfer_l2(tp + 0.5, tt, tm)) > 0
    leaf = tp.clone().float().requires_grad_(True)
    chamfer_l2(leaf, tt, tm).backward()
    assert leaf.grad[0, 0].abs().sum() > 0 and leaf.grad[0, 1].abs().sum() == 0
    perfect = tt.clone().float().requires_grad_(True)
    chamfer_l2(perfect, tt, tm).backward()
    assert torch.isfinite(perfect.grad).all()
    none = tp.clone().requires_grad_(True)
    loss = chamfer_l2(none, tt, torch.zeros_like(tm))
    loss.backward()
    assert float(loss.detach()) == 0.0 and none.grad is not None


def test_chamfer_l2_with_padded_targets_uses_the_real_points_only():
    """LiDAR's case: a true set holds n ≤ K real points, the rest of its K slots is padding."""
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 3, 12)), rng.normal(size=(2, 3, 12))  # 4 points per token
    valid = np.arange(4) < rng.integers(1, 5, size=(2, 3, 1))  # (B, N, K): n real points each
    target.reshape(2, 3, 4, 3)[~valid] = 1e3  # padding far away: it must never be the nearest point
    mask = np.array([[True, True, False], [False, True, True]])
    d1, d2 = [], []
    for b, n in zip(*np.nonzero(mask), strict=True):
        p, t = pred[b, n].reshape(4, 3), target[b, n].reshape(4, 3)[valid[b, n]]
        d = ((p[:, None] - t[None]) ** 2).sum(-1)
        d1 += list(d.min(axis=1))
        d2 += list(d.min(axis=0))
    tp, tt, tm, tv = (torch.tensor(a) for a in (pred, target, mask, valid))
    assert np.isclose(float(chamfer_l2(tp, tt, tm, target_valid=tv)), np.mean(d1) + np.mean(d2), rtol=1e-5)
    assert float(chamfer_l2(tt, tt, tm, target_valid=tv)) > 0  # padded slots predicted far away count in dist1


def test_plugin_loss_and_position():
    plugin = PointsPlugin()
    stream = plugin.tokenize(plugin.decode(KITTEN.read_bytes(), str(KITTEN)), None)
    values = torch.as_tensor(stream.values)[None]
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, :38] = True
    assert float(plugin.loss(values, values, mask)) == 0.0
    assert np.isclose(float(plugin.loss(values, values, mask)), float(chamfer_l2(values, values, mask)))
    assert float(plugin.loss(values * 1.1, values, mask)) > 0
    position = plugin.build_position(48)
    assert isinstance(position, MLPPosition) and position(torch.as_tensor(stream.coords)[None]).shape == (1, 64, 48)
    assert plugin.position_every_block and plugin.default_mask == {"strategy": "random", "ratio": 0.6}


def test_pointnet_embed_is_point_order_invariant():
    torch.manual_seed(0)
    embed = PointsPlugin().build_embed(32).eval()
    assert isinstance(embed, PointNetEmbed)
    values = torch.randn(2, 5, 96)
    shuffled = values.reshape(2, 5, 32, 3)[:, :, torch.randperm(32)].reshape(2, 5, 96)
    out = embed(values)
    assert out.shape == (2, 5, 32) and torch.allclose(out, embed(shuffled), atol=1e-5)
    assert isinstance(PointsPlugin({"embed": "linear"}).build_embed(32), torch.nn.Linear)


def test_point_block_masks_a_contiguous_region():
    plugin = PointsPlugin()
    stream = plugin.tokenize(plugin.decode(BUNNY.read_bytes(), str(BUNNY)), None)
    spec = MaskSpec(strategy="block", ratio=0.6)  # metric coordinates: nearest-centre neighbourhoods
    for seed in range(5):
        visible = MaskPolicy({"points": spec})({"points": stream}, np.random.default_rng(seed))["points"]
        assert visible.sum() == num_visible(64, 0.6) == 25
        hidden = stream.coords[~visible]
        # one hidden centre seeds the block: every hidden centre is nearer to it than any visible one
        nearer = [np.linalg.norm(hidden - c, axis=1).max() <= np.linalg.norm(stream.coords[visible] - c, axis=1).min()
                  for c in hidden]
        assert any(nearer), seed
    again = MaskPolicy({"points": spec})({"points": stream}, np.random.default_rng(4))["points"]
    assert np.array_equal(again, visible)
    padded = TokenStream(values=stream.values, coords=stream.coords, unit=stream.unit, valid=np.arange(64) < 50,
                         axes=stream.axes)
    visible = MaskPolicy({"points": spec})({"points": padded}, np.random.default_rng(0))["points"]
    assert visible.sum() == num_visible(50, 0.6) and not visible[50:].any()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.ply", "empty file (0 bytes)"),
        ("garbage.ply", "corrupt PLY header: no 'ply'"),
        ("garbage.obj", "no points could be read"),
        ("nan.xyz", "non-finite coordinates"),
        ("inf.npy", "non-finite coordinates"),
        ("five.xyz", "too few points: 5 < min_points 32"),
        ("identical.xyz", "degenerate: all points identical"),
        ("kitten.las", "unsupported extension '.las'"),
        ("objects.npy", "not a readable .npy array"),
        ("flat.npy", "mis-shaped"),
    ],
)
def test_bad_files_raise_typed_error_with_reason(files, name, reason):
    with pytest.raises(BadInputError) as info:
        PointsPlugin().decode(files[name].read_bytes(), str(files[name]))
    assert info.value.reason.startswith(reason), info.value.reason


def test_size_limits():
    data = KITTEN.read_bytes()
    capped = PointsPlugin({"max_points": 5000}).decode(data, "k.xyz")  # over the limit: a seeded subsample
    again = PointsPlugin({"max_points": 5000}).decode(data, "k.xyz")
    assert capped.shape == (5000, 3) and np.array_equal(capped, again)
    with pytest.raises(BadInputError, match="oversized file"):
        PointsPlugin({"max_file_bytes": 1000}).decode(data, "k.xyz")
    with pytest.raises(BadInputError, match="not a recognised"):
        PointsPlugin().decode(b"hello world\n" * 10, "no-extension")


def test_points_plugin_passes_conformance_kit(files):
    good = [KITTEN.read_bytes(), BUNNY.read_bytes(), files["kitten.ply"].read_bytes(),
            files["kitten.pcd"].read_bytes(), files["kitten.npy"].read_bytes(), files["bunny.stl"].read_bytes()]
    bad = [files[n].read_bytes() for n in ["empty.ply", "garbage.ply", "nan.xyz", "five.xyz", "identical.xyz"]]
    check_plugin(PointsPlugin(), good=good, bad=bad)


def test_render_shows_three_panels():
    plugin = PointsPlugin()
    stream = plugin.tokenize(plugin.decode(BUNNY.read_bytes(), str(BUNNY)), None)
    stream.visible = MaskPolicy({"points": MaskSpec(ratio=0.6)})({"points": stream}, np.random.default_rng(0))["points"]
    picture = plugin.render(stream, stream.values.copy())
    assert picture.dtype == np.uint8 and picture.shape == (3 * PANEL + 8, 3 * PANEL + 8, 3)  # 3 viewpoints
    assert not np.array_equal(picture[:PANEL, :PANEL], picture[-PANEL:, :PANEL])  # different views
    picture = picture[:PANEL]
    original, masked, recon = (picture[:, i * (PANEL + 4) : i * (PANEL + 4) + PANEL] for i in range(3))
    assert (picture[:, PANEL : PANEL + 4] == 255).all()
    assert np.array_equal(recon, original)  # a perfect prediction redraws the same points
    assert (original != 255).any(axis=2).mean() > 0.03  # a drawn cloud, not a blank panel
    assert (masked == 215).all(axis=2).any()  # hidden groups grey
    wrong = plugin.render(stream, np.zeros_like(stream.values))  # hidden groups collapse onto their centres
    assert not np.array_equal(wrong[:PANEL, -PANEL:], original)


def test_config_is_validated():
    with pytest.raises(ValidationError):
        PointsPlugin({"num_group": 2048})
    with pytest.raises(ValidationError):
        PointsPlugin({"group_size": 2000})
    with pytest.raises(ValidationError):
        PointsPlugin({"scale_range": (1.5, 0.5)})
    with pytest.raises(ValidationError):
        PointsPlugin({"npoints": 2048})  # unknown field
    assert PointsPlugin({"num_group": 128, "group_size": 16}).token_shape == (128, 48, 3)
    described = PointsPlugin().describe()
    assert described["reference"] == "Point-MAE (Pang et al. 2022)"
    assert described["tokens"] == {"N": 64, "D": 96, "C": 3}


def test_trains_in_the_model():
    from polymae.models import PolyMAE, resolve_model_config
    from polymae.tokenizer import streams_to_columns

    plugin = PointsPlugin()
    array = plugin.decode(KITTEN.read_bytes(), str(KITTEN))
    policy = MaskPolicy({"points": MaskSpec(**plugin.default_mask)})
    streams = []
    for i, rng in enumerate(np.random.default_rng(s) for s in (0, 1)):
        sample = {"points": plugin.tokenize(array, rng)}
        policy.apply(sample, str(i), 0)
        streams.append(sample["points"])
    batch = {k: torch.as_tensor(v) for k, v in streams_to_columns("points", streams).items()}
    torch.manual_seed(0)
    model = PolyMAE({"points": plugin}, resolve_model_config("tiny", {"depth": 2}))
    loss = model(batch)[0]
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    grads = [p.grad for p in model.embed.parameters()] + [p.grad for p in model.position.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)



def test_ply_with_faces_is_sampled_on_its_surface(tmp_path):
    mesh = o3d.io.read_triangle_mesh(str(BUNNY))
    path = tmp_path / "bunny_mesh.ply"
    o3d.io.write_triangle_mesh(str(path), mesh)
    points = PointsPlugin().decode(path.read_bytes(), str(path))
    assert points.shape == (8192, 3)  # surface samples, not the 1,839 vertices
    as_obj = PointsPlugin().decode(BUNNY.read_bytes(), str(BUNNY))
    assert as_obj.shape == (8192, 3)
