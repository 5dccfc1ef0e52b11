"""Preprocessing: raw data -> ``<workdir>/prepared`` (+ registration).

    python -m asign_jax.prepare --config configs/her2st.py \
        --config.data.root=../shared/data/her2st --workdir runs/her2st

Stages: (synthetic only) generate the data -> load samples -> select genes, normalise, tile,
extract features -> register every sample with >= 2 sections (unless ``--skip_registration``
or ``registration.enabled=False``). See ``asign_jax.pipeline.prepare``.
"""

from asign_jax import entry, pipeline


def main(flags) -> None:
    pipeline.prepare(flags.config, flags.workdir, skip_registration=flags.skip_registration)


if __name__ == "__main__":
    entry.run(main, "Output folder (prepared data, caches, registration).",
              skip_registration=(False, "Do not register the sections of a sample."))
