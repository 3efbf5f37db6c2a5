"""Data integrity of point files: header checks before open3d (truncation, bit flips, header/body
mismatch) on copies of the shipped kitten and bunny written by open3d, decoded twice each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from polymae.modalities import BadInputError
from polymae.modalities.lidar import read_scan
from polymae.modalities.points import PointsPlugin
from polymae.ops.mesh_headers import MalformedFileError, check_declared_size, parse_ply_header

POINTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "points"
KITTEN, BUNNY = POINTS / "kitten.xyz", POINTS / "bunny_npm_lowres.obj"  # 5,210 points; 1,839 vertices, 3,674 faces


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, bytes]:
    """Name → bytes of the kitten cloud and bunny mesh as open3d writes them."""
    d = tmp_path_factory.mktemp("integrity")
    cloud, mesh = o3d.io.read_point_cloud(str(KITTEN)), o3d.io.read_triangle_mesh(str(BUNNY))
    for name, ascii_ in [("kitten.ply", False), ("kitten_ascii.ply", True), ("kitten.pcd", False),
                         ("kitten_ascii.pcd", True)]:
        assert o3d.io.write_point_cloud(str(d / name), cloud, write_ascii=ascii_)
    for name, ascii_ in [("bunny.ply", False), ("bunny_ascii.ply", True), ("bunny.off", True)]:
        assert o3d.io.write_triangle_mesh(str(d / name), mesh, write_ascii=ascii_)
    big = d / "kitten_be.ply"  # big-endian: open3d writes little-endian only, so by hand
    big.write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 5210\nproperty float x\nproperty float y\n"
                    b"property float z\nend_header\n" + np.asarray(cloud.points).astype(">f4").tobytes())
    return {p.name: p.read_bytes() for p in d.iterdir()}


def verdict(data: bytes, name: str) -> str | np.ndarray:
    """The decoded cloud, or the quarantine reason."""
    try:
        return PointsPlugin().decode(data, name)
    except BadInputError as err:
        return err.reason


def decode_twice(data: bytes, name: str) -> str | np.ndarray:
    first, second = verdict(data, name), verdict(data, name)
    assert type(first) is type(second), (name, first, second)
    if isinstance(first, str):
        assert first == second, name
    else:
        assert np.array_equal(first, second), name
    return first


def test_whole_files_pass_the_header_checks(written):
    for name, data in written.items():
        check_declared_size(data, Path(name).suffix)
        assert isinstance(decode_twice(data, name), np.ndarray), name
    header = parse_ply_header(written["bunny.ply"])
    assert header.format == "binary_little_endian"
    assert [(e.name, e.count) for e in header.elements] == [("vertex", 1839), ("face", 3674)]


@pytest.mark.parametrize("name, total, kind", [
    ("kitten.ply", 5210, "vertices"), ("kitten_ascii.ply", 5210, "vertices"), ("kitten_be.ply", 5210, "vertices"),
    ("bunny.ply", 1839, "vertices"), ("bunny_ascii.ply", 1839, "vertices"), ("bunny.off", 1839, "vertices"),
    ("kitten.pcd", 5210, "points"), ("kitten_ascii.pcd", 5210, "points"),
])
def test_truncated_copies_are_refused_with_the_count_of_what_is_there(written, name, total, kind):
    data = written[name]
    last_header_line = {".ply": b"end_header", ".pcd": b"DATA", ".off": b"1839 3674"}[Path(name).suffix]
    start = data.index(b"\n", data.index(last_header_line)) + 1  # the body
    for cut in (start + 7, start + (len(data) - start) // 3, len(data) - 10):
        reason = decode_twice(data[:cut], name)
        assert isinstance(reason, str) and reason.startswith("truncated: "), (cut, reason)
        have, of, what = reason.removeprefix("truncated: ").split(" ", 2)[0], reason.split()[3], reason.split()[4]
        if what == kind:  # cut among the vertices: fewer than declared, and the count declared
            assert int(have) < total and int(of) == total, reason
        else:  # cut among the faces
            assert name.startswith("bunny") and what == "faces" and int(of) == 3674, reason


def test_binary_ply_truncated_in_the_vertices_names_the_complete_ones(written):
    data = written["kitten.ply"]
    body = data.index(b"end_header\n") + 11
    assert decode_twice(data[:body + 24 * 100 + 5], "k.ply") == "truncated: 100 of 5210 vertices"


def test_header_body_mismatch(written):
    ply, off = written["kitten.ply"], written["bunny.off"]
    fewer = ply.replace(b"element vertex 5210", b"element vertex 5209", 1)
    more = ply.replace(b"element vertex 5210", b"element vertex 5211", 1)
    assert decode_twice(fewer, "k.ply").startswith("header/body mismatch: 24 bytes after the 5209 vertices")
    assert decode_twice(more, "k.ply") == "truncated: 5210 of 5211 vertices"
    assert decode_twice(off.replace(b"1839 3674", b"1839 3670", 1), "b.off").startswith("header/body mismatch: 4 lines")
    # one vertex more: the first face line ("3 i j k") reads as a vertex, and a face is missing
    assert decode_twice(off.replace(b"1839 3674", b"1840 3674", 1), "b.off") == "truncated: 3673 of 3674 faces"
    assert decode_twice(off.replace(b"1839 3674", b"1839 3674x", 1), "b.off").startswith("corrupt OFF header")
    double = written["kitten_ascii.ply"].replace(b"property double z\n", b"property double z\nproperty double w\n")
    assert decode_twice(double, "k.ply") == "truncated: 3907 of 5210 vertices"  # 15,630 values, 4 a row
    assert decode_twice(b"ply\nformat nonsense 1.0\nend_header\n", "x.ply").startswith("corrupt PLY header: format")


@pytest.mark.parametrize("name", ["kitten.ply", "bunny.ply", "bunny.off", "bunny_ascii.ply"])
def test_bit_flips_decode_the_same_way_twice(written, name):
    data = written[name]
    rng = np.random.default_rng(0)
    for at in rng.choice(len(data), 24, replace=False):
        flipped = bytearray(data)
        flipped[at] ^= 1 << int(rng.integers(8))
        decode_twice(bytes(flipped), name)


def test_non_finite_coordinates_are_refused(written):
    data = bytearray(written["kitten.ply"])
    body = data.index(b"end_header\n") + 11
    data[body + 8:body + 16] = np.array([np.nan]).tobytes()  # y of the first vertex
    assert decode_twice(bytes(data), "k.ply") == "non-finite coordinates (NaN or inf)"
    big = PointsPlugin({"max_points": 100})  # a NaN the subsample would have left out still counts
    with pytest.raises(BadInputError, match="non-finite"):
        big.decode(bytes(data), "k.ply")


def test_lidar_reads_are_checked_too(written):
    data = written["kitten.pcd"]
    with pytest.raises(BadInputError, match=r"truncated: \d+ of 5210 points"):
        read_scan(data[:-100], "scan.pcd")
    with pytest.raises(BadInputError, match=r"truncated: \d+ of 5210 vertices"):
        read_scan(written["kitten.ply"][:-100], "scan.ply")
    assert read_scan(data, "scan.pcd").shape == (5210, 4)


def test_malformed_file_error_is_a_value_error():
    with pytest.raises(ValueError, match="corrupt OFF header"):
        check_declared_size(b"OFF\n", ".off")
    assert issubclass(MalformedFileError, ValueError)
