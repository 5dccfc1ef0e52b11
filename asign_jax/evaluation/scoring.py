"""Scoring of one fold: the model's outputs and the reference methods on the same spots.

Methods: the model's outputs (``model_outputs``: for ASIGN ``asign`` = the final p'_s and its
two halves ``asign_model`` (the network's p_s) and ``asign_propagation`` (the CLI's p_i); for
any other model its "spot" prediction under its name) and the references of
``evaluation.references``, all on the spots of the test (or validation) layers of the
held-out samples.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import numpy as np

from asign_jax.evaluation import references as baselines
from asign_jax.evaluation.metrics import fold_means, section_metrics
from asign_jax.training import batches

logger = logging.getLogger(__name__)

MODEL_OUTPUTS = {"asign": "spot", "asign_model": "spot_model", "asign_propagation": "imputed"}
"""ASIGN's scored outputs: method name -> key of the model's output dict (``models.asign.ASIGN``)."""
COMPONENTS = tuple(m for m in MODEL_OUTPUTS if m != "asign")
"""ASIGN's two halves, scored like methods: the network's p_s and the CLI propagation p_i
(p'_s = alpha p_s + (1 - alpha) p_i, eq. 6). They show where ASIGN's numbers come from."""


def model_outputs(name: str) -> dict:
    """{method: output key} scored for the model ``config.model.name``: ASIGN's three outputs
    (``MODEL_OUTPUTS``), or, for any other model (the baselines, asign2d), its "spot"
    prediction under its own name."""
    return dict(MODEL_OUTPUTS) if name == "asign" else {name: "spot"}


@dataclasses.dataclass
class SamplePredictions:
    """Every method's prediction for every real spot of one held-out sample.

    Attributes:
      sample_id, section_names: the sample and its sections in layer order.
      known_layer: the layer whose labels were given.
      spot: unpadded spot node arrays of the UNMASKED graph ("label" = truth, "layer", "xy").
      preds: {method: (N, G) float32}.
      info: per-spot extras of the references ({"overlap_fallback": (N,) bool}).
      method: the model's method name (its row in ``preds``; the AnnData's X).
    """

    sample_id: str
    section_names: list
    known_layer: int
    spot: dict
    preds: dict
    info: dict
    method: str = "asign"

    @property
    def truth(self) -> np.ndarray:
        return np.asarray(self.spot["label"], np.float32)

    @property
    def layer(self) -> np.ndarray:
        return np.asarray(self.spot["layer"])


def predict_sample(config, graph, known_layer: int, eval_fn, pad_fn) -> SamplePredictions:
    """Runs the model and the references on one held-out sample (its MASKED view only).

    Args:
      config: full config (graph.spot_radius).
      graph: the sample's SampleGraph (unmasked; masked here, the truth is kept aside).
      known_layer: its known layer.
      eval_fn: ``(padded masked sample) -> model output dict`` (``step.make_eval_fn``).
      pad_fn: ``SampleGraph -> padded batch dict`` (the fold's shared budget).
    """
    masked = batches.mask_sample(graph, "test", known_layer)
    out = eval_fn(pad_fn(masked))
    spot = batches.unpadded_nodes(graph, "spot")
    n = len(spot["layer"])
    method = str(config.model.name)
    preds = {m: np.asarray(out[key], np.float32)[:n] for m, key in model_outputs(method).items()}
    base, info = baselines.predict_sample(batches.unpadded_nodes(masked, "spot"), known_layer,
                                          float(config.graph.spot_radius),
                                          int(config.evaluation.similarity_k))
    preds.update(base)
    return SamplePredictions(graph.sample_id, list(graph.section_names), int(known_layer), spot,
                             preds, info, method)


def score_sample(p: SamplePredictions) -> tuple[list[dict], dict]:
    """Per unknown section of ``p``: metrics of every method. Returns (section results,
    {method: [per-gene r (G,) per section]})."""
    sections, per_gene = [], {m: [] for m in p.preds}
    truth, layer = p.truth, p.layer
    for l in sorted(set(layer.tolist()) - {p.known_layer}):
        rows = layer == l
        res = {"sample": p.sample_id, "section": p.section_names[l], "layer": int(l),
               "n_spots": int(rows.sum()), "methods": {},
               "overlap_fallback": int(np.sum(rows & p.info["overlap_fallback"]))}
        for m, pred in p.preds.items():
            res["methods"][m], r = section_metrics(pred[rows], truth[rows])
            per_gene[m].append(r)
        sections.append(res)
    return sections, per_gene


def evaluate_fold(config, fold, eval_fn, graphs: Mapping, pad_fn, role: str = "test"
                  ) -> tuple[dict, dict, list[SamplePredictions]]:
    """Scores the model and the references on the held-out samples of one fold.

    Args:
      config: full config.
      fold: ``training.folds.Fold``.
      eval_fn: ``(padded masked sample) -> model output dict``.
      graphs: {sample id: SampleGraph} (unmasked: the truth comes from here).
      pad_fn: ``SampleGraph -> padded batch dict`` (the fold's shared budget).
      role: "test" (``fold.test_samples``, scored once at the end) or "val"
        (``fold.val_samples``, what selection may read).

    Returns:
      (fold result: {"fold", "role", "samples", "known_layer", "sections": [{sample, section,
       layer, n_spots, methods: {method: metrics}, overlap_fallback}], "mean": {method:
       metrics}}, per-gene r: {method: (n_sections, G)}, the predictions per sample).
    """
    samples = fold.samples_of(role)
    if not samples:
        raise ValueError(f"{fold.name} has no {role} samples")
    sections, per_gene, predictions = [], {}, []
    for sid in samples:
        p = predict_sample(config, graphs[sid], fold.known_layer[sid], eval_fn, pad_fn)
        sec, pg = score_sample(p)
        sections += sec
        for m, v in pg.items():
            per_gene.setdefault(m, []).extend(v)
        predictions.append(p)
        logger.info("%s %s sample %s: %d spots, %d %s sections; overlap fallback for %d spots",
                    fold.name, role, sid, len(p.layer), len(sec), role,
                    int(np.sum(p.info["overlap_fallback"] & (p.layer != p.known_layer))))
    methods = list(per_gene)
    result = {"fold": fold.index, "role": role, "samples": list(samples),
              "known_layer": {s: fold.known_layer[s] for s in samples}, "sections": sections,
              "mean": {m: fold_means(sections, m) for m in methods}}
    return result, {m: np.stack(v) for m, v in per_gene.items()}, predictions
