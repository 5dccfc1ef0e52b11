"""Scoring of one fold: the model's outputs and the reference methods on the same spots.

Methods: the model's outputs (``model_outputs``: for ASIGN ``asign`` = the final p'_s and its
two halves ``asign_model`` (the network's p_s) and ``asign_propagation`` (the CLI's p_i); for
any other model its "spot" prediction under its name), the references of
``evaluation.references`` and, on synthetic data, the ``oracle`` ceiling, all on the spots of
the scored rows:

* role "test": the test layers of the held-out samples; the CLI's known set is the whole known
  layer (validation blocks included: at test time the known layer is given).
* role "val": the hidden layers of the validation samples, and the validation blocks of a test
  sample's known layer (known set: the rest of that layer). Never a test layer.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Optional

import numpy as np

from asign_jax.config import check_choice
from asign_jax.errors import ConfigError
from asign_jax.evaluation import references as baselines
from asign_jax.evaluation.metrics import fold_means, section_metrics
from asign_jax.graph import roles
from asign_jax.models.cli import fit_blend, mix


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
      scored: (N,) bool, the spots that are scored (test layers, or validation spots).
      method: the model's method name (its row in ``preds``; the AnnData's X).
    """

    sample_id: str
    section_names: list
    known_layer: int
    spot: dict
    preds: dict
    info: dict
    scored: Optional[np.ndarray] = None
    method: str = "asign"
    noise: Optional[dict] = None    # real data: {"counts": (N, G) raw, "normalization": str}
                                    # for the noise_ceiling row (references.noise_ceiling)

    def __post_init__(self):
        if self.scored is None:
            self.scored = self.layer != self.known_layer

    @property
    def truth(self) -> np.ndarray:
        return np.asarray(self.spot["label"], np.float32)

    @property
    def layer(self) -> np.ndarray:
        return np.asarray(self.spot["layer"])


def predict_sample(config, graph, known_layer: int, eval_fn, pad_fn, *, masked=None,
                   scored: Optional[np.ndarray] = None, references: bool = True,
                   oracle: Optional[np.ndarray] = None) -> SamplePredictions:
    """Runs the model (and the references) on one held-out sample (its MASKED view only).

    Args:
      config: full config (graph.spot_radius).
      graph: the sample's SampleGraph (unmasked: the truth is kept aside).
      known_layer: its known layer.
      eval_fn: ``(padded masked sample) -> model output dict`` (``step.make_eval_fn``).
      pad_fn: ``SampleGraph -> padded batch dict`` (the fold's shared budget).
      masked: the view the model and references see (default: the test view of
        ``known_layer``).
      scored: (N,) bool rows to score (default: every layer but the known one).
      references: also run the references (off for the periodic validation in training).
      oracle: (N, G) the generator's noise-free expression (synthetic data) or None.
    """
    masked = roles.mask_sample(graph, "test", known_layer) if masked is None else masked
    out = eval_fn(pad_fn(masked))
    spot = roles.unpadded_nodes(graph, "spot")
    n = len(spot["layer"])
    method = str(config.model.name)
    preds = {m: np.asarray(out[key], np.float32)[:n] for m, key in model_outputs(method).items()}
    info = {"overlap_fallback": np.zeros(n, bool)}
    if references:
        base, info = baselines.predict_sample(roles.unpadded_nodes(masked, "spot"),
                                              known_layer, float(config.graph.spot_radius),
                                              int(config.evaluation.similarity_k),
                                              spot_graph=_unpadded_spot_graph(masked),
                                              n_iter=int(config.model.asign.cli_iterations))
        preds.update(base)
    noise = None
    if isinstance(oracle, dict):        # real data: raw counts for the noise ceiling
        noise = oracle
    elif oracle is not None:
        preds["oracle"] = np.asarray(oracle, np.float32)
    return SamplePredictions(graph.sample_id, list(graph.section_names), int(known_layer), spot,
                             preds, info, scored, method, noise)


def _unpadded_spot_graph(sample):
    """The real graph of ``sample``'s spot GraphsTuple (a padded one drops its padding)."""
    g = sample.spot
    if len(np.asarray(g.n_node)) == 1:
        return g
    e = int(np.asarray(g.n_edge)[0])
    return g._replace(senders=np.asarray(g.senders)[:e], receivers=np.asarray(g.receivers)[:e],
                      edges={k: np.asarray(v)[:e] for k, v in g.edges.items()})


def score_sample(p: SamplePredictions) -> tuple[list[dict], dict]:
    """Per scored section of ``p``: metrics of every method. Returns (section results,
    {method: [per-gene r (G,) per section]}). Validation blocks of the known layer are one
    section named ``<section>[val]``."""
    sections, per_gene = [], {m: [] for m in p.preds}
    truth, layer = p.truth, p.layer
    for l in sorted(set(layer[p.scored].tolist())):
        rows = p.scored & (layer == l)
        name = p.section_names[l] + ("[val]" if l == p.known_layer else "")
        res = {"sample": p.sample_id, "section": name, "layer": int(l),
               "n_spots": int(rows.sum()), "methods": {},
               "overlap_fallback": int(np.sum(rows & p.info["overlap_fallback"]))}
        for m, pred in p.preds.items():
            res["methods"][m], r = section_metrics(pred[rows], truth[rows])
            per_gene[m].append(r)
        if p.noise is not None:
            r = baselines.noise_ceiling(np.asarray(p.noise["counts"])[rows],
                                        str(p.noise["normalization"]))
            res["methods"]["noise_ceiling"] = {
                k: float("nan") for k in res["methods"][next(iter(p.preds))]}
            res["methods"]["noise_ceiling"].update(
                pcc_gene=float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
                n_spots=int(rows.sum()), n_genes_skipped=int(np.isnan(r).sum()),
                n_spots_skipped=0)
            per_gene.setdefault("noise_ceiling", []).append(r)
        sections.append(res)
    return sections, per_gene


def role_views(fold, graphs: Mapping, role: str) -> list[tuple]:
    """[(sample id, masked view, scored rows)] of the samples ``role`` scores (module doc)."""
    if role not in ("test", "val"):
        raise ValueError(f"role must be 'test' or 'val', got {role!r}")
    views = []
    if role == "test":
        for sid in fold.test_samples:
            g = graphs[sid]
            views.append((sid, roles.fold_view(g, fold, "test", with_validation=False), None))
        return views
    for sid in fold.val_samples:
        views.append((sid, roles.fold_view(graphs[sid], fold, "val"), None))
    for sid in fold.val_blocks:
        g = graphs[sid]
        spot = roles.unpadded_nodes(g, "spot")
        hidden = fold.hidden_validation(sid, spot["layer"], spot["xy"], spot.get("global_idx"))
        view = roles.fold_view(g, fold, "val")
        if fold.val_block_edges == "cut":
            view = roles.isolate_hidden(view, hidden)
        views.append((sid, view, hidden))
    return views


def crossfit_applies(config) -> bool:
    """Whether ASIGN's validation score is cross-fitted (``train.val_blend_score``): only
    where the eq.-6 blend is fit on the validation role (``model.asign.blend=validation``)."""
    mode = check_choice("train.val_blend_score", str(config.train.val_blend_score))
    return mode == "crossfit" and str(config.model.asign.blend) == "validation"


CROSSFIT_FOLDS = 6


def blend_groups(preds: list) -> np.ndarray:
    """(M,) group of every scored validation spot, over ``preds`` in order: its view and its
    global tile (the unit the validation blocks are drawn in; its layer when the graph has
    no tiles), so spots that share image context fall in one group."""
    out, base = [], 0
    for p in preds:
        s = p.scored
        tile = p.spot.get("global_idx")
        key = np.asarray(tile if tile is not None else p.spot["layer"], np.int64)[s]
        _, inv = np.unique(key, return_inverse=True)
        out.append(base + inv)
        base += int(inv.max()) + 1 if len(inv) else 0
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def crossfit_blend(preds: list, folds: int = CROSSFIT_FOLDS, shrinkage: float = 1.0) -> None:
    """Sets ``preds[i].preds["asign"]`` on the scored spots to the eq.-6 blend with alpha fit
    on the OTHER folds' spots (groups of ``blend_groups`` dealt to min(folds, groups) folds),
    so the validation score of ASIGN is not that of a blend fit on the spots it scores (250
    per-gene weights on a few dozen spots flatter a noisier network half). In place."""
    m = np.concatenate([p.preds["asign_model"][p.scored] for p in preds]).astype(np.float64)
    i = np.concatenate([p.preds["asign_propagation"][p.scored] for p in preds]).astype(
        np.float64)
    y = np.concatenate([p.truth[p.scored] for p in preds]).astype(np.float64)
    groups = blend_groups(preds)
    k = min(int(folds), int(groups.max()) + 1 if len(groups) else 0)
    if k < 2:
        raise ConfigError("train.val_blend_score='crossfit' needs at least 2 validation groups "
                          f"(global tiles); the validation role has {k}")
    fold = groups % k
    out = np.empty_like(m)
    for f in range(k):
        held = fold == f
        alpha = fit_blend(m[~held], i[~held], y[~held], shrinkage)
        out[held] = mix(m[held], i[held], alpha)
    start = 0
    for p in preds:
        n = int(p.scored.sum())
        a = np.array(p.preds["asign"], copy=True)
        a[p.scored] = out[start:start + n]
        p.preds["asign"] = a.astype(np.float32)
        start += n


def evaluate_fold(config, fold, eval_fn, graphs: Mapping, pad_fn, role: str = "test", *,
                  references: bool = True, oracle: Optional[Mapping] = None,
                  ) -> tuple[dict, dict, list[SamplePredictions]]:
    """Scores the model and the references on the ``role`` rows of one fold.

    Args:
      config: full config.
      fold: ``training.folds.Fold``.
      eval_fn: ``(padded masked sample) -> model output dict``.
      graphs: {sample id: SampleGraph} (unmasked: the truth comes from here).
      pad_fn: ``SampleGraph -> padded batch dict`` (the fold's shared budget).
      role: "test" (scored once, at the end) or "val" (what selection may read); see the
        module doc for the rows and known sets.
      references: also score the references (off for the periodic validation).
      oracle: {sample id: (N, G) noise-free expression} (synthetic data) or None.

    Returns:
      (fold result: {"fold", "role", "samples", "known_layer", "sections": [{sample, section,
       layer, n_spots, methods: {method: metrics}, overlap_fallback}], "mean": {method:
       metrics}}, per-gene r: {method: (n_sections, G)}, the predictions per sample).
    """
    views = role_views(fold, graphs, role)
    if not views:
        raise ValueError(f"{fold.name} has no {role} samples")
    sections, per_gene, predictions = [], {}, []
    preds = [predict_sample(config, graphs[sid], fold.known_layer[sid], eval_fn, pad_fn,
                            masked=masked, scored=scored, references=references,
                            oracle=None if oracle is None else oracle.get(sid))
             for sid, masked, scored in views]
    if role == "val" and crossfit_applies(config) and "asign_model" in preds[0].preds:
        crossfit_blend(preds, shrinkage=float(config.model.asign.blend_shrinkage))  # as read
    for (sid, _, _), p in zip(views, preds):
        sec, pg = score_sample(p)
        sections += sec
        for m, v in pg.items():
            per_gene.setdefault(m, []).extend(v)
        predictions.append(p)
        logger.debug("%s %s sample %s: %d spots, %d %s sections", fold.name, role, sid,
                     int(p.scored.sum()), len(sec), role)
    methods = list(per_gene)
    samples = [sid for sid, _, _ in views]
    result = {"fold": fold.index, "role": role, "samples": samples,
              "known_layer": {s: fold.known_layer[s] for s in samples}, "sections": sections,
              "mean": {m: fold_means(sections, m) for m in methods}}
    return result, {m: np.stack(v) for m, v in per_gene.items()}, predictions
