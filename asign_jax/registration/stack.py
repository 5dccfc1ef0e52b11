"""Registration of a stack of consecutive sections onto its middle section.

Reference = section L // 2. Each section l != ref is registered to its neighbour one step
toward the reference (moving = l, fixed = l - 1 above the reference, l + 1 below), and the
pair transforms are chained toward the middle, so every section gets an affine from its
full-resolution pixels (x=col, y=row, 1) to the reference's full-resolution pixels.

Per pair: initial affine (keypoints, or mask moments as the fallback) -> ANTs refinement
(``keypoints.py``, ``ants_refine.py``). Two Dice safeguards:

* pair level: if the refined pair transform gives a lower mask Dice with the fixed neighbour
  than the identity (full-res px), the pair falls back to the identity or the initial affine,
  whichever has the higher Dice (loud WARNING);
* section level: if the chained transform gives a lower Dice with the reference than the
  identity, that section falls back to the identity or the chained initial affines,
  whichever has the higher Dice (loud WARNING).
Both are recorded in the QC "method".
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from asign_jax.data.slide import WorkingImage, is_plain, open_slide
from asign_jax.errors import DataError
from asign_jax.registration import qc as qcmod
from asign_jax.registration.affine import apply_affine, identity_small
from asign_jax.registration.ants_refine import SynWarp, ants_refine
from asign_jax.registration.keypoints import InitialAffine, dice, initial_affine, warp_mask
from asign_jax.registration.preprocess import SectionImage, load_section
from asign_jax.registration.result import RegisteredSample

log = logging.getLogger(__name__)

ImageLike = Union[str, Path, np.ndarray]


@dataclasses.dataclass
class PairResult:
    """One consecutive pair, moving -> fixed (indices into the stack).

    matrix: (3, 3) chosen moving small px -> fixed small px; warp: SyN warp after ``matrix``
    (None when affine only or when the pair fell back); initial: the keypoint / moments result;
    refined_matrix: the ANTs affine (before the Dice check); dice: {"identity", "initial",
    "refined"} mask Dice with the fixed section; choice: "refined" | "initial" | "identity".
    """

    moving: int
    fixed: int
    matrix: np.ndarray
    warp: Optional[SynWarp]
    initial: InitialAffine
    refined_matrix: np.ndarray
    dice: dict
    choice: str


@dataclasses.dataclass
class StackResult:
    """Registration of one stack.

    reference: index of the reference section; names: (L,); sections: the SectionImages;
    affines: (L, 3, 3) full-res section px -> full-res reference px (linear part);
    points: per section {key: (n, 2)} registered points (full-res reference px, SyN included);
    qc: {"reference": name, "sections": [...]} (see ``qc.py``); pairs: {l: PairResult};
    fallback: per section "" or "identity" / "initial" (section-level fallback taken).
    aligned_rgb: per section (h_ref, w_ref, 3) uint8, its small RGB warped into the reference's
    small frame, and aligned_mask its (h_ref, w_ref) bool tissue mask (for overlays; the
    temporary SyN warp files are gone after register_stack, so ``warp_to_reference`` only
    works for affine stacks afterwards).
    """

    reference: int
    names: list[str]
    sections: list[SectionImage]
    affines: np.ndarray
    points: list[dict]
    qc: dict
    pairs: dict
    fallback: list[str]
    aligned_rgb: list = dataclasses.field(default_factory=list)
    aligned_mask: list = dataclasses.field(default_factory=list)
    original_points: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def chain(self, l: int) -> list[PairResult]:
        """Pair results from section l to the reference, in application order."""
        out = []
        while l != self.reference:
            p = self.pairs[l]
            out.append(p)
            l = p.fixed
        return out

    def warp_to_reference(self, img_small: np.ndarray, l: int, nearest: bool = False
                          ) -> np.ndarray:
        """Warps an image (h, w[, c]) in section l's small frame into the reference's."""
        return _warp_chain(self, img_small, l, nearest)


def _warp_affine(img: np.ndarray, a: np.ndarray, shape, nearest=False) -> np.ndarray:
    import cv2
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = img.astype(np.uint8) if img.dtype == bool else img
    out = cv2.warpAffine(src, a[:2].astype(np.float64), (int(shape[1]), int(shape[0])),
                         flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool) if img.dtype == bool else out


def _pair_full(sections, p: PairResult) -> np.ndarray:
    return sections[p.fixed].to_full @ p.matrix @ sections[p.moving].to_small


def _warp_chain(res: StackResult, img: np.ndarray, l: int, nearest: bool) -> np.ndarray:
    """Image of section l (small frame) -> reference small frame, following the pair chain
    (one resampling when the chain is affine, or when l fell back)."""
    secs, ref = res.sections, res.reference
    ref_shape = secs[ref].shape
    m_full = res.affines[l]
    chain = res.chain(l)
    if res.fallback[l] or all(p.warp is None for p in chain):
        m = secs[ref].to_small @ m_full @ secs[l].to_full
        return _warp_affine(img, m, ref_shape, nearest)
    out = img
    for p in chain:
        fshape = secs[p.fixed].shape
        out = _warp_affine(out, p.matrix, fshape, nearest)
        if p.warp is not None:
            if out.ndim == 3:
                out = np.stack([p.warp.warp_image(out[..., c], fshape, nearest)
                                for c in range(out.shape[2])], -1).astype(img.dtype)
            else:
                w = p.warp.warp_image(out.astype(np.float32), fshape, nearest)
                out = (w > 0.5) if img.dtype == bool else w.astype(img.dtype)
    return out


def _map_chain(sections, chain: Sequence[PairResult], xy: np.ndarray) -> np.ndarray:
    """Full-res points through a pair chain (SyN warps included)."""
    pts = np.asarray(xy, np.float64).reshape(-1, 2)
    for p in chain:
        mv, fx = sections[p.moving], sections[p.fixed]
        q = apply_affine(p.matrix @ mv.to_small, pts)
        if p.warp is not None:
            q = p.warp.map_points(q)
        pts = apply_affine(fx.to_full, q)
    return pts


def _method(p: PairResult, kind: str) -> str:
    base = p.initial.method
    if p.choice == "refined":
        return base if kind == "none" else f"{base}+ants-{kind.lower()}"
    if p.choice == "initial":
        return f"{base} (ants rejected)"
    return "identity (pair fallback)"


def register_stack(images: Sequence[ImageLike], points: Sequence[dict], cfg,
                   names: Optional[Sequence[str]] = None,
                   ground_truth: Optional[Sequence[np.ndarray]] = None,
                   full_shapes: Optional[Sequence] = None, seed: int = 0,
                   tre_key: str = "spot") -> StackResult:
    """Registers a stack of L >= 1 sections onto the middle one.

    Args:
      images: L image paths or (H, W, 3) uint8 RGB arrays (full resolution).
      points: L dicts {key: (n, 2) full-res px (x, y)} to map into the reference frame.
      cfg: ``config.registration``.
      names: L section names (default "0", "1", ...).
      ground_truth: optional L (3, 3) affines canonical -> section px; gives QC "tre_px" =
        median over ``points[l][tre_key]`` of |registered - A_ref A_l^-1 p|.
      full_shapes: optional L (H, W) checked against the images.
      seed: RNG seed for the robust fit and ANTs' metric sampling.

    Returns:
      StackResult (temporary ANTs files are deleted; all points are already mapped).
    """
    import time

    from tqdm import tqdm

    t0 = time.perf_counter()
    n = len(images)
    if n == 0:
        raise DataError("register_stack: no sections given")
    if len(points) != n:
        raise DataError(f"register_stack: {n} images but {len(points)} point sets")
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if ground_truth is not None and len(ground_truth) != n:
        raise DataError(f"register_stack: {n} sections but {len(ground_truth)} ground truths")
    ref = n // 2
    long_side = int(cfg.long_side)
    kind = str(cfg.ants_transform)

    sections = []
    for i in tqdm(range(n), desc="read sections", leave=False, disable=n < 2):
        sections.append(load_section(names[i], images[i], long_side,
                                     None if full_shapes is None else full_shapes[i]))

    pairs: dict[int, PairResult] = {}
    order = [l for l in range(n) if l != ref]
    with tempfile.TemporaryDirectory(prefix="asign_reg_") as tmp:
        for l in tqdm(order, desc=f"register to {names[ref]}", disable=n < 2):
            pairs[l] = _register_pair(sections, l, ref, cfg, Path(tmp), seed)
        res = StackResult(reference=ref, names=names, sections=sections,
                          affines=np.tile(np.eye(3), (n, 1, 1)), points=[], qc={},
                          pairs=pairs, fallback=[""] * n,
                          original_points=[{k: np.asarray(v, np.float64).reshape(-1, 2)
                                            for k, v in pts.items()} for pts in points])
        for l in range(n):
            m = np.eye(3)
            for p in res.chain(l):
                m = _pair_full(sections, p) @ m
            res.affines[l] = m

        # Section-level Dice check against the reference, then map the points (SyN: in tmp).
        qc_sections = [_section_qc(res, l, points, kind, ground_truth, tre_key)
                       for l in range(n)]
    res.qc = {"reference": names[ref], "sections": qc_sections}
    res.seconds = time.perf_counter() - t0
    return res


def _register_pair(sections, l: int, ref: int, cfg, tmp: Path, seed: int) -> PairResult:
    """Registers section l (moving) onto its neighbour f one step toward ``ref`` (fixed): initial
    affine, ANTs refinement, then the pair-level Dice check (falls back to the initial affine or
    the identity, loudly, when the refinement lowers the mask Dice below the identity's)."""
    f = l - 1 if l > ref else l + 1
    mv, fx = sections[l], sections[f]
    init = initial_affine(mv, fx, cfg, seed=seed)
    refn = ants_refine(mv, fx, init.matrix, cfg, tmp, tag=f"{l}_{f}", seed=seed)
    d = {"identity": _pair_dice(mv, fx, identity_small(mv, fx), None),
         "initial": _pair_dice(mv, fx, init.matrix, None),
         "refined": _pair_dice(mv, fx, refn.matrix, refn.warp)}
    choice, matrix, warp = "refined", refn.matrix, refn.warp
    if d["refined"] < d["identity"]:
        choice = "initial" if d["initial"] >= d["identity"] else "identity"
        matrix = init.matrix if choice == "initial" else identity_small(mv, fx)
        warp = None
        log.warning("!!! %s -> %s: alignment LOWERS the mask Dice (identity %.3f, "
                    "initial %.3f, refined %.3f); falling back to the %s transform",
                    mv.name, fx.name, d["identity"], d["initial"], d["refined"], choice)
    log.info("%s -> %s: %s, %d inliers, dice identity %.3f initial %.3f refined %.3f", mv.name,
             fx.name, init.method, init.inliers, d["identity"], d["initial"], d["refined"])
    return PairResult(l, f, matrix, warp, init, refn.matrix, d, choice)


def _section_qc(res: StackResult, l: int, points: Sequence[dict], kind: str,
                ground_truth: Optional[Sequence[np.ndarray]], tre_key: str) -> dict:
    """Section l's QC entry (see ``qc.py``); appends its registered points, aligned RGB and
    aligned mask to ``res`` (sections other than the reference via ``_check_section``)."""
    sections, ref, names = res.sections, res.reference, res.names
    sec, ref_mask = sections[l], sections[ref].mask
    entry = {"name": names[l], "inliers": None, "method": "reference",
             "dice_before": 1.0, "dice_after": 1.0, "tre_px": None}
    if l == ref:
        res.points.append({k: np.asarray(v, np.float64).reshape(-1, 2).copy()
                           for k, v in points[l].items()})
    else:
        warped_mask = _check_section(res, l, points[l], kind, entry)
    if ground_truth is not None and tre_key in points[l]:
        entry["tre_px"] = round(qcmod.tre(res.points[l][tre_key], points[l][tre_key],
                                          ground_truth[l], ground_truth[ref]), 3)
    res.aligned_rgb.append(sec.rgb if l == ref else res.warp_to_reference(sec.rgb, l))
    res.aligned_mask.append(ref_mask if l == ref else warped_mask)
    return entry


def _check_section(res: StackResult, l: int, pts: dict, kind: str, entry: dict) -> np.ndarray:
    """Section-level Dice check of section l != reference (a chain that lowers the Dice below the
    identity's falls back, loudly, to the chained initial affines or the identity, whichever is
    higher); appends l's mapped ``pts`` to ``res.points``, fills ``entry`` and returns the warped
    (h_ref, w_ref) bool mask."""
    sections, ref, names = res.sections, res.reference, res.names
    sec, ref_mask, p = sections[l], sections[ref].mask, res.pairs[l]
    before = dice(_warp_affine(sec.mask, identity_small(sec, sections[ref]),
                               sections[ref].shape, True), ref_mask)
    warped_mask = res.warp_to_reference(sec.mask, l, nearest=True)
    after = dice(warped_mask, ref_mask)
    method = _method(p, kind)
    if after < before:
        m_init = np.eye(3)
        for q in res.chain(l):
            m_init = (sections[q.fixed].to_full @ q.initial.matrix
                      @ sections[q.moving].to_small) @ m_init
        d_init = dice(_warp_affine(sec.mask, sections[ref].to_small @ m_init
                                   @ sec.to_full, sections[ref].shape, True), ref_mask)
        fb = "initial" if d_init > before else "identity"
        log.warning("!!! section %s: registration LOWERS the Dice with the reference %s (%.3f "
                    "-> %.3f); falling back to the %s transform (dice %.3f)", names[l],
                    names[ref], before, after, fb, max(d_init, before))
        res.fallback[l] = fb
        res.affines[l] = m_init if fb == "initial" else np.eye(3)
        warped_mask = res.warp_to_reference(sec.mask, l, nearest=True)
        after = max(d_init, before)
        method = f"{method}; section fallback: " + (
            f"{p.initial.method} chain" if fb == "initial" else "identity")
        res.points.append({k: apply_affine(res.affines[l], v) for k, v in pts.items()})
    else:
        res.points.append({k: _map_chain(sections, res.chain(l), v) for k, v in pts.items()})
    entry.update(inliers=int(p.initial.inliers), method=method,
                 dice_before=round(float(before), 4), dice_after=round(float(after), 4))
    return warped_mask


def _pair_dice(mv: SectionImage, fx: SectionImage, m: np.ndarray,
               warp: Optional[SynWarp]) -> float:
    w = warp_mask(mv.mask, m, fx.shape)
    if warp is not None:
        w = warp.warp_image(w.astype(np.float32), fx.shape, nearest=True) > 0.5
    return dice(w, fx.mask)


def image_for(path, scale: float = 1.0):
    """An image for registration: its path for a JPEG / PNG in its own pixels (reduced JPEG
    decoding, as always), else a `data.slide.WorkingImage` (read from a low pyramid level)."""
    if is_plain(path) and float(scale) == 1.0:
        return path
    return WorkingImage(open_slide(path), float(scale))


def section_image(section):
    """A prepared section's image for registration (`image_for`)."""
    return image_for(section.image_path, float(getattr(section, "image_scale", 1.0)))


def register_sample(prepared, config, workdir: Path,
                    ground_truth: Optional[Sequence[np.ndarray]] = None):
    """Registers a PreparedSample and saves ``<workdir>/registration/<sample_id>/``
    (registered.npz, qc.json, overlay.png).

    Uses per section: ``image_path``, ``image_shape`` (checked when non-empty), ``pixel_xy``,
    ``region_centers(config.data.region_size)``, ``global_centers(config.data.global_size)``.
    Single-section samples (or ``config.registration.enabled == False``) are saved as
    ``RegisteredSample.identity`` without registration (qc.json still written).

    Args:
      prepared: PreparedSample.
      config: the full config (``registration``, ``data.region_size``/``global_size``, ``seed``).
      workdir: work directory.
      ground_truth: optional L (3, 3) affines canonical -> section px (synthetic data).

    Returns:
      RegisteredSample.
    """

    rcfg = config.registration
    region_size = int(config.data.region_size)
    global_size = int(config.data.global_size)
    secs = prepared.sections
    names = [s.name for s in secs]
    pts = [{"spot": np.asarray(s.pixel_xy, np.float64).reshape(-1, 2),
            "region": s.region_centers(region_size).reshape(-1, 2),
            "global": s.global_centers(global_size).reshape(-1, 2)} for s in secs]
    out_dir = Path(workdir) / "registration" / prepared.sample_id
    if len(secs) < 2 or not rcfg.enabled:
        why = "single section" if len(secs) < 2 else "registration disabled"
        log.info("sample %s: %s; saving identity coordinates", prepared.sample_id, why)
        reg = RegisteredSample.identity(prepared.sample_id, names, [p["spot"] for p in pts],
                                        [p["region"] for p in pts], [p["global"] for p in pts])
        reg.save(workdir)
        qcmod.write_qc({"reference": names[len(names) // 2], "sections": [
            {"name": n, "inliers": None, "method": "reference" if i == len(names) // 2
             else f"identity ({why})", "dice_before": None, "dice_after": None,
             "tre_px": None} for i, n in enumerate(names)]}, out_dir / "qc.json")
        return reg
    for s in secs:
        if not s.image_path:
            raise DataError(f"sample {prepared.sample_id}: section {s.name!r} has no image_path; "
                            "registration needs every section's image")
    shapes = [None if s.image_shape is None or np.size(s.image_shape) != 2
              else tuple(int(v) for v in s.image_shape) for s in secs]
    log.info("sample %s: registering %d sections onto %s", prepared.sample_id, len(secs),
             names[len(secs) // 2])
    res = register_stack([section_image(s) for s in secs], pts, rcfg, names=names,
                         ground_truth=ground_truth,
                         full_shapes=None if any(v is None for v in shapes) else shapes,
                         seed=int(config.seed))
    reg = RegisteredSample(sample_id=prepared.sample_id, reference=res.reference,
                           section_names=names, affines=res.affines,
                           spot_xy=[p["spot"] for p in res.points],
                           region_xy=[p["region"] for p in res.points],
                           global_xy=[p["global"] for p in res.points])
    reg.save(workdir)
    qc = dict(res.qc, seconds=round(res.seconds, 2))
    qcmod.write_qc(qc, out_dir / "qc.json")
    qcmod.draw_overlay(res, out_dir / "overlay.png",
                       radius_px=float(config.graph.spot_radius),
                       title=f"{prepared.sample_id}: {len(names)} sections -> "
                             f"{names[res.reference]}")
    log.info("sample %s registered in %.1f s -> %s", prepared.sample_id, res.seconds, out_dir)
    return reg
