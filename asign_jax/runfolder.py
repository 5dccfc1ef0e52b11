"""Run-folder manifests: what built each stage, whether it finished, and when it may be reused.

Stages and where their manifest lives (each reads only stages above it)::

    prepare    <workdir>/prepared/manifest.json
    register   <workdir>/registration/manifest.json      (inputs: prepare)
    graph      <workdir>/graphs/manifest.json            (inputs: prepare, register)
    fold_<k>   <workdir>/checkpoints/fold_<k>/manifest.json  (inputs: graph)
    reports    <workdir>/manifest.json                   (inputs: every fold)

A manifest is ``{"stage", "config": {field: value}, "inputs": {stage: build id}, "files":
{path: [size, mtime_ns, "blake2b:<hex>"]}, "items": [...], "complete", "build"}``: the config
fields the stage depends on (``stage_fields``), the build ids of the stages it read, the
content fingerprint of every input file it read (``asign_jax.fingerprint``; checked again
before reuse: a stat per file while size and mtime are unchanged, a hash when they are not),
the samples already done (registration and graphs resume per sample) and, written LAST,
``complete: true`` with a fresh random build id. A rebuilt stage gets a new build id, so every
stage that read the old one no longer matches.

``RunFolder.check`` decides, before any work: REUSE (complete, same fields, same inputs,
input files' contents unchanged), RESUME (same fields and inputs, not complete: a killed run; finished
items are kept) or NEW (nothing there). Anything else raises RunFolderError with one line
("run folder X (prepared/) was made with data.n_genes=40; you asked for 20: use a new
--workdir or pass --overwrite") unless the RunFolder was opened with ``overwrite=True``: then
that stage and every stage after it are deleted and rebuilt. Matching stages are reused even
with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Optional

from asign_jax import atomic, fingerprint, manifest_diff
from asign_jax.config import block_name, fields
from asign_jax.errors import RunFolderError

logger = logging.getLogger(__name__)

REUSE, RESUME, NEW = "reuse", "resume", "new"

OUTPUTS = {
    "prepare": ("prepared",),
    "register": ("registration",),
    "graph": ("graphs",),
    "folds": ("checkpoints", "metrics.jsonl", "predictions", "plots"),
    "reports": ("manifest.json", "metrics.json", "per_gene_pcc.csv"),
    "export": ("tfds",),
}
"""What each kind of stage writes, relative to the run folder (``folds``: all folds)."""

DOWNSTREAM = {
    "prepare": ("register", "graph", "folds", "reports", "export"),
    "register": ("graph", "folds", "reports", "export"),
    "graph": ("folds", "reports"),
    "fold": ("reports",),
    "reports": (),
}
"""The kinds of stage made from each kind's output: deleted when it is rebuilt."""

DEPENDS = {
    "prepare": ("data.", "features."),
    "register": ("registration.", "seed"),
    "graph": ("graph.",),
    "fold": ("model.", "train.", "seed"),     # model.*: only the chosen model's (model_fields)
    "reports": ("train.eval_genes",),
}
"""Config fields (prefixes) each stage depends on; see ``IGNORED`` for the exceptions."""

IGNORED = frozenset({
    # how, not what: batch size of the frozen encoder, ANTs threads, logging cadence
    "features.batch_size", "registration.ants_threads", "train.log_every",
    "train.checkpoint_every", "train.eval_genes",
    # checks, not inputs: the expected spot pitch only decides whether a warning is logged
    "data.spot_pitch_px",
    # a fold records its own composition (samples, known layers) instead of the fold config
    "train.folds", "train.extra_train_samples", "train.val_samples", "train.known_layer",
    "train.rotate_known_layer",
})
"""Fields that never invalidate a stage (a fold's composition is compared instead)."""

ADDED = {"features.histology_context": [], "graph.similarity_dims": 0,
         "train.val_blend_score": "in_sample", "model.asign.blend_shrinkage": 1.0}
"""Fields added after run folders were written, with the value that means "as before": a
field at that value is not recorded or compared, so an older run folder stays valid."""

PATH_FIELDS = ("data.root", "features.weights", "features.embeddings")

FORMATS = {"prepare": 2, "register": 1, "graph": 1, "fold": 1, "reports": 1}
"""The on-disk format each kind of stage writes, recorded in its manifest as ``format.<kind>``
and compared like a config field: a stage written by an asign_jax whose format differs (or that
predates these numbers) is not reused. Bump a number when a stage's files change shape or
meaning (prepare 2: the spot token grids ``spot_tokens`` that EGN reads)."""


def kind(stage: str) -> str:
    """The kind of a stage: ``fold`` for ``fold_<k>``, else the stage name itself."""
    return "fold" if stage.startswith("fold_") else stage


def model_field(name: str, allf: dict) -> bool:
    """False for the ``model.<block>.*`` fields of a model other than ``model.name``'s: changing
    ``model.triplex.depth`` does not invalidate an ASIGN fold."""
    parts = name.split(".")
    if parts[0] != "model" or len(parts) < 3 or parts[1] == "backbone":
        return True
    return parts[1] == block_name(str(allf["model.name"]))


def _plain(v):
    """A config value as its manifest records it (a tuple as a list)."""
    return list(v) if isinstance(v, tuple) else v


def stage_fields(stage: str, config, fold=None) -> dict:
    """{dotted field: value} of the config fields ``stage`` depends on (``DEPENDS``).

    Paths are made absolute, except the synthetic data generated inside the run folder
    (``<workdir>/synthetic_data``, so a moved run folder stays valid). ``data.root`` of a real
    dataset left empty means "whatever the run folder was prepared from" and is not compared.
    The synthetic generator's fields and the seed belong to ``prepare`` when
    ``data.format == "synthetic"``; a fold adds its
    composition (``fold.test_samples``, ``fold.train_samples``, ``fold.val_samples``,
    ``fold.known_layer``).
    """
    allf = fields(config)
    prefixes = DEPENDS[kind(stage)]
    if stage == "prepare" and allf["data.format"] == "synthetic":
        prefixes += ("synthetic.", "seed")
    out = {k: v for k, v in allf.items() if k not in IGNORED and model_field(k, allf)
           and any(k == p or (p.endswith(".") and k.startswith(p)) for p in prefixes)
           and not (k in ADDED and _plain(v) == ADDED[k])}
    out[f"format.{kind(stage)}"] = FORMATS[kind(stage)]
    for k in PATH_FIELDS:
        if out.get(k):
            out[k] = str(Path(out[k]).expanduser().resolve())
    if stage == "prepare":
        if allf["data.format"] == "synthetic" and not allf["data.root"]:
            out["data.root"] = "<workdir>/synthetic_data"
        elif not allf["data.root"]:
            out["data.root"] = None
    if fold is not None:
        out.update({"fold.test_samples": list(fold.test_samples),
                    "fold.train_samples": list(fold.train_samples),
                    "fold.val_samples": list(fold.val_samples),
                    "fold.known_layer": dict(fold.known_layer)})
    return json.loads(json.dumps(out, default=list))    # tuples -> lists, as read back


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


@contextlib.contextmanager
def capturing_warnings():
    """``with capturing_warnings() as found:`` collects the WARNING lines asign_jax logs in
    the block (``found``: a list); a stage keeps them in its manifest (``finish(warnings=)``)
    so that a run reusing it says them again and ``metrics.json`` lists them."""
    handler = _Collect()
    log = logging.getLogger("asign_jax")
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


class RunFolder:
    """The manifests of one run folder (see the module doc).

    Args:
      workdir: the run folder.
      overwrite: rebuild stages that do not match (and everything after them) instead of
        refusing.
      remedy: the advice at the end of a refusal.
    """

    def __init__(self, workdir, *, overwrite: bool = False,
                 remedy: str = "use a new --workdir or pass --overwrite"):
        self.workdir = Path(workdir)
        self.overwrite = bool(overwrite)
        self.remedy = remedy
        self._cache: Optional[fingerprint.Cache] = None

    @property
    def cache(self) -> fingerprint.Cache:
        """The content-fingerprint cache of this run folder (``cache/fingerprints.json``)."""
        if self._cache is None:
            self._cache = fingerprint.Cache(self.workdir / "cache" / "fingerprints.json")
        return self._cache

    def recording(self):
        """``with rf.recording() as rec:`` collects the input files read in the block
        (``fingerprint.note``); pass ``rec.files`` to `finish`."""
        return fingerprint.recording(self.cache)

    # ---- where things are --------------------------------------------------------------------

    def folder(self, stage: str) -> Path:
        """The folder holding ``stage``'s manifest."""
        if kind(stage) == "fold":
            return self.workdir / "checkpoints" / stage
        if stage == "reports":
            return self.workdir
        return self.workdir / OUTPUTS[stage][0]

    def manifest_path(self, stage: str) -> Path:
        return self.folder(stage) / "manifest.json"

    def _outputs(self, stage: str) -> list[Path]:
        if kind(stage) == "fold":
            return [self.folder(stage)]
        return [self.workdir / p for p in OUTPUTS[stage]]

    def _where(self, stage: str) -> str:
        rel = self.folder(stage).relative_to(self.workdir).as_posix()
        return f"run folder {self.workdir} ({'reports' if rel == '.' else rel + '/'})"

    # ---- reading -----------------------------------------------------------------------------

    def read(self, stage: str) -> Optional[dict]:
        """The manifest of ``stage``, or None. An unreadable manifest counts as none."""
        path = self.manifest_path(stage)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("%s: unreadable manifest; treated as missing", path)
            return None

    def build_id(self, stage: str) -> str:
        """The build id of a COMPLETE stage; RunFolderError when it is missing or unfinished."""
        m = self.read(stage)
        if m is None or not m["complete"]:
            raise RunFolderError(f"{self._where(stage)}: stage {stage!r} has not completed")
        return m["build"]

    def items(self, stage: str) -> set:
        m = self.read(stage)
        return set(m["items"]) if m else set()

    # ---- deciding ----------------------------------------------------------------------------

    def _difference(self, m: dict, config: dict, inputs: dict) -> Optional[str]:
        """Why manifest ``m`` does not match, or None (``manifest_diff``). Input files touched
        since with unchanged content get their new stat recorded."""
        problem = (manifest_diff.config_difference(m["config"], config)
                   or manifest_diff.inputs_difference(m["inputs"], inputs))
        if problem:
            return problem
        problem, refreshed = manifest_diff.files_difference(m["files"], self.workdir, self.cache)
        if problem:
            return problem
        if refreshed:
            logger.info("%s: %d input file(s) touched since, content unchanged: %s",
                        self._where(m["stage"]), len(refreshed), ", ".join(sorted(refreshed)))
            m["files"].update(refreshed)
            try:                                       # next time a stat suffices again
                self._write(m["stage"], m)
            except OSError:
                pass
        return None

    def check(self, stage: str, config: dict, inputs: dict) -> str:
        """REUSE, RESUME or NEW for ``stage`` built from ``config`` fields and ``inputs``
        ({upstream stage: build id}); raises RunFolderError when the stage is there but does
        not match (without ``overwrite``). With ``overwrite`` a mismatch is NEW."""
        m = self.read(stage)
        if m is None:
            present = [p for p in self._outputs(stage)
                       if p.exists() and p != self.manifest_path(stage)]
            if not present or stage == "reports":
                return NEW
            problem = "has no manifest.json (made by an older asign_jax, or by hand)"
        else:
            problem = self._difference(m, config, inputs)
            if problem is None:
                if m["complete"]:
                    if any(len(v) < 3 for v in m["files"].values()):
                        logger.warning(
                            "%s: stage %r was recorded by an older asign_jax: only its "
                            "images' size and time are checked, not the content of its count "
                            "and spot files; --overwrite rebuilds it with content fingerprints "
                            "of every input file", self._where(stage), stage)
                    return REUSE
                logger.info("%s: stage %r did not finish (killed?); it resumes",
                            self._where(stage), stage)
                return RESUME
        if not self.overwrite:
            raise RunFolderError(f"{self._where(stage)} {problem}: {self.remedy}")
        logger.warning("%s %s: --overwrite: rebuilding %r and every stage after it",
                       self._where(stage), problem, stage)
        return NEW

    def require(self, stage: str, config: dict, inputs: dict, how: str) -> None:
        """Raises RunFolderError unless ``stage`` is complete and matches; ``how`` says
        which command builds it."""
        if self.check(stage, config, inputs) != REUSE:
            raise RunFolderError(f"{self._where(stage)}: stage {stage!r} is missing or did not "
                                 f"finish; {how}")

    # ---- writing -----------------------------------------------------------------------------

    def _delete(self, paths: Iterable[Path]) -> None:
        for p in paths:
            if p.is_dir():
                logger.info("deleting %s", p)
                shutil.rmtree(p)
            elif p.exists():
                logger.info("deleting %s", p)
                p.unlink()

    def start(self, stage: str, config: dict, inputs: dict, state: str) -> set:
        """Marks ``stage`` as being built; returns the items already done (RESUME) or set().

        NEW deletes the stage's old outputs and every stage after it (``DOWNSTREAM``): when
        any of those hold something other than reports, that needs ``overwrite``.
        """
        if state == RESUME:
            return self.items(stage)
        later = [self.workdir / p for k in DOWNSTREAM[kind(stage)] for p in OUTPUTS[k]]
        later = [p for p in later if p.exists()]
        blocking = [p for p in later if p.name not in OUTPUTS["reports"]]
        if blocking and not self.overwrite:
            raise RunFolderError(
                f"{self._where(stage)}: stage {stage!r} must be built, but "
                f"{', '.join(p.name for p in blocking)} made from its old output exist: "
                f"{self.remedy}")
        self._delete(([] if stage == "reports" else self._outputs(stage)) + later)
        self._write(stage, {"stage": stage, "config": config, "inputs": inputs, "files": {},
                            "items": [], "complete": False, "build": None})
        return set()

    def item_done(self, stage: str, item: str) -> None:
        """Records that ``item`` (a sample) of an unfinished stage is written."""
        m = self.read(stage)
        m["items"] = sorted(set(m["items"]) | {item})
        self._write(stage, m)

    def warnings(self, stage: str) -> list[str]:
        """The warnings recorded when ``stage`` was built (``finish(warnings=)``)."""
        m = self.read(stage)
        return list(m.get("warnings", [])) if m else []

    def replay_warnings(self, stage: str) -> None:
        """Logs again the warnings of a reused stage, so a rerun does not hide them."""
        for w in self.warnings(stage):
            logger.warning("%s (when %s was built): %s", self._where(stage), stage, w)

    def finish(self, stage: str, files: Iterable = (), warnings: Iterable[str] = ()) -> str:
        """The completion marker, written last: complete=True, a new build id, and the
        content fingerprints of the input ``files`` (checked before reuse): paths, or a
        ``Recorder.files`` mapping {path: fingerprint when it was read}, so that a file edited
        while the stage ran does not match on the next run. Returns the build id."""
        m = self.read(stage)
        given = files if isinstance(files, dict) else {f: None for f in files}
        m["files"] = {self._relative(f): list(fp) if fp is not None
                      else self.cache.fingerprint(f) for f, fp in given.items()}
        self.cache.save()
        if warnings:
            m["warnings"] = list(warnings)
        m["complete"], m["build"] = True, uuid.uuid4().hex[:12]
        self._write(stage, m)
        return m["build"]

    def _relative(self, path) -> str:
        """``path`` relative to the run folder when inside it, else absolute."""
        path, root = Path(path).resolve(), self.workdir.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    def _write(self, stage: str, manifest: dict) -> None:
        atomic.write_text(self.manifest_path(stage), json.dumps(manifest, indent=1))
