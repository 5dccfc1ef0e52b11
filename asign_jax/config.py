"""The one config schema. ``configs/<dataset>.py`` start from ``base_config()`` and override.

Every field can be overridden on the command line as ``--config.a.b=value``.
``config_checks.validate`` checks a whole config before any work (every command and every
stage calls it): the same fields as ``base_config`` (no unknown or missing key) and each value
in its range; the fixed sets of values are ``CHOICES`` here.
"""

from __future__ import annotations


import ml_collections

from asign_jax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # ---- data: reading and preprocessing --------------------------------------------------
    c.data = d = ml_collections.ConfigDict()
    d.format = "her2st"          # her2st | stnet | visium | synthetic | hest | visium_hd
    d.root = ""                  # dataset folder (synthetic: where the generator writes)
    d.sections = ""              # her2st/stnet/synthetic: comma-separated section or patient
                                 # ids ("" = all imaged); visium: "sample:dir,dir;sample2:..."
    d.image_glob = ""            # visium: comma-separated globs for the full-res image
    d.n_genes = 250              # top-N genes by mean raw count (averaged over sections)
    d.gene_selection_sections = ""   # comma-separated section ids the gene ranking reads
                                 # ("" = every prepared section, as the paper and official code)
    d.normalization = "asign"    # asign | triplex | stnet
    d.smooth = False             # triplex only: 3x3 array-neighbourhood smoothing
    d.spot_size = 224            # spot patch side, px
    d.region_size = 512          # region tile side, px
    d.global_size = 1024         # global tile side, px
    d.min_section_spots = 1      # sections with fewer matched spots are refused
    d.spot_pitch_px = 0.0        # spot centre-to-centre distance (full-res px) the pixel sizes
                                 # here and in graph.* assume: a section whose pitch (from its
                                 # array coordinates) differs by > 20 % is a warning; 0 = for
                                 # synthetic data synthetic.spot_pitch, else sections are only
                                 # compared with each other (a check: never invalidates a stage)
    # Physical scale (docs/slides_hest_spatialdata.md). Every px size in this config (patches,
    # tiles, graph radii, validation blocks) is a length at the working resolution um_per_px;
    # the default is HER2ST's JPEGs (200 um ST pitch / ~291 px), so spot patch 224 px = 154 um,
    # region 512 px = 352 um, global 1024 px = 704 um, graph.spot_radius 112 px = 77 um.
    d.um_per_px = 0.6875         # working resolution, um per px (= data.slide.HER2ST_UM_PER_PX)
    d.slide_um_per_px = 0.0      # level-0 um/px of every slide (0 = slide / HEST metadata;
                                 # JPEG/PNG without one are taken at um_per_px)
    d.hest_filter = ""           # hest: "column=value,..." on HEST_v1_*.csv when sections = ""
    d.bin_um = 8                 # visium_hd: bin size read (binned_outputs/square_0XXum)

    # ---- synthetic sample generator (format == "synthetic") -------------------------------
    c.synthetic = s = ml_collections.ConfigDict()
    s.n_samples = 3              # tissue blocks (>= 2 so sample-level folds exist)
    s.n_val_samples = 0          # extra validation blocks Z, Y, ... (own seeds; never test)
    s.n_sections = 4             # consecutive sections per block
    s.n_genes = 300
    s.n_types = 5                # tissue types
    s.image_size = 2048          # px, square
    s.spot_pitch = 128           # px between array-grid neighbours (~110 spots per section)
    s.shared_grid = False        # True = every section on the same canonical spot grid
    s.max_rotation_deg = 30.0
    s.max_translation_px = 80.0
    s.max_scale = 0.05
    s.elastic_px = 4.0           # amplitude of the mild elastic deformation
    s.lattice = "square"         # square | hex (10x Visium hexagonal spot lattice)
    s.embedding_dim = 0          # > 0: also write <root>/embeddings.npz (features drawn
                                 # directly, for features.encoder = "embeddings")
    s.embedding_region_size = 512    # tile sides of the embeddings file (= data.region_size,
    s.embedding_global_size = 1024   # data.global_size)

    # ---- features ------------------------------------------------------------------------
    c.features = f = ml_collections.ConfigDict()
    f.encoder = "resnet50"       # resnet50 | embeddings | histology | resnet50+histology | vit
                                 # | patch_features
    f.weights = ""               # torchvision ResNet-50 state_dict (.pth); "" = fixed-seed init
    f.embeddings = ""            # precomputed features (.h5/.npz) when encoder == embeddings
    f.init_seed = 0              # seed of the fixed initialisation (identical for all sections)
    f.spot_input = 224           # spot patches are resized to this before encoding
    f.region_input = 256         # region (512 px) tiles are resized to this before encoding
    f.global_input = 256         # global (1024 px) tiles are resized to this before encoding
    f.token_grid = 4             # keep a token_grid x token_grid pooled grid of the last map
    f.batch_size = 16
    f.dtype = "float32"
    # foundation-model ViTs (encoder = vit) and TRIDENT / HEST patch-feature files
    # (encoder = patch_features); docs/foundation_models.md
    f.arch = "uni"               # vit: a row of asign_jax.features.vit.ARCHS (features.weights =
                                 # its checkpoint, .bin/.pth/.pt/.safetensors; never downloaded)
    f.patch_features = ""        # patch_features: folder(s) (comma-separated) of <section>.h5
    f.patch_size_level0 = 0      # patch_features: patch side, px, for files without the
                                 # attribute (HEST); 0 = read it from the files
    # histology encoder (features/histology.py, docs/features.md): label-free H&E descriptors
    f.histology_downsample = 2   # the image is described at 1/this of its resolution
    f.histology_cell = 4         # working px per summed-area cell (windows snap to cells)
    f.histology_standardize = "section"  # section: z-score each descriptor over the section's
                                 # own rows of a scale (images only) | none: raw values
    f.histology_context = ()     # window sides (px, full resolution) centred on every row:
                                 # its descriptors there are appended (D = 64 * (1 + len)),
                                 # e.g. (512, 1024): a spot is also described by its
                                 # neighbourhood; () = the row's own window only

    # ---- registration --------------------------------------------------------------------
    c.registration = r = ml_collections.ConfigDict()
    r.enabled = True
    r.long_side = 1024           # px, long side of the downscaled grayscale images
    r.detector = "sift"          # sift | orb
    r.ratio = 0.75               # Lowe ratio test
    r.estimator = "affine"       # affine | partial (similarity)
    r.robust = "magsac"          # magsac | ransac
    r.min_inliers = 12
    r.ants_transform = "Affine"  # Affine | Rigid | SyN | none
    r.ants_iterations = (100, 50, 20)
    r.ants_metric = "mattes"     # mattes | GC | meansquares
    r.ants_syn_iterations = (40, 20, 0)
    r.ants_threads = 1           # ITK threads; > 1 makes ANTs non-deterministic run to run
    r.reproj_threshold = 3.0     # robust-fit threshold, small-image px
    r.max_keypoints = 8000
    r.allow_reflection = True    # mirrored candidates in the mask-moments fallback
    r.content_refine = True      # coarse-to-fine content refinement in the fallback

    # ---- 3D graph ------------------------------------------------------------------------
    c.graph = g = ml_collections.ConfigDict()
    g.k_intra = 8                # same-layer nearest spots
    g.k_cross = 12               # cross-layer top-k by IoU + similarity
    g.spot_radius = 112.0        # px, circle radius for the IoU (half the 224 patch)
    g.cross_layer = True         # False = 2D-only graph (ablation)
    g.cross_mode = "paper"       # paper: top-k of IoU + raw cosine over all other-layer nodes |
                                 # calibrated: candidates within cross_radius, IoU + calibrated sim
    g.cross_radius = 336.0       # px (registered frame), calibrated mode: candidate radius
    g.sim_weight = 1.0           # calibrated mode: weight = IoU + sim_weight * max(0, z-cosine)
    g.similarity_dims = 0        # the edges' feature similarity reads the first this many
                                 # feature columns (0 = all); 64 with features.histology_context:
                                 # the row's own window, not the context blocks appended to it
    g.expand_min_sim = 0.0       # calibrated mode: > 0 adds the paper's similarity expansion,
                                 # other-layer nodes within cosine_radius whose z-cosine >= this
    g.cosine_all_max_nodes = 20000   # above this, cosine candidates are radius-limited
    g.cosine_radius = 1000.0     # px in the reference frame, for radius-limited candidates
    g.region_k_intra = 8
    g.region_k_cross = 4
    g.global_k_intra = 8
    g.global_k_cross = 2

    # ---- models: one block per model (models/factory.py MODELS names each model's block) -----
    # A model is built from its own block (plus the shared ``backbone``) and a fold's
    # fingerprint reads only model.name, model.backbone.mode and that block, so changing
    # model.triplex.depth never invalidates an ASIGN fold.
    c.model = m = ml_collections.ConfigDict()
    m.name = "asign"             # asign | asign2d | stnet | egn | histogene | bleep | his2st |
                                 # triplex (asign_jax.models.factory.MODELS)
    # The spot encoder of the baselines (models/blocks.py SpotEncoder).
    m.backbone = ml_collections.ConfigDict()
    m.backbone.mode = "cached"   # cached: frozen cached features / token grids (CPU default);
                                 # train: the spot ResNet-50 trained end to end (GPU)
    m.backbone.token_grid = f.get_ref("token_grid")   # train mode: token grid of the spot map
    m.backbone.weights = f.get_ref("weights")         # train mode: starting weights
    m.backbone.init_seed = f.get_ref("init_seed")

    # ASIGN (models/asign.py; also asign2d). configs/her2st.py applies ASIGN_HER2ST below.
    m.asign = a = ml_collections.ConfigDict()
    a.hidden = 256
    a.heads = 4
    a.gat_layers = 3
    a.transformer_mlp_ratio = 2
    a.dropout = 0.1
    a.use_cross_attention = True
    a.use_gat = True
    a.use_cli = True
    a.cli_iterations = 10
    a.cli_node_alpha = "learned" # learned: alpha_j = sigmoid(Dense(h_j)) | fixed: alpha_j = 1
    a.cli_start = "model"        # model: unknown nodes start the propagation at p_s (the paper) |
                                 # known_mean: at the known spots' mean (p_s enters by eq. 6 only)
    a.blend = "learned"          # eq. 6 alpha: learned (trained with the network, the paper) |
                                 # validation (per gene, least squares on the validation role)
    a.blend_shrinkage = 1.0      # blend=validation: per-gene alphas shrunk toward the pooled
                                 # one with this x the mean denominator as the prior's weight
                                 # (models/cli.py fit_blend; large = one alpha for every gene)
    a.spot_offset = "none"       # none | known: p_s = mean label of the known spots + head(h)
    a.image_skip = False         # p_s += (feat - mean) W: a linear path from the spot's image
                                 # feature, W initialised at the training labels' ridge fit
    a.skip_fit = "all"           # labels of that ridge fit: all usable ones | held_out (only the
                                 # known layers of held-out samples: no other patient's levels)
    a.skip_lr_multiplier = 0.0   # learning-rate factor of image_skip (0 = kept at its ridge fit)
    a.cli_lr_multiplier = 10.0   # learning-rate factor of the CLI block's parameters
    a.lr_multiplier = 1.0        # ASIGN's own factor on train.learning_rate (every module, on top
                                 # of the two above), so ASIGN's rate is set without the baselines'
    a.spot_head_init = "default" # default (lecun normal) | zeros: p_s starts at the image path +
                                 # offset, and the network learns a correction to them
    a.cross_layer_edges = True   # False: the GAT ignores cross-layer edges (2D graph; asign2d)
    a.remat = False              # True: recompute each graph layer's activations in the backward
                                 # pass (jax.checkpoint) instead of keeping them: less memory per
                                 # node (large tiles), more time per step; same numbers
    a.loss = lo = ml_collections.ConfigDict()   # the hybrid loss, paper eq. 7-9
    lo.lambda_s = 0.75
    lo.lambda_r = 0.5
    lo.lambda_g = 0.5
    lo.lambda_1 = 0.25
    lo.lambda_2 = 0.25
    lo.gamma_1 = 1.0
    lo.gamma_2 = 1.0
    lo.consistency_spots = "all" # all | labelled: spots used by the label-free L_c terms
    lo.spot_supervision = "both" # model (p_s) | final (p'_s) | both: what the spot MSE + PCC see

    # The paper's baselines (models/<name>.py). Sizes below are the originals' (baselines.md);
    # configs/<dataset>.py shrink them for a CPU (cpu_baselines) and say so. Each has its loss
    # weights in its own ``loss`` block.
    m.stnet = ml_collections.ConfigDict({"dropout": 0.0, "loss": {}})
    m.egn = ml_collections.ConfigDict({       # TRIPLEX-copy defaults; App. E: 8 exemplars
        "dim": 1024, "depth": 16, "heads": 16, "head_dim": 64, "mlp_dim": 2048,
        "bhead": 16, "bdim": 128, "bfre": 2, "player": 2, "n_exemplars": 8, "dropout": 0.0,
        "loss": {"pcc": 0.5}})                 # MSE + 0.5 (1 - PCC)
    m.histogene = ml_collections.ConfigDict({  # tutorial / paper runs: 8 layers
        "dim": 1024, "depth": 8, "heads": 16, "head_dim": 64, "mlp_dim": 2048, "n_pos": 64,
        "dropout": 0.1, "loss": {}})
    m.bleep = ml_collections.ConfigDict({      # App. E: average of the top 50
        "projection_dim": 256, "dropout": 0.1, "top_k": 50, "aggregate": "mean",
        "temperature": 1.0,
        "loss": {"temperature": 1.0}})         # the contrastive loss's temperature
    m.his2st = ml_collections.ConfigDict({     # tag 5-7-2-8-4-16-32, dim 16*16*4 = 1024
        "mixer_channels": 32, "mixer_depth": 2, "mixer_kernel": 5, "mixer_out": 4,
        "dim": 1024, "depth": 8, "heads": 16, "head_dim": 64, "mlp_dim": 1024, "n_pos": 64,
        "gnn_layers": 4, "grid_k": 4, "grid_max_dist": 2.0, "dropout": 0.2, "bake_passes": 5,
        "loss": {"zinb": 0.25, "bake": 0.5}})  # MSE + 0.25 ZINB + 0.5 bake
    m.triplex = ml_collections.ConfigDict({    # CVPR-era BC1 (her2st) configuration
        "emb_dim": 512, "depth_fusion": 1, "depth_global": 5, "depth_neighbor": 4,
        "heads_fusion": 4, "heads_global": 8, "heads_neighbor": 4, "mlp_ratio_fusion": 4.0,
        "mlp_ratio_global": 4.0, "mlp_ratio_neighbor": 4.0, "dropout_fusion": 0.4,
        "dropout_global": 0.3, "dropout_neighbor": 0.3, "window": 5,
        "loss": {"alpha": 0.3}})               # fusion MSE + 3 x (0.7 supervised + 0.3 distill.)

    # ---- training ------------------------------------------------------------------------
    c.train = t = ml_collections.ConfigDict()
    t.folds = ()                 # tuple of tuples of held-out sample ids; () = one per sample
    t.extra_train_samples = ()   # samples only ever used for training (e.g. HER2ST B4)
    t.val_samples = ()           # validation samples: held out like a test sample in every fold;
                                 # selection reads their hidden layers, never a test layer
    t.inner_val = 0              # K-fold datasets: n training samples per fold become validation
    t.val_known_fraction = 0.0   # > 0: this fraction of each test sample's KNOWN layer is hidden
                                 # (square blocks) and is the validation role (one-3D-sample data)
    t.val_block_px = 500.0       # side of those blocks, px (registered frame)
    t.val_block_unit = "px"      # px: square blocks of val_block_px | global_tile: whole global
                                 # tiles, so no training spot shares image context with a block
    t.val_block_edges = "keep"   # keep | cut: the scored view drops the spot edges between a
                                 # block and the rest of its section (reached across layers only)
    t.val_every = 50             # score the validation role every n steps (0 = only at the end)
    t.select = "last"            # checkpoint: last | pcc_gene | mse (best validation score)
    t.val_blend_score = "in_sample"  # with model.asign.blend=validation, ASIGN's validation
                                 # score is of the blend fit on the same spots (in_sample) | of
                                 # each spot's blend fit on the other validation groups' spots
                                 # (crossfit: global tiles, leave-one-group-out up to 6 folds);
                                 # the kept alpha is fit on all of them either way
    t.known_layer = 0            # index of the known layer of a held-out sample; negative
                                 # counts from the last layer (-1 = last), as in Python
    t.rotate_known_layer = False # evaluate every layer as the known one
    t.known_fraction = 0.2       # fraction of labelled spots marked known per training step
    t.known_mode = "fraction"    # fraction | layer (one whole labelled layer known per step)
    t.feature_norm = "sample"    # sample | none: per-sample z-scoring of the image features
    t.init_output_bias = True    # start each regression head's bias at the training label mean
    t.optimizer = "sgd"          # sgd | adam
    t.learning_rate = 1e-4
    t.momentum = 0.9
    t.weight_decay = 1e-4
    t.final_lr_fraction = 0.01   # cosine decay to this fraction of the peak
    t.steps = 2000
    t.samples_per_step = 1       # stacked on the leading (data-parallel) axis
    t.max_graph_nodes = 60000    # a sample with more spots trains (and is imputed) in spatial
                                 # tiles of at most this many spots (training/subgraph.py);
                                 # 0 = always the full graph
    t.subgraph_halo = -1         # training tiles' halo in hops (-1 = model.asign.gat_layers)
    t.log_every = 50
    t.checkpoint_every = 200
    t.eval_genes = ("ERBB2",)    # genes drawn in the true-vs-predicted maps

    # ---- impute (python -m asign_jax.impute: a block whose other sections have no ST) ------
    c.impute = im = ml_collections.ConfigDict()
    im.min_dice = 0.9            # a section whose tissue Dice with the reference after
                                 # registration is lower stops the run (registration QC; no
                                 # labels involved), unless --allow_poor_registration
    im.plot_genes = ()           # genes drawn over the H&E; () = train.eval_genes present,
                                 # else the 3 most expressed
    im.max_spots_off_tissue = 0.2    # spots_from: a given spot grid with a larger fraction of
                                 # its spots off the section's tissue mask (or whose pitch
                                 # differs by > 20 % from the measured section's) stops the
                                 # run, unless --allow_unusual_spots

    # ---- evaluation ----------------------------------------------------------------------
    c.evaluation = ev = ml_collections.ConfigDict()
    ev.similarity_k = 20         # "similarity" reference: mean of the top-k most similar known
                                 # spots (App. E: 20 = 8 + 12, ASIGN's reference budget)

    return c


ASIGN_ONE_LAYER = {
    "blend": "validation",       # eq. 6 alpha per gene by least squares on the validation role
    "cli_node_alpha": "fixed",   # alpha_j = 1: with one labelled layer per 3D sample nothing
                                 # can teach the propagation a per-node trust
    "spot_offset": "known",      # the network predicts deviations from the known spots' mean
    "image_skip": True,          # ... plus a linear image path at a ridge fit
    "skip_fit": "held_out",      # that ridge fit on the held-out sample's known layer alone
    "cli_start": "known_mean",   # p_i is the parameter-free propagation; the network enters
                                 # p'_s through the eq.-6 blend only
}
"""ASIGN's preset for a block with ONE labelled layer (HER2ST patient C; configs/her2st.py):
the choices the training samples cannot teach, each read on HER2ST's validation blocks with
experiments/sweep.py and graph_choice.py (docs/validation.md); ``model.asign.update(
ASIGN_ONE_LAYER)``. The paper's defaults are ``base_config().model.asign``."""

MODEL_BLOCKS = {"asign2d": "asign"}
"""The config block a model reads when it is not ``model.<name>`` (ASIGN2D is ASIGN on a 2D
graph, so it reads ASIGN's block)."""


def block_name(model_name: str) -> str:
    """The ``model.<block>`` that the model ``model_name`` reads (``models.factory``)."""
    return MODEL_BLOCKS.get(model_name, model_name)


def cpu_baselines(c: ml_collections.ConfigDict, dim: int, depth: int = 2, heads: int = 4
                  ) -> ml_collections.ConfigDict:
    """Shrinks the paper's baselines (``c.model.<name>``) to ``dim`` wide, ``depth`` deep
    transformer stacks for a CPU budget (same architectures; the README's baseline table gives
    the paper sizes). Returns ``c``."""
    head_dim = max(dim // heads, 1)
    common = {"heads": heads, "head_dim": head_dim}
    c.model.egn.update(dim=dim, depth=depth, mlp_dim=2 * dim, bhead=heads, bdim=head_dim,
                       **common)
    c.model.histogene.update(dim=dim, depth=depth, mlp_dim=2 * dim, **common)
    c.model.his2st.update(dim=dim, depth=depth, mlp_dim=dim, bake_passes=2, **common)
    c.model.triplex.update(emb_dim=dim, depth_global=depth, depth_neighbor=depth,
                           heads_fusion=heads, heads_global=heads, heads_neighbor=heads)
    return c


# ---- validation -----------------------------------------------------------------------------

CHOICES = {
    "data.format": ("her2st", "stnet", "visium", "synthetic", "hest", "visium_hd"),
    "data.normalization": ("asign", "triplex", "stnet"),
    "features.encoder": ("resnet50", "embeddings", "histology", "resnet50+histology", "vit",
                         "patch_features"),
    "features.arch": ("uni", "uni2_h", "h_optimus_0", "h_optimus_1", "virchow2", "gigapath",
                      "phikon", "tiny_test"),     # = asign_jax.features.vit.ARCHS (a test checks)
    "features.histology_standardize": ("section", "none"),
    "features.dtype": ("float32", "bfloat16", "float16"),
    "registration.estimator": ("affine", "partial"),
    "registration.robust": ("magsac", "ransac"),
    "registration.ants_transform": ("Affine", "Rigid", "SyN", "none"),
    "registration.ants_metric": ("mattes", "GC", "meansquares"),
    "model.asign.loss.consistency_spots": ("all", "labelled"),
    "model.asign.loss.spot_supervision": ("model", "final", "both"),
    "train.known_mode": ("fraction", "layer"),
    "train.val_block_unit": ("px", "global_tile"),
    "train.val_block_edges": ("keep", "cut"),
    "train.feature_norm": ("sample", "none"),
    "train.optimizer": ("sgd", "adam"),
    "train.select": ("last", "pcc_gene", "mse"),
    "train.val_blend_score": ("in_sample", "crossfit"),
    "model.asign.skip_fit": ("all", "held_out"),
    "graph.cross_mode": ("paper", "calibrated"),
    "model.asign.blend": ("learned", "validation"),
    "model.asign.cli_node_alpha": ("learned", "fixed"),
    "model.asign.cli_start": ("model", "known_mean"),
    "model.asign.spot_offset": ("none", "known"),
    "model.asign.spot_head_init": ("default", "zeros"),
    "model.backbone.mode": ("cached", "train"),
    "model.bleep.aggregate": ("mean", "weighted"),
}
"""Fields with a fixed set of values (``model.name`` is checked against the model factory)."""

def check_choice(name: str, value):
    """``value`` if it is one of ``CHOICES[name]``, else ConfigError naming the field: the one
    check of a fixed set of values, used by ``validate`` and by the functions that branch on
    one (a direct caller gets the same line)."""
    if value not in CHOICES[name]:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(CHOICES[name])}")
    return value


def _fields(c, prefix: str = "") -> dict:
    """{dotted name: value} of every leaf of a ConfigDict (or a mapping of mappings)."""
    out = {}
    for k, v in c.items():
        name = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.update(_fields(v, name + "."))
        else:
            out[name] = v
    return out


def get_field(config, name: str):
    """The value of the dotted field ``name`` (ConfigError naming it if there is none)."""
    node = config
    for part in name.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise ConfigError(f"unknown config field {name!r}")
        node = node[part]
    return node


def set_field(config, name: str, value) -> None:
    """Sets the dotted field ``name`` of ``config`` in place, as given (``validate`` checks
    it). Unknown fields are refused."""
    *path, leaf = name.split(".")
    node = get_field(config, ".".join(path)) if path else config
    if not hasattr(node, "keys") or leaf not in node:
        raise ConfigError(f"unknown config field {name!r}")
    node[leaf] = value


def fields(config) -> dict:
    """{dotted name: value} of every field of ``config`` (references resolved)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.copy_and_resolve_references()
    return _fields(config)
