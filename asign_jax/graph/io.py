"""Sample graphs on disk: ``<workdir>/graphs/<sample_id>.npz``, and the build-all step.

``<workdir>/graphs/<sample_id>.json`` holds each scale's edge statistics (counts, share of cross
edges with IoU = 0, their median length in spot pitches, mean weight by edge kind;
``edges.edge_statistics``), also logged when the graph is built.

One npz per sample (uncompressed, written to a temporary file and renamed, so a reader never
sees a half-written graph). Keys: ``<scale>/nodes/<key>``, ``<scale>/edges/<key>``,
``<scale>/{senders,receivers,n_node,n_edge}``, ``offsets/<scale>`` and a JSON ``_meta``
(sample_id, section_names, stats, format).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Optional

import jraph
import numpy as np

from asign_jax import atomic
from asign_jax.errors import DataError
from asign_jax.graph.build import build_sample_graph
from asign_jax.graph.contract import SCALES, SampleGraph
from asign_jax.preprocess.prepared import PreparedSample, list_prepared
from asign_jax.registration.result import RegisteredSample

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1


def graph_path(workdir: Path, sample_id: str) -> Path:
    return Path(workdir) / "graphs" / f"{sample_id}.npz"


def save_sample_graph(sample_graph: SampleGraph, workdir: Path) -> Path:
    """Writes ``sample_graph`` (unpadded or padded) atomically; returns its path."""
    path = graph_path(workdir, sample_graph.sample_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for scale in SCALES:
        g = sample_graph.graph(scale)
        for k, v in g.nodes.items():
            arrays[f"{scale}/nodes/{k}"] = np.asarray(v)
        for k, v in g.edges.items():
            arrays[f"{scale}/edges/{k}"] = np.asarray(v)
        for k in ("senders", "receivers", "n_node", "n_edge"):
            arrays[f"{scale}/{k}"] = np.asarray(getattr(g, k))
        arrays[f"offsets/{scale}"] = np.asarray(sample_graph.layer_offsets[scale])
    meta = {"format": GRAPH_FORMAT, "sample_id": sample_graph.sample_id,
            "section_names": list(sample_graph.section_names), "stats": sample_graph.stats}
    return atomic.write_npz(path, _meta=np.asarray(json.dumps(meta)), **arrays)


def load_sample_graph(workdir: Path, sample_id: str) -> SampleGraph:
    """Reads a graph written by ``save_sample_graph``."""
    path = graph_path(workdir, sample_id)
    if not path.exists():
        raise DataError(f"{path}: no graph for sample {sample_id!r}; "
                        "run the graph build step (asign_jax.graph.io.build_all) first")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["_meta"]))
            data = {k: z[k] for k in z.files if k != "_meta"}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a readable graph file ({e})") from e
    if meta.get("format") != GRAPH_FORMAT:
        raise DataError(f"{path}: graph format {meta.get('format')} != {GRAPH_FORMAT}; rebuild")
    graphs = {}
    for scale in SCALES:
        pre = f"{scale}/"
        nodes = {k[len(pre + "nodes/"):]: v for k, v in data.items()
                 if k.startswith(pre + "nodes/")}
        edges = {k[len(pre + "edges/"):]: v for k, v in data.items()
                 if k.startswith(pre + "edges/")}
        graphs[scale] = jraph.GraphsTuple(
            nodes=nodes, edges=edges, globals=None, senders=data[pre + "senders"],
            receivers=data[pre + "receivers"], n_node=data[pre + "n_node"],
            n_edge=data[pre + "n_edge"])
    return SampleGraph(sample_id=meta["sample_id"], section_names=list(meta["section_names"]),
                       spot=graphs["spot"], region=graphs["region"], global_=graphs["global"],
                       layer_offsets={s: data[f"offsets/{s}"] for s in SCALES},
                       stats=meta.get("stats", {}))


def registered_sample(workdir: Path, prepared: PreparedSample, config) -> RegisteredSample:
    """The sample's coordinates in its reference section's frame (the registration stage).

    A single-section sample, or any sample with ``registration.enabled=False``, keeps each
    section's own pixel coordinates (identity). A multi-section sample with registration
    enabled needs ``<workdir>/registration/<sample>/registered.npz``: without it the 3D graph
    would join unaligned sections, so that is a DataError naming the file and the fix.
    """
    names = [s.name for s in prepared.sections]
    if len(names) == 1 or not config.registration.enabled:
        return RegisteredSample.identity(
            prepared.sample_id, names, [s.pixel_xy for s in prepared.sections],
            [s.region_centers(config.data.region_size) for s in prepared.sections],
            [s.global_centers(config.data.global_size) for s in prepared.sections])
    reg_file = Path(workdir) / "registration" / prepared.sample_id / "registered.npz"
    if not reg_file.exists():
        raise DataError(f"{reg_file}: sample {prepared.sample_id!r} ({len(names)} sections) is "
                        "not registered; run `python -m asign_jax.register` (or set "
                        "registration.enabled=False for sections that are already aligned)")
    reg = RegisteredSample.load(workdir, prepared.sample_id)
    if list(reg.section_names) != names:
        raise DataError(f"{reg_file}: registered sections {list(reg.section_names)} are not the "
                        f"prepared ones {names}; register again")
    return reg


def stats_path(workdir: Path, sample_id: str) -> Path:
    return Path(workdir) / "graphs" / f"{sample_id}.json"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _log_stats(sg: SampleGraph) -> None:
    for scale in SCALES:
        st = sg.stats[scale]
        w = st.get("mean_weight", {})
        log.info("sample %s %s graph: %d nodes, %d edges (intra %d, cross %d, self %d); "
                 "%.1f%% of nodes overlap (IoU > 0) a node of another layer, %.1f%% have a "
                 "cross edge to one; cross edges with IoU = 0: %.1f%%, median length %s "
                 "pitches (pitch %.0f px); mean weight intra %s, cross overlapping %s, cross "
                 "not overlapping %s", sg.sample_id, scale, st["n_node"], st["n_edge"],
                 st["n_intra"], st["n_cross"], st["n_self"], 100 * st["frac_overlap"],
                 100 * st["frac_iou_edge"], 100 * st.get("cross_iou0_share", 0.0),
                 _fmt(st.get("cross_median_pitches")), st.get("pitch_px", float("nan")),
                 _fmt(w.get("intra")), _fmt(w.get("cross_overlap")),
                 _fmt(w.get("cross_no_overlap")))


def build_sample(workdir: Path, config, sample_id: str) -> Path:
    """Builds and saves the graph of one prepared, registered sample; returns its path."""
    prepared = PreparedSample.load(workdir, sample_id)
    sg = build_sample_graph(prepared, registered_sample(workdir, prepared, config), config.graph,
                            config.data)
    _log_stats(sg)
    path = save_sample_graph(sg, workdir)
    atomic.write_json(stats_path(workdir, sample_id), {
        "sample_id": sample_id, "cross_mode": str(config.graph.cross_mode), "stats": sg.stats})
    return path


def build_all(workdir: Path, config, sample_ids: Optional[Iterable[str]] = None
              ) -> dict[str, Path]:
    """Builds and saves the graph of every prepared sample (or of ``sample_ids``).

    Returns {sample_id: path of the saved graph}.
    """
    ids = list(sample_ids) if sample_ids is not None else list_prepared(workdir)
    return {sid: build_sample(workdir, config, sid) for sid in ids}
