"""Registers every prepared sample onto its middle section.

    python -m asign_jax.register --config configs/her2st.py --workdir DIR [--samples A,B]
        [--overwrite]

Reads ``<workdir>/prepared/`` and writes, per sample,
``<workdir>/registration/<sample_id>/{registered.npz, qc.json, overlay.png}``. A registration
made with the same config is reused (its QC printed); ``--overwrite`` redoes one made with
another config. See ``asign_jax.stages.register``.
"""

from asign_jax import entry, stages


def main(flags) -> None:
    stages.register(flags.config, flags.workdir, [s for s in flags.samples.split(",") if s],
                      overwrite=flags.overwrite)


if __name__ == "__main__":
    entry.run(main, "Work directory (holds prepared/).",
              samples=("", "Comma-separated sample ids ('' = all prepared)."),
              overwrite=(False, "Redo a registration made with another config (and delete "
                                "the graphs and checkpoints made from it)."))
