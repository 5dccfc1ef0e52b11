"""10x Visium DLPFC (Maynard et al. 2021): 3 donors x 4 adjacent sections, 3-fold CV by donor.

    python -m asign_jax.train --config configs/dlpfc.py --config.data.root=/path/to/dlpfc --workdir runs/dlpfc
"""

from asign_jax.config import base_config


def get_config():
    c = base_config()
    c.data.format = "visium"
    c.data.root = ""
    c.data.sections = ("Br5292:151507,151508,151509,151510;"
                       "Br5595:151669,151670,151671,151672;"
                       "Br8100:151673,151674,151675,151676")
    c.data.n_genes = 250
    # Visium spots are ~55 um (about 96 full-res px): scale the circles and patches accordingly.
    c.graph.spot_radius = 112.0
    c.train.folds = (("Br5292",), ("Br5595",), ("Br8100",))
    # validation: an inner split (one 3D training sample per fold, rotating) is the validation
    # role; the checkpoint and the eq.-6 blend are chosen there (README "Validation")
    c.train.inner_val = 1
    c.train.select = "pcc_gene"
    c.model.asign.blend = "validation"
    return c
