"""Train and evaluate with sample-level cross-validation, from nothing to the reports.

    python -m asign_jax.train --config configs/<dataset>.py --workdir DIR [--config.train.steps=500]
    python -m asign_jax.train --config configs/<dataset>.py --config.model.name=egn \
        --workdir DIR2 --data_dir DIR      # a baseline on DIR's prepared data and graphs

Stages (each reused when present, so relaunching the same command resumes): prepared data,
registration, graphs, then per fold training (``checkpoints/fold_<k>``) and scoring, then
``metrics.json``, ``metrics.jsonl`` (training log), ``per_gene_pcc.csv``,
``predictions/<sample>.h5ad`` and ``plots/``. See ``asign_jax.pipeline.train_and_evaluate``.
"""

from asign_jax import entry, pipeline


def main(flags) -> None:
    pipeline.train_and_evaluate(flags.config, flags.workdir, data_dir=flags.data_dir or None)


if __name__ == "__main__":
    entry.run(main, "Run folder (prepared data, graphs, checkpoints, reports).",
              data_dir=("", "Read the prepared data and graphs from this run folder instead of "
                            "--workdir (several runs, e.g. other --config.model.name, share one)."))
