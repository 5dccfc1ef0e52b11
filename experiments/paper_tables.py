"""The paper's Tables I-IV on the data at hand, beside the paper's own numbers.

    python experiments/paper_tables.py --table 1,2,3,4 --config configs/synthetic.py \
        [--out DIR] [--data_dir PREPARED_RUN] [--rows asign,stnet] [--config.a.b=v ...] \
        [--tune [--tune_fields train.learning_rate,dropout]]

Every row is ONE run of ``asign_jax.pipeline.train_and_evaluate`` (the code behind
``python -m asign_jax.train``) with the dataset config plus the row's overrides (another
``model.name`` or an ablation switch): the same folds, validation protocol, genes, masking and
scoring code for every row (``DIR`` = ``--out``, default
``runs/experiments/paper_tables/<config name>``). The prepared data, registration and graphs
are built once in ``DIR/data`` (or read from ``--data_dir``, any prepared run folder) and shared by all rows.

  Table I    ST-Net, EGN, HisToGene, BLEEP, His2ST, TRIPLEX (App. Table V), ASIGN 2D; the
             references overlap, similarity (and known_mean, ridge when the project has it),
             scored in every run; ASIGN 3D.
  Table II   ASIGN without the GAT blocks / the cross-attention / both, and with both.
  Table III  ASIGN without the CLI (0 %) and with 10 / 20 / 30 % known spots per training step.
  Table IV   2D graph (= ASIGN 2D) vs 3D graph, both without the CLI (as in the paper, whose
             Table IV rows repeat Table I's "ASIGN 2D" and Table III's "w. 0 %").

Layout: ``DIR/rows/<model>-<hash>/`` is a normal run folder per distinct row config (rows of
several tables with the same config share it); a finished row (its metrics.json and
row.json with the same config) is not recomputed, an unfinished one resumes from its
checkpoints. ``DIR/tables/table<k>.{md,csv}`` and ``table<k>_<metric>.png`` (Fig. 4 style:
per-section box plots, Welch's t-test of each row against ASIGN, * = p < 0.05).
Numbers: mean +- population std over folds of the per-fold means over test sections (the
project's convention, ``evaluation/metrics.py``); pcc_gene = per gene across spots, pcc_spot =
per spot across genes. The paper's PCC is the official code's per-spot PCC, so it sits beside
pcc_spot. The paper's column is the dataset the data format corresponds to (her2st -> HER2,
visium -> DLPFC, stnet -> ST-Data); synthetic data shows HER2's numbers for orientation only.

``--tune``: every learned row is instead the best of a validation sweep
(``experiments/sweep.py``'s ``run_sweep``, mode ``half``) over ``TUNE_GRID``, the SAME grid,
number of candidates and ``train.steps`` for every row: candidate 0 is the row's config as
above (the method's current defaults; for ASIGN its hand-staged choices), the others the half
fraction of the two-level design over the grid's fields (9 candidates for its 4 fields;
``--tune_fields`` narrows the fields, for every row alike). Each candidate is a run folder
``rows/<model>-<hash>/`` trained with the test rows unscored; the candidate with the best
validation ``pcc_gene`` of the row's method wins (a candidate worse than ``known_mean`` on
validation MSE ranks last; one whose training diverged after that); the checkpoint step is
chosen on validation within each candidate as without ``--tune`` (``train.select``).
``tables/<dataset>/<row>/sweep.json`` holds every candidate's validation scores and the
choice, written before the chosen candidate is scored on test, once. The tables then show
per row the chosen candidate, the validation score that chose it, the test scores and the
budget (candidates x steps); the references are read from ASIGN's chosen run.

Code: the rows, tables, ``TUNE_GRID`` and the paper's numbers are in ``paper_tables_spec.py``,
running and reading back the rows in ``paper_tables_rows.py``, writing a table (markdown, CSV,
box plots) in ``paper_tables_render.py``; their names are importable from this script too.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags

from asign_jax import entry, pipeline, stages  # noqa: F401  (tests patch tables.pipeline)
from asign_jax.errors import ConfigError
from asign_jax.evaluation.metrics import METRICS  # noqa: F401
# experiments/ (the script's folder) is on sys.path; the names stay importable from here
from paper_tables_render import plot_boxes, summarise, welch, write_table  # noqa: F401
from paper_tables_rows import (compute_rows, encoder_label, read_row, row_config,  # noqa: F401
                               row_dir, run_row, sweep_folder, tune_row)
from paper_tables_spec import (ASIGN, DROPOUT, PAPER, PAPER_DATASET, ROWS,  # noqa: F401
                               TABLE4_LABELS, TABLE_BASE, TABLES, TUNE_GRID, TUNE_LABELS,
                               TUNE_METRIC, Times, candidate_label, dropout_field, tune_fields,
                               tune_grid, tuned_info)


def make_tables(config, workdir, tables: list[int], data_dir=None, only_rows=None, *,
                tune: bool = False, fields=None) -> dict:
    """Prepares (once) the shared data, runs every needed row and writes the tables.

    ``tune``: every learned row tuned on validation (module doc); ``fields``: the TUNE_GRID
    keys to tune over (default all). Returns {table: {row: read_row(...)}}.
    """
    workdir = Path(workdir)
    data_dir = Path(data_dir) if data_dir else workdir / "data"
    for k in tables:
        if k not in TABLES:
            raise ConfigError(f"--table: {k} is not one of {sorted(TABLES)}")
    stages.load_inputs(config, data_dir)          # prepare + register + graphs, once
    wanted = []
    for k in tables:
        wanted += [r for r in TABLES[k][1] if only_rows is None or r in only_rows]
    wanted = list(dict.fromkeys(wanted))
    results = compute_rows(config, workdir, data_dir, wanted, tune=tune, fields=fields)
    fmt_name = str(config.data.format)
    dataset = f"{fmt_name} ({data_dir})"
    out = {}
    for k in tables:
        res = {r: results[r] for r in TABLES[k][1] if r in results}
        if res:
            write_table(workdir / "tables", k, dataset, PAPER_DATASET.get(fmt_name, "HER2"), res,
                        synthetic=fmt_name == "synthetic")
            print((workdir / "tables" / f"table{k}.md").read_text())
        out[k] = res
    print(f"tables: {workdir / 'tables'}/table<k>.{{md,csv}}, table<k>_<metric>.png; "
          f"row runs: {workdir / 'rows'}"
          + (f"; sweeps: {sweep_folder(workdir, config)}/<row>/sweep.json" if tune else ""))
    return out


# ---- main -------------------------------------------------------------------------------------

def main(args) -> None:
    out = args.out
    if out == f"{entry.EXPERIMENTS_OUT}/paper_tables":      # the default: one folder per config
        out = f"{out}/{Path(flags.FLAGS['config'].config_filename).stem}"
    tables = [int(t) for t in args.table.split(",") if t.strip()]
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    if rows:
        unknown = sorted(set(rows) - set(ROWS))
        if unknown:
            raise ConfigError(f"--rows: unknown {unknown}; known {sorted(ROWS)}")
    fields = tune_fields(args.tune_fields) if args.tune_fields else None
    if fields and not args.tune:
        raise ConfigError("--tune_fields needs --tune")
    t0 = time.time()
    make_tables(args.config, out, tables, args.data_dir, rows, tune=args.tune, fields=fields)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    entry.run_script(
        main, "paper_tables", config="required",
        table=("1", "Comma-separated tables: 1, 2, 3, 4."),
        data_dir=(None, "A prepared run folder to read the data and graphs from (default "
                        "<out>/data, prepared there if missing)."),
        rows=(None, f"Only these row ids (comma-separated) of {sorted(ROWS)}."),
        tune=(False, "Tune every learned row on validation over TUNE_GRID, the same candidates "
                     "and steps for every row (tables/<dataset>/<row>/sweep.json)."),
        tune_fields=(None, "With --tune: only these TUNE_GRID fields (comma-separated; lr, wd, "
                           "dropout, norm or the dotted names), for every row alike."))
