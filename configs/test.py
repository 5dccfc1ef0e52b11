"""A tiny CPU config for tests: 2 synthetic samples x 3 sections, tiny images, a few steps."""

from asign_jax.config import base_config, cpu_baselines


def get_config():
    c = base_config()
    c.data.format = "synthetic"
    c.data.root = ""
    c.data.n_genes = 40
    c.synthetic.n_samples = 2
    c.synthetic.n_sections = 3
    c.synthetic.n_val_samples = 1      # validation block Z (own seed)
    c.train.val_samples = ("Z",)
    c.synthetic.n_genes = 60
    c.synthetic.n_types = 3
    c.synthetic.image_size = 1280
    c.synthetic.spot_pitch = 128
    c.features.spot_input = 32
    c.features.region_input = 32
    c.features.global_input = 32
    c.features.token_grid = 1
    c.features.batch_size = 32
    c.registration.long_side = 512
    c.registration.ants_transform = "none"
    c.model.asign.hidden = 32
    c.model.asign.heads = 2
    c.model.asign.gat_layers = 2
    c.model.asign.cli_iterations = 4
    c.train.optimizer = "adam"
    c.train.learning_rate = 1e-3
    c.train.steps = 8
    c.train.log_every = 4
    c.train.checkpoint_every = 4
    c.train.val_every = 4
    c.train.eval_genes = ("G000",)
    cpu_baselines(c, dim=16, depth=1, heads=2)
    c.model.bleep.projection_dim = 16
    c.model.egn.depth = 2                # one exemplar bridge block (every 2nd layer)
    c.model.his2st.update(mixer_channels=8, mixer_out=16, gnn_layers=2)
    return c
