"""A small sweep over named config fields, chosen on VALIDATION, then scored on test once.

    python experiments/sweep.py --config configs/synthetic.py --out runs/sweep \
        --grid model.asign.dropout=0.1,0.3 --grid train.weight_decay=1e-4,0.05 [--mode each]

Every candidate is trained with ``pipeline.train_and_evaluate(..., score_test=False)`` in
``<out>/cand_<i>/``: its test rows are never scored. The candidate with the best
validation ``--metric`` of the config's model (``model.name``'s scored row: ``asign`` = ASIGN's
final prediction, a baseline's own name) wins (``pcc_gene``, larger is better; ``mse``,
smaller is better); with ``--guard_known_mean`` (default) a candidate whose validation MSE is
worse than ``known_mean``'s is ranked after every candidate that is not, and a candidate whose
training stops on a non-finite loss after those. ``<out>/sweep.json`` holds the grid, every
candidate's validation scores and the choice, written BEFORE the chosen candidate is scored
on test, once (its checkpoints are reused; ``<out>/cand_<i>/metrics.json``).

Modes: ``grid`` = every combination; ``each`` = the base config plus one field changed at a
time (1 + sum(len(values) - 1) candidates: a coordinate sweep for a CPU budget); ``half`` =
the base config plus the half fraction of the two-level design (every field exactly two
values, k >= 2 fields; 1 + 2^(k-1) candidates, every combination of any k - 1 fields once:
the last field's level is the parity of the others'). A field ``a.b+a.c`` is ONE axis that sets
both fields to its value (a model with several dropouts).
Candidates share the base folder's prepared data, registration and feature cache (symlinks);
the graphs too, unless the candidate changes a ``graph.*`` field.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax

from asign_jax import atomic, entry, pipeline, stages
from asign_jax.config import get_field, set_field
from asign_jax.errors import ConfigError, TrainingError

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
    """The overrides of every candidate ({field: value}); ``each`` and ``half`` start with the
    base ({}); ``each`` skips values equal to the base config's."""
    fields = list(grid)
    if mode == "grid":
        return [dict(zip(fields, combo)) for combo in itertools.product(*grid.values())]
    if mode == "half":
        if len(fields) < 2 or any(len(grid[f]) != 2 for f in fields):
            raise ConfigError("--mode=half: two or more --grid fields, each with exactly two "
                              "values")
        out = [{}]
        for levels in itertools.product((0, 1), repeat=len(fields) - 1):
            levels += (sum(levels) % 2,)
            out.append({f: grid[f][lv] for f, lv in zip(fields, levels)})
        return out
    if mode == "each":
        out = [{}]
        for f in fields:
            base = None if base_config is None else _get(base_config, f)
            out += [{f: v} for v in grid[f] if base is None or apply_value(base, v) != base]
        return out
    raise ConfigError(f"--mode={mode!r}: expected 'grid', 'each' or 'half'")


def _get(config, field: str):
    """The value of ``field`` (of the first of ``a.b+a.c``)."""
    try:
        return get_field(config, field.split("+")[0])
    except ConfigError:
        raise ConfigError(f"--grid: unknown config field {field!r}") from None


def apply_value(old, value):
    """``value`` cast to the type of the field's current value ``old`` (ints and floats)."""
    if isinstance(old, (int, float)) and not isinstance(old, bool) and not isinstance(value, bool):
        return type(old)(value)
    return value


def apply(config, overrides: dict):
    """A copy of ``config`` with ``overrides`` set (unknown fields are refused; ``a.b+a.c``
    sets both)."""
    c = config.copy_and_resolve_references()
    for field, value in [(f, v) for key, v in overrides.items() for f in key.split("+")]:
        set_field(c, field, apply_value(_get(c, field), value))
    return c


def score_of(agg: Optional[dict], metric: str, guard: bool, method: str = "asign") -> tuple:
    """Sort key (larger is better) of a validation aggregate: (trained, guard ok, metric) of
    the row ``method``; ``agg`` None = the candidate's training failed (ranked last)."""
    if agg is None:
        return (False, False, -math.inf)
    own = agg[method]["mean"]
    value = own["pcc_gene"] if metric == "pcc_gene" else -own["mse"]
    value = -math.inf if value is None or not math.isfinite(value) else value
    mse = own["mse"] if own["mse"] is not None else math.nan
    ok = (not guard) or mse <= agg["known_mean"]["mean"]["mse"]
    return (True, bool(ok), float(value))


def _link_shared(base: Path, cand: Path, with_graphs: bool) -> None:
    cand.mkdir(parents=True, exist_ok=True)
    for name in SHARED + (("graphs",) if with_graphs else ()):
        src, dst = base / name, cand / name
        if src.exists() and not dst.exists():
            dst.symlink_to(src.resolve(), target_is_directory=True)


def run_sweep(base_config, grid: dict, workdir, *, mode: str = "grid", metric: str = "pcc_gene",
              guard_known_mean: bool = True, inputs: Optional[tuple] = None,
              train: Callable = pipeline.train_and_evaluate, progress: bool = True,
              score_test: bool = True, data_dir=None,
              folder: Optional[Callable] = None) -> dict:
    """Runs the sweep (module doc); returns the sweep.json record (with "test": the chosen
    candidate's test aggregate, unless ``score_test=False``: a stage whose choice becomes the
    base of a further sweep, which then scores the test once for its own choice).

    ``inputs``: (genes, graphs, oracle) for every candidate instead of the run folders' data
    (tests; no ``graph.*`` field may be swept then). ``data_dir``: the run folder every
    candidate reads its prepared data and graphs from (``train`` gets ``data_dir=``; no
    ``<out>/base`` and no links; no ``graph.*`` field). ``folder``: candidate config -> its run
    folder (default ``<out>/cand_<i>``; experiments/paper_tables.py shares equal configs).
    A candidate whose training stops on a non-finite loss (``TrainingError``) is recorded as
    failed (``failed.json`` in its folder; not retried) and ranked last.
    """
    if metric not in ("pcc_gene", "mse"):
        raise ConfigError(f"--metric={metric!r}: expected pcc_gene or mse")
    workdir = Path(workdir)
    base = workdir / "base"
    if (inputs is not None or data_dir is not None) and any(
            f.startswith("graph.") for key in grid for f in key.split("+")):
        raise ConfigError("a sweep over graph.* fields needs its own run folders "
                          "(no inputs= / data_dir=)")
    if inputs is None:
        stages.load_inputs(base_config, base if data_dir is None else data_dir)  # once
    kwargs = {} if data_dir is None else {"data_dir": Path(data_dir)}
    method = str(base_config.model.name)
    cands = candidates(grid, mode, base_config)
    record = {"grid": grid, "mode": mode, "metric": metric, "guard_known_mean": guard_known_mean,
              "method": method, "budget": {"candidates": len(cands),
                                           "steps": int(base_config.train.steps)},
              "candidates": []}
    for i, overrides in enumerate(cands):
        cfg = apply(base_config, overrides)
        cand = Path(folder(cfg)) if folder is not None else workdir / f"cand_{i}"
        if inputs is None and data_dir is None:
            _link_shared(base, cand, not any(f.startswith("graph.") for f in overrides))
        logger.info("candidate %d: %s", i, overrides or "base config")
        t0, failed = time.time(), None
        if (cand / "failed.json").exists():
            failed = json.loads((cand / "failed.json").read_text())["error"]
            agg = None
        else:
            try:
                agg = train(cfg, cand, score_test=False, inputs=inputs, progress=progress,
                            **kwargs)
            except TrainingError as e:
                logger.error("candidate %d FAILED: %s", i, e)
                failed, agg = str(e), None
                atomic.write_json(cand / "failed.json", {"error": failed,
                                                         "seconds": round(time.time() - t0, 1)})
            release_compiled()
        row = {"index": i, "overrides": overrides, "folder": str(cand), "validation": agg,
               "key": list(score_of(agg, metric, guard_known_mean, method)),
               "seconds": round(time.time() - t0, 1)}
        if failed:
            row["failed"] = failed
        record["candidates"].append(row)
    best = max(record["candidates"], key=lambda c: (tuple(c["key"]), -c["index"]))
    record["chosen"] = {"index": best["index"], "overrides": best["overrides"]}
    atomic.write_json(workdir / "sweep.json", record)    # the choice, before any test score
    if not score_test or best.get("failed"):
        logger.info("chosen on validation: candidate %d %s; test not scored (%s)",
                    best["index"], best["overrides"],
                    "every candidate failed" if best.get("failed") else "--noscore_test")
        return record
    logger.info("chosen on validation: candidate %d %s; scoring it on test once",
                best["index"], best["overrides"])
    t0 = time.time()
    test = train(apply(base_config, best["overrides"]), Path(best["folder"]), score_test=True,
                 inputs=inputs, progress=progress, **kwargs)
    release_compiled()
    record["test"] = test
    record["test_seconds"] = round(time.time() - t0, 1)
    atomic.write_json(workdir / "sweep.json", record)
    return record


def release_compiled() -> None:
    """Drops jax's in-memory compilation caches between two runs of one process.

    Jitted functions with static model / config arguments keep every executable they compiled,
    so a sweep or a table of many runs in one process grows by thousands of memory maps a run;
    at Linux's default ``vm.max_map_count`` (65530) LLVM stopped with "Cannot allocate memory"
    after 27 ASIGN runs of 3 folds. Each run compiles for its own config anyway.
    """
    jax.clear_caches()


def summary(record: dict) -> str:
    lines = [f"{'cand':>4}  {'val pcc_gene':>12}  {'val mse':>8}  {'known_mean mse':>14}  "
             "overrides"]
    method = record.get("method", "asign")
    for c in record["candidates"]:
        mark = "*" if c["index"] == record["chosen"]["index"] else " "
        if c["validation"] is None:
            lines.append(f"{c['index']:>3}{mark}  {'failed':>12}  {'':>8}  {'':>14}  "
                         f"{c['overrides'] or 'base'}")
            continue
        a, k = c["validation"][method]["mean"], c["validation"]["known_mean"]["mean"]
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
        mode=("grid", "Every combination, one at a time, or the base plus the half fraction "
                      "of the two-level design.", ("grid", "each", "half")),
        score_test=(True, "Score the chosen candidate on test (once). --noscore_test: a first "
                          "stage whose choice a further sweep builds on."),
        metric=("pcc_gene", "Validation metric of the model (model.name's row).",
                ("pcc_gene", "mse")),
        guard_known_mean=(True, "Rank candidates worse than known_mean on validation MSE last."))
