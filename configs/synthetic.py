"""The embedded demo: a synthetic 3D tissue block generated on the fly (no data needed).

    python -m asign_jax.train --config configs/synthetic.py --workdir runs/synthetic
"""

from asign_jax.config import base_config, cpu_baselines


def get_config():
    c = base_config()
    c.data.format = "synthetic"
    c.data.root = ""                # "" = <workdir>/synthetic_data
    c.synthetic.n_samples = 3
    c.synthetic.n_sections = 4
    # one validation block (own seed, never a test block): every choice reads it, not the tests
    c.synthetic.n_val_samples = 1
    c.train.val_samples = ("Z",)
    # Small encoder inputs keep the demo fast on a CPU: ResNet-50 at 64 px costs ~1/12 of 224 px.
    c.features.spot_input = 64
    c.features.region_input = 64
    c.features.global_input = 64
    c.features.token_grid = 2
    # features: the label-free H&E descriptors (docs/features.md), chosen on the validation
    # block Z with experiments/feature_probe.py (a ridge fit on Z's first layer, scored on its
    # other layers): pcc_gene 0.246 against 0.202 with the fixed-seed ResNet-50
    c.features.encoder = "histology"
    c.features.histology_downsample = 1       # nuclei are 5-10 px across
    c.registration.long_side = 1024
    c.graph.region_k_cross = 4
    c.graph.global_k_cross = 2
    c.model.asign.hidden = 64
    c.model.asign.heads = 4
    c.train.optimizer = "adam"      # the paper's SGD at 1e-4 needs far more steps than a demo
    c.train.weight_decay = 0.05
    c.train.learning_rate = 3e-3
    c.train.steps = 200
    c.train.log_every = 25
    c.train.checkpoint_every = 50
    # every choice below was read on the validation block Z, never on a test layer (README
    # "Validation"): experiments/sweep.py --mode each over weight decay, supervision, CLI
    # learning rate, known mode and steps; experiments/graph_choice.py picked the calibrated
    # graph (cross_radius 384 px). ASIGN's learning rate, dropout and the feature normalisation
    # are the candidate the tuned Table I chose for ASIGN on Z (docs/paper_tables.md: c1 of
    # lr {1e-3, 9e-3} x dropout {0, 0.3} x norm {sample, none}, validation pcc_gene 0.281
    # against 0.271 for the previous lr 3e-3 / dropout 0.3 / none); lr_multiplier keeps the
    # baselines' train.learning_rate where it was.
    c.model.asign.lr_multiplier = 1.0 / 3.0     # ASIGN at 1e-3
    c.model.asign.dropout = 0.0
    c.train.feature_norm = "sample"
    c.train.val_every = 25
    c.train.select = "pcc_gene"
    c.model.asign.blend = "validation"
    c.model.asign.spot_offset = "known"
    c.model.asign.image_skip = True
    c.train.known_mode = "layer"
    c.graph.cross_mode = "calibrated"
    c.graph.cross_radius = 384.0
    c.train.eval_genes = ("G000", "G001")
    # the paper's baselines (--config.model.name=stnet|egn|...) at CPU sizes: 64 wide, 2 deep
    # (the originals are 512-1024 wide, 4-16 deep; base_config keeps those sizes)
    cpu_baselines(c, dim=64)
    c.model.his2st.mixer_out = 16       # token grid 2 x 2 x 16 = 64 = his2st dim
    return c
