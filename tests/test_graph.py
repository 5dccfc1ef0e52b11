"""The 3D graph builder, padding and storage against brute force on small random samples."""

from __future__ import annotations

import json
import logging
import re

import jax
import numpy as np
import pytest

from asign_jax.config import base_config
from asign_jax.errors import DataError
from asign_jax.graph import build, contract, cross, io, iou, padding
from asign_jax.graph import edges as graph_edges
from asign_jax.graph.contract import EDGE_CROSS, EDGE_INTRA, EDGE_SELF, WEIGHT_FLOOR
from asign_jax.preprocess.prepared import PreparedSample, PreparedSection
from asign_jax.registration.result import RegisteredSample

R = 112.0


# ---------------------------------------------------------------------------------------------
# brute force references

def random_points(n_layers=3, n=30, side=1000.0, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, side, (n_layers * n, 2))
    layer = np.repeat(np.arange(n_layers), n)
    feats = rng.normal(size=(n_layers * n, dim))
    return xy, layer, feats


def brute_scores(xy, layer, feats, radius, reach=None):
    """(N, N) e = IoU + cosine, -inf for same layer (and beyond ``reach``)."""
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    e = iou.circle_iou(d, radius) + fn @ fn.T
    bad = layer[:, None] == layer[None, :]
    if reach is not None:
        bad |= d > reach
    return np.where(bad, -np.inf, e)


def brute_topk(scores, k):
    """{(sender, receiver): score} for each row's k largest finite entries."""
    out = {}
    for i, row in enumerate(scores):
        for j in np.argsort(-row, kind="stable")[:k]:
            if np.isfinite(row[j]):
                out[(int(j), int(i))] = float(row[j])
    return out


def brute_knn(xy, layer, k):
    """{(sender, receiver): distance} for the k nearest same-layer nodes of each node."""
    out = {}
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    for i in range(len(xy)):
        cand = np.flatnonzero((layer == layer[i]) & (np.arange(len(xy)) != i))
        for j in cand[np.argsort(d[i, cand], kind="stable")][:k]:
            out[(int(j), int(i))] = float(d[i, j])
    return out


def edge_dict(edges, etype):
    m = edges.type == etype
    return {(int(s), int(r)): float(w) for s, r, w in
            zip(edges.senders[m], edges.receivers[m], edges.weight[m])}


# ---------------------------------------------------------------------------------------------
# IoU

@pytest.mark.parametrize("d", [0.0, 0.3, 0.8, 1.2, 1.6, 1.9])
def test_circle_iou_matches_pixel_count(d):
    r, h = 1.0, 0.002
    x = np.arange(-r + h / 2, d + r, h)
    y = np.arange(-r + h / 2, r, h)
    xx, yy = np.meshgrid(x, y, sparse=True)
    a = xx ** 2 + yy ** 2 < r * r
    b = (xx - d) ** 2 + yy ** 2 < r * r
    pix = np.sum(a & b) / np.sum(a | b)
    ana = float(iou.circle_iou(d, r))
    assert abs(ana - pix) / pix < 1e-2


def test_circle_iou_limits():
    v = iou.circle_iou(np.array([0.0, 2 * R, 2 * R + 1, 1e6]), R)
    np.testing.assert_allclose(v, [1.0, 0.0, 0.0, 0.0], atol=1e-12)
    assert np.all(np.diff(iou.circle_iou(np.linspace(0, 2 * R, 50), R)) < 0)


def test_overlap_pairs_brute_force():
    xy, layer, _ = random_points(n=40, side=800.0, seed=1)
    i, j, v = iou.overlap_pairs(xy, layer, R)
    got = {(int(a), int(b)): float(c) for a, b, c in zip(i, j, v)}
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    exp = {(a, b): float(iou.circle_iou(d[a, b], R)) for a in range(len(xy))
           for b in range(a + 1, len(xy)) if layer[a] != layer[b] and d[a, b] < 2 * R}
    assert got.keys() == exp.keys() and len(exp) > 20
    np.testing.assert_allclose([got[p] for p in exp], list(exp.values()), rtol=1e-9)
    m = iou.overlap_matrix(xy, layer, R)
    assert (m != m.T).nnz == 0 and m.nnz == 2 * len(exp)


# ---------------------------------------------------------------------------------------------
# edge sets

def test_intra_knn_brute_force():
    xy, layer, _ = random_points(seed=2)
    s, r, dist = graph_edges.intra_layer_knn(xy, layer, 5)
    got = {(int(a), int(b)): float(c) for a, b, c in zip(s, r, dist)}
    exp = brute_knn(xy, layer, 5)
    assert got.keys() == exp.keys()
    np.testing.assert_allclose([got[p] for p in exp], list(exp.values()), rtol=1e-9)


@pytest.mark.parametrize("k,reach_mode", [(5, False), (12, False), (12, True), (3, True)])
def test_cross_topk_brute_force(k, reach_mode):
    xy, layer, feats = random_points(n=40, seed=3 + k)
    kw = dict(cosine_all_max_nodes=10, cosine_radius=300.0) if reach_mode else {}
    s, r, e = cross.cross_layer_topk(xy, layer, feats, k, R, **kw)
    got = {(int(a), int(b)): float(c) for a, b, c in zip(s, r, e)}
    exp = brute_topk(brute_scores(xy, layer, feats, R, 300.0 if reach_mode else None), k)
    assert got.keys() == exp.keys()
    np.testing.assert_allclose([got[p] for p in exp], list(exp.values()), atol=1e-5)
    assert np.bincount(r, minlength=len(xy)).max() <= k


@pytest.mark.parametrize("reach_mode", [False, True])
def test_cross_topk_blocking_and_threads_do_not_change_the_result(reach_mode):
    xy, layer, feats = random_points(n=40, seed=11)
    kw = dict(cosine_all_max_nodes=10, cosine_radius=400.0) if reach_mode else {}
    ref = cross.cross_layer_topk(xy, layer, feats, 6, R, workers=1, **kw)
    for workers, block_elems in ((1, 50), (2, 50), (2, 1 << 20)):
        got = cross.cross_layer_topk(xy, layer, feats, 6, R, workers=workers,
                                     block_elems=block_elems, **kw)
        a = {(int(s), int(r)): float(e) for s, r, e in zip(*got)}
        b = {(int(s), int(r)): float(e) for s, r, e in zip(*ref)}
        assert a.keys() == b.keys()         # values: matmul blocking changes the last bits
        np.testing.assert_allclose([a[p] for p in b], list(b.values()), atol=1e-6)


def test_cross_topk_radius_keeps_overlaps_when_cosine_radius_small():
    """cosine_radius < 2r: IoU > 0 candidates stay candidates."""
    xy, layer, feats = random_points(n=40, seed=4)
    s, r, e = cross.cross_layer_topk(xy, layer, feats, 4, R, cosine_all_max_nodes=10,
                                     cosine_radius=50.0)
    exp = brute_topk(brute_scores(xy, layer, feats, R, 2 * R), 4)
    assert set(zip(s.tolist(), r.tolist())) == exp.keys()


def test_topk_smallest_with_masked_entries():
    rng = np.random.default_rng(5)
    cost = rng.normal(size=(50, 300)).astype(np.float32)
    cost[rng.random(cost.shape) < 0.6] = np.inf
    cost[:5, 40:] = np.inf          # rows with fewer than k candidates
    rows, cols, vals = cross._topk_smallest(cost, 12)
    got = set(zip(rows.tolist(), cols.tolist()))
    exp = {(i, int(j)) for i in range(50) for j in np.argsort(cost[i])[:12]
           if np.isfinite(cost[i, j])}
    assert got == exp
    np.testing.assert_array_equal(vals, cost[rows, cols])


def _check_graph_invariants(edges, n):
    pairs = set(zip(edges.senders.tolist(), edges.receivers.tolist()))
    assert len(pairs) == len(edges.senders), "duplicate edges"
    assert pairs == {(r, s) for s, r in pairs}, "not symmetric"
    self_loop = edges.senders == edges.receivers
    assert np.all(edges.type[self_loop] == EDGE_SELF) and np.all(self_loop[edges.type == EDGE_SELF])
    assert np.bincount(edges.receivers, minlength=n).min() >= 1
    assert np.all(edges.weight > 0) and np.all(np.diff(edges.receivers) >= 0)


def test_build_edges_matches_brute_force():
    xy, layer, feats = random_points(seed=6)
    n = len(xy)
    edges = build.build_edges(xy, layer, feats, k_intra=4, k_cross=5, radius=R)
    _check_graph_invariants(edges, n)
    # intra: union of both directions, 1/d normalised per receiver
    knn = brute_knn(xy, layer, 4)
    raw = {}
    for (s, r), d in knn.items():
        raw[(s, r)] = raw[(r, s)] = 1.0 / max(d, graph_edges.MIN_DISTANCE_PX)
    rmax = {}
    for (s, r), w in raw.items():
        rmax[r] = max(rmax.get(r, 0.0), w)
    got = edge_dict(edges, EDGE_INTRA)
    assert got.keys() == raw.keys()
    np.testing.assert_allclose([got[p] for p in raw], [w / rmax[p[1]] for p, w in raw.items()],
                               rtol=1e-6)
    # cross: union of both directions, weight = max(e, floor)
    top = brute_topk(brute_scores(xy, layer, feats, R), 5)
    exp = {}
    for (s, r), e in top.items():
        exp[(s, r)] = exp[(r, s)] = max(e, WEIGHT_FLOOR)
    got = edge_dict(edges, EDGE_CROSS)
    assert got.keys() == exp.keys()
    np.testing.assert_allclose([got[p] for p in exp], list(exp.values()), atol=1e-5)
    assert edges.stats["n_self"] == 0
    assert edges.stats["n_intra"] + edges.stats["n_cross"] == len(edges.senders)


def test_2d_only_switch_gives_no_cross_edges():
    xy, layer, feats = random_points(seed=7)
    edges = build.build_edges(xy, layer, feats, k_intra=4, k_cross=5, radius=R,
                              cross_layer=False)
    assert not np.any(edges.type == EDGE_CROSS) and edges.stats["n_cross"] == 0
    _check_graph_invariants(edges, len(xy))
    assert np.all(layer[edges.senders] == layer[edges.receivers])


def test_k_clipped_and_isolated_nodes_get_self_loops(caplog):
    xy = np.array([[0, 0], [10, 0], [0, 5000], [4000, 4000], [4100, 4000.0]])
    layer = np.array([0, 0, 1, 2, 2])
    feats = np.random.default_rng(8).normal(size=(5, 4))
    with caplog.at_level(logging.WARNING):
        e2d = build.build_edges(xy, layer, feats, k_intra=8, k_cross=3, radius=R,
                                cross_layer=False)
    assert "self-loop" in caplog.text
    _check_graph_invariants(e2d, 5)
    assert edge_dict(e2d, EDGE_SELF) == {(2, 2): 1.0}          # layer 1 has one node
    assert e2d.stats["n_intra"] == 4                           # k clipped to 1 per node
    e3d = build.build_edges(xy, layer, feats, k_intra=8, k_cross=3, radius=R)
    _check_graph_invariants(e3d, 5)
    assert e3d.stats["n_self"] == 0
    # node 2 can reach 4 other-layer nodes; k_cross=3 keeps 3 of them (plus reverse edges)
    assert np.sum((e3d.type == EDGE_CROSS) & (e3d.senders == 2)) >= 3


def test_single_layer_and_empty():
    xy, layer, feats = random_points(n_layers=1, n=10, seed=9)
    e = build.build_edges(xy, layer, feats, k_intra=3, k_cross=5, radius=R)
    assert e.stats["n_cross"] == 0 and e.stats["frac_overlap"] == 0.0
    _check_graph_invariants(e, 10)
    empty = build.build_edges(np.zeros((0, 2)), np.zeros(0, int), np.zeros((0, 4)),
                              k_intra=3, k_cross=5, radius=R)
    assert len(empty.senders) == 0
    with pytest.raises(ValueError, match="grouped by layer"):
        build.build_edges(xy, np.arange(10) % 2, feats, k_intra=3, k_cross=5, radius=R)


# ---------------------------------------------------------------------------------------------
# a tiny prepared + registered sample

def tile_index(pix, size):
    origin = (np.floor(pix / size) * size).astype(np.int64)
    uniq, inv = np.unique(origin, axis=0, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int32)


def make_section(name, layer, rng, g=5, d=8, t=4):
    grid = np.stack(np.meshgrid(np.arange(150, 1900, 190.0), np.arange(150, 1900, 190.0)),
                    -1).reshape(-1, 2)
    grid = grid[rng.random(len(grid)) < 0.8]
    pix = grid + rng.normal(0, 10, grid.shape)
    n = len(pix)
    r_origin, spot_region = tile_index(pix, 512)
    g_origin, spot_global = tile_index(pix, 1024)
    reg_g = (np.floor(r_origin / 1024) * 1024).astype(np.int64)
    region_global = np.array([np.flatnonzero((g_origin == o).all(1))[0] for o in reg_g],
                             np.int32)
    counts = rng.poisson(3, (n, g)).astype(np.float32)
    rc = np.zeros((len(r_origin), g), np.float32)
    np.add.at(rc, spot_region, counts)
    gc = np.zeros((len(g_origin), g), np.float32)
    np.add.at(gc, spot_global, counts)
    return PreparedSection(
        name=name, layer=layer, spot_ids=np.array([f"{name}_{i}" for i in range(n)]),
        array_xy=grid / 190.0, pixel_xy=pix, spot_counts=counts, spot_labels=np.log1p(counts),
        region_origin=r_origin, region_counts=rc, region_labels=np.log1p(rc),
        spot_region=spot_region, global_origin=g_origin, global_counts=gc,
        global_labels=np.log1p(gc), spot_global=spot_global, region_global=region_global,
        image_shape=np.array([2048, 2048]),
        spot_feats=rng.normal(size=(n, d)).astype(np.float32),
        region_feats=rng.normal(size=(len(r_origin), d)).astype(np.float32),
        region_tokens=rng.normal(size=(len(r_origin), t, d)).astype(np.float16),
        global_feats=rng.normal(size=(len(g_origin), d)).astype(np.float32),
        global_tokens=rng.normal(size=(len(g_origin), t, d)).astype(np.float16))


def make_sample(sample_id="S1", n_layers=3, seed=0):
    rng = np.random.default_rng(seed)
    secs = [make_section(f"{sample_id}_{i}", i, rng) for i in range(n_layers)]
    prepared = PreparedSample(sample_id=sample_id, genes=np.array([f"G{i}" for i in range(5)]),
                              sections=secs)
    affines, sxy, rxy, gxy = [], [], [], []
    for i, s in enumerate(secs):
        a = np.deg2rad(3.0 * (i - n_layers // 2))
        m = np.array([[np.cos(a), -np.sin(a), 20.0 * i], [np.sin(a), np.cos(a), -15.0 * i],
                      [0, 0, 1]])
        affines.append(m)

        def f(p, m=m):
            return p @ m[:2, :2].T + m[:2, 2]
        sxy.append(f(s.pixel_xy))
        rxy.append(f(s.region_centers(512)))
        gxy.append(f(s.global_centers(1024)))
    registered = RegisteredSample(sample_id, n_layers // 2, [s.name for s in secs],
                                  np.stack(affines), sxy, rxy, gxy)
    return prepared, registered


@pytest.fixture(scope="module")
def sample_graphs():
    cfg = base_config()
    out = []
    for sid, n_layers, seed in (("S1", 3, 0), ("S2", 2, 1)):
        prepared, registered = make_sample(sid, n_layers, seed)
        out.append((prepared, registered,
                    build.build_sample_graph(prepared, registered, cfg.graph, cfg.data)))
    return out


def test_sample_graph_nodes_follow_contract(sample_graphs):
    prepared, registered, sg = sample_graphs[0]
    secs = prepared.sections
    keys = {"spot": {"feat", "label", "label_mask", "known", "layer", "xy", "region_idx",
                     "global_idx"},
            "region": {"feat", "tokens", "label", "label_mask", "known", "layer", "xy",
                       "global_idx"},
            "global": {"feat", "tokens", "label", "label_mask", "known", "layer", "xy"}}
    for scale in contract.SCALES:
        g = sg.graph(scale)
        assert set(g.nodes) == keys[scale] and set(g.edges) == {"weight", "type"}
        n = int(g.n_node[0])
        assert all(v.shape[0] == n for v in g.nodes.values())
        assert g.nodes["label_mask"].all() and not g.nodes["known"].any()
        assert g.nodes["xy"].dtype == np.float32 and g.nodes["layer"].dtype == np.int32
        assert g.senders.dtype == np.int32 and g.edges["weight"].dtype == np.float32
        assert int(g.n_edge[0]) == len(g.senders)
        edges = graph_edges.ScaleEdges(g.senders, g.receivers, g.edges["weight"],
                                       g.edges["type"], {})
        _check_graph_invariants(edges, n)
        assert np.any(g.edges["type"] == EDGE_CROSS)          # all three scales are 3D
        off = sg.layer_offsets[scale]
        assert off[-1] == n and np.all(g.nodes["layer"][off[1]:off[2]] == 1)
    spot, region, glob = sg.spot, sg.region, sg.global_
    l1 = slice(sg.layer_offsets["spot"][1], sg.layer_offsets["spot"][2])
    np.testing.assert_allclose(spot.nodes["xy"][l1], registered.spot_xy[1], atol=1e-3)
    np.testing.assert_array_equal(spot.nodes["label"][l1], secs[1].spot_labels)
    # each spot's region/global node is in its layer and within half a tile (registered)
    ri, gi = spot.nodes["region_idx"], spot.nodes["global_idx"]
    assert np.all(region.nodes["layer"][ri] == spot.nodes["layer"])
    assert np.all(glob.nodes["layer"][gi] == spot.nodes["layer"])
    assert np.abs(region.nodes["xy"][ri] - spot.nodes["xy"]).max() < 256 * 1.1
    assert np.abs(glob.nodes["xy"][gi] - spot.nodes["xy"]).max() < 512 * 1.1
    assert np.all(region.nodes["global_idx"][ri] == gi)
    assert sg.stats["spot"]["frac_overlap"] > 0.9
    assert region.nodes["tokens"].shape[1:] == (4, 8)


def test_sample_graph_rejects_mismatched_registration():
    from asign_jax.errors import DataError
    cfg = base_config()
    prepared, registered = make_sample("S3", 2, 3)
    registered.spot_xy[1] = registered.spot_xy[1][:-1]
    with pytest.raises(DataError, match="spot_xy"):
        build.build_sample_graph(prepared, registered, cfg.graph, cfg.data)


def test_padding_round_trip_masks_degrees_and_stack(sample_graphs):
    graphs = [sg for _, _, sg in sample_graphs]
    budget = padding.budget_for(graphs, multiple=64)
    padded = [padding.pad_sample(sg, budget) for sg in graphs]
    for sg, p in zip(graphs, padded):
        for scale in contract.SCALES:
            g, gp = sg.graph(scale), p.graph(scale)
            n, e = int(g.n_node[0]), int(g.n_edge[0])
            assert gp.nodes["feat"].shape[0] == budget[scale].n_node
            assert len(gp.senders) == budget[scale].n_edge
            assert budget[scale].n_node % 64 == 0 and budget[scale].n_edge % 64 == 0
            nm, em = np.asarray(contract.node_mask(gp)), np.asarray(contract.edge_mask(gp))
            assert nm[:n].all() and not nm[n:].any() and em[:e].all() and not em[e:].any()
            # padded edges connect padded nodes; every node (padding too) has in-degree >= 1
            assert np.all(gp.senders[e:] >= n) and np.all(gp.receivers[e:] >= n)
            assert np.bincount(gp.receivers, minlength=len(nm)).min() >= 1
            assert np.all(gp.senders[e:] == gp.receivers[e:])
            assert np.all(np.diff(gp.receivers) >= 0)
            for k in g.nodes:
                np.testing.assert_array_equal(gp.nodes[k][:n], g.nodes[k])
            np.testing.assert_array_equal(gp.senders[:e], g.senders)
            np.testing.assert_array_equal(gp.edges["weight"][:e], g.edges["weight"])
        # indices still point at the right (real) nodes
        ri = p.spot.nodes["region_idx"][:int(sg.spot.n_node[0])]
        assert np.all(np.asarray(contract.node_mask(p.region))[ri])
        un = padding.unpad_sample(p)
        for scale in contract.SCALES:
            jax.tree.map(np.testing.assert_array_equal, un.graph(scale), sg.graph(scale))
    stacked = padding.stack_samples(padded)
    assert stacked["spot"].nodes["feat"].shape == (2, budget.spot.n_node, 8)
    assert stacked["global"].n_node.shape == (2, 2)
    with pytest.raises(ValueError):
        padding.stack_samples([padded[0], graphs[1]])


def test_save_load_and_build_all(tmp_path, sample_graphs, caplog):
    prepared, registered, sg = sample_graphs[0]
    path = io.save_sample_graph(sg, tmp_path)
    assert path == tmp_path / "graphs" / "S1.npz" and not list(path.parent.glob("*.tmp"))
    back = io.load_sample_graph(tmp_path, "S1")
    assert back.section_names == sg.section_names and back.stats == sg.stats
    for scale in contract.SCALES:
        jax.tree.map(np.testing.assert_array_equal, back.graph(scale), sg.graph(scale))
        np.testing.assert_array_equal(back.layer_offsets[scale], sg.layer_offsets[scale])
    # build_all: S1 registered, S2 not: a 3D graph on unaligned sections is refused
    cfg = base_config()
    p2, _, _ = sample_graphs[1]
    for p in (prepared, p2):
        p.save(tmp_path)
    (tmp_path / "prepared" / "index.json").write_text(json.dumps({"samples": ["S1", "S2"]}))
    registered.save(tmp_path)
    missing = tmp_path / "registration" / "S2" / "registered.npz"
    with pytest.raises(DataError, match=re.escape(f"{missing}: sample 'S2' ")):
        io.build_all(tmp_path, cfg)
    with caplog.at_level(logging.INFO):
        paths = io.build_all(tmp_path, cfg, sample_ids=["S1"])
    assert set(paths) == {"S1"} and "cross" in caplog.text
    s1 = io.load_sample_graph(tmp_path, "S1")
    for scale in contract.SCALES:
        jax.tree.map(np.testing.assert_array_equal, s1.graph(scale), sg.graph(scale))
    # registration.enabled=False: sections taken as aligned, their own pixel coordinates
    cfg.registration.enabled = False
    io.build_all(tmp_path, cfg, sample_ids=["S2"])
    s2 = io.load_sample_graph(tmp_path, "S2")
    np.testing.assert_allclose(s2.spot.nodes["xy"],
                               np.concatenate([s.pixel_xy for s in p2.sections]), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# calibrated cross-layer edges and edge statistics on a hand-built two-layer case

def two_layer_grid():
    """Two 3x3 grids (pitch 200 px); layer 1 is shifted 30 px right. Each spot's feature is a
    large common vector plus a one-hot of its grid position, as raw ResNet features (every raw
    cosine > 0.99): a spot resembles its own counterpart in the other layer only."""
    g = np.stack(np.meshgrid(np.arange(3), np.arange(3)), -1).reshape(-1, 2) * 200.0
    xy = np.concatenate([g, g + [30.0, 0.0]])
    layer = np.repeat([0, 1], 9)
    feats = np.full((18, 9), 10.0) + np.eye(9)[np.tile(np.arange(9), 2)]
    return xy, layer, feats


def _cross_pairs(edges):
    c = edges.type == EDGE_CROSS
    return edges.senders[c], edges.receivers[c], edges.weight[c]


def test_calibrated_cross_edges_on_two_layers():
    xy, layer, feats = two_layer_grid()
    kw = dict(k_intra=4, k_cross=12, radius=R)
    paper = build.build_edges(xy, layer, feats, cross_mode="paper", **kw)
    cal = build.build_edges(xy, layer, feats, cross_mode="calibrated", cross_radius=300.0, **kw)
    # paper form: 12 > 9 candidates, so every other-layer spot is joined, with raw cosine ~1
    s, r, w = _cross_pairs(paper)
    assert len(s) == 2 * 81
    d = np.linalg.norm(xy[s] - xy[r], axis=1)
    assert np.all(w[d >= 2 * R] > 0.99)                    # unrelated spots ~ the weight of an overlap
    # calibrated: an edge needs an overlap or more-than-average similarity
    s, r, w = _cross_pairs(cal)
    d = np.linalg.norm(xy[s] - xy[r], axis=1)
    assert np.all(d <= 300.0) and np.all(d < 2 * R)         # here: no dissimilar, non-overlapping edge
    twin = (s % 9) == (r % 9)
    assert twin.sum() == 18 and np.all(d[twin] == 30.0)     # every spot keeps its counterpart
    expect = iou.circle_iou(30.0, R) + 1.0                   # IoU + z-cosine of identical features
    np.testing.assert_allclose(w[twin], expect, rtol=1e-5)
    assert np.all(w[~twin] < w[twin].min())                  # a neighbour weighs less than the twin
    np.testing.assert_allclose(w[~twin], iou.circle_iou(d[~twin], R), rtol=1e-5)   # sim 0 there
    # the paper's similarity expansion adds only pairs more similar than expand_min_sim
    far = xy.copy()
    far[9:] += [1000.0, 0.0]                                 # layer 1 moved away: nothing overlaps
    none = build.build_edges(far, layer, feats, cross_mode="calibrated", cross_radius=300.0, **kw)
    assert none.stats["n_cross"] == 0
    exp = build.build_edges(far, layer, feats, cross_mode="calibrated", cross_radius=300.0,
                            expand_min_sim=0.5, cosine_radius=2000.0, **kw)
    s, r, _ = _cross_pairs(exp)
    assert len(s) == 18 and np.all((s % 9) == (r % 9))


def test_edge_statistics_by_hand():
    xy, layer, feats = two_layer_grid()
    e = build.build_edges(xy, layer, feats, k_intra=4, k_cross=12, radius=R, cross_mode="paper")
    st = e.stats
    # all 81 layer pairs, each edge in both directions; lengths by hand
    dx = (np.arange(3)[:, None] - np.arange(3)[None]).ravel() * 200.0
    lengths = np.array([np.hypot(a + 30.0, b) for a in dx for b in dx])      # 81 pairs
    overl = lengths < 2 * R
    assert st["pitch_px"] == pytest.approx(200.0)
    assert st["cross_iou0_share"] == pytest.approx(1 - overl.mean())
    assert st["cross_median_pitches"] == pytest.approx(np.median(lengths) / 200.0)
    assert st["cross_long_share"] == pytest.approx(np.mean(lengths / 200.0 > 4))
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    s, r, w = _cross_pairs(e)
    cos = (f[s] * f[r]).sum(1)
    np.testing.assert_allclose(w, iou.circle_iou(np.linalg.norm(xy[s] - xy[r], axis=1), R) + cos,
                               rtol=1e-5)
    on = np.linalg.norm(xy[s] - xy[r], axis=1) < 2 * R
    mw = st["mean_weight"]
    assert mw["cross_overlap"] == pytest.approx(w[on].mean(), rel=1e-5)
    assert mw["cross_no_overlap"] == pytest.approx(w[~on].mean(), rel=1e-5)
    assert mw["intra"] == pytest.approx(e.weight[e.type == EDGE_INTRA].mean(), rel=1e-5)
    assert mw["self"] is None
    cal = build.build_edges(xy, layer, feats, k_intra=4, k_cross=12, radius=R,
                            cross_mode="calibrated", cross_radius=300.0).stats
    assert cal["cross_iou0_share"] == 0.0 and cal["mean_weight"]["cross_no_overlap"] is None
    assert cal["mean_weight"]["cross_overlap"] < mw["cross_overlap"]


def test_region_and_global_k_intra_reach_their_graphs():
    # graph.{region,global}_k_intra are the same-layer neighbour counts of the tile graphs
    c = base_config()
    c.graph.region_k_intra, c.graph.global_k_intra = 3, 5
    s = build._scale_settings(c.graph, c.data)
    assert (s["spot"][0], s["region"][0], s["global"][0]) == (c.graph.k_intra, 3, 5)
    assert s["region"][2] == c.data.region_size / 2 and s["global"][2] == c.data.global_size / 2


def test_similarity_dims_reads_the_first_feature_columns():
    """graph.similarity_dims = k: the edges are those of the first k feature columns (the
    row's own histology window when context blocks follow); more than D is one clear error."""
    from asign_jax.errors import ConfigError
    cfg = base_config().graph
    feats = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_array_equal(build._similarity_feats(feats, cfg), feats)
    cfg.similarity_dims = 4
    np.testing.assert_array_equal(build._similarity_feats(feats, cfg), feats[:, :4])
    cfg.similarity_dims = 7
    with pytest.raises(ConfigError, match="graph.similarity_dims=7"):
        build._similarity_feats(feats, cfg)
