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

Model. Every block lives in a canonical frame (image_size px square, x = column, y = row)
with a smooth section coordinate z (section l has z = l). K tissue types are the argmax of
K smooth random fields f_k(x, y, z) (random Fourier features, Gaussian kernel), so the type
map changes gradually from one section to the next. The tissue is an irregular blob centred
in the frame, sized so it stays inside the image under the largest transform. Spots sit on a
regular array grid (pitch ``spot_pitch``) in the canonical frame and are kept when well inside
the tissue; each section's grid has a random sub-pitch origin (like real ST, where every
section lies on its own array), unless the optional config field ``shared_grid`` is True.
Counts are negative binomial with a mean set by the spot's tissue type (type marker genes),
a shared heavy-tailed baseline, a small smooth within-type spatial term and a log-normal
library size. The tissue *biology* (gene programmes,
type colour and texture) is drawn from ``seed`` and shared by all blocks, so a model trained
on some blocks transfers to the others; the *layout* of block k (fields, shape, nuclei,
transforms, count noise) is drawn from ``seed + k``.

Each section is rendered in the canonical frame, then warped into its own image frame by
the forward map  F(p) = u + d(u),  u = A p,  where A is a random affine (rotation, translation,
anisotropic scale; 3x3 on homogeneous column vectors (x, y, 1)) and d a smooth elastic
displacement with |d| <= elastic_px, defined in the section frame. Spot pixel coordinates
are F(canonical spot centre), so each spot sits on the tissue its counts were drawn from.

Ground-truth JSON (``root/ground_truth/<S>.json``)::

    section, sample, layer, z, image_size: [W, H], canonical_center: [x, y]
    affine: 3x3 list, canonical -> section pixels (A above)
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
# lattice "square" | "hex" (10x Visium: hexagonal, rows pitch*sqrt(3)/2 apart); embedding_dim
# > 0 also writes root/embeddings.npz (features "drawn directly" for the ``embeddings``
# encoder: per spot a type vector + noise, per region / global tile of the given sizes the
# mean of its spots' vectors + noise; see ``_write_embeddings``).
_EXTRA_FIELDS = {"lattice": "square", "embedding_dim": 0, "embedding_region_size": 512,
                 "embedding_global_size": 1024}
EMBEDDINGS_FILE = "embeddings.npz"

_FIELD_FEATURES = 64          # random Fourier features per smooth field
_LOWRES_STEP = 16             # px; smooth fields are evaluated on this grid, then upsampled
_TYPE_LENGTH = 0.14           # x image_size: correlation length of the tissue-type fields
_GENE_LENGTH = 0.25           # x image_size: correlation length of the within-type gene fields
_Z_LENGTH = 8.0               # sections: correlation length of all fields along z
_N_GENE_FIELDS = 3
_EDGE_MARGIN = 0.02           # x image_size kept free of tissue at the image border
_IRREGULARITY = 0.12          # tissue radius varies in [1 - this, 1] x R_max
_SPOT_INSET = 0.35            # x spot_pitch: spots are kept this far inside the boundary
_JPEG_QUALITY = 90

# Optical-density stain vectors (R, G, B absorbance): Ruifrok & Johnston's hematoxylin; an
# eosin a little more blue-absorbing than theirs (0.072, 0.990, 0.105), for a pinker hue.
_H_OD = np.array([0.650, 0.704, 0.286], np.float32)
_E_OD = np.array([0.10, 0.95, 0.26], np.float32)
_BACKGROUND_OD = 0.025        # slide background, ~243/255


# ------------------------------------------------------------------------------------------
# public helpers
# ------------------------------------------------------------------------------------------

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

    bio = _Biology(params, seed)
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


def hex_lattice(n_spots: int, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_spots`` points of a Visium-style hexagonal lattice, row by row.

    Rows are ``pitch * sqrt(3) / 2`` apart and every other row is shifted by ``pitch / 2``
    (10x Visium: 55 um spots, 100 um centre to centre), filling a near-square patch.

    Returns:
      xy: (n_spots, 2) float64 centres (x = column, y = row), the first at (0, 0).
      array_xy: (n_spots, 2) int64 (column, row) array indices, Visium-style (x doubled so
        that neighbours in a row differ by 2 and the shifted rows take the odd columns).
    """
    n = int(n_spots)
    cols = max(1, int(math.ceil(math.sqrt(n * 2.0 / math.sqrt(3.0)))))
    row, col = np.divmod(np.arange(n), cols)
    xy = np.stack([(col + 0.5 * (row % 2)) * pitch, row * pitch * math.sqrt(3.0) / 2.0], 1)
    return xy.astype(np.float64), np.stack([2 * col + row % 2, row], 1).astype(np.int64)


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


def canonical_to_section(gt: Mapping, xy: np.ndarray) -> np.ndarray:
    """Exact forward map F(p) = A p + d(A p): canonical (N, 2) -> section pixels (N, 2)."""
    u = _apply_affine(np.asarray(gt["affine"], np.float64), xy)
    return u + _elastic(gt["elastic"], u)


def section_to_canonical(gt: Mapping, xy: np.ndarray, iterations: int = 8) -> np.ndarray:
    """Inverse of ``canonical_to_section``: section pixels (N, 2) -> canonical (N, 2)."""
    q = np.asarray(xy, np.float64).reshape(-1, 2)
    u = q.copy()
    for _ in range(iterations):
        u = q - _elastic(gt["elastic"], u)
    return _apply_affine(np.linalg.inv(np.asarray(gt["affine"], np.float64)), u)


def true_reference_coords(gt_l: Mapping, gt_ref: Mapping, pixel_xy: np.ndarray,
                          exact: bool = False) -> np.ndarray:
    """Maps section-l pixel points (N, 2) into the reference section's pixel frame.

    ``exact=False``: the affine part only, A_ref A_l^{-1} q (what an affine registration can
    recover; off by at most about 2 x elastic_px). ``exact=True``: F_ref(F_l^{-1}(q)).
    """
    if exact:
        return canonical_to_section(gt_ref, section_to_canonical(gt_l, pixel_xy))
    m = np.asarray(gt_ref["affine"], np.float64) @ np.linalg.inv(
        np.asarray(gt_l["affine"], np.float64))
    return _apply_affine(m, pixel_xy)


# ------------------------------------------------------------------------------------------
# parameters and shared biology
# ------------------------------------------------------------------------------------------

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


def _spread(rng: np.random.Generator, lo: float, hi: float, k: int) -> np.ndarray:
    """k evenly spread values in [lo, hi] in random order, (k,) float32."""
    return rng.permutation(np.linspace(lo, hi, k)).astype(np.float32)


class _Biology:
    """What a tissue type is (appearance and expression); shared by all blocks of a seed."""

    def __init__(self, p: Mapping, seed: int):
        self.seed = int(seed)
        rng = np.random.default_rng([int(seed), 0xB10])
        k, g = p["n_types"], p["n_genes"]
        # Appearance, (K,) each.
        self.eosin = _spread(rng, 0.25, 0.85, k)
        self.hema_bg = _spread(rng, 0.03, 0.22, k)
        self.nuc_density = _spread(rng, 0.0010, 0.0075, k)       # nuclei / px^2 / section
        self.nuc_radius = _spread(rng, 2.5, 5.0, k)               # px
        self.nuc_dark = _spread(rng, 0.8, 1.5, k)                 # hematoxylin OD
        self.tex_low = _spread(rng, 0.04, 0.35, k)
        self.tex_mid = _spread(rng, 0.03, 0.30, k)
        self.lumen_density = (rng.permutation(np.linspace(0.0, 1.0, k)) ** 2
                              * 1.6e-5).astype(np.float32)        # lumens / px^2 / section
        hue = _spread(rng, -1.0, 1.0, k)
        shift = np.array([0.16, 0.0, -0.16], np.float32)
        e = np.clip(_E_OD + hue[:, None] * shift, 0.0, None)
        self.eosin_od = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

        # Expression, log scale. Baseline heavy-tailed with a few very high genes.
        base = rng.normal(-0.7, 1.2, g)
        n_top = max(2, g // 40)
        base[rng.choice(g, n_top, replace=False)] = np.log(rng.uniform(25.0, 80.0, n_top))
        program = rng.normal(0.0, 0.2, (k, g))
        # Marker genes: 3 per type guaranteed, then ~35% of the rest, each up in one type.
        order = rng.permutation(g)
        guaranteed = order[:3 * k]
        rest = order[3 * k:]
        extra = rest[rng.random(len(rest)) < 0.35]
        marker_type = np.concatenate([np.tile(np.arange(k), 3),
                                      rng.integers(0, k, len(extra))])
        markers = np.concatenate([guaranteed, extra])
        program[marker_type, markers] += rng.uniform(np.log(2.5), np.log(8.0), len(markers))
        # G000 / G001 (the demo's eval genes): strong, well-expressed markers of types 0 / 1.
        for slot, gene in enumerate(guaranteed[:min(2, k * 3)]):
            base[gene] = np.log(rng.uniform(3.0, 6.0))
            program[:, gene] = rng.normal(0.0, 0.1, k)
            program[slot % k, gene] = np.log(6.0)
        self.log_base = base.astype(np.float64)
        self.program = program
        self.spatial = rng.normal(0.0, 0.3, (g, _N_GENE_FIELDS)) * (rng.random((g, 1)) < 0.4)
        self.nb_size = rng.uniform(2.0, 8.0, g)
        # Names: G000, G001 = the two demo markers, the rest in random order.
        width = max(3, len(str(g - 1)))
        names = np.empty(g, dtype=object)
        head = list(guaranteed[:2])
        tail = [i for i in rng.permutation(g) if i not in set(head)]
        for rank, gene in enumerate(head + tail):
            names[gene] = f"G{rank:0{width}d}"
        self.gene_order = np.array(head + tail)               # column order in the files
        self.genes = [names[i] for i in self.gene_order]


# ------------------------------------------------------------------------------------------
# smooth fields and geometry
# ------------------------------------------------------------------------------------------

class _Fields:
    """n smooth unit-variance random fields f_i(x, y, z) (random Fourier features)."""

    def __init__(self, rng: np.random.Generator, n: int, length_xy: float, length_z: float):
        m = _FIELD_FEATURES
        self.w = rng.normal(size=(n, m, 3)) / np.array([length_xy, length_xy, length_z])
        self.phase = rng.uniform(0.0, 2 * np.pi, (n, m))
        self.scale = math.sqrt(2.0 / m)

    def at(self, xy: np.ndarray, z: float) -> np.ndarray:
        """Values at points (N, 2) of section z, (n, N)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        arg = (xy[:, 0][None, None] * self.w[..., 0, None] + xy[:, 1][None, None]
               * self.w[..., 1, None] + (z * self.w[..., 2] + self.phase)[..., None])
        return self.scale * np.cos(arg).sum(axis=1)

    def grid(self, xs: np.ndarray, ys: np.ndarray, z: float) -> np.ndarray:
        """Values on the grid ys x xs, (n, len(ys), len(xs)); separable: two real products."""
        ax = self.w[..., 0, None] * np.asarray(xs, np.float64)[None, None]      # (n, m, W)
        by = (self.w[..., 1, None] * np.asarray(ys, np.float64)[None, None]
              + (z * self.w[..., 2] + self.phase)[..., None])                   # (n, m, H)
        # einsum without BLAS: tiny products, and OpenBLAS threads contend with OpenCV's.
        out = (np.einsum("nmh,nmw->nhw", np.cos(by), np.cos(ax))
               - np.einsum("nmh,nmw->nhw", np.sin(by), np.sin(ax)))
        return (self.scale * out).astype(np.float32)


class _Shape:
    """Irregular tissue blob: inside where |p - c| < R(theta, z)."""

    def __init__(self, rng: np.random.Generator, center: float, r_max: float):
        self.c = center
        self.r_max = r_max
        self.n = np.arange(2, 8)
        self.amp = rng.uniform(0.3, 1.0, len(self.n)) / self.n
        self.phase = rng.uniform(0, 2 * np.pi, len(self.n))
        self.drift = rng.normal(0.0, 0.06, len(self.n))   # rad per section

    def inside_distance(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """R(theta, z) - |p - c| in px (positive inside), same shape as x."""
        dx, dy = x - self.c, y - self.c
        theta = np.arctan2(dy, dx)[..., None]
        u = (self.amp * np.cos(self.n * theta + self.phase + self.drift * z)).sum(-1)
        radius = self.r_max * (1.0 - _IRREGULARITY * 0.5 * (1.0 + u / self.amp.sum()))
        return radius - np.hypot(dx, dy)


def _apply_affine(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return xy @ m[:2, :2].T + m[:2, 2]


def _elastic(modes: Mapping, u: np.ndarray) -> np.ndarray:
    """Elastic displacement d(u) at section-frame points (N, 2), (N, 2)."""
    u = np.asarray(u, np.float64).reshape(-1, 2)
    out = np.zeros_like(u)
    for axis, key in enumerate(("x", "y")):
        for kx, ky, phase, amp in modes[key]:
            out[:, axis] += amp * np.cos(kx * u[:, 0] + ky * u[:, 1] + phase)
    return out


def _random_transform(rng: np.random.Generator, p: Mapping) -> dict:
    """Random affine + elastic modes of one section (the JSON-ready ground truth part)."""
    s = p["image_size"]
    c = s / 2.0
    angle = rng.uniform(-p["max_rotation_deg"], p["max_rotation_deg"])
    t = rng.uniform(-p["max_translation_px"], p["max_translation_px"], 2)
    scale = rng.uniform(1.0 - p["max_scale"], 1.0 + p["max_scale"], 2)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = rot @ np.diag(scale)
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + t - lin @ np.array([c, c])
    modes = {}
    for key in ("x", "y"):
        n = 3
        wavelength = rng.uniform(0.35, 0.9, n) * s
        direction = rng.uniform(0, 2 * np.pi, n)
        k = 2 * np.pi / wavelength
        w = rng.uniform(0.3, 1.0, n)
        amp = w / w.sum() * p["elastic_px"] / math.sqrt(2.0)   # |d| <= elastic_px
        modes[key] = [[float(k[i] * math.cos(direction[i])), float(k[i] * math.sin(direction[i])),
                       float(rng.uniform(0, 2 * np.pi)), float(amp[i])] for i in range(n)]
    return {"affine": m.tolist(), "rotation_deg": float(angle), "translation_px": t.tolist(),
            "scale": scale.tolist(), "elastic_px": p["elastic_px"], "elastic": modes}


def _inverse_maps(gt: Mapping, size: int) -> np.ndarray:
    """cv2.remap map section pixel -> canonical pixel (x, y), (size, size, 2) float32.

    Computed exactly on a coarse grid and upsampled bilinearly: exact for the affine part
    except in the outer half cell (background), error << 0.1 px for the smooth elastic part.
    """
    import cv2

    step = _LOWRES_STEP
    n = -(-size // step)
    cq = (np.arange(n) + 0.5) * step - 0.5                  # cv2.resize sample positions
    qx, qy = np.meshgrid(cq, cq)
    q = np.stack([qx.ravel(), qy.ravel()], 1)
    u = q.copy()
    for _ in range(8):
        u = q - _elastic(gt["elastic"], u)
    p = _apply_affine(np.linalg.inv(np.asarray(gt["affine"], np.float64)), u)
    maps = cv2.resize(p.reshape(n, n, 2).astype(np.float32), (n * step, n * step),
                      interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(maps[:size, :size])


# ------------------------------------------------------------------------------------------
# one block
# ------------------------------------------------------------------------------------------

class _Objects3D:
    """Spherical objects (nuclei or lumens) in (x, y, z); z in section units."""

    def __init__(self, rng, count, lo, hi, z_lo, z_hi, half_thickness, radius):
        self.xy = rng.uniform(lo, hi, (count, 2))
        self.z = rng.uniform(z_lo, z_hi, count)
        self.h = rng.uniform(*half_thickness, count)
        self.r = rng.uniform(*radius, count)                  # radius multiplier / px
        self.u = rng.random(count)                            # thinning draw
        self.elong = rng.uniform(1.0, 1.8, count)
        self.angle = rng.uniform(0.0, 180.0, count)
        self.shade = rng.uniform(0.85, 1.15, count)

    def visible(self, z: float):
        """Indices visible in section z and their cross-section factor sqrt(1 - (dz/h)^2)."""
        dz = np.abs(self.z - z) / self.h
        idx = np.nonzero(dz < 1.0)[0]
        return idx, np.sqrt(1.0 - dz[idx] ** 2)


def _write_block(root: Path, letter: str, block_seed: int, p: Mapping, bio: _Biology,
                 embeddings: dict | None = None) -> dict[str, int]:
    """Generates and writes one block; returns {section: n_spots} in layer order.

    With ``p["embedding_dim"]``, ``embeddings`` gets {section: arrays} (``_section_embeddings``).
    """
    embeddings = {} if embeddings is None else embeddings
    ss = np.random.SeedSequence(int(block_seed))
    rng_layout, rng_objects, rng_counts, *rng_sections = [
        np.random.default_rng(s) for s in ss.spawn(3 + p["n_sections"])]
    size, pitch, k = p["image_size"], p["spot_pitch"], p["n_types"]
    center = size / 2.0
    r_max = _tissue_radius(p)
    types = _Fields(rng_layout, k, _TYPE_LENGTH * size, _Z_LENGTH)
    gene_fields = _Fields(rng_layout, _N_GENE_FIELDS, _GENE_LENGTH * size, _Z_LENGTH)
    shape = _Shape(rng_layout, center, r_max)
    sample_lib = math.exp(rng_layout.normal(0.0, 0.15))

    n_sec = p["n_sections"]
    lo, hi = center - r_max, center + r_max
    area = (hi - lo) ** 2
    z_lo, z_hi = -1.5, n_sec + 0.5
    nuclei = _Objects3D(rng_objects, int(bio.nuc_density.max() * area * (z_hi - z_lo) / 1.7),
                        lo, hi, z_lo, z_hi, (0.5, 1.2), (0.8, 1.2))
    lumens = _Objects3D(rng_objects, int(max(bio.lumen_density.max(), 1e-9) * area
                                         * (z_hi - z_lo) / 3.0), lo, hi, z_lo, z_hi,
                        (0.8, 2.2), (10.0, 28.0))

    out: dict[str, int] = {}
    for layer in range(n_sec):
        rng = rng_sections[layer]
        name = f"{letter}{layer + 1}"
        z = float(layer)
        gt = _random_transform(rng, p)

        # Spots on the canonical array grid (per-section random origin unless shared_grid).
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
        grid = arr[keep] + 1                                         # array x, y from 1
        cxy = cxy[keep]
        spot_type = np.argmax(types.at(cxy, z), axis=0)
        pixel = canonical_to_section(gt, cxy)

        # Counts: NB(mean = lib * exp(base + programme[type] + spatial)).
        h = gene_fields.at(cxy, z).T                                 # (N, C)
        log_mu = (bio.log_base[None] + bio.program[spot_type] + h @ bio.spatial.T)
        lib = sample_lib * math.exp(rng.normal(0.0, 0.08)) * np.exp(
            rng_counts.normal(0.0, 0.35, len(cxy)))
        mu = lib[:, None] * np.exp(log_mu)
        lam = rng_counts.gamma(bio.nb_size[None], mu / bio.nb_size[None])
        counts = rng_counts.poisson(lam)[:, bio.gene_order]
        # noise-free: the spot's expected counts at the section's library size (no per-spot
        # library noise, no NB / Poisson noise), for the oracle ceiling
        expected = (lib.mean() * np.exp(log_mu))[:, bio.gene_order].astype(np.float32)

        image = _render_section(rng, p, bio, types, shape, nuclei, lumens, z, gt)
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


def _section_embeddings(p: Mapping, bio: "_Biology", ids, pixel: np.ndarray,
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


def _render_section(rng, p, bio, types, shape, nuclei, lumens, z, gt) -> np.ndarray:
    """Renders section z in the canonical frame and warps it; (S, S, 3) uint8 RGB.

    Smooth parts (type map, tissue mask, lumens, eosin texture) are built at half
    resolution and upsampled; nuclei are drawn at full resolution.
    """
    import cv2

    size = p["image_size"]
    half = -(-size // 2)
    step = _LOWRES_STEP
    n = -(-size // step)
    coarse = (np.arange(n) + 0.5) * step - 0.5

    def to_half(a: np.ndarray) -> np.ndarray:       # coarse grid -> half resolution
        m = n * step // 2
        return cv2.resize(a, (m, m), interpolation=cv2.INTER_LINEAR)[:half, :half]

    def to_full(a: np.ndarray) -> np.ndarray:       # half -> full resolution
        return cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR)

    f = types.grid(coarse, coarse, z)
    best = to_half(f[0])
    tmap = np.zeros((half, half), np.uint8)
    for i in range(1, len(f)):
        fi = to_half(f[i])
        tmap[fi > best] = i
        np.maximum(best, fi, out=best)
    cx, cy = np.meshgrid(coarse, coarse)
    inside = to_half(shape.inside_distance(cx, cy, z).astype(np.float32))
    alpha = np.clip(inside * 0.5 + 0.5, 0.0, 1.0)     # 2 px soft edge (in full-res px)

    def visible(objs: _Objects3D, density: np.ndarray):
        """Visible objects kept by the type thinning: (indices, cross-section, type)."""
        idx, frac = objs.visible(z)
        hij = np.clip((objs.xy[idx] * 0.5).astype(np.int64), 0, half - 1)
        t = tmap[hij[:, 1], hij[:, 0]]
        ok = (objs.u[idx] < density[t] / max(float(density.max()), 1e-12)) & (
            alpha[hij[:, 1], hij[:, 0]] > 0.5)
        return idx[ok], frac[ok], t[ok], hij[ok]

    def draw(canvas, xy, radius, elong, angle, value, scale):
        keep = radius * scale >= 0.35
        sub = 16 * scale                           # 4 fractional bits
        centres = np.rint(xy[keep] * sub).astype(np.int64).tolist()
        ax = np.maximum(1, np.rint(np.stack([radius * elong, radius], 1)[keep] * sub)
                        ).astype(np.int64).tolist()
        for c, a, ang, v in zip(centres, ax, angle[keep].tolist(),
                                np.asarray(value)[keep].astype(np.int64).tolist()):
            cv2.ellipse(canvas, c, a, ang, 0, 360, v, -1, cv2.LINE_8, 4)

    # Lumens (white holes), half resolution.
    idx, frac, t, _ = visible(lumens, bio.lumen_density)
    lum = np.zeros((half, half), np.uint8)
    draw(lum, lumens.xy[idx], lumens.r[idx] * frac, lumens.elong[idx] * 0.8 + 0.2,
         lumens.angle[idx], np.full(len(idx), 255), 0.5)
    lum = cv2.GaussianBlur(lum, (0, 0), 0.8).astype(np.float32) * np.float32(1.0 / 255)

    # Nuclei (hematoxylin), full resolution; none in lumens.
    idx, frac, t, hij = visible(nuclei, bio.nuc_density)
    ok = lum[hij[:, 1], hij[:, 0]] < 0.5
    idx, frac, t = idx[ok], frac[ok], t[ok]
    nuc = np.zeros((size, size), np.uint8)
    draw(nuc, nuclei.xy[idx], bio.nuc_radius[t] * nuclei.r[idx] * frac, nuclei.elong[idx],
         nuclei.angle[idx], np.minimum(255, 160 * nuclei.shade[idx] * bio.nuc_dark[t]), 1.0)
    nuc = cv2.GaussianBlur(nuc, (0, 0), 0.7)

    # Tissue optical density at half resolution: eosin with texture + hematoxylin background.
    def noise(res: int, sigma: float) -> np.ndarray:
        a = cv2.GaussianBlur(rng.standard_normal((res, res), dtype=np.float32), (0, 0), sigma)
        a /= a.std() + 1e-6
        return cv2.resize(a, (half, half), interpolation=cv2.INTER_CUBIC)

    tex = (1.0 + bio.tex_low[tmap] * noise(max(8, size // 32), 1.0)
           + bio.tex_mid[tmap] * noise(max(8, size // 6), 0.8))
    np.maximum(tex, 0.2, out=tex)
    grain = 1.0 + 0.06 * rng.standard_normal((half, half), dtype=np.float32)
    stain = (1.0 + rng.normal(0.0, 0.04, 2)).astype(np.float32)   # per-section staining
    w = alpha * (1.0 - lum) * grain
    eos = bio.eosin[tmap] * tex * (w * stain[0])
    hem = bio.hema_bg[tmap] * (w * stain[1])
    nuc = nuc.astype(np.float32)
    channels = []
    for c in range(3):
        neg_od = to_full(-(eos * bio.eosin_od[:, c][tmap] + hem * _H_OD[c] + _BACKGROUND_OD))
        neg_od = cv2.scaleAdd(nuc, -float(_H_OD[c] * stain[1] / 160.0), neg_od)
        channels.append(cv2.convertScaleAbs(cv2.exp(neg_od), alpha=255.0))
    img = cv2.merge(channels)

    bg = int(round(255 * math.exp(-_BACKGROUND_OD)))
    return cv2.remap(img, _inverse_maps(gt, size), None, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(bg, bg, bg))


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
