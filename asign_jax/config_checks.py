"""``validate``: every field of a config checked before any work, one line naming the field.

The allowed values of a fixed set are ``config.CHOICES`` (checked by ``config.check_choice``);
the numeric rules are the tuples here: sizes and counts > 0 (``POSITIVE``), weights >= 0
(``NON_NEGATIVE``), fractions in [0, 1] (``FRACTIONS``), whole numbers (``INTEGERS``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from asign_jax.config import CHOICES, base_config, check_choice, fields
from asign_jax.errors import ConfigError


POSITIVE = (
    "data.n_genes", "data.spot_size", "data.region_size", "data.global_size", "data.um_per_px",
    "data.min_section_spots",
    "synthetic.n_samples", "synthetic.n_sections", "synthetic.n_genes", "synthetic.n_types",
    "synthetic.image_size", "synthetic.spot_pitch",
    "features.spot_input", "features.region_input", "features.global_input",
    "features.token_grid", "features.batch_size", "features.histology_downsample",
    "features.histology_cell",
    "registration.long_side", "registration.min_inliers", "registration.ants_threads",
    "registration.reproj_threshold", "registration.max_keypoints",
    "graph.k_intra", "graph.spot_radius", "graph.cosine_all_max_nodes", "graph.cosine_radius",
    "graph.region_k_intra", "graph.global_k_intra",
    "model.asign.hidden", "model.asign.heads", "model.asign.transformer_mlp_ratio",
    "train.learning_rate", "model.asign.cli_lr_multiplier", "model.asign.lr_multiplier",
    "train.steps", "train.samples_per_step",
    "train.log_every", "train.checkpoint_every",
)
"""Fields that must be > 0."""

NON_NEGATIVE = (
    "synthetic.max_rotation_deg", "synthetic.max_translation_px", "synthetic.max_scale",
    "synthetic.elastic_px", "features.init_seed", "graph.k_cross", "graph.region_k_cross",
    "features.patch_size_level0", "graph.similarity_dims", "model.asign.blend_shrinkage",
    "graph.global_k_cross", "model.asign.gat_layers", "model.asign.cli_iterations",
    "model.asign.loss.lambda_s", "model.asign.loss.lambda_r", "model.asign.loss.lambda_g", "model.asign.loss.lambda_1", "model.asign.loss.lambda_2",
    "model.asign.loss.gamma_1", "model.asign.loss.gamma_2", "train.weight_decay", "data.slide_um_per_px",
)
"""Fields that must be >= 0."""

FRACTIONS = ("registration.ratio", "model.asign.dropout", "train.known_fraction", "train.momentum",
             "train.final_lr_fraction")
"""Fields that must lie in [0, 1]."""


# Every radius, k, size and count (issue 22: graph.cross_radius=-1 was accepted), kept here in
# one place; the baselines' nested sizes (model.<name>.*) are listed from base_config below.
POSITIVE += (
    "graph.cross_radius", "train.val_block_px", "evaluation.similarity_k",
    "synthetic.embedding_region_size", "synthetic.embedding_global_size",
    "model.backbone.token_grid", "model.bleep.loss.temperature",
)
NON_NEGATIVE += (
    "seed", "graph.sim_weight", "synthetic.n_val_samples", "synthetic.embedding_dim",
    "train.inner_val", "train.val_every", "train.max_graph_nodes", "model.asign.skip_lr_multiplier",
    "model.backbone.init_seed", "data.spot_pitch_px", "model.egn.loss.pcc", "model.his2st.loss.zinb",
    "model.his2st.loss.bake",
)
FRACTIONS += ("graph.expand_min_sim", "train.val_known_fraction", "impute.min_dice",
              "impute.max_spots_off_tissue", "model.triplex.loss.alpha")
INTEGERS = (
    "seed", "data.n_genes", "data.spot_size", "data.region_size", "data.global_size",
    "data.min_section_spots", "synthetic.n_samples", "synthetic.n_val_samples",
    "synthetic.n_sections", "synthetic.n_genes", "synthetic.n_types", "synthetic.image_size",
    "synthetic.embedding_dim", "features.spot_input", "features.region_input",
    "features.global_input", "features.token_grid", "features.batch_size",
    "registration.long_side", "registration.min_inliers", "registration.max_keypoints",
    "graph.k_intra", "graph.k_cross", "graph.cosine_all_max_nodes", "graph.region_k_intra",
    "graph.region_k_cross", "graph.global_k_intra", "graph.global_k_cross", "model.asign.hidden",
    "model.asign.heads", "model.asign.gat_layers", "model.asign.cli_iterations", "evaluation.similarity_k",
    "train.inner_val", "train.val_every", "train.steps", "train.samples_per_step",
    "train.max_graph_nodes", "train.subgraph_halo", "train.log_every",
    "train.checkpoint_every",
)
"""Fields that must be whole numbers (counts, k, sizes in px, steps)."""
ITERATION_TUPLES = ("registration.ants_iterations", "registration.ants_syn_iterations")
"""Tuples of per-level iteration counts (integers >= 0)."""


def _baseline_sizes() -> None:
    """``model.<baseline>.*``: dropouts in [0, 1], depths and pass counts >= 0, every other
    number > 0 (dims, heads, k, windows, temperatures)."""
    global POSITIVE, NON_NEGATIVE, FRACTIONS
    for name, v in fields(base_config()).items():
        if not name.startswith("model."):
            continue
        if name.split(".")[1] in ("asign", "backbone") or name.count(".") != 2 or isinstance(
                v, (bool, str)) or not isinstance(v, (int, float)):
            continue
        leaf = name.rsplit(".", 1)[1]
        if "dropout" in leaf:
            FRACTIONS += (name,)
        elif leaf.startswith("depth") or leaf in ("bake_passes", "player"):
            NON_NEGATIVE += (name,)
        else:
            POSITIVE += (name,)


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r}: must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: must be finite")
    return value


def validate(config) -> None:
    """Raises ConfigError (one line naming the field) unless every field of ``config`` is valid.

    Checks: exactly the fields of ``base_config`` (a typo such as ``train.stepz`` in a config
    file would otherwise be ignored silently), the choices of ``CHOICES``, sizes and counts
    > 0 (``POSITIVE``), weights >= 0 (``NON_NEGATIVE``), fractions in [0, 1] (``FRACTIONS``),
    whole numbers where counted (``INTEGERS``, ``ITERATION_TUPLES``),
    ``data.global_size`` a multiple of ``data.region_size``, an integer ``train.known_layer``
    (its range is checked against the samples once they are read) and the fold lists as tuples
    of sample ids. Data-dependent checks (folds, known layer range) are in ``training.folds``.
    """
    have, want = fields(config), fields(base_config())
    unknown = set(have) - set(want)
    if unknown:
        raise ConfigError(f"unknown config field(s) {_names(unknown)} (not in "
                          "asign_jax.config.base_config; a typo?)")
    missing = set(want) - set(have)
    if missing:
        raise ConfigError(f"config field(s) {_names(missing)} missing: start the config from "
                          "asign_jax.config.base_config()")
    for name in CHOICES:
        check_choice(name, have[name])
    for name in POSITIVE:
        if _number(name, have[name]) <= 0:
            raise ConfigError(f"{name}={have[name]!r}: must be > 0")
    for name in NON_NEGATIVE:
        if _number(name, have[name]) < 0:
            raise ConfigError(f"{name}={have[name]!r}: must be >= 0")
    for name in FRACTIONS:
        if not 0.0 <= _number(name, have[name]) <= 1.0:
            raise ConfigError(f"{name}={have[name]!r}: must be in [0, 1]")
    for name in INTEGERS:
        v = have[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name}={v!r}: must be a whole number")
    if have["train.subgraph_halo"] < -1:
        raise ConfigError(f"train.subgraph_halo={have['train.subgraph_halo']!r}: must be >= 0 "
                          "(hops), or -1 for model.asign.gat_layers")
    if have["train.val_known_fraction"] >= 1:
        raise ConfigError(f"train.val_known_fraction={have['train.val_known_fraction']!r}: must "
                          "be < 1 (some of the known layer must stay known)")
    for name in ITERATION_TUPLES:
        v = have[name]
        if not isinstance(v, (tuple, list)) or not v or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
            raise ConfigError(f"{name}={v!r}: must be a non-empty tuple of iteration counts "
                              ">= 0, e.g. (100, 50, 20)")
    if have["data.global_size"] % have["data.region_size"]:
        raise ConfigError(f"data.global_size={have['data.global_size']}: must be a multiple of "
                          f"data.region_size={have['data.region_size']}")
    if have["data.smooth"] and have["data.normalization"] != "triplex":
        raise ConfigError(f"data.smooth=True: only defined for data.normalization='triplex' "
                          f"(got {have['data.normalization']!r})")
    if have["model.asign.hidden"] % have["model.asign.heads"]:
        raise ConfigError(f"model.asign.hidden={have['model.asign.hidden']}: must be a multiple of "
                          f"model.asign.heads={have['model.asign.heads']}")
    k = have["train.known_layer"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"train.known_layer={k!r}: must be an integer layer index "
                          "(negative counts from the last layer)")
    for name in ("train.extra_train_samples", "train.val_samples", "train.eval_genes"):
        v = have[name]
        if not isinstance(v, (tuple, list)) or not all(isinstance(s, str) for s in v):
            raise ConfigError(f"{name}={v!r}: must be a tuple of strings")
    folds = have["train.folds"]
    if not isinstance(folds, (tuple, list)) or not all(
            isinstance(f, (tuple, list)) and f and all(isinstance(s, str) for s in f)
            for f in folds):
        raise ConfigError(f"train.folds={folds!r}: must be a tuple of non-empty tuples of "
                          "sample ids, e.g. (('A',), ('B', 'C'))")


_baseline_sizes()
