"""Impute a block whose other sections have no ST: a manifest in, a 3D expression volume out.

    python -m asign_jax.impute --manifest examples/her2st_patient_c.yaml --out runs/patient_c

The manifest (YAML or CSV; ``asign_jax.block.manifest``) lists the block's sections in
physical order, each with its H&E image and, for the measured ones, its ST data. Writes
``<out>/volume.h5ad``, ``<out>/sections/<section>.h5ad``, ``<out>/figures/``,
``<out>/summary.json`` and the intermediate stages in ``<out>/work``. See
``asign_jax.block.run.impute_block``.
"""

from asign_jax import entry
from asign_jax.block.run import impute_block
from asign_jax.errors import ConfigError


def _float(value, flag):
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--{flag}={value!r} is not a number") from None


def main(flags) -> None:
    impute_block(flags.manifest, flags.out, flags.config,
                 train_with=[s for s in (flags.train_with or "").split(",") if s.strip()],
                 checkpoint=flags.checkpoint or None, finetune=flags.finetune,
                 spots_from=flags.spots_from or None,
                 allow_poor_registration=flags.allow_poor_registration,
                 plot_genes=[g.strip() for g in flags.genes.split(",") if g.strip()] or None,
                 thickness_um=_float(flags.thickness_um, "thickness_um"),
                 overwrite=flags.overwrite, allow_unusual_spots=flags.allow_unusual_spots)


if __name__ == "__main__":
    entry.run(
        main, "(unused by impute: the intermediate stages go to <out>/work).",
        required=("manifest", "out"),
        manifest=(None, "Block manifest (YAML or CSV): sections in order, images, ST data."),
        out=(None, "Output folder (volume.h5ad, sections/, figures/, summary.json, work/)."),
        train_with=("", "Extra labelled data, comma-separated: manifests, config files or "
                        "dataset folders (HER2ST / ST-Net / Visium)."),
        checkpoint=("", "A model trained by asign_jax.train (run folder or its "
                        "checkpoints/fold_<k>) instead of training on the block."),
        finetune=(False, "With --checkpoint: continue training it on the block's measured "
                         "sections for config.train.steps steps."),
        spots_from=("", "Folder of <section>.csv spot centres (columns [id,] x, y in pixels) "
                        "for image-only sections; the others get a virtual grid."),
        allow_poor_registration=(False, "Impute even when a section's tissue Dice after "
                                        "registration is below config.impute.min_dice."),
        genes=("", "Genes to draw, comma-separated (default impute.plot_genes or "
                   "train.eval_genes)."),
        thickness_um=("", "Section thickness in um (z of the volume; overrides the manifest)."),
        overwrite=(False, "Retrain when <out>/work was made from other data, genes or config "
                          "(instead of stopping)."),
        allow_unusual_spots=(False, "Impute even when a spots_from grid lies mostly off the "
                                    "tissue or has another pitch than the measured section."))
