"""The generated demo scene: layout, exact geometry (depth + poses agree across views), determinism, texture."""
from __future__ import annotations

import numpy as np
import pytest

from reloc_ros.datasets import open_dataset
from reloc_ros.demo_scene import DEMO_K, build_scene, generate_demo_scene, render
from reloc_ros.geometry.pose import invert_T, transform_points


def test_layout(demo_scene_root):
    root = demo_scene_root
    mapping = (root / "mapping.txt").read_text().split()
    query = (root / "query.txt").read_text().split()
    assert len(mapping) == 120 and len(query) == 40
    names = [f"frame-{i:06d}" for i in range(160)]
    assert mapping + query == names  # one sequence: mapping first, then queries
    for n in (names[0], names[-1]):
        for suf in (".color.jpg", ".depth.png", ".pose.txt"):
            assert (root / f"{n}{suf}").is_file()
    np.testing.assert_allclose(np.loadtxt(root / "rgb-intrinsics.txt"), DEMO_K)
    readme = (root / "README.md").read_text()
    assert "seed 0" in readme and "generated" in readme


def _consistency(fa, fb, stride=7):
    """Backproject frame a's depth, move it into frame b and compare with b's depth there.

    Returns (share of visible points whose depth agrees within 1 cm, median |RGB difference| over them)."""
    cam = fa.camera
    uv = cam.pixel_grid(stride)
    ui, vi = np.rint(uv).astype(int).T
    z = fa.depth[vi, ui]
    X = transform_points(invert_T(fb.T_world_cam) @ fa.T_world_cam, cam.backproject(uv, z))
    uvb, ok = cam.project(X)
    ub, vb = np.rint(uvb).astype(int).T
    ok &= (ub >= 0) & (ub < cam.width) & (vb >= 0) & (vb < cam.height)
    zb = fb.depth[vb[ok], ub[ok]]
    agree = np.abs(zb - X[ok, 2]) < 0.01
    diff = np.abs(fa.image[vi[ok][agree], ui[ok][agree]].astype(float) - fb.image[vb[ok][agree], ub[ok][agree]])
    return agree.mean(), ok.sum(), np.median(diff)


def test_depth_and_poses_are_consistent_across_views(demo_scene_root):
    ds = open_dataset(demo_scene_root, frames="mapping.txt")
    for a, b in [(0, 3), (40, 44), (90, 93)]:
        fa, fb = ds[a], ds[b]
        share, n, diff = _consistency(fa, fb)
        assert n > 1000, "neighbouring mapping views should overlap"
        # Occlusions, pixel rounding at depth edges and mm quantisation leave a few percent.
        assert share > 0.9, f"frames {a},{b}: only {share:.1%} of reprojected depths agree"
        assert diff < 20, f"frames {a},{b}: corresponding pixels differ by {diff} grey levels"


def test_every_view_is_localizable(demo_scene_root):
    """Every frame sees textured surfaces at 0.3–8 m everywhere in the image, and the rotation blocks are exact."""
    ds = open_dataset(demo_scene_root)
    P = ds.poses()
    R = P[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    for i in range(0, len(ds), 9):
        f = ds[i]
        assert (f.depth > 0.3).all() and (f.depth < 8).all()
        assert 0.8 < np.median(f.depth) < 4.5
        g = np.abs(np.diff(f.image.astype(float).mean(2), axis=1))
        cells = g[:, :636].reshape(4, 120, 4, 159).mean(axis=(1, 3))
        assert cells.min() > 2.0, f"{f.name}: a textureless image region (mean gradient {cells.min():.2f})"


def test_queries_are_new_viewpoints(demo_scene_root):
    ds = open_dataset(demo_scene_root)
    P = ds.poses()
    m, q = P[:120], P[120:]
    d = np.linalg.norm(q[:, None, :3, 3] - m[None, :, :3, 3], axis=2).min(1)
    assert d.max() < 0.6 and np.median(d) > 0.08
    # exposure changes: mean brightness of queries varies more than that of mapping frames
    b = np.array([ds[i].image.mean() for i in range(120, 160, 4)])
    assert b.max() / b.min() > 1.3


def test_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_mapping=2, n_query=1, width=160, height=120, workers=1, progress=False)
    a = generate_demo_scene(tmp_path / "a", seed=3, **kw)
    b = generate_demo_scene(tmp_path / "b", seed=3, **kw)
    c = generate_demo_scene(tmp_path / "c", seed=4, **kw)
    for n in ("frame-000000.color.jpg", "frame-000002.color.jpg", "frame-000001.pose.txt", "frame-000002.depth.png"):
        assert (a / n).read_bytes() == (b / n).read_bytes()
    assert (a / "frame-000000.color.jpg").read_bytes() != (c / "frame-000000.color.jpg").read_bytes()
    K = np.loadtxt(a / "rgb-intrinsics.txt")
    np.testing.assert_allclose(K, [[125, 0, 79.5], [0, 125, 59.5], [0, 0, 1]])


def test_render_depth_is_exact_on_a_known_view():
    """Camera at the room centre looking along +x at the x = 4 wall: the centre ray hits it at exactly 2 m."""
    scene = build_scene(0)
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # cam z -> +x world, cam y (down) -> -z
    T[:3, 3] = [2.0, 1.5, 2.2]  # above the boxes, wall x = 4 straight ahead
    rgb, depth = render(scene, T, width=640, height=480)
    # pixel (319.5, 239.5) is between pixels; all four central pixels see the wall at z = 2 exactly
    np.testing.assert_allclose(depth[239:241, 319:321], 2.0, atol=1e-12)
    assert rgb.shape == (480, 640, 3) and rgb.std() > 10


def test_cli(tmp_path):
    from reloc_ros.demo_scene import main

    assert main(["--out", str(tmp_path / "s"), "--n-mapping", "1", "--n-query", "1", "--width", "64", "--height",
                 "48", "--workers", "1"]) == 0
    assert (tmp_path / "s" / "frame-000001.color.jpg").is_file()
    with pytest.raises(SystemExit):
        main([])
