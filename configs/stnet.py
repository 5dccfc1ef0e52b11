"""ST-Net breast cancer data (He et al. 2020), 3-section patients as 3D samples.

    python -m asign_jax.train --config configs/stnet.py --config.data.root=/path/to/stnet --workdir runs/stnet

The paper keeps 16 three-section patients with good registration and runs 4-fold CV;
list them in data.sections (patient ids) and the folds in train.folds.
"""

from asign_jax.config import base_config


def get_config():
    c = base_config()
    c.data.format = "stnet"
    c.data.root = ""
    c.data.sections = ""
    c.data.n_genes = 250
    c.train.folds = ()                # () = leave one sample out
    # validation: an inner split (one 3D training sample per fold, rotating) is the validation
    # role; the checkpoint and the eq.-6 blend are chosen there (README "Validation")
    c.train.inner_val = 1
    c.train.select = "pcc_gene"
    c.model.asign.blend = "validation"
    return c
