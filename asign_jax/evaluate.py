"""Re-scores every fold of a run folder from its latest checkpoint and rewrites the reports.

    python -m asign_jax.evaluate --config configs/<dataset>.py --workdir DIR

Scoring conventions: ``asign_jax.evaluation.metrics``. See ``asign_jax.pipeline.evaluate_all``.
"""

from asign_jax import entry, pipeline


def main(flags) -> None:
    pipeline.evaluate_all(flags.config, flags.workdir, data_dir=flags.data_dir or None)


if __name__ == "__main__":
    entry.run(main, "Run folder (holds checkpoints/).",
              data_dir=("", "The run folder holding the prepared data and graphs (default "
                            "--workdir)."))
