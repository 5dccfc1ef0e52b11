"""Preprocessing entry point: raw data -> ``<workdir>/prepared`` (+ registration).

    python -m asign_jax.prepare --config configs/her2st.py \
        --config.data.root=../shared/data/her2st --workdir runs/her2st

Stages: (synthetic only) generate the data -> load samples -> select genes, normalise, tile,
extract features (``asign_jax.preprocess.pipeline.prepare_samples``) -> register every sample
with >= 2 sections (unless ``--skip_registration`` or ``registration.enabled=False``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import app

from asign_jax.preprocess.pipeline import prepare_samples, section_summary

logger = logging.getLogger(__name__)



def summary_table(prepared, spot_size: int) -> str:
    """Per-section table: sample, section, spots, region/global tiles, padded spot patches."""
    rows = [section_summary(p.sample_id, s, spot_size) for p in prepared for s in p.sections]
    head = ("sample", "section", "spots", "region_tiles", "global_tiles", "padded_spots")
    cells = [head] + [tuple(str(r[k]) for k in head) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i >= 2 else c[i].ljust(widths[i])
                       for i in range(len(head))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def prepare(config, workdir, *, skip_registration: bool = False):
    """Runs the whole preprocessing stage; returns the list of PreparedSample.

    Writes ``<workdir>/prepared/`` (see ``asign_jax.preprocess.prepared``), feature caches in
    ``<workdir>/cache/features`` and, when registering, ``<workdir>/registration/``.
    """
    from asign_jax.data.loaders import load_samples

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = config.copy_and_resolve_references()  # never mutate the caller's config

    if config.data.format == "synthetic":
        from asign_jax.data.synthetic import generate
        root = Path(config.data.root) if config.data.root else workdir / "synthetic_data"
        logger.info("stage 0/3: generating synthetic data in %s", root)
        generate(config.synthetic, root, seed=config.seed)
        config.data.root = str(root)

    logger.info("stage 1/3: loading %s samples from %s", config.data.format, config.data.root)
    samples = load_samples(config)
    logger.info("loaded %d samples: %s", len(samples),
                ", ".join(f"{s.sample_id}[{','.join(x.name for x in s.sections)}]"
                          for s in samples))

    logger.info("stage 2/3: genes (%d, %s normalisation), tiles (%d/%d px), features (%s)",
                config.data.n_genes, config.data.normalization, config.data.region_size,
                config.data.global_size, config.features.encoder)
    prepared = prepare_samples(samples, config, workdir)

    if skip_registration:
        logger.info("stage 3/3: registration skipped (--skip_registration)")
    elif not config.registration.enabled:
        logger.info("stage 3/3: registration skipped (registration.enabled=False)")
    else:
        from asign_jax.register import load_ground_truth
        from asign_jax.registration import register_sample
        for p in prepared:
            if p.n_layers < 2:
                logger.info("stage 3/3: sample %r has a single section; nothing to register",
                            p.sample_id)
                continue
            logger.info("stage 3/3: registering sample %r (%d sections)", p.sample_id,
                        p.n_layers)
            register_sample(p, config, workdir,
                            ground_truth=load_ground_truth(config, p, workdir))

    genes = prepared[0].genes
    print("\n" + summary_table(prepared, config.data.spot_size))
    print(f"\n{len(genes)} genes ({config.data.normalization} normalisation): "
          f"first {genes[0]}, last {genes[-1]}")
    print(f"prepared data: {workdir / 'prepared'} (index.json, genes.txt, <sample>/*.npz)")
    if not skip_registration and config.registration.enabled:
        print(f"registration:  {workdir / 'registration'}")
    return prepared


def main(argv):
    from absl import flags
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    f = flags.FLAGS
    prepare(f.config, f.workdir, skip_registration=f.skip_registration)


if __name__ == "__main__":
    from asign_jax.entry import define_flags
    define_flags("Output folder (prepared data, caches, registration).",
                 skip_registration=(False, "Do not register the sections of a sample."))
    app.run(main)
