"""The one config schema. ``configs/<dataset>.py`` start from ``base_config()`` and override.

Every field can be overridden on the command line as ``--config.a.b=value``. ``validate``
checks a whole config before any work (every command and every ``pipeline`` stage calls it):
the same fields as ``base_config`` (no unknown or missing key) and each value in its range.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

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
    g.expand_min_sim = 0.0       # calibrated mode: > 0 adds the paper's similarity expansion,
                                 # other-layer nodes within cosine_radius whose z-cosine >= this
    g.cosine_all_max_nodes = 20000   # above this, cosine candidates are radius-limited
    g.cosine_radius = 1000.0     # px in the reference frame, for radius-limited candidates
    g.region_k_intra = 8
    g.region_k_cross = 4
    g.global_k_intra = 8
    g.global_k_cross = 2

    # ---- model ---------------------------------------------------------------------------
    c.model = m = ml_collections.ConfigDict()
    m.name = "asign"             # asign | asign2d | stnet | egn | histogene | bleep | his2st |
                                 # triplex (asign_jax.models.factory.MODELS)
    m.hidden = 256
    m.heads = 4
    m.gat_layers = 3
    m.transformer_mlp_ratio = 2
    m.dropout = 0.1
    m.use_cross_attention = True
    m.use_gat = True
    m.use_cli = True
    m.cli_iterations = 10
    m.cli_node_alpha = "learned" # learned: alpha_j = sigmoid(Dense(h_j)) | fixed: alpha_j = 1
    m.cli_start = "model"        # model: unknown nodes start the propagation at p_s (the paper) |
                                 # known_mean: at the known spots' mean (p_s enters by eq. 6 only)
    m.blend = "learned"          # eq. 6 alpha: learned (trained with the network, the paper) |
                                 # validation (per gene, least squares on the validation role)
    m.spot_offset = "none"       # none | known: p_s = mean label of the known spots + head(h)
    m.image_skip = False         # p_s += (feat - mean) W: a linear path from the spot's image
                                 # feature, W initialised at the training labels' ridge fit
    m.cross_layer_edges = True   # False: the GAT ignores cross-layer edges (2D graph; asign2d)
    m.remat = False              # True: recompute each graph layer's activations in the backward
                                 # pass (jax.checkpoint) instead of keeping them: less memory per
                                 # node (large tiles), more time per step; same numbers
    # The paper's baselines (models/<name>.py). Sizes below are the originals' (baselines.md);
    # configs/<dataset>.py shrink them for a CPU and say so.
    m.backbone = "cached"        # cached: frozen cached features / token grids (CPU default);
                                 # train: the spot ResNet-50 trained end to end (GPU)
    m.backbone_token_grid = f.get_ref("token_grid")   # train mode: token grid of the spot map
    m.backbone_weights = f.get_ref("weights")         # train mode: starting weights
    m.backbone_init_seed = f.get_ref("init_seed")
    m.stnet = ml_collections.ConfigDict({"dropout": 0.0})
    m.egn = ml_collections.ConfigDict({       # TRIPLEX-copy defaults; App. E: 8 exemplars
        "dim": 1024, "depth": 16, "heads": 16, "head_dim": 64, "mlp_dim": 2048,
        "bhead": 16, "bdim": 128, "bfre": 2, "player": 2, "n_exemplars": 8, "dropout": 0.0})
    m.histogene = ml_collections.ConfigDict({  # tutorial / paper runs: 8 layers
        "dim": 1024, "depth": 8, "heads": 16, "head_dim": 64, "mlp_dim": 2048, "n_pos": 64,
        "dropout": 0.1})
    m.bleep = ml_collections.ConfigDict({      # App. E: average of the top 50
        "projection_dim": 256, "dropout": 0.1, "top_k": 50, "aggregate": "mean",
        "temperature": 1.0})
    m.his2st = ml_collections.ConfigDict({     # tag 5-7-2-8-4-16-32, dim 16*16*4 = 1024
        "mixer_channels": 32, "mixer_depth": 2, "mixer_kernel": 5, "mixer_out": 4,
        "dim": 1024, "depth": 8, "heads": 16, "head_dim": 64, "mlp_dim": 1024, "n_pos": 64,
        "gnn_layers": 4, "grid_k": 4, "grid_max_dist": 2.0, "dropout": 0.2, "bake_passes": 5})
    m.triplex = ml_collections.ConfigDict({    # CVPR-era BC1 (her2st) configuration
        "emb_dim": 512, "depth_fusion": 1, "depth_global": 5, "depth_neighbor": 4,
        "heads_fusion": 4, "heads_global": 8, "heads_neighbor": 4, "mlp_ratio_fusion": 4.0,
        "mlp_ratio_global": 4.0, "mlp_ratio_neighbor": 4.0, "dropout_fusion": 0.4,
        "dropout_global": 0.3, "dropout_neighbor": 0.3, "window": 5})

    # ---- loss (paper eq. 7-9) ------------------------------------------------------------
    c.loss = lo = ml_collections.ConfigDict()
    lo.lambda_s = 0.75
    lo.lambda_r = 0.5
    lo.lambda_g = 0.5
    lo.lambda_1 = 0.25
    lo.lambda_2 = 0.25
    lo.gamma_1 = 1.0
    lo.gamma_2 = 1.0
    lo.consistency_spots = "all" # all | labelled: spots used by the label-free L_c terms
    lo.spot_supervision = "both" # model (p_s) | final (p'_s) | both: what the spot MSE + PCC see
    lo.egn_pcc = 0.5             # EGN: MSE + 0.5 (1 - PCC)
    lo.bleep_temperature = 1.0   # BLEEP's contrastive temperature
    lo.his2st_zinb = 0.25        # His2ST: MSE + 0.25 ZINB + 0.5 bake
    lo.his2st_bake = 0.5
    lo.triplex_alpha = 0.3       # TRIPLEX: fusion MSE + 3 x (0.7 supervised + 0.3 distillation)

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
    t.known_layer = 0            # index of the known layer of a held-out sample; negative
                                 # counts from the last layer (-1 = last), as in Python
    t.rotate_known_layer = False # evaluate every layer as the known one
    t.known_fraction = 0.2       # fraction of labelled spots marked known per training step
    t.known_mode = "fraction"    # fraction | layer (one whole labelled layer known per step)
    t.cli_lr_multiplier = 10.0   # learning-rate factor of the CLI block's parameters
    t.skip_lr_multiplier = 0.0   # learning-rate factor of model.image_skip (0 = kept at its
                                 # ridge initialisation)
    t.skip_fit = "all"           # labels of that ridge fit: all usable ones | held_out (only the
                                 # known layers of held-out samples: no other patient's levels)
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
    t.subgraph_halo = -1         # training tiles' halo in hops (-1 = model.gat_layers)
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
    "loss.consistency_spots": ("all", "labelled"),
    "loss.spot_supervision": ("model", "final", "both"),
    "train.known_mode": ("fraction", "layer"),
    "train.val_block_unit": ("px", "global_tile"),
    "train.val_block_edges": ("keep", "cut"),
    "train.feature_norm": ("sample", "none"),
    "train.optimizer": ("sgd", "adam"),
    "train.select": ("last", "pcc_gene", "mse"),
    "train.skip_fit": ("all", "held_out"),
    "graph.cross_mode": ("paper", "calibrated"),
    "model.blend": ("learned", "validation"),
    "model.cli_node_alpha": ("learned", "fixed"),
    "model.cli_start": ("model", "known_mean"),
    "model.spot_offset": ("none", "known"),
    "model.backbone": ("cached", "train"),
}
"""Fields with a fixed set of values (``model.name`` is checked against the model factory)."""

POSITIVE = (
    "data.n_genes", "data.spot_size", "data.region_size", "data.global_size", "data.um_per_px",
    "data.min_section_spots",
    "synthetic.n_samples", "synthetic.n_sections", "synthetic.n_genes", "synthetic.n_types",
    "synthetic.image_size", "synthetic.spot_pitch",
    "features.spot_input", "features.region_input", "features.global_input",
    "features.token_grid", "features.batch_size", "features.histology_downsample",
    "features.histology_cell",
    "registration.long_side", "registration.min_inliers", "registration.ants_threads",
    "registration.reproj_threshold", "registration.max_keypoints",
    "graph.k_intra", "graph.spot_radius", "graph.cosine_all_max_nodes", "graph.cosine_radius",
    "graph.region_k_intra", "graph.global_k_intra",
    "model.hidden", "model.heads", "model.transformer_mlp_ratio",
    "train.learning_rate", "train.cli_lr_multiplier", "train.steps", "train.samples_per_step",
    "train.log_every", "train.checkpoint_every",
)
"""Fields that must be > 0."""

NON_NEGATIVE = (
    "synthetic.max_rotation_deg", "synthetic.max_translation_px", "synthetic.max_scale",
    "synthetic.elastic_px", "features.init_seed", "graph.k_cross", "graph.region_k_cross",
    "features.patch_size_level0", "graph.global_k_cross", "model.gat_layers", "model.cli_iterations",
    "loss.lambda_s", "loss.lambda_r", "loss.lambda_g", "loss.lambda_1", "loss.lambda_2",
    "loss.gamma_1", "loss.gamma_2", "train.weight_decay", "data.slide_um_per_px",
)
"""Fields that must be >= 0."""

FRACTIONS = ("registration.ratio", "model.dropout", "train.known_fraction", "train.momentum",
             "train.final_lr_fraction")
"""Fields that must lie in [0, 1]."""


# Every radius, k, size and count (issue 22: graph.cross_radius=-1 was accepted), kept here in
# one place; the baselines' nested sizes (model.<name>.*) are listed from base_config below.
POSITIVE += (
    "graph.cross_radius", "train.val_block_px", "evaluation.similarity_k",
    "synthetic.embedding_region_size", "synthetic.embedding_global_size",
    "model.backbone_token_grid", "loss.bleep_temperature",
)
NON_NEGATIVE += (
    "seed", "graph.sim_weight", "synthetic.n_val_samples", "synthetic.embedding_dim",
    "train.inner_val", "train.val_every", "train.max_graph_nodes", "train.skip_lr_multiplier",
    "model.backbone_init_seed", "data.spot_pitch_px", "loss.egn_pcc", "loss.his2st_zinb",
    "loss.his2st_bake",
)
FRACTIONS += ("graph.expand_min_sim", "train.val_known_fraction", "impute.min_dice",
              "impute.max_spots_off_tissue", "loss.triplex_alpha")
INTEGERS = (
    "seed", "data.n_genes", "data.spot_size", "data.region_size", "data.global_size",
    "data.min_section_spots", "synthetic.n_samples", "synthetic.n_val_samples",
    "synthetic.n_sections", "synthetic.n_genes", "synthetic.n_types", "synthetic.image_size",
    "synthetic.embedding_dim", "features.spot_input", "features.region_input",
    "features.global_input", "features.token_grid", "features.batch_size",
    "registration.long_side", "registration.min_inliers", "registration.max_keypoints",
    "graph.k_intra", "graph.k_cross", "graph.cosine_all_max_nodes", "graph.region_k_intra",
    "graph.region_k_cross", "graph.global_k_intra", "graph.global_k_cross", "model.hidden",
    "model.heads", "model.gat_layers", "model.cli_iterations", "evaluation.similarity_k",
    "train.inner_val", "train.val_every", "train.steps", "train.samples_per_step",
    "train.max_graph_nodes", "train.subgraph_halo", "train.log_every",
    "train.checkpoint_every",
)
"""Fields that must be whole numbers (counts, k, sizes in px, steps)."""
ITERATION_TUPLES = ("registration.ants_iterations", "registration.ants_syn_iterations")
"""Tuples of per-level iteration counts (integers >= 0)."""


def _baseline_sizes() -> None:
    """``model.<baseline>.*``: dropouts in [0, 1], depths and pass counts >= 0, every other
    number > 0 (dims, heads, k, windows, temperatures)."""
    global POSITIVE, NON_NEGATIVE, FRACTIONS
    for name, v in _fields(base_config().model, "model.").items():
        if name.count(".") != 2 or isinstance(v, (bool, str)) or not isinstance(v, (int, float)):
            continue
        leaf = name.rsplit(".", 1)[1]
        if "dropout" in leaf:
            FRACTIONS += (name,)
        elif leaf.startswith("depth") or leaf in ("bake_passes", "player"):
            NON_NEGATIVE += (name,)
        else:
            POSITIVE += (name,)


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


def fields(config) -> dict:
    """{dotted name: value} of every field of ``config`` (references resolved)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.copy_and_resolve_references()
    return _fields(config)


def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r}: must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: must be finite")
    return value


def validate(config) -> None:
    """Raises ConfigError (one line naming the field) unless every field of ``config`` is valid.

    Checks: exactly the fields of ``base_config`` (a typo such as ``train.stepz`` in a config
    file would otherwise be ignored silently), the choices of ``CHOICES``, sizes and counts
    > 0 (``POSITIVE``), weights >= 0 (``NON_NEGATIVE``), fractions in [0, 1] (``FRACTIONS``),
    whole numbers where counted (``INTEGERS``, ``ITERATION_TUPLES``),
    ``data.global_size`` a multiple of ``data.region_size``, an integer ``train.known_layer``
    (its range is checked against the samples once they are read) and the fold lists as tuples
    of sample ids. Data-dependent checks (folds, known layer range) are in ``training.folds``.
    """
    have, want = fields(config), fields(base_config())
    unknown = set(have) - set(want)
    if unknown:
        raise ConfigError(f"unknown config field(s) {_names(unknown)} (not in "
                          "asign_jax.config.base_config; a typo?)")
    missing = set(want) - set(have)
    if missing:
        raise ConfigError(f"config field(s) {_names(missing)} missing: start the config from "
                          "asign_jax.config.base_config()")
    for name, choices in CHOICES.items():
        if have[name] not in choices:
            raise ConfigError(f"{name}={have[name]!r}: expected one of {', '.join(choices)}")
    for name in POSITIVE:
        if _number(name, have[name]) <= 0:
            raise ConfigError(f"{name}={have[name]!r}: must be > 0")
    for name in NON_NEGATIVE:
        if _number(name, have[name]) < 0:
            raise ConfigError(f"{name}={have[name]!r}: must be >= 0")
    for name in FRACTIONS:
        if not 0.0 <= _number(name, have[name]) <= 1.0:
            raise ConfigError(f"{name}={have[name]!r}: must be in [0, 1]")
    for name in INTEGERS:
        v = have[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name}={v!r}: must be a whole number")
    if have["train.subgraph_halo"] < -1:
        raise ConfigError(f"train.subgraph_halo={have['train.subgraph_halo']!r}: must be >= 0 "
                          "(hops), or -1 for model.gat_layers")
    if have["train.val_known_fraction"] >= 1:
        raise ConfigError(f"train.val_known_fraction={have['train.val_known_fraction']!r}: must "
                          "be < 1 (some of the known layer must stay known)")
    for name in ITERATION_TUPLES:
        v = have[name]
        if not isinstance(v, (tuple, list)) or not v or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
            raise ConfigError(f"{name}={v!r}: must be a non-empty tuple of iteration counts "
                              ">= 0, e.g. (100, 50, 20)")
    if have["data.global_size"] % have["data.region_size"]:
        raise ConfigError(f"data.global_size={have['data.global_size']}: must be a multiple of "
                          f"data.region_size={have['data.region_size']}")
    if have["data.smooth"] and have["data.normalization"] != "triplex":
        raise ConfigError(f"data.smooth=True: only defined for data.normalization='triplex' "
                          f"(got {have['data.normalization']!r})")
    if have["model.hidden"] % have["model.heads"]:
        raise ConfigError(f"model.hidden={have['model.hidden']}: must be a multiple of "
                          f"model.heads={have['model.heads']}")
    k = have["train.known_layer"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"train.known_layer={k!r}: must be an integer layer index "
                          "(negative counts from the last layer)")
    for name in ("train.extra_train_samples", "train.val_samples", "train.eval_genes"):
        v = have[name]
        if not isinstance(v, (tuple, list)) or not all(isinstance(s, str) for s in v):
            raise ConfigError(f"{name}={v!r}: must be a tuple of strings")
    folds = have["train.folds"]
    if not isinstance(folds, (tuple, list)) or not all(
            isinstance(f, (tuple, list)) and f and all(isinstance(s, str) for s in f)
            for f in folds):
        raise ConfigError(f"train.folds={folds!r}: must be a tuple of non-empty tuples of "
                          "sample ids, e.g. (('A',), ('B', 'C'))")


_baseline_sizes()
