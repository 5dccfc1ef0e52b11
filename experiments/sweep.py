"""A small sweep over named config fields, chosen on VALIDATION, then scored on test once.

    python experiments/sweep.py --config configs/synthetic.py --out runs/sweep \
        --grid model.asign.dropout=0.1,0.3 --grid train.weight_decay=1e-4,0.05 [--mode each]

Every candidate is trained with ``pipeline.train_and_evaluate(..., score_test=False)`` in
``<out>/cand_<i>/``: its test rows are never scored. The candidate with the best
validation ``--metric`` of ASIGN wins (``pcc_gene``, larger is better; ``mse``, smaller is
better); with ``--guard_known_mean`` (default) a candidate whose validation MSE is worse than
``known_mean``'s is ranked after every candidate that is not. ``<out>/sweep.json`` holds the
grid, every candidate's validation scores and the choice, written BEFORE the chosen candidate
is scored on test, once (its checkpoints are reused; ``<out>/cand_<i>/metrics.json``).

Modes: ``grid`` = every combination; ``each`` = the base config plus one field changed at a
time (1 + sum(len(values) - 1) candidates: a coordinate sweep for a CPU budget).
Candidates share the base folder's prepared data, registration and feature cache (symlinks);
the graphs too, unless the candidate changes a ``graph.*`` field.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

from asign_jax import atomic, entry, pipeline
from asign_jax.errors import ConfigError

logger = logging.getLogger(__name__)

SHARED = ("prepared", "registration", "cache", "synthetic_data")


def parse_grid(specs: Sequence[str]) -> dict:
    """["a.b=1,2", ...] -> {"a.b": [1, 2], ...} (values parsed as Python literals if possible;
    a tuple value is written with ';' between its items: ``train.folds=(('A',);('B',))``)."""
    grid = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r}: expected field=v1,v2,...")
        field, values = spec.split("=", 1)
        grid[field.strip()] = [_literal(v.replace(";", ",")) for v in values.split(",")]
    return grid


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def candidates(grid: dict, mode: str, base_config=None) -> list[dict]:
    """The overrides of every candidate ({field: value}); ``each`` starts with the base ({})
    and skips values equal to the base config's."""
    fields = list(grid)
    if mode == "grid":
        return [dict(zip(fields, combo)) for combo in itertools.product(*grid.values())]
    if mode == "each":
        out = [{}]
        for f in fields:
            base = None if base_config is None else _get(base_config, f)
            out += [{f: v} for v in grid[f] if base is None or apply_value(base, v) != base]
        return out
    raise ConfigError(f"--mode={mode!r}: expected 'grid' or 'each'")


def _get(config, field: str):
    node = config
    for p in field.split("."):
        if p not in node:
            raise ConfigError(f"--grid: unknown config field {field!r}")
        node = node[p]
    return node


def apply_value(old, value):
    """``value`` cast to the type of the field's current value ``old`` (ints and floats)."""
    if isinstance(old, (int, float)) and not isinstance(old, bool) and not isinstance(value, bool):
        return type(old)(value)
    return value


def apply(config, overrides: dict):
    """A copy of ``config`` with ``overrides`` set (unknown fields are refused)."""
    c = config.copy_and_resolve_references()
    for field, value in overrides.items():
        *path, leaf = field.split(".")
        node = c
        for p in path:
            if p not in node:
                raise ConfigError(f"--grid: unknown config field {field!r}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"--grid: unknown config field {field!r}")
        node[leaf] = apply_value(node[leaf], value)
    return c


def score_of(agg: dict, metric: str, guard: bool) -> tuple:
    """Sort key (larger is better) of a validation aggregate: (guard ok, metric)."""
    asign = agg["asign"]["mean"]
    value = asign["pcc_gene"] if metric == "pcc_gene" else -asign["mse"]
    value = -math.inf if value is None or not math.isfinite(value) else value
    ok = (not guard) or asign["mse"] <= agg["known_mean"]["mean"]["mse"]
    return (bool(ok), float(value))


def _link_shared(base: Path, cand: Path, with_graphs: bool) -> None:
    cand.mkdir(parents=True, exist_ok=True)
    for name in SHARED + (("graphs",) if with_graphs else ()):
        src, dst = base / name, cand / name
        if src.exists() and not dst.exists():
            dst.symlink_to(src.resolve(), target_is_directory=True)


def run_sweep(base_config, grid: dict, workdir, *, mode: str = "grid", metric: str = "pcc_gene",
              guard_known_mean: bool = True, inputs: Optional[tuple] = None,
              train: Callable = pipeline.train_and_evaluate, progress: bool = True,
              score_test: bool = True) -> dict:
    """Runs the sweep (module doc); returns the sweep.json record (with "test": the chosen
    candidate's test aggregate, unless ``score_test=False``: a stage whose choice becomes the
    base of a further sweep, which then scores the test once for its own choice).

    ``inputs``: (genes, graphs, oracle) for every candidate instead of the run folders' data
    (tests; no ``graph.*`` field may be swept then).
    """
    if metric not in ("pcc_gene", "mse"):
        raise ConfigError(f"--metric={metric!r}: expected pcc_gene or mse")
    workdir = Path(workdir)
    base = workdir / "base"
    if inputs is None:
        pipeline.load_inputs(base_config, base)          # prepare + graphs once
    elif any(f.startswith("graph.") for f in grid):
        raise ConfigError("a sweep over graph.* fields needs the run folders (no inputs=)")
    record = {"grid": grid, "mode": mode, "metric": metric, "guard_known_mean": guard_known_mean,
              "candidates": []}
    for i, overrides in enumerate(candidates(grid, mode, base_config)):
        cfg = apply(base_config, overrides)
        cand = workdir / f"cand_{i}"
        if inputs is None:
            _link_shared(base, cand, not any(f.startswith("graph.") for f in overrides))
        logger.info("candidate %d: %s", i, overrides or "base config")
        agg = train(cfg, cand, score_test=False, inputs=inputs, progress=progress)
        record["candidates"].append({"index": i, "overrides": overrides, "folder": str(cand),
                                     "validation": agg,
                                     "key": list(score_of(agg, metric, guard_known_mean))})
    best = max(record["candidates"], key=lambda c: (tuple(c["key"]), -c["index"]))
    record["chosen"] = {"index": best["index"], "overrides": best["overrides"]}
    atomic.write_json(workdir / "sweep.json", record)    # the choice, before any test score
    if not score_test:
        logger.info("chosen on validation: candidate %d %s; test not scored (--noscore_test)",
                    best["index"], best["overrides"])
        return record
    logger.info("chosen on validation: candidate %d %s; scoring it on test once",
                best["index"], best["overrides"])
    test = train(apply(base_config, best["overrides"]), Path(best["folder"]), score_test=True,
                 inputs=inputs, progress=progress)
    record["test"] = test
    atomic.write_json(workdir / "sweep.json", record)
    return record


def summary(record: dict) -> str:
    lines = [f"{'cand':>4}  {'val pcc_gene':>12}  {'val mse':>8}  {'known_mean mse':>14}  "
             "overrides"]
    for c in record["candidates"]:
        a, k = c["validation"]["asign"]["mean"], c["validation"]["known_mean"]["mean"]
        mark = "*" if c["index"] == record["chosen"]["index"] else " "
        lines.append(f"{c['index']:>3}{mark}  {a['pcc_gene']:>12.4f}  {a['mse']:>8.4f}  "
                     f"{k['mse']:>14.4f}  {c['overrides'] or 'base'}")
    return "\n".join(lines)


def main(args):
    record = run_sweep(args.config, parse_grid(args.grid), args.out, mode=args.mode,
                       metric=args.metric, guard_known_mean=args.guard_known_mean,
                       score_test=args.score_test)
    print("\nValidation scores (* = chosen; " + ("test scored once, for the chosen candidate "
          "only)" if args.score_test else "test not scored)"))
    print(summary(record))
    print(f"\nsweep: {Path(args.out) / 'sweep.json'}")
    print(json.dumps(record["chosen"]))


if __name__ == "__main__":
    entry.run_script(
        main, "sweep", config="required",
        grid=([], "field=v1,v2,... (repeatable)."),
        mode=("grid", "Every combination, or one at a time.", ("grid", "each")),
        score_test=(True, "Score the chosen candidate on test (once). --noscore_test: a first "
                          "stage whose choice a further sweep builds on."),
        metric=("pcc_gene", "Validation metric of ASIGN.", ("pcc_gene", "mse")),
        guard_known_mean=(True, "Rank candidates worse than known_mean on validation MSE last."))
