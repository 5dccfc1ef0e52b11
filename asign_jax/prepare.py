"""Preprocessing: raw data -> ``<workdir>/prepared`` (+ registration).

    python -m asign_jax.prepare --config configs/her2st.py \
        --config.data.root=../shared/data/her2st --workdir runs/her2st [--overwrite]

Stages: (synthetic only) generate the data -> load samples -> select genes, normalise, tile,
extract features -> register every sample (unless ``--skip_registration``; ``train``
registers before building graphs). Stages that match the config are reused; ``--overwrite``
rebuilds stages made with another config. See ``asign_jax.stages.prepare``.
"""

from asign_jax import entry, stages


def main(flags) -> None:
    stages.prepare(flags.config, flags.workdir, skip_registration=flags.skip_registration,
                     overwrite=flags.overwrite)


if __name__ == "__main__":
    entry.run(main, "Output folder (prepared data, caches, registration).",
              skip_registration=(False, "Do not register the sections of a sample (yet)."),
              overwrite=(False, "Rebuild stages made with another config, and all after them."))
