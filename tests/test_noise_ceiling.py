"""The noise_ceiling reference row (evaluation/references.py): binomial thinning + Spearman-Brown."""

from __future__ import annotations

import numpy as np

from asign_jax.evaluation import references
from asign_jax.evaluation.metrics import pearson
from asign_jax.evaluation.scoring import SamplePredictions, score_sample
from asign_jax.preprocess.normalize import normalize


def _counts(seed=0, n=600, g=40, depth=30.0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 0.5, (n, 3)) @ rng.normal(0, 0.6, (3, g))
    lam = depth * np.exp(signal) * rng.uniform(0.3, 2.0, g)
    return lam, rng.poisson(lam).astype(np.float32)


def test_ceiling_matches_the_noise_free_correlation():
    lam, counts = _counts()
    ceil = references.noise_ceiling(counts, "asign")
    # what a perfect (noise-free) predictor reaches against these labels
    truth = np.nanmean(pearson(normalize(lam, "asign"), normalize(counts, "asign"), axis=0))
    assert abs(np.nanmean(ceil) - truth) < 0.05, (np.nanmean(ceil), truth)
    # less noise (deeper counts) -> higher ceiling
    lam2, counts2 = _counts(depth=300.0)
    assert np.nanmean(references.noise_ceiling(counts2, "asign")) > np.nanmean(ceil) + 0.05


def test_ceiling_deterministic_by_seed_and_bounded():
    _, counts = _counts(seed=1)
    a = references.noise_ceiling(counts, "triplex", seed=3)
    np.testing.assert_array_equal(a, references.noise_ceiling(counts, "triplex", seed=3))
    assert not np.array_equal(a, references.noise_ceiling(counts, "triplex", seed=4))
    assert np.nanmin(a) >= 0 and np.nanmax(a) <= 1


def test_scoring_adds_the_row_per_scored_section_from_scored_counts_only():
    lam, counts = _counts(n=300, g=10)
    layer = np.repeat([0, 1, 2], 100)
    truth = normalize(counts, "asign")
    spot = {"label": truth, "layer": layer, "xy": np.zeros((300, 2))}
    scored = layer != 0
    noise = counts.copy()
    noise[layer == 0] = np.nan            # the known layer's counts are never read by the row
    p = SamplePredictions("S", ["a", "b", "c"], 0, spot, {"known_mean": truth * 0}, {
        "overlap_fallback": np.zeros(300, bool)}, scored, "known_mean",
        {"counts": np.nan_to_num(noise), "normalization": "asign"})
    sections, per_gene = score_sample(p)
    assert [s["section"] for s in sections] == ["b", "c"]
    for s, rows in zip(sections, (layer == 1, layer == 2)):
        row = s["methods"]["noise_ceiling"]
        want = np.nanmean(references.noise_ceiling(counts[rows], "asign"))
        assert abs(row["pcc_gene"] - want) < 1e-9 and np.isnan(row["mse"])
    assert np.stack(per_gene["noise_ceiling"]).shape == (2, 10)
