"""Exports the prepared, registered sections of a run folder as a tensorflow-datasets dataset.

    python -m asign_jax.export --config configs/<dataset>.py --workdir DIR --format tfds
        [--out DIR]

One example per section (spot/region/global labels, counts, features, tokens, pixel and
registered coordinates), one split per sample, ``array_record`` files, read back without
TensorFlow::

    import tensorflow_datasets as tfds
    src = tfds.data_source("asign_prepared/<config>:1.0.0", data_dir="DIR/tfds")
    src["C"][0]["spot_labels"]          # split = sample id, index = layer

The exact name is printed. See ``asign_jax.registration.tfds`` and ``asign_jax.stages.export``.
"""

from asign_jax import entry, stages


def main(flags) -> None:
    stages.export(flags.config, flags.workdir, flags.format, flags.out or None)


if __name__ == "__main__":
    entry.run(main, "Run folder (holds prepared/ and registration/).",
              format=("tfds", "Export format (tfds)."),
              out=("", "Output data_dir ('' = <workdir>/tfds)."))
