"""Train and evaluate with sample-level cross-validation, from nothing to the reports.

    python -m asign_jax.train --config configs/<dataset>.py --workdir DIR [--overwrite]

Stages (each reused when its manifest matches the config, so relaunching the same command
resumes): prepared data, registration, graphs, then per fold training
(``checkpoints/fold_<k>``) and scoring, then ``metrics.json``, ``metrics.jsonl`` (training
log), ``per_gene_pcc.csv``, ``predictions/<sample>.h5ad`` and ``plots/``. A stage made with
another config stops the command, unless ``--overwrite``. See
``asign_jax.pipeline.train_and_evaluate``.
"""

from asign_jax import entry, pipeline


def main(flags) -> None:
    pipeline.train_and_evaluate(flags.config, flags.workdir, overwrite=flags.overwrite)


if __name__ == "__main__":
    entry.run(main, "Run folder (prepared data, graphs, checkpoints, reports).",
              overwrite=(False, "Rebuild stages made with another config, and all after them."))
