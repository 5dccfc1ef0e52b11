"""Intensity refinement of a pair's initial affine with antspyx (in-process).

Strategy (chosen because every step can be checked numerically): the moving section's
registration image (inverted gray, tissue bright, background 0) is pre-warped with the initial
affine into the fixed section's small frame, ANTs registers the fixed image with that pre-warped
image starting from the identity, and the ANTs affine is read back and composed with the
initial one. With SyN, a second, deformable-only ANTs run ("SyNOnly") follows on the affinely
aligned image; its INVERSE warp is what maps points moving -> fixed (ANTs point transforms map
fixed -> moving, the opposite direction of image warps).

Conventions: for images made with ``ants.from_numpy`` the physical point is (row, col) =
(y, x) with unit spacing and zero origin; all matrices returned here act on small-image
(x=col, y=row, 1) and map MOVING -> FIXED.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.config import check_choice
from asign_jax.registration.preprocess import SectionImage

log = logging.getLogger(__name__)


def import_ants(threads: int = 2):
    """Imports antspyx, limiting ITK to ``threads`` threads unless the environment already
    sets ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS (ITK reads it once, at first use)."""
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(int(threads)))
    import ants
    return ants


def ants_affine_to_xy(tx) -> np.ndarray:
    """(3, 3) xy matrix of an ANTs 2D affine transform object (physical (row, col) in/out,
    the transform's own point direction: for a registration's fwd affine, fixed -> moving)."""
    src = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])   # (x, y)
    dst = np.array([tx.apply_to_point((float(p[1]), float(p[0])))[::-1] for p in src])
    # Solve dst = M @ [src; 1].
    a = np.hstack([src, np.ones((3, 1))])
    m = np.linalg.solve(a, dst).T
    return np.vstack([m, [0.0, 0.0, 1.0]])


def points_to_df(pts_xy: np.ndarray):
    """(n, 2) xy -> DataFrame with ANTs physical columns x=row, y=col."""
    import pandas as pd
    return pd.DataFrame({"x": pts_xy[:, 1].astype(np.float64),
                         "y": pts_xy[:, 0].astype(np.float64)})


def df_to_points(df) -> np.ndarray:
    return np.stack([df["y"].to_numpy(), df["x"].to_numpy()], 1).astype(np.float64)


@dataclasses.dataclass
class SynWarp:
    """A deformable ANTs warp living in the fixed section's small frame.

    fwd: transform list for IMAGES (affinely-aligned moving -> fixed); inv: transform list for
    POINTS in the same direction (ANTs point mapping is the inverse of image mapping).
    """

    fwd: list[str]
    inv: list[str]
    threads: int = 2

    def map_points(self, pts_xy: np.ndarray) -> np.ndarray:
        """(n, 2) small px of the affinely aligned moving image -> fixed small px."""
        if len(pts_xy) == 0:
            return pts_xy.astype(np.float64)
        ants = import_ants(self.threads)
        out = ants.apply_transforms_to_points(2, points_to_df(pts_xy), self.inv,
                                              whichtoinvert=[False] * len(self.inv))
        return df_to_points(out)

    def warp_image(self, img: np.ndarray, fixed_shape: tuple[int, int],
                   nearest: bool = False) -> np.ndarray:
        """Warps an image already in the fixed small frame (affinely aligned) by the warp."""
        ants = import_ants(self.threads)
        ref = ants.from_numpy(np.zeros(fixed_shape, np.float32))
        mov = ants.from_numpy(img.astype(np.float32))
        out = ants.apply_transforms(ref, mov, self.fwd,
                                    interpolator="nearestNeighbor" if nearest else "linear")
        return out.numpy()


@dataclasses.dataclass
class Refinement:
    """matrix: (3, 3) moving small px -> fixed small px (linear part, incl. the initial affine);
    warp: optional SyN warp applied after ``matrix``."""

    matrix: np.ndarray
    warp: Optional[SynWarp] = None


def _warp(img: np.ndarray, a: np.ndarray, shape: tuple[int, int], nearest=False) -> np.ndarray:
    import cv2
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(img, a[:2].astype(np.float64), (int(shape[1]), int(shape[0])),
                          flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def ants_refine(moving: SectionImage, fixed: SectionImage, init: np.ndarray, cfg,
                tmpdir: Path, tag: str = "pair", seed: int = 0) -> Refinement:
    """Refines ``init`` ((3, 3) moving small -> fixed small) with ANTs.

    cfg fields: ants_transform (Affine | Rigid | SyN | none), ants_metric (mattes | GC |
    meansquares, of the linear stage; SyN always uses mattes), ants_iterations (per level, the
    shrink factors are 2**(levels-1) .. 1, smoothing sigmas levels-1 .. 0 px),
    ants_syn_iterations, ants_threads. ``seed`` fixes
    ANTs' random metric sampling. Files go to ``tmpdir`` (keep it while a SyN warp is used).
    """
    kind = check_choice("registration.ants_transform", str(cfg.ants_transform))
    if kind == "none":
        return Refinement(np.asarray(init, np.float64))
    metric = check_choice("registration.ants_metric", str(cfg.ants_metric))
    threads = int(cfg.ants_threads)
    ants = import_ants(threads)
    its = tuple(int(i) for i in cfg.ants_iterations)
    shrink = tuple(2 ** i for i in range(len(its) - 1, -1, -1))
    sigmas = tuple(float(i) for i in range(len(its) - 1, -1, -1))
    fixed_np = fixed.moving_image()
    moving_np = moving.moving_image()
    fixed_img = ants.from_numpy(fixed_np)
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)

    old_seed = ants.config._random_seed
    ants.config._random_seed = int(seed) or 1   # reproducible sampling
    try:
        pre = _warp(moving_np, init, fixed.shape)
        lin = "Rigid" if kind == "Rigid" else "Affine"
        reg = ants.registration(fixed=fixed_img, moving=ants.from_numpy(pre),
                                type_of_transform=lin, initial_transform="Identity",
                                aff_metric=metric,
                                aff_iterations=its, aff_shrink_factors=shrink,
                                aff_smoothing_sigmas=sigmas,
                                outprefix=str(tmpdir / f"{tag}_lin_"))
        affs = [f for f in reg["fwdtransforms"] if f.endswith(".mat")]
        t_xy = ants_affine_to_xy(ants.read_transform(affs[0]))   # fixed -> pre-warped moving
        matrix = np.linalg.inv(t_xy) @ np.asarray(init, np.float64)
        warp = None
        if kind == "SyN":
            syn_its = tuple(int(i) for i in cfg.ants_syn_iterations)
            pre2 = _warp(moving_np, matrix, fixed.shape)
            reg2 = ants.registration(fixed=fixed_img, moving=ants.from_numpy(pre2),
                                     type_of_transform="SyNOnly", initial_transform="Identity",
                                     reg_iterations=syn_its,
                                     outprefix=str(tmpdir / f"{tag}_syn_"))
            warp = SynWarp(fwd=list(reg2["fwdtransforms"]), inv=list(reg2["invtransforms"]),
                           threads=threads)
    finally:
        ants.config._random_seed = old_seed
    return Refinement(matrix, warp)
