"""Validation-based selection: what training may read about a fold's quality.

``Validator(config, fold, graphs, model, pad_fn)(params)`` scores ``params`` on the fold's
validation role (``scoring.role_views(fold, graphs, "val")``: hidden layers of validation
samples, validation blocks of a known layer; never a test layer) and returns a
``Validation``: the params to keep (with the eq.-6 blend refit on the validation spots when
``model.asign.blend == "validation"``), the metrics logged to metrics.jsonl, and the selection score
of ``train.select``. The training loop calls it every ``train.val_every`` steps and keeps the
best-scoring step (``training.loop``); the pipeline scores that step's params on test, once.

The selected params are stored beside the fold's orbax checkpoints as ``selected.msgpack``
with ``selected.json`` ({"step", "score", "metrics"}), so re-scoring (``asign_jax.evaluate``)
uses the same params as the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
from flax import serialization

from asign_jax import atomic
from asign_jax.config import check_choice
from asign_jax.errors import ConfigError
from asign_jax.evaluation import scoring
from asign_jax.evaluation.metrics import fold_means
from asign_jax.models.cli import blend_logit, fit_blend, mix
from asign_jax.training.step import make_eval_fn

logger = logging.getLogger(__name__)



@dataclasses.dataclass
class Validation:
    """One validation pass: ``params`` (blend refit if configured), ``metrics`` (flat, for the
    log), ``score`` (larger is better; the selection criterion), ``alpha`` (G,) the blend."""

    params: dict
    metrics: dict
    score: float
    alpha: np.ndarray


def check_config(config, has_validation: bool) -> None:
    """Fails early on selection settings the folds cannot serve."""
    select, blend = str(config.train.select), str(config.model.asign.blend)
    check_choice("train.select", select)
    check_choice("model.asign.blend", blend)
    if not has_validation and (select != "last" or blend != "learned"):
        raise ConfigError(f"train.select={select!r} / model.asign.blend={blend!r} read a validation "
                          "role, but the folds have none: set train.val_samples, "
                          "train.inner_val or train.val_known_fraction")
    if blend == "validation" and not config.model.asign.use_cli:
        raise ConfigError("model.asign.blend='validation' needs model.asign.use_cli=True")


def with_blend(params: dict, alpha: np.ndarray) -> dict:
    """``params`` with the CLI's eq.-6 logit set to ``alpha`` (G,)."""
    cli = dict(params["cli"])
    cli["theta"] = blend_logit(alpha).astype(np.asarray(cli["theta"]).dtype)
    return {**params, "cli": cli}


class Validator:
    """Scores params on one fold's validation role (see the module doc)."""

    def __init__(self, config, fold, graphs, model, pad_fn, wrap_eval=None):
        """``wrap_eval`` (tiled pools): eval_fn -> an eval_fn on whole unpadded samples; the
        samples are then passed unpadded."""
        self.config = config
        self.fold = fold
        self.graphs = graphs
        self.fn = make_eval_fn(model)
        self.wrap_eval = wrap_eval
        self.pad_fn = pad_fn if wrap_eval is None else (lambda s: s)
        self.views = scoring.role_views(fold, graphs, "val")
        if not self.views:
            raise ValueError(f"{fold.name} has no validation role")
        self.method = str(config.model.name)
        self.outputs = scoring.model_outputs(self.method)     # ASIGN: the final and its halves
        # the eq.-6 blend exists only in ASIGN (a baseline's config may still say "validation")
        self.refit = str(config.model.asign.blend) == "validation" and "asign_model" in self.outputs
        self.select = str(config.train.select)
        self.crossfit = scoring.crossfit_applies(config) and self.refit
        self.shrinkage = float(config.model.asign.blend_shrinkage)
        self._references: Optional[dict] = None

    def references(self) -> dict:
        """{reference: fold-mean metrics} on the validation rows (computed once)."""
        if self._references is None:
            sections = []
            for sid, masked, scored in self.views:
                p = scoring.predict_sample(self.config, self.graphs[sid],
                                           self.fold.known_layer[sid], _no_model, self.pad_fn,
                                           masked=masked, scored=scored, references=True)
                for m in self.outputs:
                    p.preds.pop(m)
                sections += scoring.score_sample(p)[0]
            methods = list(sections[0]["methods"])
            self._references = {m: fold_means(sections, m) for m in methods}
        return self._references

    def predictions(self, params) -> list:
        """The model's SamplePredictions on every validation view (no references)."""
        eval_fn = lambda s: self.fn(params, s)
        if self.wrap_eval is not None:
            eval_fn = self.wrap_eval(eval_fn)
        return [scoring.predict_sample(self.config, self.graphs[sid], self.fold.known_layer[sid],
                                       eval_fn, self.pad_fn, masked=masked, scored=scored,
                                       references=False)
                for sid, masked, scored in self.views]

    def __call__(self, params) -> Validation:
        params = {k: v for k, v in params.items()}
        preds = self.predictions(params)
        if self.refit:
            rows = [(p.preds["asign_model"][p.scored], p.preds["asign_propagation"][p.scored],
                     p.truth[p.scored]) for p in preds]
            alpha = fit_blend(*(np.concatenate(r) for r in zip(*rows)), shrinkage=self.shrinkage)
            params = with_blend(params, alpha)
            for p in preds:
                p.preds["asign"] = mix(p.preds["asign_model"], p.preds["asign_propagation"],
                                       alpha).astype(np.float32)
            if self.crossfit:
                scoring.crossfit_blend(preds, shrinkage=self.shrinkage)
        else:
            alpha = (1 / (1 + np.exp(-np.asarray(params["cli"]["theta"], np.float64)))
                     if "cli" in params else np.ones(preds[0].truth.shape[1]))
        sections = [s for p in preds for s in scoring.score_sample(p)[0]]
        means = {m: fold_means(sections, m) for m in self.outputs}
        refs = self.references()
        metrics = {}
        for m, v in list(means.items()) + [(r, refs[r]) for r in ("known_mean",)]:
            suffix = "" if m == self.method else "_" + m.replace("asign_", "")
            metrics[f"val_mse{suffix}"] = v["mse"]
            if m != "known_mean":
                metrics[f"val_pcc_gene{suffix}"] = v["pcc_gene"]
        metrics["val_alpha_mean"] = float(np.mean(alpha))
        score = {"pcc_gene": means[self.method]["pcc_gene"], "mse": -means[self.method]["mse"],
                 "last": 0.0}[self.select]
        if not np.isfinite(score):
            score = -np.inf
        return Validation(params=params, metrics=metrics, score=float(score),
                          alpha=np.asarray(alpha, np.float32))


def _no_model(sample) -> dict:
    """A stand-in eval_fn for reference-only predictions: zeros for every model output."""
    spot = sample.spot if hasattr(sample, "spot") else sample["spot"]   # unpadded when tiled
    n, g = np.shape(spot.nodes["label"])
    z = np.zeros((n, g), np.float32)
    return {key: z for key in scoring.MODEL_OUTPUTS.values()}


# ---- the selected params on disk -----------------------------------------------------------

def selected_paths(ckpt_dir: Path) -> tuple[Path, Path]:
    return Path(ckpt_dir) / "selected.msgpack", Path(ckpt_dir) / "selected.json"


def save_selected(ckpt_dir: Path, step: int, v: Validation) -> None:
    """Writes the selected params (msgpack) then their record (json, the completion marker)."""
    params_path, record_path = selected_paths(ckpt_dir)
    with atomic.atomic_path(params_path) as tmp:
        tmp.write_bytes(serialization.msgpack_serialize(
            {k: _to_numpy(x) for k, x in v.params.items()}))
    atomic.write_json(record_path, {"step": int(step), "score": v.score, "metrics": v.metrics,
                                    "alpha": v.alpha})


def load_selected(ckpt_dir: Path) -> Optional[tuple[dict, dict]]:
    """(params, record) written by ``save_selected``, or None when there is none."""
    params_path, record_path = selected_paths(ckpt_dir)
    if not record_path.exists() or not params_path.exists():
        return None
    record = json.loads(record_path.read_text())
    params = serialization.msgpack_restore(params_path.read_bytes())
    return params, record


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
