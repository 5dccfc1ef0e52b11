"""The rows, tables, tuning grid and paper numbers of ``paper_tables.py`` (its module doc).

Data only, plus the small functions that read them: a row id -> (label, config overrides), a
table -> its rows, ``TUNE_GRID`` -> the concrete grid of a row config (``tune_grid``) and the
labels of a tuned row's candidates (``candidate_label``, ``tuned_info``); ``PAPER``: the
paper's numbers per dataset. Imported by ``paper_tables.py`` and its sibling modules.
"""

from __future__ import annotations

from asign_jax.config import block_name, get_field
from asign_jax.errors import ConfigError
from asign_jax.evaluation.metrics import nan_or

# ---- the rows ----------------------------------------------------------------------------------

ASIGN = "asign"
ROWS = {
    # id: (label, overrides) for learned rows; references have overrides None
    "stnet": ("ST-Net", {"model.name": "stnet"}),
    "egn": ("EGN", {"model.name": "egn"}),
    "histogene": ("HisToGene", {"model.name": "histogene"}),
    "bleep": ("BLEEP", {"model.name": "bleep"}),
    "his2st": ("His2ST", {"model.name": "his2st"}),
    "triplex": ("TRIPLEX", {"model.name": "triplex"}),
    "asign2d": ("ASIGN 2D", {"model.name": "asign2d"}),
    "overlap": ("Overlap", None),
    "similarity": ("Similarity", None),
    "known_mean": ("known_mean", None),
    "ridge": ("ridge", None),
    "label_propagation": ("label_propagation", None),
    ASIGN: ("ASIGN 3D", {}),
    "no_gat_no_xattn": ("w.o GAT & Cross-atten", {"model.asign.use_gat": False,
                                                  "model.asign.use_cross_attention": False}),
    "no_xattn": ("w.o Cross-atten", {"model.asign.use_cross_attention": False}),
    "no_gat": ("w.o GAT", {"model.asign.use_gat": False}),
    # no CLI, so no eq.-6 blend either (the configs fit it on validation)
    "no_cli": ("w. 0% (w.o CLI)", {"model.asign.use_cli": False, "model.asign.blend": "learned"}),
    "known_10": ("w. 10%", {"train.known_fraction": 0.1, "train.known_mode": "fraction"}),
    "known_20": ("w. 20% (ASIGN)", {"train.known_fraction": 0.2, "train.known_mode": "fraction"}),
    "known_30": ("w. 30%", {"train.known_fraction": 0.3, "train.known_mode": "fraction"}),
}
TABLES = {
    1: ("Table I: 2D WSI-wise and 3D sample-wise methods",
        ["stnet", "egn", "histogene", "bleep", "his2st", "triplex", "asign2d", "overlap",
         "similarity", "known_mean", "ridge", "label_propagation", ASIGN]),
    2: ("Table II: functional blocks", ["no_gat_no_xattn", "no_xattn", "no_gat", ASIGN]),
    3: ("Table III: CLI block and known-label proportion",
        ["no_cli", "known_10", "known_20", "known_30"]),
    4: ("Table IV: graph construction (both without the CLI)", ["asign2d", "no_cli"]),
}
TABLE4_LABELS = {"asign2d": "2D WSI-wise", "no_cli": "3D Sample-wise"}
TABLE_BASE = {1: ASIGN, 2: ASIGN, 3: "known_20", 4: "no_cli"}
"""The row each table's Welch tests compare against (ASIGN as the paper set it up)."""

# ---- --tune: one search space and one budget for every learned row ------------------------------

class Times(float):
    """A grid value that multiplies the row config's own value of the field."""

    def __repr__(self):
        return f"x{float(self):.3g}"


DROPOUT = "model.<method>.dropout"
"""TUNE_GRID's key for the method's dropout, resolved by ``dropout_field``."""

TUNE_GRID = {
    "train.learning_rate": (Times(1 / 3), Times(3)),   # around the dataset config's rate
    "train.weight_decay": (1e-4, 0.05),
    DROPOUT: (0.0, 0.3),
    "train.feature_norm": ("sample", "none"),
}
"""The fields every learned row is tuned over, two values each (sweep mode ``half``: the row's
own config + 2^(k-1) candidates; k = 4 -> 9). ``train.steps`` is the dataset config's for
every row (the step budget); the checkpoint step is chosen on validation (``train.select``)."""
TUNE_LABELS = {"train.learning_rate": "lr", "train.weight_decay": "wd", DROPOUT: "dropout",
               "train.feature_norm": "norm"}
TUNE_METRIC = "pcc_gene"


def dropout_field(model_name: str) -> str:
    """The dotted dropout field(s) of ``model_name`` ('+' joins several: one grid axis)."""
    block = block_name(model_name)                      # asign2d reads ASIGN's block
    if block == "triplex":
        return "+".join(f"model.triplex.dropout_{p}" for p in ("fusion", "global", "neighbor"))
    return f"model.{block}.dropout"


def tune_grid(config, fields=None) -> dict:
    """TUNE_GRID (or its ``fields``) for the row config ``config``: concrete dotted fields and
    values, as ``sweep.run_sweep`` takes them."""
    keys = list(TUNE_GRID) if fields is None else list(fields)
    unknown = [k for k in keys if k not in TUNE_GRID]
    if unknown or not keys:
        raise ConfigError(f"tune fields {unknown or 'none'}: expected TUNE_GRID's keys")
    grid = {}
    for key in keys:
        field = dropout_field(str(config.model.name)) if key == DROPOUT else key
        base = get_field(config, field.split("+")[0])
        grid[field] = [float(f"{float(base) * v:.3g}") if isinstance(v, Times) else v
                       for v in TUNE_GRID[key]]
    return grid


def tune_fields(text: str) -> list:
    """--tune_fields ("train.learning_rate,dropout") -> TUNE_GRID keys."""
    names = {TUNE_LABELS[k]: k for k in TUNE_GRID} | {k: k for k in TUNE_GRID}
    keys = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [k for k in keys if k not in names]
    if unknown or len(keys) < 2:
        what = f"unknown {unknown}" if unknown else "two or more"
        raise ConfigError(f"--tune_fields: {what} of {sorted(names)} (the half fraction needs "
                          "two fields)")
    return [names[k] for k in keys]


def candidate_label(overrides: dict, index: int) -> str:
    """"c0 (own config)" or "c3: lr=0.001 wd=0.05 dropout=0.3 norm=none"."""
    if not overrides:
        return f"c{index} (own config)"
    return f"c{index}: " + " ".join(f"{_short(f)}={_value(v)}" for f, v in overrides.items())


def _short(field: str) -> str:
    return "dropout" if "dropout" in field else TUNE_LABELS.get(field, field.rsplit(".", 1)[-1])


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def tuned_info(record: dict) -> dict:
    """What a table shows of a row's sweep: the chosen candidate, its validation score, the
    budget."""
    chosen = record["candidates"][record["chosen"]["index"]]
    method = record["method"]
    val = chosen["validation"][method]["mean"] if chosen["validation"] else None
    return {"chosen": chosen["index"], "label": candidate_label(chosen["overrides"],
                                                                 chosen["index"]),
            "overrides": chosen["overrides"], "metric": record["metric"],
            "val": nan_or(val[record["metric"]]) if val else float("nan"),
            "val_mse": nan_or(val["mse"]) if val else float("nan"),
            "guard_ok": bool(chosen["key"][1]), "candidates": record["budget"]["candidates"],
            "steps": record["budget"]["steps"],
            "n_failed": sum(1 for c in record["candidates"] if c.get("failed")),
            "grid": ", ".join(f"{_short(f)} {'/'.join(map(_value, v))}"
                              for f, v in record["grid"].items())}


# ---- the paper's numbers (MSE, MAE, PCC); PCC = the official code's per-spot PCC -----------------

PAPER = {
    "HER2": {
        "stnet": (0.663, 0.633, 0.430), "egn": (0.580, 0.585, 0.442),
        "histogene": (0.669, 0.644, 0.432), "bleep": (0.743, 0.665, 0.340),
        "his2st": (0.591, 0.591, 0.441), "triplex": (0.592, 0.591, 0.450),
        "asign2d": (0.579, 0.590, 0.476), "overlap": (0.461, 0.532, 0.625),
        "similarity": (0.449, 0.517, 0.649), ASIGN: (0.363, 0.473, 0.693),
        "no_gat_no_xattn": (0.674, 0.531, 0.659), "no_xattn": (0.578, 0.692, 0.686),
        "no_gat": (0.466, 0.627, 0.677), "no_cli": (0.622, 0.606, 0.635),
        "known_10": (0.542, 0.563, 0.677), "known_20": (0.363, 0.473, 0.693),
        "known_30": (0.397, 0.492, 0.708)},
    "DLPFC": {
        "stnet": (0.496, 0.552, 0.738), "egn": (0.401, 0.490, 0.757),
        "histogene": (0.348, 0.472, 0.753), "bleep": (0.304, 0.429, 0.737),
        "his2st": (0.409, 0.494, 0.764), "triplex": (0.645, 0.621, 0.766),
        "asign2d": (0.275, 0.411, 0.766), "overlap": (0.292, 0.422, 0.749),
        "similarity": (0.278, 0.412, 0.762), ASIGN: (0.353, 0.458, 0.773),
        "no_gat_no_xattn": (0.405, 0.497, 0.767), "no_xattn": (0.364, 0.470, 0.770),
        "no_gat": (0.368, 0.475, 0.768), "no_cli": (0.420, 0.503, 0.770),
        "known_10": (0.402, 0.494, 0.772), "known_20": (0.353, 0.458, 0.773),
        "known_30": (0.278, 0.416, 0.767)},
    "ST-Data": {
        "stnet": (0.804, 0.705, 0.517), "egn": (0.674, 0.644, 0.554),
        "histogene": (0.575, 0.598, 0.552), "bleep": (0.581, 0.590, 0.496),
        "his2st": (0.534, 0.568, 0.539), "triplex": (0.627, 0.621, 0.553),
        "asign2d": (0.528, 0.566, 0.552), "overlap": (0.447, 0.525, 0.663),
        "similarity": (0.579, 0.548, 0.696), ASIGN: (0.332, 0.459, 0.739),
        "no_gat_no_xattn": (0.541, 0.571, 0.706), "no_xattn": (0.472, 0.535, 0.710),
        "no_gat": (0.451, 0.528, 0.708), "no_cli": (0.485, 0.545, 0.604),
        "known_10": (0.406, 0.499, 0.708), "known_20": (0.332, 0.459, 0.739),
        "known_30": (0.329, 0.458, 0.741)},
}
"""Tables I, II, III (HER2), V (TRIPLEX), VI (DLPFC), VII (ST-Data). Table IV's rows are
Table I's ASIGN 2D and Table III's w. 0 % (identical numbers in the paper; for DLPFC Table VI's
"2D WSI-wise" / "3D Sample-wise" equal ASIGN 2D / w. 0 % too). ST-Data's Table VII has no
"3D Sample-wise" row; w. 0 % stands in."""
PAPER_DATASET = {"her2st": "HER2", "visium": "DLPFC", "stnet": "ST-Data", "synthetic": "HER2"}
