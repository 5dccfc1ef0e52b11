"""Synthetic 3D tissue blocks written in the HER2ST layout (the embedded default dataset).

``generate(cfg, root, seed)`` writes ``cfg.n_samples`` blocks (patients A, B, C, ...) of
``cfg.n_sections`` consecutive sections each (A1..A4, B1..B4, ...)::

    root/ST-cnts/<S>.tsv.gz              spots x genes raw counts, first column "{x}x{y}"
    root/ST-spotfiles/<S>_selection.tsv  x y new_x new_y pixel_x pixel_y selected
    root/ST-imgs/<P>/<S>/<S>_HE.jpg       H&E-like RGB image (image_size x image_size)
    root/ST-pat/lbl/<S>_labeled_coordinates.tsv   tissue type per spot (HER2ST label format)
    root/ground_truth/<S>.json           transforms, per-spot tissue type and canonical coords
    root/ground_truth/<S>_expected.npy   (N, n_genes) float32 noise-free expected counts, rows
                                         in the JSON's spot order, columns in the count file's
    root/synthetic.json                  parameters, seed and summary (written last)

Validation blocks. ``cfg.n_val_samples`` extra blocks, named from the end of the alphabet
(Z, Y, ...), share the biology but draw their layout from their OWN seeds
(``seed + VAL_SEED_OFFSET + j``), so no validation block repeats a test block; configs list
them in ``train.val_samples``.

Model: smooth random type fields over (x, y, z), an irregular tissue blob, NB counts by type
(``synthetic_tissue.py``); spots on a square (or ``lattice="hex"``) array grid with a random
sub-pitch origin per section unless ``shared_grid``; the *biology* is drawn from ``seed`` and
shared by all blocks, the *layout* of block k from ``seed + k``. Each section is rendered in
the canonical frame (``synthetic_render.py``) and warped into its own image frame by
F(p) = A p + d(A p) (``synthetic_frames.py``).

Ground-truth JSON (``root/ground_truth/<S>.json``)::

    section, sample, layer, z, image_size: [W, H], canonical_center: [x, y]
    affine: 3x3 list, canonical -> section pixels (A of ``synthetic_frames.py``)
    rotation_deg, translation_px: [tx, ty], scale: [sx, sy]     (the parameters of A)
    elastic_px: bound on |d|;  elastic: {"x": [[kx, ky, phase, amp], ...], "y": [...]}
        d_x(u) = sum amp * cos(kx * u_x + ky * u_y + phase)   (d_y likewise)
    n_types
    spots: {"ids": [...], "array_xy": [[x, y]], "canonical_xy": [[x, y]],
            "pixel_xy": [[x, y]], "type": [...]}
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from asign_jax.data.synthetic_frames import canonical_to_section, hex_lattice, random_transform
from asign_jax.data.synthetic_render import render_section
from asign_jax.data.synthetic_tissue import (GENE_LENGTH, N_GENE_FIELDS, TYPE_LENGTH, Z_LENGTH,
                                             Biology, Fields, Objects3D, Shape)
from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
VAL_SEED_OFFSET = 1000
SUMMARY_FILE = "synthetic.json"
_MARKER_FILE = ".synthetic_incomplete"
_OWNED_DIRS = ("ST-cnts", "ST-spotfiles", "ST-imgs", "ST-pat", "ground_truth")

_PARAM_FIELDS = ("n_samples", "n_sections", "n_genes", "n_types", "image_size", "spot_pitch",
                 "max_rotation_deg", "max_translation_px", "max_scale", "elastic_px")
_FLOAT_FIELDS = ("max_rotation_deg", "max_translation_px", "max_scale", "elastic_px")
# Optional fields (read with these defaults when the config lacks them).
_OPTIONAL_FIELDS = {"shared_grid": False, "n_val_samples": 0}
# Optional fields recorded in the parameters only when set (older datasets stay up to date):
# lattice "square" | "hex" (10x Visium); embedding_dim > 0 also writes root/embeddings.npz
# (features drawn directly for the ``embeddings`` encoder, ``_section_embeddings``).
_EXTRA_FIELDS = {"lattice": "square", "embedding_dim": 0, "embedding_region_size": 512,
                 "embedding_global_size": 1024}
EMBEDDINGS_FILE = "embeddings.npz"
_EDGE_MARGIN = 0.02           # x image_size kept free of tissue at the image border
_SPOT_INSET = 0.35            # x spot_pitch: spots are kept this far inside the boundary
_JPEG_QUALITY = 90


def generate(cfg: Any, root: Path, seed: int) -> dict:
    """Writes the synthetic dataset under ``root`` and returns its summary.

    Args:
      cfg: ``config.synthetic`` (ConfigDict or mapping with the ``_PARAM_FIELDS``).
      root: output folder (created). An existing ``root/synthetic.json`` with the same
        parameters and seed makes this a no-op.
      seed: master seed; block k's layout uses ``seed + k``, the shared biology ``seed``.

    Returns:
      {"version", "seed", "params", "samples": {"A": ["A1", ...]}, "validation_samples":
       ["Z", ...], "spots": {"A1": n, ...}, "genes": [...], "n_types", "seconds"}.
    """
    params = _read_params(cfg)
    root = Path(root)
    summary_path = root / SUMMARY_FILE
    if summary_path.exists():
        try:
            old = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if (old and old.get("version") == FORMAT_VERSION and old.get("seed") == int(seed)
                and old.get("params") == params and not (root / _MARKER_FILE).exists()):
            logger.info("synthetic data in %s is up to date (seed %d)", root, seed)
            return old
    elif not (root / _MARKER_FILE).exists():
        found = [d for d in _OWNED_DIRS if (root / d).exists()]
        if found:
            raise DataError(f"{root}: holds {', '.join(found)} but no {SUMMARY_FILE}; refusing "
                            "to write synthetic data into what looks like a real dataset folder")

    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER_FILE).write_text("generation in progress\n")
    summary_path.unlink(missing_ok=True)
    for d in _OWNED_DIRS:
        shutil.rmtree(root / d, ignore_errors=True)
    for d in ("ST-cnts", "ST-spotfiles", "ST-imgs", "ST-pat/lbl", "ground_truth"):
        (root / d).mkdir(parents=True, exist_ok=True)

    bio = Biology(params, seed)
    samples: dict[str, list[str]] = {}
    spots: dict[str, int] = {}
    embeddings: dict = {}
    blocks = [(chr(ord("A") + k), seed + k) for k in range(params["n_samples"])]
    val_ids = [chr(ord("Z") - j) for j in range(params["n_val_samples"])]
    blocks += [(v, seed + VAL_SEED_OFFSET + j) for j, v in enumerate(val_ids)]
    for letter, block_seed in blocks:
        names = _write_block(root, letter, block_seed, params, bio, embeddings)
        samples[letter] = list(names)
        spots.update(names)
    if embeddings:
        np.savez(root / EMBEDDINGS_FILE, **{f"{sec}/{k}": v for sec, d in embeddings.items()
                                            for k, v in d.items()})

    summary = {
        "version": FORMAT_VERSION,
        "seed": int(seed),
        "params": params,
        "samples": samples,
        "validation_samples": val_ids,
        "spots": spots,
        "genes": list(bio.genes),
        "n_types": params["n_types"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    summary_path.write_text(json.dumps(summary, indent=1))
    (root / _MARKER_FILE).unlink()
    logger.info("wrote synthetic data to %s: %d samples x %d sections, %d spots, %.1f s",
                root, params["n_samples"], params["n_sections"], sum(spots.values()),
                summary["seconds"])
    return json.loads(summary_path.read_text())


def load_ground_truth(root: Path, section: str) -> dict:
    """Reads ``root/ground_truth/<section>.json``."""
    path = Path(root) / "ground_truth" / f"{section}.json"
    if not path.exists():
        raise DataError(f"{path}: no ground truth for section {section!r}")
    return json.loads(path.read_text())


def load_expected(root: Path, section: str) -> tuple[list, np.ndarray]:
    """(spot ids, (N, n_genes) float32 noise-free expected counts) of one section, columns in
    the count file's gene order (``summary["genes"]``)."""
    path = Path(root) / "ground_truth" / f"{section}_expected.npy"
    if not path.exists():
        raise DataError(f"{path}: no expected counts for section {section!r} (regenerate the "
                        "synthetic data)")
    return load_ground_truth(root, section)["spots"]["ids"], np.load(path)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _read_params(cfg: Any) -> dict:
    p = {}
    for name in _PARAM_FIELDS:
        v = _get(cfg, name)
        if v is None:
            raise ConfigError(f"synthetic config lacks field {name!r}")
        if name in _FLOAT_FIELDS:
            p[name] = float(v)
        elif float(v) != int(v):
            raise ConfigError(f"synthetic config: {name} must be an integer, got {v!r}")
        else:
            p[name] = int(v)
    for name, default in _OPTIONAL_FIELDS.items():
        p[name] = type(default)(_get(cfg, name, default))
    for name, default in _EXTRA_FIELDS.items():
        v = type(default)(_get(cfg, name, default))
        if v != default:
            p[name] = v
    if p.get("lattice", "square") not in ("square", "hex"):
        raise ConfigError(f"synthetic config: lattice must be 'square' or 'hex', got "
                          f"{p['lattice']!r}")
    checks = [
        (1 <= p["n_samples"] <= 26, "n_samples must be in 1..26"),
        (0 <= p["n_val_samples"] <= 26 - p["n_samples"],
         "n_val_samples must be in 0..26 - n_samples"),
        (p["n_sections"] >= 1, "n_sections must be >= 1"),
        (1 <= p["n_types"] <= 64, "n_types must be in 1..64"),
        (p["n_genes"] >= 3 * p["n_types"], "n_genes must be >= 3 * n_types"),
        (p["image_size"] >= 128, "image_size must be >= 128"),
        (p["spot_pitch"] >= 8, "spot_pitch must be >= 8"),
        (0 <= p["max_rotation_deg"] <= 180, "max_rotation_deg must be in [0, 180]"),
        (p["max_translation_px"] >= 0, "max_translation_px must be >= 0"),
        (0 <= p["max_scale"] < 0.5, "max_scale must be in [0, 0.5)"),
        (p["elastic_px"] >= 0, "elastic_px must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"synthetic config: {msg} (got {p})")
    r_max = _tissue_radius(p)
    if r_max < 2 * p["spot_pitch"]:
        raise ConfigError(
            f"synthetic config: tissue radius {r_max:.0f} px leaves no room for spots at pitch "
            f"{p['spot_pitch']} (image_size {p['image_size']}, max_translation_px "
            f"{p['max_translation_px']}, max_scale {p['max_scale']}); enlarge image_size")
    return p


def _tissue_radius(p: Mapping) -> float:
    """Largest canonical tissue radius that stays inside the image after any transform."""
    half = p["image_size"] / 2.0
    free = half - _EDGE_MARGIN * p["image_size"] - p["max_translation_px"] - p["elastic_px"]
    return free / (1.0 + p["max_scale"])


def _write_block(root: Path, letter: str, block_seed: int, p: Mapping, bio: Biology,
                 embeddings: dict | None = None) -> dict[str, int]:
    """Generates and writes one block; returns {section: n_spots} in layer order.

    With ``p["embedding_dim"]``, ``embeddings`` gets {section: arrays} (``_section_embeddings``).
    """
    embeddings = {} if embeddings is None else embeddings
    ss = np.random.SeedSequence(int(block_seed))
    rng_layout, rng_objects, rng_counts, *rng_sections = [
        np.random.default_rng(s) for s in ss.spawn(3 + p["n_sections"])]
    size, k = p["image_size"], p["n_types"]
    center = size / 2.0
    r_max = _tissue_radius(p)
    types = Fields(rng_layout, k, TYPE_LENGTH * size, Z_LENGTH)
    gene_fields = Fields(rng_layout, N_GENE_FIELDS, GENE_LENGTH * size, Z_LENGTH)
    shape = Shape(rng_layout, center, r_max)
    sample_lib = math.exp(rng_layout.normal(0.0, 0.15))
    nuclei, lumens = _block_objects(rng_objects, p, bio, center, r_max)

    out: dict[str, int] = {}
    for layer in range(p["n_sections"]):
        rng = rng_sections[layer]
        name = f"{letter}{layer + 1}"
        z = float(layer)
        gt = random_transform(rng, p)
        grid, cxy = _section_spots(rng, p, shape, z)
        spot_type = np.argmax(types.at(cxy, z), axis=0)
        pixel = canonical_to_section(gt, cxy)
        counts, expected = _section_counts(rng, rng_counts, bio, gene_fields, cxy, z,
                                           spot_type, sample_lib)
        image = render_section(rng, p, bio, types, shape, nuclei, lumens, z, gt)
        ids = [f"{x}x{y}" for x, y in grid]
        gt.update({
            "section": name, "sample": letter, "layer": layer, "z": z,
            "image_size": [size, size], "canonical_center": [center, center], "n_types": k,
            "spots": {"ids": ids, "array_xy": grid.tolist(),
                      "canonical_xy": np.round(cxy, 4).tolist(),
                      "pixel_xy": np.round(pixel, 4).tolist(),
                      "type": spot_type.tolist()},
        })
        _write_section(root, letter, name, ids, grid, pixel, counts, bio.genes, image,
                       spot_type, gt, rng)
        np.save(root / "ground_truth" / f"{name}_expected.npy", expected)
        if p.get("embedding_dim", 0):
            embeddings[name] = _section_embeddings(p, bio, ids, pixel, spot_type, rng)
        out[name] = len(ids)
    return out


def _block_objects(rng_objects, p: Mapping, bio: Biology, center: float,
                   r_max: float) -> tuple[Objects3D, Objects3D]:
    """The block's nuclei and lumens, spread over the tissue's bounding square and z range."""
    n_sec = p["n_sections"]
    lo, hi = center - r_max, center + r_max
    area = (hi - lo) ** 2
    z_lo, z_hi = -1.5, n_sec + 0.5
    nuclei = Objects3D(rng_objects, int(bio.nuc_density.max() * area * (z_hi - z_lo) / 1.7),
                       lo, hi, z_lo, z_hi, (0.5, 1.2), (0.8, 1.2))
    lumens = Objects3D(rng_objects, int(max(bio.lumen_density.max(), 1e-9) * area
                                        * (z_hi - z_lo) / 3.0), lo, hi, z_lo, z_hi,
                       (0.8, 2.2), (10.0, 28.0))
    return nuclei, lumens


def _section_spots(rng, p: Mapping, shape: Shape, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Spots on the canonical array grid (per-section random origin unless shared_grid), kept
    well inside the tissue: array x, y from 1 (N, 2) int and canonical centres (N, 2)."""
    size, pitch = p["image_size"], p["spot_pitch"]
    offset = np.zeros(2) if p["shared_grid"] else rng.uniform(0.0, pitch, 2)
    n_grid = int(size // pitch) + 1
    if p.get("lattice", "square") == "hex":
        rows = int(size // (pitch * math.sqrt(3.0) / 2.0)) + 1
        cxy, arr = hex_lattice(n_grid * rows + n_grid, float(pitch))
        cxy = cxy + offset + pitch / 2.0
    else:
        gx, gy = np.meshgrid(np.arange(n_grid), np.arange(n_grid))
        arr = np.stack([gx.ravel(), gy.ravel()], 1)
        cxy = arr * float(pitch) + offset + pitch / 2.0
    keep = shape.inside_distance(cxy[:, 0], cxy[:, 1], z) > _SPOT_INSET * pitch
    return arr[keep] + 1, cxy[keep]


def _section_counts(rng, rng_counts, bio: Biology, gene_fields: Fields, cxy: np.ndarray,
                    z: float, spot_type: np.ndarray, sample_lib: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Counts NB(mean = lib * exp(base + programme[type] + spatial)), (N, G) int, columns in
    the files' gene order, and the noise-free expected counts (N, G) float32: the spot's mean
    at the section's library size (no per-spot library noise, no NB / Poisson noise), for the
    oracle ceiling."""
    h = gene_fields.at(cxy, z).T                                 # (N, C)
    log_mu = (bio.log_base[None] + bio.program[spot_type] + h @ bio.spatial.T)
    lib = sample_lib * math.exp(rng.normal(0.0, 0.08)) * np.exp(
        rng_counts.normal(0.0, 0.35, len(cxy)))
    mu = lib[:, None] * np.exp(log_mu)
    lam = rng_counts.gamma(bio.nb_size[None], mu / bio.nb_size[None])
    counts = rng_counts.poisson(lam)[:, bio.gene_order]
    expected = (lib.mean() * np.exp(log_mu))[:, bio.gene_order].astype(np.float32)
    return counts, expected


def _section_embeddings(p: Mapping, bio: Biology, ids, pixel: np.ndarray,
                        spot_type: np.ndarray, rng: np.random.Generator) -> dict:
    """Features drawn directly (the embeddings-file layout of ``features.embeddings``).

    Spot: the type's vector (unit-variance, drawn from the shared biology seed) + N(0, 1)
    noise, D = embedding_dim. Tiles: every occupied cell of the region / global grids (origin
    (i*S, j*S) of the section's pixel frame, as ``preprocess.tiles`` assigns them): the mean of
    its spots' vectors + N(0, 0.3) noise, no token grid (T = 1).
    """
    d = int(p["embedding_dim"])
    type_vec = np.random.default_rng([int(bio.seed), 0xE3B]).normal(size=(p["n_types"], d))
    spot = (type_vec[spot_type] + rng.normal(0.0, 1.0, (len(ids), d))).astype(np.float32)
    out = {"spot_ids": np.asarray(ids), "spot": spot}
    for level in ("region", "global"):
        size = int(p.get(f"embedding_{level}_size", _EXTRA_FIELDS[f"embedding_{level}_size"]))
        cell = np.floor(np.asarray(pixel) / size).astype(np.int64)
        keys, inv = np.unique(cell, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        mean = np.zeros((len(keys), d))
        np.add.at(mean, inv, spot)
        mean /= np.bincount(inv, minlength=len(keys))[:, None]
        out[f"{level}_origin"] = (keys * size).astype(np.int64)
        out[level] = (mean + rng.normal(0.0, 0.3, mean.shape)).astype(np.float32)
    return out


def _write_section(root, letter, name, ids, grid, pixel, counts, genes, image, spot_type,
                   gt, rng) -> None:
    """Writes one section's files in the HER2ST layout (byte-identical for equal inputs)."""
    import cv2

    # Counts: header "\t<gene>...", rows "<x>x<y>\t<int>...", sorted by (x, y) like HER2ST.
    order = np.lexsort((grid[:, 1], grid[:, 0]))
    buf = io.StringIO()
    buf.write("\t" + "\t".join(genes) + "\n")
    for i in order:
        buf.write(ids[i] + "\t" + "\t".join(map(str, counts[i].tolist())) + "\n")
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(buf.getvalue().encode())
    (root / "ST-cnts" / f"{name}.tsv.gz").write_bytes(raw.getvalue())

    # Spot file, rows in a random order (readers must join on the id).
    sub = np.round(grid + rng.normal(0.0, 0.03, grid.shape), 3)
    lines = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"]
    labels = ["Row.names\tx\ty\tpixel_x\tpixel_y\tlabel"]
    for i in rng.permutation(len(ids)):
        lines.append(f"{grid[i, 0]}\t{grid[i, 1]}\t{sub[i, 0]:.3f}\t{sub[i, 1]:.3f}\t"
                     f"{pixel[i, 0]:.2f}\t{pixel[i, 1]:.2f}\t1")
        labels.append(f"{int(round(pixel[i, 0]))}x{int(round(pixel[i, 1]))}\t{sub[i, 0]:.3f}\t"
                      f"{sub[i, 1]:.3f}\t{pixel[i, 0]:.2f}\t{pixel[i, 1]:.2f}\t"
                      f"type_{int(spot_type[i])}")
    (root / "ST-spotfiles" / f"{name}_selection.tsv").write_text("\n".join(lines) + "\n")
    (root / "ST-pat" / "lbl" / f"{name}_labeled_coordinates.tsv").write_text(
        "\n".join(labels) + "\n")

    img_dir = root / "ST-imgs" / letter / name
    img_dir.mkdir(parents=True, exist_ok=True)
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise DataError(f"{img_dir}: JPEG encoding failed")
    (img_dir / f"{name}_HE.jpg").write_bytes(enc.tobytes())
    (root / "ground_truth" / f"{name}.json").write_text(json.dumps(gt))
