"""Registering a block and placing virtual spots on its image-only sections.

1. `register_block`: the stack is registered on its images alone (``registration.stack``),
   once, before any spot of an image-only section exists. A section whose tissue Dice with the
   reference after alignment is below ``impute.min_dice`` stops the run with the QC table,
   unless ``allow_poor`` (then a loud warning).
2. `virtual_grid`: the measured section m's spot lattice (``data.lattice``), carried into the
   reference frame by m's registration and back into section l's pixels by the inverse of l's,
   is cut to l's tissue mask (``registration.preprocess.tissue_mask``, the mask the registration
   used): a virtual spot is kept when its centre lies on tissue and inside the image. So the
   grids of all sections coincide in the reference frame wherever there is tissue, at the
   measured pitch and lattice type (square ST arrays, hexagonal Visium).
3. `registered_sample`: after preprocessing (tiles exist), every spot and tile centre is mapped
   into the reference frame with the same transforms (affine stacks: exact; a SyN stack is
   registered again with every point, because its warps are not kept).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from asign_jax.data.lattice import Lattice, infer_lattice
from asign_jax.data.validate import PITCH_TOLERANCE
from asign_jax.errors import DataError
from asign_jax.registration import qc as qcmod
from asign_jax.registration.affine import apply_affine
from asign_jax.registration.preprocess import SectionImage, load_section
from asign_jax.registration.result import RegisteredSample
from asign_jax.registration.stack import StackResult, register_sample, register_stack

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BlockFrames:
    """The block's sections in the reference frame.

    names: (L,); reference: index; affines: (L, 3, 3) section px -> reference px;
    sections: the SectionImages (tissue masks at registration resolution);
    qc: the registration QC dict (``registration.qc``); stack: the StackResult (None when
    registration is disabled).
    """

    names: list[str]
    reference: int
    affines: np.ndarray
    sections: list[SectionImage]
    qc: dict
    stack: Optional[StackResult] = None

    @property
    def has_warp(self) -> bool:
        return self.stack is not None and any(p.warp is not None
                                               for p in self.stack.pairs.values())


def poor_sections(qc: dict, min_dice: float) -> list[str]:
    """Names of the sections whose Dice after alignment is below ``min_dice``."""
    return [s["name"] for s in qc["sections"]
            if s.get("dice_after") is not None and s["dice_after"] < min_dice]


def register_block(sample_id: str, images: Sequence[Path], names: Sequence[str],
                   points: Sequence[dict], config, *, allow_poor: bool = False) -> BlockFrames:
    """Registers the block on its images (step 1 of the module docstring).

    points: per section {key: (n, 2)} px to map (the measured spots; {} for image-only ones).
    """
    rcfg = config.registration
    names = list(names)
    if not bool(rcfg.enabled):
        logger.warning("block %s: registration.enabled=False; sections are taken as aligned",
                       sample_id)
        secs = [load_section(n, p, int(rcfg.long_side)) for n, p in zip(names, images)]
        qc = {"reference": names[len(names) // 2], "sections": [
            {"name": n, "inliers": None, "method": "identity (registration disabled)",
             "dice_before": None, "dice_after": None, "tre_px": None} for n in names]}
        return BlockFrames(names, len(names) // 2, np.tile(np.eye(3), (len(names), 1, 1)),
                           secs, qc)
    res = register_stack(list(images), list(points), rcfg, names=names,
                         seed=int(config.seed))
    qc = dict(res.qc, seconds=round(res.seconds, 2))
    print("\n" + qcmod.format_table(sample_id, qc))
    min_dice = float(config.impute.min_dice)
    bad = poor_sections(qc, min_dice)
    if bad:
        msg = (f"block {sample_id}: tissue Dice with the reference after registration is below "
               f"impute.min_dice={min_dice} for {bad} (table above: "
               + "; ".join(f"{s['name']} {s['dice_before']}->{s['dice_after']}"
                           for s in qc["sections"] if s["name"] in bad) + ")")
        if not allow_poor:
            raise DataError(msg + "; check those images (tissue, order, stain) or pass "
                            "--allow_poor_registration to impute anyway")
        logger.warning("!!! %s; continuing (--allow_poor_registration): virtual spots of "
                       "those sections are placed on a poorly aligned grid", msg)
    return BlockFrames(names, res.reference, res.affines.copy(), res.sections, qc, res)


def section_lattice(frames: BlockFrames, lattice: Lattice, measured: int, layer: int) -> Lattice:
    """The measured section's lattice in section ``layer``'s pixels (through the reference)."""
    return lattice.transformed(np.linalg.inv(frames.affines[layer]) @ frames.affines[measured])


def virtual_grid(frames: BlockFrames, lattice: Lattice, measured: int, layer: int
                 ) -> tuple[np.ndarray, np.ndarray, Lattice]:
    """Virtual spots of section ``layer`` (step 2 of the module docstring).

    Returns (lattice indices (n, 2) int64 of the measured lattice, centres (n, 2) px in the
    section's own image, the lattice in that section's pixels).
    """
    sec = frames.sections[layer]
    lat = section_lattice(frames, lattice, measured, layer)
    h, w = sec.full_shape
    ys, xs = np.nonzero(sec.mask)
    if len(xs) == 0:
        raise DataError(f"section {sec.name!r}: empty tissue mask; no virtual spot can be placed")
    corners = apply_affine(sec.to_full, np.array([[xs.min() - 1, ys.min() - 1],
                                                  [xs.max() + 1, ys.max() + 1]], np.float64))
    lo = np.clip(corners.min(0), 0, None)
    hi = np.minimum(corners.max(0), [w, h])
    k, xy = lat.points_in(lo, hi)
    small = np.rint(apply_affine(sec.to_small, xy)).astype(np.int64)
    mh, mw = sec.mask.shape
    ok = (small[:, 0] >= 0) & (small[:, 0] < mw) & (small[:, 1] >= 0) & (small[:, 1] < mh)
    ok[ok] = sec.mask[small[ok, 1], small[ok, 0]]
    if not ok.any():
        raise DataError(f"section {sec.name!r}: no lattice point falls on its tissue; is the "
                        "tissue mask or the registration wrong?")
    return k[ok], xy[ok], lat


def nearest_measured(layer: int, measured: Sequence[int]) -> int:
    """The measured layer closest to ``layer`` (the lower one on a tie)."""
    return min(measured, key=lambda m: (abs(m - layer), m))


def registered_sample(prepared, frames: BlockFrames, config, workdir: Path,
                      spot_radius: float = 0.0) -> RegisteredSample:
    """Every spot and tile centre of the prepared block in the reference frame (step 3); saves
    ``<workdir>/registration/<sample>/{registered.npz, qc.json, overlay.png}`` (the overlay
    draws spots of radius ``spot_radius`` px; 0 = graph.spot_radius)."""
    if frames.has_warp:
        logger.info("block %s: SyN warps are not kept after registration; registering again "
                    "with every spot", prepared.sample_id)
        return register_sample(prepared, config, workdir)
    names = [s.name for s in prepared.sections]
    if names != frames.names:
        raise DataError(f"block {prepared.sample_id}: prepared sections {names} != registered "
                        f"{frames.names}")
    pts = [{"spot": s.pixel_xy, "region": s.region_centers(config.data.region_size),
            "global": s.global_centers(config.data.global_size)} for s in prepared.sections]
    mapped = [{k: apply_affine(frames.affines[l], v) for k, v in p.items()}
              for l, p in enumerate(pts)]
    reg = RegisteredSample(prepared.sample_id, frames.reference, names, frames.affines,
                           [m["spot"] for m in mapped], [m["region"] for m in mapped],
                           [m["global"] for m in mapped])
    reg.save(workdir)
    out = Path(workdir) / "registration" / prepared.sample_id
    qcmod.write_qc(frames.qc, out / "qc.json")
    if frames.stack is not None:
        frames.stack.points = [{"spot": m["spot"]} for m in mapped]
        frames.stack.original_points = [{"spot": np.asarray(p["spot"])} for p in pts]
        qcmod.draw_overlay(frames.stack, out / "overlay.png",
                           radius_px=spot_radius or float(config.graph.spot_radius),
                           title=f"{prepared.sample_id}: measured and virtual spots")
    return reg


def off_tissue_fraction(frames: BlockFrames, layer: int, xy: np.ndarray) -> float:
    """Fraction of the points ``xy`` (n, 2) px of section ``layer`` off its tissue mask (the
    mask the registration used) or outside its image."""
    sec = frames.sections[layer]
    if len(xy) == 0:
        return 0.0
    small = np.rint(apply_affine(sec.to_small, np.asarray(xy, np.float64))).astype(np.int64)
    mh, mw = sec.mask.shape
    ok = (small[:, 0] >= 0) & (small[:, 0] < mw) & (small[:, 1] >= 0) & (small[:, 1] < mh)
    ok[ok] = sec.mask[small[ok, 1], small[ok, 0]]
    return float(1.0 - ok.mean())


def check_given_spots(frames: BlockFrames, layer: int, xy: np.ndarray, lattice: Lattice,
                      measured: int, measured_xy: np.ndarray, path, max_off: float, *,
                      allow: bool = False) -> None:
    """Refuses a user-given spot grid (``spots_from``) of section ``layer`` that is mostly off
    its tissue (more than ``max_off``, ``impute.max_spots_off_tissue``) or whose pitch differs
    by more than 20 % from the measured section's lattice carried into its pixels
    (``lattice``): x and y swapped, another image's grid or another scale. ``allow``
    (``--allow_unusual_spots``): a warning instead."""

    name = frames.names[layer]
    problems = []
    off = off_tissue_fraction(frames, layer, xy)
    if off > max_off:
        ref = off_tissue_fraction(frames, measured, measured_xy)
        problems.append(f"{100 * off:.0f} % of its {len(xy)} spots lie off the tissue of "
                        f"section {name} (the measured section {frames.names[measured]}: "
                        f"{100 * ref:.0f} %; impute.max_spots_off_tissue={max_off:g})")
    if len(xy) >= 3:
        try:
            pitch = infer_lattice(np.asarray(xy, np.float64), where=str(path)).pitch
        except DataError:
            pitch = None
        if pitch and abs(pitch / lattice.pitch - 1) > PITCH_TOLERANCE:
            problems.append(f"its spot pitch is {pitch:.0f} px, the measured section's grid in "
                            f"this image {lattice.pitch:.0f} px ({pitch / lattice.pitch:.2f}x)")
    if not problems:
        return
    msg = (f"{path}: spots_from of section {name!r}: " + "; ".join(problems)
           + " (x and y swapped, another section's or another scale's coordinates?)")
    if not allow:
        raise DataError(msg + "; fix the file or pass --allow_unusual_spots to impute anyway")
    logger.warning("%s; imputing anyway (--allow_unusual_spots)", msg)
