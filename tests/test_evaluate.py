"""Metrics, baselines and the evaluation reports (no model: a stand-in eval function)."""

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from asign_jax import atomic
from asign_jax.config import base_config
from asign_jax.evaluation import metrics as ev
from asign_jax.evaluation import references as baselines
from asign_jax.evaluation import reports, scoring
from asign_jax.graph import roles
from asign_jax.testing import random_sample_graph
from asign_jax.training import batches, folds

G = 6


# ---- metrics --------------------------------------------------------------------------------

def test_section_metrics_match_numpy_and_skip_constant_genes():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(30, G))
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    truth[:, 2] = 1.5                                          # constant gene in the truth
    pred[:, 4] = -3.0                                          # constant gene in the prediction
    m, r = ev.section_metrics(pred, truth)
    assert m["mse"] == pytest.approx(np.mean((pred - truth) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - truth)))
    expect = [np.corrcoef(pred[:, g], truth[:, g])[0, 1] for g in (0, 1, 3, 5)]
    np.testing.assert_allclose(r[[0, 1, 3, 5]], expect, rtol=1e-10)
    assert np.isnan(r[2]) and np.isnan(r[4]) and m["n_genes_skipped"] == 2
    assert m["pcc_gene"] == pytest.approx(np.mean(expect))
    spot = [np.corrcoef(pred[i], truth[i])[0, 1] for i in range(30)]
    assert m["pcc_spot"] == pytest.approx(np.mean(spot)) and m["n_spots_skipped"] == 0
    perfect, _ = ev.section_metrics(truth, truth)
    assert perfect["mse"] == 0 and perfect["pcc_gene"] == pytest.approx(1.0)


def test_aggregate_is_mean_over_sections_then_folds_with_population_std():
    def sec(v):
        return {"methods": {"asign": {"mse": v, "mae": v, "pcc_gene": v, "pcc_spot": None}}}
    f1 = [sec(1.0), sec(3.0)]                                   # fold mean 2 (unweighted)
    f2 = [sec(6.0)]
    results = [{"mean": {"asign": ev.fold_means(f, "asign")}} for f in (f1, f2)]
    agg = ev.aggregate(results)["asign"]
    assert agg["mean"]["mse"] == pytest.approx(4.0)
    assert agg["std"]["mse"] == pytest.approx(2.0)              # np.std([2, 6])
    assert math.isnan(agg["mean"]["pcc_spot"])
    assert atomic.json_safe({"a": float("nan"), "b": np.float32(2)}) == {"a": None, "b": 2.0}


# ---- baselines ------------------------------------------------------------------------------

def test_circle_iou():
    r = 10.0
    assert baselines.circle_iou(0.0, r) == pytest.approx(1.0)
    assert baselines.circle_iou(20.0, r) == 0.0 and baselines.circle_iou(35.0, r) == 0.0
    inter = r * r * (2 * np.pi / 3 - np.sqrt(3) / 2)           # lens area at d = r
    assert baselines.circle_iou(r, r) == pytest.approx(inter / (2 * np.pi * r * r - inter))
    d = np.linspace(0, 20, 9)
    assert np.all(np.diff(baselines.circle_iou(d, r)) < 0)


def test_overlap_is_iou_weighted_with_nearest_fallback():
    known_xy = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0]])
    labels = np.array([[1.0, 0.0], [3.0, 2.0], [7.0, 7.0]])
    query = np.array([[4.0, 0.0], [60.0, 70.0]])
    pred, fb = baselines.overlap(known_xy, labels, query, radius=5.0)
    w = baselines.circle_iou(np.array([4.0, 6.0]), 5.0)
    np.testing.assert_allclose(pred[0], (w[0] * labels[0] + w[1] * labels[1]) / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(pred[1], labels[2])              # nothing overlaps: nearest
    np.testing.assert_array_equal(fb, [False, True])


def test_baselines_read_only_the_known_layer():
    g = random_sample_graph(0, n_layers=3, spots_per_layer=9, n_region=3, n_global=3,
                            n_genes=G, feat_dim=4, n_tokens=1, k=2)
    m = roles.mask_sample(g, "test", known_layer=1)
    spot = roles.unpadded_nodes(m, "spot")
    preds, info = baselines.predict_sample(spot, 1, radius=112.0)
    known = spot["layer"] == 1
    np.testing.assert_allclose(preds["known_mean"][0], g.spot.nodes["label"][known].mean(0), rtol=1e-6)
    # the spots of the known layer sit on the same grid (jitter 30 px): they overlap themselves
    np.testing.assert_allclose(preds["overlap"][known].mean(), g.spot.nodes["label"][known].mean(), atol=0.5)
    assert info["overlap_fallback"].shape == (27,)


def test_label_propagation_reference_is_eq5_with_unit_trust():
    """Known rows stay; an unknown node is the weighted mean of its in-neighbours (alpha_j = 1),
    a node reached through it follows one iteration later; nothing else is read."""
    labels = np.array([[0.0, 2.0], [np.nan, np.nan], [1e30, 1e30], [4.0, 6.0]], np.float32)
    known = np.array([True, False, False, True])
    senders, receivers = np.array([0, 3, 1]), np.array([1, 1, 2])
    out = baselines.label_propagation(labels, known, senders, receivers,
                                      np.array([1.0, 3.0, 1.0]), n_iter=3)
    np.testing.assert_allclose(out, [[0, 2], [3, 5], [3, 5], [4, 6]], rtol=1e-6)
    one = baselines.label_propagation(labels, known, senders, receivers,
                                      np.array([1.0, 3.0, 1.0]), n_iter=1)
    np.testing.assert_allclose(one[2], [2, 4], rtol=1e-6)       # still the known mean


def test_label_propagation_row_reads_only_the_known_layer():
    g = random_sample_graph(0, n_layers=3, spots_per_layer=9, n_region=3, n_global=3,
                            n_genes=G, feat_dim=4, n_tokens=1, k=2)
    lab = np.array(g.spot.nodes["label"], copy=True)
    lab[np.asarray(g.spot.nodes["layer"]) != 1] = np.nan
    bad = g.replace_graphs({"spot": g.spot._replace(nodes={**g.spot.nodes, "label": lab})})
    preds = []
    for sample in (g, bad):
        m = roles.mask_sample(sample, "test", known_layer=1)
        preds.append(baselines.predict_sample(roles.unpadded_nodes(m, "spot"), 1, 112.0,
                                              spot_graph=m.spot, n_iter=4)[0])
    assert np.isfinite(preds[0]["label_propagation"]).all()
    np.testing.assert_array_equal(preds[0]["label_propagation"], preds[1]["label_propagation"])
    known = np.asarray(g.spot.nodes["layer"]) == 1
    np.testing.assert_array_equal(preds[0]["label_propagation"][known],
                                  np.asarray(g.spot.nodes["label"])[known])
    assert not np.allclose(preds[0]["label_propagation"][~known], preds[0]["known_mean"][~known])


# ---- the fold evaluation and the reports ----------------------------------------------------

def test_evaluate_fold_and_reports(tmp_path):
    import anndata as ad

    cfg = base_config()
    cfg.train.eval_genes = ("g1", "missing")
    genes = [f"g{i}" for i in range(G)]
    graphs = {s: random_sample_graph(i, n_layers=3, spots_per_layer=9, n_region=3,
                                     n_global=3, n_genes=G, feat_dim=4, n_tokens=1,
                                     k=2, sample_id=s) for i, s in enumerate("ABC")}
    fold = folds.Fold(index=0, test_samples=("A",), train_samples=("B",),
                      known_layer={"A": 0, "C": 1}, val_samples=("C",))
    pool = batches.build_pool(graphs, fold, seed=0)
    assert pool.roles == ("test", "train", "val")
    truth = np.asarray(graphs["A"].spot.nodes["label"])

    def fake_eval(sample):                                      # A's truth + 0.5, padded
        n = sample["spot"].nodes["label"].shape[0]
        assert sample["spot"].nodes["label_mask"].sum() == 9      # it gets the MASKED sample
        pred = np.pad(truth + 0.5, ((0, n - len(truth)), (0, 0)))
        return {"spot": pred, "spot_model": pred - 0.5, "imputed": pred + 0.5}

    res, per_gene, predictions = scoring.evaluate_fold(cfg, fold, fake_eval, graphs, pool.pad)
    assert res["role"] == "test" and res["samples"] == ["A"]
    assert [s["section"] for s in res["sections"]] == ["A1", "A2"]   # known layer not scored
    for s in res["sections"]:
        assert s["methods"]["asign"]["mse"] == pytest.approx(0.25, rel=1e-5)
        assert s["methods"]["asign"]["pcc_gene"] == pytest.approx(1.0)
        assert math.isnan(s["methods"]["known_mean"]["pcc_gene"])    # constant prediction
        assert s["methods"]["known_mean"]["n_genes_skipped"] == G
        assert s["methods"]["asign_model"]["mse"] == pytest.approx(0.0, abs=1e-10)
        assert s["methods"]["asign_propagation"]["mse"] == pytest.approx(1.0, rel=1e-5)
    assert per_gene["asign"].shape == (2, G)
    val, val_per_gene, _ = scoring.evaluate_fold(cfg, fold, fake_eval, graphs, pool.pad, "val")
    assert val["role"] == "val" and [s["section"] for s in val["sections"]] == ["C0", "C2"]
    with pytest.raises(ValueError, match="no val samples"):
        scoring.evaluate_fold(cfg, folds.Fold(0, ("A",), ("B",), {"A": 0}), fake_eval, graphs,
                              pool.pad, "val")
    pixel = np.random.default_rng(0).uniform(0, 900, (27, 2))
    prepared = SimpleNamespace(sections=[SimpleNamespace(
        name=f"A{l}", spot_ids=np.array([f"{i}x{l}" for i in range(9)]), image_path="",
        pixel_xy=pixel[9 * l:9 * l + 9]) for l in range(3)])
    reports.write_predictions(tmp_path / "predictions" / "A.h5ad", predictions[0], genes, 0,
                              prepared)
    reports.plot_gene_maps(tmp_path / "plots", "A", predictions[0], genes, cfg.train.eval_genes)
    adata = ad.read_h5ad(tmp_path / "predictions" / "A.h5ad")
    assert adata.shape == (27, G) and list(adata.var_names) == genes
    np.testing.assert_allclose(adata.layers["truth"], truth)
    assert set(adata.obs.columns) >= {"section", "layer", "known", "spot_id"}
    assert list(adata.obs_names[:2]) == ["A0_0x0", "A0_1x0"] and adata.obs["spot_id"].iloc[9] == "0x1"
    np.testing.assert_allclose(adata.obsm["spatial"], pixel)           # each section's own px
    np.testing.assert_allclose(adata.obsm["spatial_3d"][:, :2], graphs["A"].spot.nodes["xy"])
    np.testing.assert_array_equal(adata.obsm["spatial_3d"][:, 2], np.repeat([0, 1, 2], 9))
    assert adata.obs["known"].sum() == 9 and set(adata.layers) >= {"known_mean", "overlap", "similarity"}
    assert (tmp_path / "plots" / "genemap_A_A1_g1.png").exists()
    # the same table as SpatialData when spatialdata is installed (skipped with one line else)
    from asign_jax.evaluation import spatialdata_out
    if spatialdata_out.available():
        import spatialdata
        sd = spatialdata.read_zarr(tmp_path / "predictions" / "A.zarr")
        t = sd.tables["table"]
        np.testing.assert_allclose(t.layers["truth"], truth)
        c = sd.shapes[t.obs["region"].iloc[10]].geometry.loc[int(t.obs["instance_id"].iloc[10])]
        np.testing.assert_allclose([c.x, c.y], pixel[10])
    else:
        assert not (tmp_path / "predictions" / "A.zarr").exists()

    res2 = json.loads(json.dumps(atomic.json_safe(res)))            # as read back from done.json
    agg = reports.write_reports(tmp_path, [res2], [per_gene], genes, val_results=[val])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) >= {"folds", "mean", "std", "baselines", "components", "validation"}
    assert m["validation"]["folds"][0]["samples"] == ["C"]
    assert set(m["validation"]["methods"]) == set(m["folds"][0]["mean"])
    assert set(m["components"]) == {"asign_model", "asign_propagation"}
    assert set(m["baselines"]) == set(baselines.METHODS) >= {"known_mean", "overlap",
                                                              "similarity"}
    assert set(m["mean"]) == {"mse", "mae", "pcc_gene", "pcc_spot"}
    assert m["mean"]["mse"] == pytest.approx(0.25, rel=1e-5) and m["std"]["mse"] == 0.0
    assert m["baselines"]["known_mean"]["mean"]["pcc_gene"] is None
    rows = list(csv.DictReader(open(tmp_path / "per_gene_pcc.csv")))
    assert len(rows) == G and float(rows[0]["pcc_asign"]) == pytest.approx(1.0)
    assert (tmp_path / "plots" / "pcc_sections.png").exists()
    table = reports.summary_table(agg)
    assert "asign" in table and "overlap" in table and "pcc_spot" in table
    assert "nan" not in table
    known_row = next(l for l in table.splitlines() if l.startswith("known_mean"))
    assert "undefined" in known_row
