"""What a synthetic tissue is: the shared biology of its types, smooth fields, shape, objects.

Every block lives in a canonical frame (image_size px square) with a smooth section
coordinate z (section l has z = l). K tissue types are the argmax of K smooth random fields
f_k(x, y, z) (random Fourier features, Gaussian kernel, ``Fields``), so the type map changes
gradually from one section to the next. The tissue is an irregular blob (``Shape``) centred
in the frame. Counts are negative binomial with a mean set by the spot's tissue type (type
marker genes), a shared heavy-tailed baseline, a small smooth within-type spatial term and a
log-normal library size. The tissue *biology* (``Biology``: gene programmes, type colour and
texture) is drawn from the master seed and shared by all blocks; nuclei and lumens are
spheres in (x, y, z) (``Objects3D``) cut by each section.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

FIELD_FEATURES = 64           # random Fourier features per smooth field
TYPE_LENGTH = 0.14            # x image_size: correlation length of the tissue-type fields
GENE_LENGTH = 0.25            # x image_size: correlation length of the within-type gene fields
Z_LENGTH = 8.0                # sections: correlation length of all fields along z
N_GENE_FIELDS = 3
IRREGULARITY = 0.12           # tissue radius varies in [1 - this, 1] x R_max

# Optical-density stain vectors (R, G, B absorbance): Ruifrok & Johnston's hematoxylin; an
# eosin a little more blue-absorbing than theirs (0.072, 0.990, 0.105), for a pinker hue.
H_OD = np.array([0.650, 0.704, 0.286], np.float32)
E_OD = np.array([0.10, 0.95, 0.26], np.float32)


def spread(rng: np.random.Generator, lo: float, hi: float, k: int) -> np.ndarray:
    """k evenly spread values in [lo, hi] in random order, (k,) float32."""
    return rng.permutation(np.linspace(lo, hi, k)).astype(np.float32)


class Biology:
    """What a tissue type is (appearance and expression); shared by all blocks of a seed."""

    def __init__(self, p: Mapping, seed: int):
        self.seed = int(seed)
        rng = np.random.default_rng([int(seed), 0xB10])
        k, g = p["n_types"], p["n_genes"]
        # Appearance, (K,) each.
        self.eosin = spread(rng, 0.25, 0.85, k)
        self.hema_bg = spread(rng, 0.03, 0.22, k)
        self.nuc_density = spread(rng, 0.0010, 0.0075, k)       # nuclei / px^2 / section
        self.nuc_radius = spread(rng, 2.5, 5.0, k)               # px
        self.nuc_dark = spread(rng, 0.8, 1.5, k)                 # hematoxylin OD
        self.tex_low = spread(rng, 0.04, 0.35, k)
        self.tex_mid = spread(rng, 0.03, 0.30, k)
        self.lumen_density = (rng.permutation(np.linspace(0.0, 1.0, k)) ** 2
                              * 1.6e-5).astype(np.float32)        # lumens / px^2 / section
        hue = spread(rng, -1.0, 1.0, k)
        shift = np.array([0.16, 0.0, -0.16], np.float32)
        e = np.clip(E_OD + hue[:, None] * shift, 0.0, None)
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
        self.spatial = rng.normal(0.0, 0.3, (g, N_GENE_FIELDS)) * (rng.random((g, 1)) < 0.4)
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


class Fields:
    """n smooth unit-variance random fields f_i(x, y, z) (random Fourier features)."""

    def __init__(self, rng: np.random.Generator, n: int, length_xy: float, length_z: float):
        m = FIELD_FEATURES
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


class Shape:
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
        radius = self.r_max * (1.0 - IRREGULARITY * 0.5 * (1.0 + u / self.amp.sum()))
        return radius - np.hypot(dx, dy)


class Objects3D:
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
