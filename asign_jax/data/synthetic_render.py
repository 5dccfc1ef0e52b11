"""The H&E-like image of one synthetic section: (S, S, 3) uint8 RGB.

Rendered in the canonical frame, then warped into the section frame
(``synthetic_frames.inverse_maps``). Smooth parts (type map, tissue mask, lumens, eosin
texture) are built at half resolution and upsampled; nuclei are drawn at full resolution.
Colour is Beer-Lambert: the optical densities of eosin (per type, with texture), a
hematoxylin background, the nuclei and the slide background, then I = 255 exp(-OD).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from asign_jax.data.synthetic_frames import LOWRES_STEP, inverse_maps
from asign_jax.data.synthetic_tissue import H_OD, Objects3D

BACKGROUND_OD = 0.025         # slide background, ~243/255


def render_section(rng, p, bio, types, shape, nuclei, lumens, z, gt) -> np.ndarray:
    """Renders section z in the canonical frame and warps it; (S, S, 3) uint8 RGB.

    rng: the section's generator (texture, grain, staining); p: the synthetic parameters;
    bio: ``Biology``; types: ``Fields`` of the tissue types; shape: ``Shape``;
    nuclei / lumens: ``Objects3D``; gt: the section's transform (``random_transform``).
    """
    size = p["image_size"]
    half = -(-size // 2)
    tmap, alpha = _type_map(types, shape, z, size, half)
    lum, nuc = _objects(bio, nuclei, lumens, z, tmap, alpha, size, half)
    img = _colour(rng, bio, tmap, alpha, lum, nuc, size, half)
    bg = int(round(255 * math.exp(-BACKGROUND_OD)))
    return cv2.remap(img, inverse_maps(gt, size), None, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(bg, bg, bg))


def _coarse(size: int) -> tuple[int, np.ndarray]:
    """(n, (n,) coarse-grid sample positions) of the LOWRES_STEP grid over ``size`` px."""
    n = -(-size // LOWRES_STEP)
    return n, (np.arange(n) + 0.5) * LOWRES_STEP - 0.5


def _to_half(a: np.ndarray, size: int, half: int) -> np.ndarray:
    """Coarse grid (n, n) -> half resolution (half, half), bilinear."""
    m = _coarse(size)[0] * LOWRES_STEP // 2
    return cv2.resize(a, (m, m), interpolation=cv2.INTER_LINEAR)[:half, :half]


def _type_map(types, shape, z: float, size: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(half, half) uint8 tissue type (argmax of the type fields) and float32 tissue alpha
    (a 2 px soft edge in full-resolution px)."""
    _, coarse = _coarse(size)
    f = types.grid(coarse, coarse, z)
    best = _to_half(f[0], size, half)
    tmap = np.zeros((half, half), np.uint8)
    for i in range(1, len(f)):
        fi = _to_half(f[i], size, half)
        tmap[fi > best] = i
        np.maximum(best, fi, out=best)
    cx, cy = np.meshgrid(coarse, coarse)
    inside = _to_half(shape.inside_distance(cx, cy, z).astype(np.float32), size, half)
    return tmap, np.clip(inside * 0.5 + 0.5, 0.0, 1.0)


def _visible(objs: Objects3D, density: np.ndarray, z: float, tmap: np.ndarray,
             alpha: np.ndarray, half: int):
    """Visible objects kept by the type thinning: (indices, cross-section, type, half-res
    pixel (x, y))."""
    idx, frac = objs.visible(z)
    hij = np.clip((objs.xy[idx] * 0.5).astype(np.int64), 0, half - 1)
    t = tmap[hij[:, 1], hij[:, 0]]
    ok = (objs.u[idx] < density[t] / max(float(density.max()), 1e-12)) & (
        alpha[hij[:, 1], hij[:, 0]] > 0.5)
    return idx[ok], frac[ok], t[ok], hij[ok]


def _draw(canvas, xy, radius, elong, angle, value, scale) -> None:
    """Filled ellipses into ``canvas`` at ``scale`` x the canonical px (4 fractional bits)."""
    keep = radius * scale >= 0.35
    sub = 16 * scale                           # 4 fractional bits
    centres = np.rint(xy[keep] * sub).astype(np.int64).tolist()
    ax = np.maximum(1, np.rint(np.stack([radius * elong, radius], 1)[keep] * sub)
                    ).astype(np.int64).tolist()
    for c, a, ang, v in zip(centres, ax, angle[keep].tolist(),
                            np.asarray(value)[keep].astype(np.int64).tolist()):
        cv2.ellipse(canvas, c, a, ang, 0, 360, v, -1, cv2.LINE_8, 4)


def _objects(bio, nuclei: Objects3D, lumens: Objects3D, z: float, tmap, alpha, size: int,
             half: int) -> tuple[np.ndarray, np.ndarray]:
    """Lumens (half resolution, float32 in [0, 1]) and nuclei (full resolution, uint8
    hematoxylin intensity; none in lumens)."""
    idx, frac, t, _ = _visible(lumens, bio.lumen_density, z, tmap, alpha, half)
    lum = np.zeros((half, half), np.uint8)
    _draw(lum, lumens.xy[idx], lumens.r[idx] * frac, lumens.elong[idx] * 0.8 + 0.2,
          lumens.angle[idx], np.full(len(idx), 255), 0.5)
    lum = cv2.GaussianBlur(lum, (0, 0), 0.8).astype(np.float32) * np.float32(1.0 / 255)

    idx, frac, t, hij = _visible(nuclei, bio.nuc_density, z, tmap, alpha, half)
    ok = lum[hij[:, 1], hij[:, 0]] < 0.5
    idx, frac, t = idx[ok], frac[ok], t[ok]
    nuc = np.zeros((size, size), np.uint8)
    _draw(nuc, nuclei.xy[idx], bio.nuc_radius[t] * nuclei.r[idx] * frac, nuclei.elong[idx],
          nuclei.angle[idx], np.minimum(255, 160 * nuclei.shade[idx] * bio.nuc_dark[t]), 1.0)
    return lum, cv2.GaussianBlur(nuc, (0, 0), 0.7)


def _colour(rng, bio, tmap, alpha, lum, nuc, size: int, half: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB in the canonical frame: tissue optical density at half
    resolution (eosin with texture + hematoxylin background), nuclei at full resolution."""
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
        neg_od = cv2.resize(-(eos * bio.eosin_od[:, c][tmap] + hem * H_OD[c] + BACKGROUND_OD),
                            (size, size), interpolation=cv2.INTER_LINEAR)
        neg_od = cv2.scaleAdd(nuc, -float(H_OD[c] * stain[1] / 160.0), neg_od)
        channels.append(cv2.convertScaleAbs(cv2.exp(neg_od), alpha=255.0))
    return cv2.merge(channels)
