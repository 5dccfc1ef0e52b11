"""A DLPFC-size synthetic 3D block: 4 sections x ~3,600 spots on a Visium hexagonal lattice.

    python -m asign_jax.train --config configs/synthetic_visium.py --workdir runs/synthetic_visium

Three blocks (leave-one-block-out folds), each 4 consecutive sections of ~3,600 spots
(~14,500 nodes per 3D sample, the paper's DLPFC size), spots on a hexagonal lattice (pitch
100 px), image features drawn directly by the generator (``synthetic.embedding_dim``: the
``embeddings`` encoder path, no image is encoded; the H&E images are still rendered for
registration). Training uses the full graph (14.5k < ``train.max_graph_nodes``).
"""

from asign_jax.config import base_config


def get_config():
    c = base_config()
    c.data.format = "synthetic"
    c.data.root = ""                       # "" = <workdir>/synthetic_data
    c.data.region_size = 512
    c.data.global_size = 1024
    c.synthetic.n_samples = 3
    c.synthetic.n_sections = 4
    c.synthetic.lattice = "hex"
    c.synthetic.spot_pitch = 100
    c.synthetic.image_size = 7680          # ~3,600 spots per section inside the tissue blob
    c.synthetic.embedding_dim = 256
    c.synthetic.embedding_region_size = 512
    c.synthetic.embedding_global_size = 1024
    c.features.encoder = "embeddings"
    c.features.embeddings = ""             # "" = the generator's <root>/embeddings.npz
    c.registration.long_side = 1024
    c.registration.ants_transform = "none"   # keypoint/moments affine only (CPU budget)
    c.graph.spot_radius = 50.0             # half the spot pitch
    c.model.asign.hidden = 64
    c.model.asign.heads = 4
    c.model.asign.gat_layers = 2
    c.model.asign.dropout = 0.3
    c.train.optimizer = "adam"
    c.train.weight_decay = 0.05
    c.train.learning_rate = 3e-3
    c.train.steps = 60
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.train.eval_genes = ("G000", "G001")
    return c
