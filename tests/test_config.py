"""Config validation before any work: one line naming the field, for every command and every
pipeline function (tests that call the pipeline directly are validated too)."""

from pathlib import Path

import pytest

from asign_jax import pipeline, stages
from asign_jax.config import CHOICES, base_config, block_name, set_field
from asign_jax.config_checks import validate
from asign_jax.features import encoders
from asign_jax.models import factory
from asign_jax.errors import ConfigError
from conftest import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    validate(load_config(str(path)))


@pytest.mark.parametrize("field,value,message", [
    ("train.steps", -5, "train.steps=-5: must be > 0"),
    ("train.steps", 0, "train.steps=0: must be > 0"),
    ("train.log_every", 0, "train.log_every=0: must be > 0"),
    ("train.known_fraction", 1.5, "train.known_fraction=1.5: must be in [0, 1]"),
    ("model.asign.dropout", -0.1, "model.asign.dropout=-0.1: must be in [0, 1]"),
    ("train.learning_rate", float("nan"), "train.learning_rate=nan: must be finite"),
    ("data.n_genes", 0, "data.n_genes=0: must be > 0"),
    ("data.region_size", 300, "data.global_size=1024: must be a multiple of "
                              "data.region_size=300"),
    ("model.asign.heads", 3, "model.asign.hidden=256: must be a multiple of model.asign.heads=3"),
    ("model.asign.loss.lambda_s", -1.0, "model.asign.loss.lambda_s=-1.0: must be >= 0"),
    ("graph.k_intra", 0, "graph.k_intra=0: must be > 0"),
    ("train.optimizer", "rmsprop", "train.optimizer='rmsprop': expected one of sgd, adam"),
    ("data.format", "csv", "data.format='csv': expected one of her2st, stnet, visium, synthetic"),
    ("train.select", "loss", "train.select='loss': expected one of last, pcc_gene, mse"),
    ("model.asign.spot_offset", "mean", "model.asign.spot_offset='mean': expected one of none, known"),
    ("graph.cross_mode", "radius", "graph.cross_mode='radius': expected one of paper, calibrated"),
    ("train.folds", ("A",), "train.folds=('A',): must be a tuple of non-empty tuples"),
    ("data.smooth", True, "data.smooth=True: only defined for data.normalization='triplex'"),
    # issue 22: every radius, k, size and count
    ("graph.cross_radius", -1.0, "graph.cross_radius=-1.0: must be > 0"),
    ("graph.sim_weight", -0.5, "graph.sim_weight=-0.5: must be >= 0"),
    ("graph.expand_min_sim", 1.5, "graph.expand_min_sim=1.5: must be in [0, 1]"),
    ("train.val_block_px", 0.0, "train.val_block_px=0.0: must be > 0"),
    ("train.max_graph_nodes", -1, "train.max_graph_nodes=-1: must be >= 0"),
    ("train.subgraph_halo", -2, "train.subgraph_halo=-2: must be >= 0 (hops), or -1"),
    ("train.val_known_fraction", 1.0, "train.val_known_fraction=1.0: must be < 1"),
    ("impute.min_dice", 1.5, "impute.min_dice=1.5: must be in [0, 1]"),
    ("evaluation.similarity_k", 0, "evaluation.similarity_k=0: must be > 0"),
    ("registration.ants_iterations", (10, -1), "registration.ants_iterations=(10, -1): must be "
                                               "a non-empty tuple of iteration counts >= 0"),
])
def test_each_bad_value_names_its_field(field, value, message):
    c = base_config()
    set_field(c, field, value)
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_unknown_and_missing_fields_are_refused():
    c = base_config()
    c.train.stepz = 3                              # a typo in a config file
    with pytest.raises(ConfigError, match=r"^unknown config field\(s\) train.stepz "):
        validate(c)
    c = base_config()
    del c.train["eval_genes"]
    with pytest.raises(ConfigError, match=r"^config field\(s\) train.eval_genes missing"):
        validate(c)


def test_negative_known_layer_counts_from_the_end():
    c = base_config()
    c.train.known_layer = -1                      # documented: the last layer
    validate(c)
    with pytest.raises(ConfigError, match="train.known_layer=-4: sample 'C' has 3 layers"):
        c.train.known_layer = -4
        stages.check_folds(c, {"C": 3, "B": 1}, {})


@pytest.mark.parametrize("fn", [stages.prepare, pipeline.train_and_evaluate,
                                pipeline.evaluate_all, stages.register, stages.load_inputs])
def test_pipeline_functions_validate_before_any_work(fn, tmp_path):
    c = base_config()
    c.train.steps = -5
    with pytest.raises(ConfigError, match="train.steps=-5"):
        fn(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    c = base_config()
    c.model.name = "nope"
    with pytest.raises(ConfigError, match="model.name='nope': expected one of asign"):
        fn(c, tmp_path / "run")


def test_baseline_sizes_and_whole_numbers_are_checked():
    c = base_config()
    c.model.egn.dim = 0
    with pytest.raises(ConfigError, match=r"^model.egn.dim=0: must be > 0$"):
        validate(c)
    c = base_config()
    c.model.triplex.dropout_global = 1.5
    with pytest.raises(ConfigError, match=r"^model.triplex.dropout_global=1.5: must be in"):
        validate(c)
    c = base_config().to_dict()
    c["graph"]["k_intra"] = 2.5                # a config file built from a plain dict
    import ml_collections
    with pytest.raises(ConfigError, match=r"^graph.k_intra=2.5: must be a whole number$"):
        validate(ml_collections.ConfigDict(c))


@pytest.mark.parametrize("name", sorted(factory.MODELS))
def test_a_model_is_built_from_its_own_block_only(name):
    c = base_config()
    c.model.name = name
    block = block_name(name)
    model, _ = factory.build(c, n_genes=5)
    assert set(model.cfg) == set(c.model[block]) | {"backbone"}
    other = c.copy_and_resolve_references()
    for b in set(factory.MODELS) - {block}:
        if b in other.model and b != block:
            other.model[b].dropout = 0.77              # every other model's block changed
    assert factory.build(other, n_genes=5)[0] == model  # an equal module: no recompile, same fold
    assert factory.model_config(other).loss == factory.model_config(c).loss


def test_every_encoder_choice_has_an_extractor():
    assert CHOICES["features.encoder"] == tuple(encoders.ENCODERS)
    c = base_config().features
    c.encoder = "nope"
    with pytest.raises(ConfigError, match=r"^features.encoder='nope': expected one of resnet50, "
                                          r"embeddings, histology, resnet50\+histology, vit, "
                                          r"patch_features$"):
        encoders.make_extractor(c)
