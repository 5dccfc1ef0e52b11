"""Run folders that never lie: stage manifests, reuse, refusal, --overwrite, kills, re-scoring.

One run of ``configs/test.py`` (2 synthetic samples x 3 sections, 8 steps per fold) is shared
by the module; tests that change a run folder work on a copy of it. The failures of issue 8
are replayed here: a stale config, a kill between prepare and register, ``evaluate``
re-scoring, and the one-line errors of the commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asign_jax import pipeline, runfolder, stages
from asign_jax.errors import ConfigError, DataError, RunFolderError
from asign_jax.models import factory
from asign_jax.preprocess.prepared import PreparedSection
from asign_jax.config import set_field
from asign_jax.runfolder import NEW, RESUME, REUSE, RunFolder, stage_fields
from asign_jax.training import step
from asign_jax.training.folds import Fold
from conftest import load_config

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "register", "graph", "fold_0", "fold_1", "reports")


def load_test_config():
    return load_config("test")


def builds(workdir) -> dict:
    rf = RunFolder(workdir)
    return {s: rf.read(s)["build"] for s in STAGES}


def graph_arrays(workdir) -> dict:
    out = {}
    for p in sorted((Path(workdir) / "graphs").glob("*.npz")):
        with np.load(p) as z:
            out.update({f"{p.stem}/{k}": z[k] for k in z.files if k != "_meta"})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, run folder, aggregate) of one finished run of configs/test.py."""
    workdir = tmp_path_factory.mktemp("run")
    config = load_test_config()
    step.forget_compiled()        # an equal model trained by an earlier test shares the step
    load = PreparedSection.load
    PreparedSection.load = classmethod(lambda cls, path: SECTION_READS.append(Path(path)) or
                                       load(path))
    try:
        agg = pipeline.train_and_evaluate(config, workdir, progress=False)
    finally:
        PreparedSection.load = load
    return config, workdir, agg


SECTION_READS: list = []      # every prepared section file the `trained` run read


def copy_run(trained, dst: Path) -> Path:
    shutil.copytree(trained[1], dst)          # copy2: sizes and mtimes kept
    return dst


# ---- a finished run ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_reads_its_prepared_data_once(trained):
    """prepare writes the sections; registration, graphs, model inputs, the references and the
    prediction writer all use them, and each section file is read from disk once."""
    files = sorted((trained[1] / "prepared").glob("*/*.npz"))
    assert files and sorted(SECTION_READS) == files
    assert list((trained[1] / "predictions").glob("*.h5ad"))


@pytest.mark.slow
def test_run_records_its_config_commit_and_command(trained):
    """config.json = the resolved config; metrics.json names it, the commit and the command,
    and experiments/results_md.py prints them beside the tables."""
    import results_md
    from asign_jax import provenance

    config, workdir, _ = trained
    assert json.loads((workdir / "config.json").read_text()) == json.loads(
        config.to_json_best_effort())
    prov = json.loads((workdir / "metrics.json").read_text())["provenance"]
    assert prov["config"] == "config.json" and prov["command"].startswith("python")
    assert prov["commit"] == provenance.git_commit()[0]
    text = results_md.render([("Tiny run", workdir)], sections=True)
    assert prov["command"] in text and "| asign |" in text and "Per test section" in text
    again = results_md.render([("Tiny run", workdir)], sections=False,
                              previous=text.replace("<!-- notes:begin tiny-run -->\n",
                                                    "<!-- notes:begin tiny-run -->\nkept\n"))
    assert "kept\n<!-- notes:end tiny-run -->" in again

@pytest.mark.slow
def test_finished_run_has_complete_manifests_and_compiled_once(trained):
    config, workdir, agg = trained
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(metrics["mean"]) == {"mse", "mae", "pcc_gene", "pcc_spot"}
    assert set(metrics["baselines"]) == {"known_mean", "overlap", "ridge", "similarity",
                                         "label_propagation"}
    assert len(metrics["folds"]) == 2 and np.isfinite(agg["asign"]["mean"]["mse"])
    assert list((workdir / "predictions").glob("*.h5ad"))
    assert (workdir / "plots" / "pcc_sections.png").exists()
    rf = RunFolder(workdir)
    m = {s: rf.read(s) for s in STAGES}
    assert all(x["complete"] and x["build"] for x in m.values())
    assert m["register"]["inputs"] == {"prepare": m["prepare"]["build"]}
    assert m["graph"]["inputs"] == {"prepare": m["prepare"]["build"],
                                    "register": m["register"]["build"]}
    assert m["fold_1"]["inputs"] == {"graph": m["graph"]["build"]}
    assert m["reports"]["inputs"] == {"fold_0": m["fold_0"]["build"],
                                      "fold_1": m["fold_1"]["build"]}
    assert m["prepare"]["config"]["data.n_genes"] == 40
    assert m["fold_0"]["config"]["fold.test_samples"] == ["A"]
    assert len(m["prepare"]["files"]) == 27           # A, B and Z: 3 x (image, counts, spots)
    assert all(k.startswith("synthetic_data/ST-") for k in m["prepare"]["files"])   # relative
    # no recompilation across samples and folds: one trace of the train step for both folds,
    # one of the eval step for every sample scored
    model, loss_fn = factory.build(stages.validated(config), 40)
    assert step.make_train_step(model, loss_fn, config)._cache_size() == 1
    assert step.make_eval_fn(model)._cache_size() == 1


@pytest.mark.slow
def test_relaunch_reuses_every_stage(trained, monkeypatch):
    config, workdir, agg = trained
    before = builds(workdir)

    def no_work(*a, **k):
        raise AssertionError("a matching stage was rebuilt")

    monkeypatch.setattr(pipeline, "train_fold", no_work)
    for name in ("prepare_samples", "register_sample", "load_samples"):
        monkeypatch.setattr(stages, name, no_work)
    monkeypatch.setattr(stages.graph_io, "build_sample", no_work)
    config = config.copy_and_resolve_references()
    config.train.log_every = 2                        # how, not what: never invalidates
    config.model.triplex.depth_global = 7             # another model's block: not this fold's
    config.model.egn.loss.pcc = 0.9
    config.train.eval_genes = ("G001",)
    again = pipeline.train_and_evaluate(config, workdir, progress=False)
    assert again["asign"]["mean"] == agg["asign"]["mean"]
    after = builds(workdir)
    assert {s: after[s] for s in STAGES[:-1]} == {s: before[s] for s in STAGES[:-1]}


@pytest.mark.slow
@pytest.mark.parametrize("field,value,where,message", [
    ("data.n_genes", 20, "prepared/", "was made with data.n_genes=40; you asked for 20"),
    ("data.normalization", "stnet", "prepared/",
     "was made with data.normalization='asign'; you asked for 'stnet'"),
    ("registration.ants_transform", "Rigid", "registration/",
     "was made with registration.ants_transform='none'; you asked for 'Rigid'"),
    ("graph.k_intra", 4, "graphs/", "was made with graph.k_intra=8; you asked for 4"),
    ("model.asign.hidden", 64, "checkpoints/fold_0/", "was made with model.asign.hidden=32; you asked for 64"),
    ("train.steps", 16, "checkpoints/fold_0/", "was made with train.steps=8; you asked for 16"),
])
def test_stale_config_is_refused_in_one_line(trained, field, value, where, message):
    config, workdir, _ = trained
    before = (workdir / "metrics.json").read_bytes(), builds(workdir)
    config = config.copy_and_resolve_references()
    set_field(config, field, value)
    with pytest.raises(RunFolderError) as e:
        pipeline.train_and_evaluate(config, workdir, progress=False)
    assert str(e.value) == (f"run folder {workdir} ({where}) {message}: use a new --workdir or "
                            "pass --overwrite")
    assert "\n" not in str(e.value)
    assert ((workdir / "metrics.json").read_bytes(), builds(workdir)) == before   # untouched


@pytest.mark.slow
def test_evaluate_rescores_from_checkpoints(trained):
    config, workdir, agg = trained
    fold_results = [json.loads((workdir / "checkpoints" / f"fold_{k}" / "done.json").read_text())
                    for k in range(2)]
    again = pipeline.evaluate_all(config, workdir)
    for method in agg:
        np.testing.assert_allclose([again[method]["mean"][m] for m in ("mse", "pcc_spot")],
                                   [agg[method]["mean"][m] for m in ("mse", "pcc_spot")],
                                   rtol=1e-6)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert [f["step"] for f in metrics["folds"]] == [8, 8]
    assert fold_results == [json.loads((workdir / "checkpoints" / f"fold_{k}" / "done.json")
                                       .read_text()) for k in range(2)]     # left alone
    other = config.copy_and_resolve_references()
    other.model.asign.hidden = 64
    with pytest.raises(RunFolderError, match="model.asign.hidden=32; you asked for 64: evaluate with "
                                             "the config the run was trained with"):
        pipeline.evaluate_all(other, workdir)


# ---- kills and --overwrite --------------------------------------------------------------------

@pytest.mark.slow
def test_kill_between_prepare_and_register(trained, tmp_path, monkeypatch):
    """Registration is part of the prepared state: a relaunch registers what is missing
    before any graph is built, and the graphs equal those of an uninterrupted run."""
    config, src, _ = trained
    run = copy_run(trained, tmp_path / "run")
    for p in ("registration", "graphs", "checkpoints", "predictions", "plots", "metrics.json",
              "metrics.jsonl", "manifest.json", "per_gene_pcc.csv"):
        (run / p).unlink() if (run / p).is_file() else shutil.rmtree(run / p)
    # as if `prepare` was killed after A's registration (or `register --samples A`)
    stages.register(config, run, ["A"])
    rf = RunFolder(run)
    assert not rf.read("register")["complete"] and rf.items("register") == {"A"}
    with pytest.raises(RunFolderError, match="stage 'register' is missing or did not finish"):
        stages.load_inputs(config, run, build=False)
    calls = []
    real = stages.register_sample
    monkeypatch.setattr(stages, "register_sample",
                        lambda p, *a, **k: calls.append(p.sample_id) or real(p, *a, **k))
    stages.load_inputs(config, run)
    assert calls == ["B", "Z"]                         # only what the kill left undone
    assert rf.read("register")["complete"] and rf.read("graph")["complete"]
    want, got = graph_arrays(src), graph_arrays(run)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.slow
def test_overwrite_rebuilds_the_stale_stage_and_everything_after(trained, tmp_path):
    config, _, agg = trained
    run = copy_run(trained, tmp_path / "run")
    before = builds(run)
    # a fold-only change: data stages reused, every fold retrained
    fold_only = config.copy_and_resolve_references()
    fold_only.train.init_output_bias = False
    new = pipeline.train_and_evaluate(fold_only, run, overwrite=True, progress=False)
    mid = builds(run)
    assert [mid[s] == before[s] for s in STAGES] == [True, True, True, False, False, False]
    assert new["asign"]["mean"]["mse"] != agg["asign"]["mean"]["mse"]
    np.testing.assert_equal(new["known_mean"]["mean"], agg["known_mean"]["mean"])  # same data
    # a data change: prepare and every stage after it rebuilt, nothing reused
    stnet = config.copy_and_resolve_references()
    stnet.data.normalization = "stnet"
    pipeline.train_and_evaluate(stnet, run, overwrite=True, progress=False)
    after = builds(run)
    assert all(after[s] != mid[s] for s in STAGES)
    labels = json.loads((run / "metrics.json").read_text())["baselines"]["known_mean"]
    assert labels["mean"]["mse"] != agg["known_mean"]["mean"]["mse"]
    assert RunFolder(run).read("prepare")["config"]["data.normalization"] == "stnet"
    # three runs of the same model shapes in one process: still one compilation of each step
    model, loss_fn = factory.build(stages.validated(config), 40)
    assert step.make_train_step(model, loss_fn, config)._cache_size() == 1
    assert step.make_eval_fn(model)._cache_size() == 1


@pytest.mark.slow
def test_evaluate_refuses_a_run_folder_without_its_data_stages(trained, tmp_path):
    config, _, _ = trained
    with pytest.raises(RunFolderError, match="stage 'prepare' is missing or did not finish; "
                                             "run `python -m asign_jax.train` first"):
        pipeline.evaluate_all(config, tmp_path)


# ---- the manifest logic on its own ------------------------------------------------------------

def test_stage_fields_decide_what_invalidates_what():
    config = load_test_config()
    fold = Fold(index=0, test_samples=("A",), train_samples=("B",), known_layer={"A": 0})
    prep, fold_f = stage_fields("prepare", config), stage_fields("fold_0", config, fold=fold)
    assert prep["data.n_genes"] == 40 and prep["synthetic.n_genes"] == 60 and "seed" in prep
    assert prep["data.root"] == "<workdir>/synthetic_data"
    assert "features.batch_size" not in prep and "model.asign.hidden" not in prep
    assert fold_f["model.asign.hidden"] == 32 and fold_f["train.steps"] == 8
    assert fold_f["fold.known_layer"] == {"A": 0} and fold_f["fold.train_samples"] == ["B"]
    for ignored in ("train.log_every", "train.checkpoint_every", "train.eval_genes",
                    "train.known_layer", "train.folds"):
        assert ignored not in fold_f
    assert set(stage_fields("graph", config)) == {k for k in stages.validate.__globals__[
        "fields"](config) if k.startswith("graph.")} - set(runfolder.ADDED) | {"format.graph"}
    assert prep["format.prepare"] == runfolder.FORMATS["prepare"] and "format.fold" in fold_f
    real = config.copy_and_resolve_references()
    real.data.format, real.data.root = "her2st", ""
    assert stage_fields("prepare", real)["data.root"] is None          # "" = as prepared


def test_a_field_added_later_keeps_older_run_folders_valid_at_its_old_meaning():
    """runfolder.ADDED: a field at the value that means "as before" is not recorded (a run
    folder written before the field existed stays valid); any other value is compared."""
    config = load_test_config()
    assert "features.histology_context" not in stage_fields("prepare", config)
    assert "graph.similarity_dims" not in stage_fields("graph", config)
    other = config.copy_and_resolve_references()
    other.features.histology_context, other.graph.similarity_dims = (512, 1024), 64
    assert list(stage_fields("prepare", other)["features.histology_context"]) == [512, 1024]
    assert stage_fields("graph", other)["graph.similarity_dims"] == 64


def test_a_fold_depends_on_its_own_model_block_only():
    config = load_test_config()
    fold = Fold(index=0, test_samples=("A",), train_samples=("B",), known_layer={"A": 0})
    blocks = lambda f: {k.split(".")[1] for k in f if k.startswith("model.") and k.count(".") > 1}
    asign = stage_fields("fold_0", config, fold=fold)
    assert blocks(asign) == {"asign", "backbone"} and asign["model.asign.loss.lambda_s"] == 0.75
    other = config.copy_and_resolve_references()
    other.model.triplex.depth_global, other.model.egn.loss.pcc = 7, 0.9
    assert stage_fields("fold_0", other, fold=fold) == asign
    other.model.name = "asign2d"                      # ASIGN on a 2D graph reads ASIGN's block
    assert blocks(stage_fields("fold_0", other, fold=fold)) == {"asign", "backbone"}
    other.model.name = "triplex"
    tri = stage_fields("fold_0", other, fold=fold)
    assert blocks(tri) == {"triplex", "backbone"} and tri["model.triplex.depth_global"] == 7
    other.model.asign.hidden = 512                    # ASIGN's block is not TRIPLEX's input
    assert stage_fields("fold_0", other, fold=fold) == tri


def _fake_stage(rf, stage, config, inputs, files=()):
    state = rf.check(stage, config, inputs)
    if state != REUSE:
        rf.start(stage, config, inputs, state)
        (rf.folder(stage) / "out.txt").write_text(stage)
        return rf.finish(stage, files=files)
    return rf.build_id(stage)


def test_runfolder_cascade_resume_and_changed_inputs(tmp_path):
    wd = tmp_path / "run"
    image = tmp_path / "C3.jpg"
    image.write_bytes(b"\xff\xd8\xff" + b"\0" * 100 + b"\xff\xd9")
    rf = RunFolder(wd)
    b1 = _fake_stage(rf, "prepare", {"data.n_genes": 40}, {}, files=[image])
    b2 = _fake_stage(rf, "register", {"registration.x": 1}, {"prepare": b1})
    b3 = _fake_stage(rf, "graph", {}, {"prepare": b1, "register": b2})
    _fake_stage(rf, "fold_0", {}, {"graph": b3})
    assert _fake_stage(rf, "prepare", {"data.n_genes": 40}, {}) == b1               # reused
    # a changed input file is never reused
    image.write_bytes(b"\xff\xd8\xff" + b"\0" * 50 + b"\xff\xd9")
    with pytest.raises(RunFolderError, match=rf"made from {image} \(105 bytes, blake2b \w{{8}}\), "
                                             r"whose content has changed since \(55 bytes now\)"):
        rf.check("prepare", {"data.n_genes": 40}, {})
    # --overwrite: the stage and everything after it are deleted, downstream cannot match
    rf = RunFolder(wd, overwrite=True)
    assert rf.check("prepare", {"data.n_genes": 40}, {}) == NEW
    b1b = _fake_stage(rf, "prepare", {"data.n_genes": 40}, {}, files=[image])
    assert b1b != b1
    assert not any((wd / p).exists() for p in ("registration", "graphs", "checkpoints"))
    # an upstream rebuilt behind a stage's back: refused, not reused
    rf = RunFolder(wd)
    b2 = _fake_stage(rf, "register", {"registration.x": 1}, {"prepare": b1b})
    rf.start("prepare", {"data.n_genes": 40}, {}, RESUME)
    rf.finish("prepare", files=[image])
    with pytest.raises(RunFolderError, match="was made from an earlier 'prepare' stage"):
        rf.check("register", {"registration.x": 1}, {"prepare": rf.build_id("prepare")})
    # a killed stage resumes with its finished items; a new one may not delete later work
    (wd / "checkpoints" / "fold_0").mkdir(parents=True)
    with pytest.raises(RunFolderError, match="stage 'graph' must be built, but checkpoints"):
        rf.start("graph", {}, {}, NEW)
    shutil.rmtree(wd / "checkpoints")
    rf.start("graph", {}, {}, NEW)
    rf.item_done("graph", "A")
    assert rf.check("graph", {}, {}) == RESUME and rf.start("graph", {}, {}, RESUME) == {"A"}
    # a folder without a manifest (older asign_jax) is not trusted
    (wd / "graphs" / "manifest.json").unlink()
    with pytest.raises(RunFolderError, match=r"\(graphs/\) has no manifest.json"):
        rf.check("graph", {}, {})


def test_a_stage_in_another_format_is_not_reused(tmp_path):
    """A prepared folder written before spot token grids were cached (no ``format.prepare``
    in its manifest) or in another format is refused in one line, rebuilt with --overwrite."""
    config = load_test_config()
    fields_now = stage_fields("prepare", config)
    old = {k: v for k, v in fields_now.items() if k != "format.prepare"}
    rf = RunFolder(tmp_path / "run")
    _fake_stage(rf, "prepare", old, {})
    with pytest.raises(RunFolderError, match=r"\(prepared/\) was written by another version of "
                       r"asign_jax \(prepare format none recorded; this one reads and writes "
                       rf"format {runfolder.FORMATS['prepare']}\)"):
        rf.check("prepare", fields_now, {})
    newer = dict(fields_now, **{"format.prepare": runfolder.FORMATS["prepare"] + 1})
    rf2 = RunFolder(tmp_path / "run2")
    _fake_stage(rf2, "prepare", newer, {})
    with pytest.raises(RunFolderError, match=r"prepare format \d+; this one"):
        rf2.check("prepare", fields_now, {})
    assert RunFolder(tmp_path / "run", overwrite=True).check("prepare", fields_now, {}) == NEW


def test_prediction_names():
    one = [Fold(0, ("A",), ("B",), {"A": 0}), Fold(1, ("B",), ("A",), {"B": 0})]
    assert pipeline.prediction_names(one) == {0: {"A": "A"}, 1: {"B": "B"}}
    rotating = [Fold(k, ("C",), ("B",), {"C": k}) for k in range(3)]
    assert pipeline.prediction_names(rotating) == {k: {"C": f"C_known{k}"} for k in range(3)}
    twice = [Fold(0, ("A", "B"), ("C",), {"A": 0, "B": 0}), Fold(1, ("A",), ("B", "C"), {"A": 0})]
    assert pipeline.prediction_names(twice) == {0: {"A": "A_fold0", "B": "B"}, 1: {"A": "A_fold1"}}


# ---- the commands -----------------------------------------------------------------------------

def command(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [l for l in out.stderr.splitlines() if l.startswith("error:") or "Traceback" in l]


@pytest.mark.slow
def test_commands_print_one_line_and_exit_2(trained, tmp_path):
    _, workdir, _ = trained
    out = command("asign_jax.train", "--config", "configs/test.py", "--workdir",
                  str(tmp_path / "x"), "--config.train.steps=-5")
    assert out.returncode == 2 and error_lines(out) == ["error: train.steps=-5: must be > 0"]
    assert not (tmp_path / "x").exists()                # refused before any work
    out = command("asign_jax.prepare", "--config", "configs/test.py", "--workdir",
                  str(tmp_path / "x"), "--config.train.stepz=3")
    assert out.returncode == 2 and error_lines(out) == [
        "error: --config.train.stepz: unknown config field (did you mean train.steps?)"]
    out = command("asign_jax.train", "--config", "configs/test.py", "--workdir", str(workdir),
                  "--config.data.n_genes=20")
    assert out.returncode == 2 and error_lines(out) == [
        f"error: run folder {workdir} (prepared/) was made with data.n_genes=40; you asked for "
        "20: use a new --workdir or pass --overwrite"]
    out = command("asign_jax.train", "--config", "configs/test.py", "--workdir", str(workdir),
                  "--config.data.n_genes=20", "--verbose")
    assert out.returncode != 0 and "Traceback" in out.stderr and "RunFolderError" in out.stderr


# ---- issue 22: input files fingerprinted by content, inputs checked against each other -------

def _rewrite_gz_rows(path: Path, fn) -> None:
    """Rewrites a gzipped table in place with its data rows passed through ``fn``."""
    import gzip

    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines(keepends=True)
    with gzip.open(path, "wt") as f:
        f.writelines(lines[:1] + fn(lines[1:]))


def test_files_edited_in_place_are_refused_naming_the_file(trained, tmp_path, monkeypatch):
    """Count rows permuted (same spots, other values) or pixel_x shifted by 500 px: train
    stops in one line naming the file; a touched but unchanged file is still reused, and an
    unchanged rerun reads no file (a stat per file)."""
    config, _, agg = trained
    run = copy_run(trained, tmp_path / "run")
    before = builds(run)
    counts = run / "synthetic_data" / "ST-cnts" / "A2.tsv.gz"
    spots = run / "synthetic_data" / "ST-spotfiles" / "A2_selection.tsv"
    rf = RunFolder(run)
    assert "synthetic_data/ST-cnts/A2.tsv.gz" in rf.read("prepare")["files"]
    assert all(len(v) == 3 and v[2].startswith("blake2b:")
               for v in rf.read("prepare")["files"].values())
    # touched, same bytes: reused (its content hashed once), then a stat suffices
    os.utime(counts, ns=(counts.stat().st_atime_ns, counts.stat().st_mtime_ns + 10**10))
    stages.load_inputs(config, run)
    def no_hash(path):
        raise AssertionError(f"{path} was hashed on an unchanged rerun")
    monkeypatch.setattr(runfolder.fingerprint, "digest", no_hash)
    stages.load_inputs(config, run)
    assert builds(run) == before
    monkeypatch.undo()
    original = counts.read_bytes()

    def shuffle_values(rows):         # spot ids stay, the count values move to other spots
        ids = [r.split("\t", 1)[0] for r in rows]
        vals = [r.split("\t", 1)[1] for r in rows]
        return [f"{i}\t{v}" for i, v in zip(ids, vals[1:] + vals[:1])]
    _rewrite_gz_rows(counts, shuffle_values)
    with pytest.raises(RunFolderError) as e:
        pipeline.train_and_evaluate(config, run, progress=False)
    assert str(e.value).startswith(f"run folder {run} (prepared/) was made from {counts} (")
    assert "whose content has changed since" in str(e.value) and "\n" not in str(e.value)
    counts.write_bytes(original)
    lines = spots.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split("\t")
    col = header.index("pixel_x")
    def shift(line):
        v = line.rstrip("\n").split("\t")
        v[col] = str(float(v[col]) + 500)
        return "\t".join(v) + "\n"
    spots.write_text(lines[0] + "".join(shift(l) for l in lines[1:]))
    with pytest.raises(RunFolderError, match=rf"\(prepared/\) was made from {spots} .*whose "
                                             r"content has changed since"):
        pipeline.train_and_evaluate(config, run, progress=False)
    assert builds(run) == before                            # nothing rebuilt, nothing lost


def test_warnings_are_kept_replayed_and_in_metrics(trained, tmp_path, caplog):
    """A warning of the data stages is said again when they are reused and lands in
    metrics.json; a configured eval gene absent from the panel too."""
    config, _, _ = trained
    run = copy_run(trained, tmp_path / "run")
    m = json.loads((run / "prepared" / "manifest.json").read_text())
    assert m.get("warnings", []) == []                       # the test data are clean
    m["warnings"] = ["gene intersection: 9 of the 40 most expressed genes ..."]
    (run / "prepared" / "manifest.json").write_text(json.dumps(m))
    other = config.copy_and_resolve_references()
    other.train.eval_genes = ("ERBB2", "G000")
    with caplog.at_level("WARNING"):
        pipeline.train_and_evaluate(other, run, progress=False)
    text = caplog.text
    assert "(prepared/) (when prepare was built): gene intersection: 9 of the 40" in text
    assert "train.eval_genes: ERBB2 not among the 40 genes of this run" in text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["warnings"][0].startswith("gene intersection: 9 of the 40")
    assert metrics["warnings"][1].startswith("train.eval_genes: ERBB2 not among")


def test_a_sample_left_without_images_names_them(trained, tmp_path):
    """All of Z's images missing: "unknown sample 'Z'" names the image folders, not only
    the sample; the same image listed as two layers is refused naming the file."""
    import shutil as sh

    config, src, _ = trained
    data = tmp_path / "data"
    sh.copytree(src / "synthetic_data", data)
    sh.rmtree(data / "ST-imgs" / "Z")
    c = config.copy_and_resolve_references()
    c.data.format, c.data.root = "her2st", str(data)
    with pytest.raises(ConfigError, match=r"train.val_samples: unknown sample 'Z'.*"
                       r"sections left out when reading: Z1 \(no image in .*ST-imgs/Z/Z1\)"):
        stages.load_inputs(c, tmp_path / "run")
    # A3's image replaced by a copy of A2's: two layers of one image
    a2 = next((data / "ST-imgs" / "A" / "A2").iterdir())
    a3 = next((data / "ST-imgs" / "A" / "A3").iterdir())
    sh.copy(a2, a3)
    c.train.val_samples = ()
    with pytest.raises(DataError, match=rf"{a3}: the image of section 'A3' has the same bytes "
                                        rf"as the image of section 'A2' \({a2}\); one image"):
        stages.load_inputs(c, tmp_path / "run2")


def test_long_list_fields_are_summarised():
    rf = RunFolder("/nonexistent")
    m = {"config": {"impute.genes": [f"G{i}" for i in range(20)]}, "inputs": {}, "files": {},
         "stage": "fold_0"}
    now = {"impute.genes": [f"G{i}" for i in range(5, 25)]}
    msg = rf._difference(m, now, {})
    assert msg.startswith("was made with impute.genes=<20 items: G0, G1, G2, ...>; you asked "
                          "for <20 items: G5, G6, G7, ...> (15 shared; only before: G0, G1, G2,"
                          " G3, G4; only now: G20, G21, G22, G23, G24)")


def test_a_manifest_without_content_fingerprints_is_reused_with_a_warning(tmp_path, caplog):
    image = tmp_path / "C3.jpg"
    image.write_bytes(b"\xff\xd8\xff" + b"\0" * 10 + b"\xff\xd9")
    rf = RunFolder(tmp_path / "run")
    _fake_stage(rf, "prepare", {"data.n_genes": 40}, {}, files=[image])
    m = rf.read("prepare")
    st = image.stat()
    m["files"] = {str(image): [st.st_size, st.st_mtime_ns]}          # an older asign_jax
    rf._write("prepare", m)
    with caplog.at_level("WARNING"):
        assert rf.check("prepare", {"data.n_genes": 40}, {}) == REUSE
    assert "recorded by an older asign_jax: only its images' size and time are checked" \
        in caplog.text
