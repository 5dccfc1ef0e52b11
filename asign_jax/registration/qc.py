"""Registration quality control: TRE against ground truth, qc.json, the overlay figure, and
the summary table.

qc.json::

    {"reference": name,
     "sections": [{"name", "inliers", "method", "dice_before", "dice_after", "tre_px"}, ...]}

dice_before: Dice of the section's tissue mask with the reference's when both stay in their
own frames (identity in full-res px), on the reference's small canvas; dice_after: the same
with the section's mask warped into the reference frame. inliers: robust-fit inliers of the
section's own pair (section -> its neighbour toward the reference); null for the reference.
tre_px: null without ground truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
import numpy as np

from asign_jax import atomic
from asign_jax.registration.affine import apply_affine, identity_small

log = logging.getLogger(__name__)

# Distinct colours (RGB) for the sections of a stack.
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40)]


def tre(registered_xy: np.ndarray, original_xy: np.ndarray, affine_l: np.ndarray,
        affine_ref: np.ndarray) -> float:
    """Median |registered - A_ref A_l^-1 p| over points (px); affines canonical -> section px.

    registered_xy: (n, 2) registered points (reference px); original_xy: (n, 2) the same points
    in section l's own px.
    """
    if len(original_xy) == 0:
        return float("nan")
    m = np.asarray(affine_ref, np.float64) @ np.linalg.inv(np.asarray(affine_l, np.float64))
    p = np.asarray(original_xy, np.float64)
    true = p @ m[:2, :2].T + m[:2, 2]
    return float(np.median(np.linalg.norm(np.asarray(registered_xy) - true, axis=1)))


def write_qc(qc: dict, path: Path) -> Path:
    return atomic.write_json(path, qc)


def format_table(sample_id: str, qc: dict) -> str:
    """Fixed-width text table of a qc dict."""
    rows = [f"sample {sample_id} (reference {qc['reference']})",
            f"  {'section':<10}{'inliers':>8}{'dice_before':>13}{'dice_after':>12}"
            f"{'tre_px':>9}  method"]
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for s in qc["sections"]:
        rows.append(f"  {s['name']:<10}{fmt(s['inliers'], 'd'):>8}"
                    f"{fmt(s['dice_before'], '.3f'):>13}{fmt(s['dice_after'], '.3f'):>12}"
                    f"{fmt(s['tre_px'], '.2f'):>9}  {s['method']}")
    return "\n".join(rows)


def _panel(res, aligned: bool, spot_key: str, radius_px: float) -> np.ndarray:
    """(h, w, 3) uint8 panel in the reference's small frame: the mean gray of the sections,
    each section's tissue outline and spot circles in its colour."""
    import cv2

    ref = res.sections[res.reference]
    h, w = ref.shape
    grays, outlines = [], []
    for l, sec in enumerate(res.sections):
        if aligned:
            rgb, mask = res.aligned_rgb[l], res.aligned_mask[l]
        else:
            m = identity_small(sec, ref)
            rgb = cv2.warpAffine(sec.rgb, m[:2], (w, h), flags=cv2.INTER_LINEAR)
            mask = cv2.warpAffine(sec.mask.astype(np.uint8), m[:2], (w, h),
                                  flags=cv2.INTER_NEAREST).astype(bool)
        g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
        grays.append(np.where(mask, g, 255.0))
        outlines.append(mask)
    base = np.clip(np.mean(grays, 0) * 0.6 + 255 * 0.4, 0, 255).astype(np.uint8)
    canvas = cv2.cvtColor(base, cv2.COLOR_GRAY2RGB)
    scale = float(np.sqrt(abs(np.linalg.det(ref.to_small[:2, :2]))))
    r = max(1, int(round(radius_px * scale)))
    thick = max(1, int(round(min(h, w) / 500)))
    for l, sec in enumerate(res.sections):
        col = COLOURS[l % len(COLOURS)]
        cs, _ = cv2.findContours(outlines[l].astype(np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, cs, -1, col, 2 * thick)
        if aligned:
            pts = res.points[l].get(spot_key, np.zeros((0, 2)))
            pts = apply_affine(ref.to_small, pts)
        else:
            pts = res.original_points[l].get(spot_key, np.zeros((0, 2)))
            pts = apply_affine(ref.to_small, pts)
        for x, y in pts:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(canvas, (int(round(x)), int(round(y))), r, col, thick, cv2.LINE_AA)
    return canvas


def draw_overlay(res, path: Path, spot_key: str = "spot",
                 radius_px: float = 112.0, title: str = "") -> Path:
    """Saves a 2-panel PNG (before / after registration) of the stack in the reference frame:
    each section's tissue outline and spot circles (radius ``radius_px`` full-res px) in its
    colour over the mean grayscale of all sections."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = _panel(res, False, spot_key, radius_px)
    after = _panel(res, True, spot_key, radius_px)
    h, w = after.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4 * h / w + 0.6))
    for ax, img, t in ((axes[0], before, "before (identity)"), (axes[1], after, "registered")):
        ax.imshow(img)
        ax.set_title(t)
        ax.set_axis_off()
    handles = [Patch(color=np.array(COLOURS[l % len(COLOURS)]) / 255,
                     label=n + (" (ref)" if l == res.reference else ""))
               for l, n in enumerate(res.names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
