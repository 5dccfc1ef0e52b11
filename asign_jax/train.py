"""Train and evaluate with sample-level cross-validation, from nothing to the reports.

    python -m asign_jax.train --config configs/<dataset>.py --workdir DIR [--overwrite]
    python -m asign_jax.train --config configs/<dataset>.py --config.model.name=egn \
        --workdir DIR2 --data_dir DIR      # a baseline on DIR's prepared data and graphs

Stages (each reused when its manifest matches the config, so relaunching the same command
resumes): prepared data, registration, graphs, then per fold training
(``checkpoints/fold_<k>``) and scoring, then ``metrics.json``, ``metrics.jsonl`` (training
log), ``per_gene_pcc.csv``, ``predictions/<sample>.h5ad`` and ``plots/``. A stage made with
another config stops the command, unless ``--overwrite``. See
``asign_jax.pipeline.train_and_evaluate``.

Multi-process (one process per host or per accelerator group; the data-parallel mesh spans
them all): start the same command in every process with ``--coordinator=HOST:PORT``
(process 0's address), ``--num_processes=P`` and ``--process_id=i``.
"""

from asign_jax import entry, pipeline
from asign_jax.training import sharding


def main(flags) -> None:
    if flags.coordinator:
        sharding.initialize(flags.coordinator, int(flags.num_processes), int(flags.process_id))
    pipeline.train_and_evaluate(flags.config, flags.workdir, overwrite=flags.overwrite,
                                data_dir=flags.data_dir or None)


if __name__ == "__main__":
    entry.run(main, "Run folder (prepared data, graphs, checkpoints, reports).",
              overwrite=(False, "Rebuild stages made with another config, and all after them."),
              coordinator=("", "host:port of process 0 for a multi-process run (jax.distributed)"),
              num_processes=("1", "processes in a multi-process run"),
              process_id=("0", "this process's index in a multi-process run"),
              data_dir=("", "Read the prepared data and graphs from this run folder instead of "
                            "--workdir (several runs, e.g. other --config.model.name, share one)."))
