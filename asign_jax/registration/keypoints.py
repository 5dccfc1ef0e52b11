"""Initial affine between two sections: keypoint matching + robust estimation, with a
mask-moments fallback.

All matrices here are (3, 3) homogeneous affines acting on SMALL-image pixels (x=col, y=row)
and map the MOVING section onto the FIXED one.

The feature step is pluggable: a matcher is ``fn(moving, fixed, cfg) -> (pts_m, pts_f)`` with
(n, 2) float32 arrays of matched small-image points (x, y); register one with
``@register_matcher("name")``. SIFT and ORB are built in (the paper used XFeat, whose weights
are not available offline; a torch XFeat matcher can be registered the same way).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

import numpy as np

from asign_jax.config import base_config, check_choice
from asign_jax.data.image import resize_long_side
from asign_jax.errors import ConfigError
from asign_jax.registration.preprocess import SectionImage

log = logging.getLogger(__name__)

Matcher = Callable[[SectionImage, SectionImage, object], tuple[np.ndarray, np.ndarray]]
_MATCHERS: dict[str, Matcher] = {}


def register_matcher(name: str):
    """Decorator: registers ``fn(moving, fixed, cfg) -> (pts_m (n,2), pts_f (n,2))``."""
    def deco(fn: Matcher) -> Matcher:
        _MATCHERS[name.lower()] = fn
        return fn
    return deco


def get_matcher(name: str) -> Matcher:
    try:
        return _MATCHERS[name.lower()]
    except KeyError:
        raise ConfigError(f"registration.detector={name!r}: unknown; available: "
                          f"{sorted(_MATCHERS)}") from None


def available_matchers() -> list[str]:
    return sorted(_MATCHERS)


def _cfg(cfg, name: str):
    """``cfg.name``; ``cfg`` None (a matcher called on its own) reads the config defaults."""
    return getattr(base_config().registration if cfg is None else cfg, name)


def _feature_mask(sec: SectionImage) -> np.ndarray:
    """uint8 detection mask: the tissue mask dilated a little, so boundary corners count."""
    import cv2
    r = max(2, min(sec.shape) // 100)
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(sec.mask.astype(np.uint8) * 255, ker)


def _ratio_matches(des_m, des_f, norm, ratio, cross_check=True):
    """Lowe ratio test on 2-NN matches (+ mutual-consistency). Returns [(i_m, i_f)]."""
    import cv2
    if des_m is None or des_f is None or len(des_m) < 2 or len(des_f) < 2:
        return []
    bf = cv2.BFMatcher(norm)
    fwd = bf.knnMatch(des_m, des_f, k=2)
    pairs = [(m.queryIdx, m.trainIdx) for m, n in (p for p in fwd if len(p) == 2)
             if m.distance < ratio * n.distance]
    if cross_check and pairs:
        back = bf.match(des_f, des_m)
        best_back = {b.queryIdx: b.trainIdx for b in back}
        pairs = [(i, j) for i, j in pairs if best_back.get(j) == i]
    return pairs


def _detect_match(detector, norm, moving, fixed, cfg):
    ratio = float(_cfg(cfg, "ratio"))
    kp_m, des_m = detector.detectAndCompute(moving.gray, _feature_mask(moving))
    kp_f, des_f = detector.detectAndCompute(fixed.gray, _feature_mask(fixed))
    pairs = _ratio_matches(des_m, des_f, norm, ratio)
    log.debug("%s -> %s: %d / %d keypoints, %d ratio-test matches", moving.name, fixed.name,
              len(kp_m), len(kp_f), len(pairs))
    if not pairs:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pm = np.float32([kp_m[i].pt for i, _ in pairs])
    pf = np.float32([kp_f[j].pt for _, j in pairs])
    return pm, pf


@register_matcher("sift")
def sift_matches(moving: SectionImage, fixed: SectionImage, cfg) -> tuple[np.ndarray, np.ndarray]:
    """SIFT (max_keypoints, default 8000) + ratio test + mutual check."""
    import cv2
    det = cv2.SIFT_create(nfeatures=int(_cfg(cfg, "max_keypoints")))
    return _detect_match(det, cv2.NORM_L2, moving, fixed, cfg)


@register_matcher("orb")
def orb_matches(moving: SectionImage, fixed: SectionImage, cfg) -> tuple[np.ndarray, np.ndarray]:
    """ORB (max_keypoints, default 8000) + ratio test + mutual check (Hamming)."""
    import cv2
    det = cv2.ORB_create(nfeatures=int(_cfg(cfg, "max_keypoints")), fastThreshold=5)
    return _detect_match(det, cv2.NORM_HAMMING, moving, fixed, cfg)


def estimate_affine(pts_m: np.ndarray, pts_f: np.ndarray, estimator: str = "affine",
                    robust: str = "magsac", threshold: float = 3.0,
                    seed: int = 0) -> tuple[Optional[np.ndarray], int]:
    """Robust affine pts_m -> pts_f ((n, 2) each). Returns ((3, 3) or None, n_inliers).

    estimator "partial" (similarity) always uses RANSAC: OpenCV offers no MAGSAC for it."""
    import cv2
    if len(pts_m) < 3:
        return None, 0
    method = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}[
        check_choice("registration.robust", robust)]
    fit = {"affine": cv2.estimateAffine2D, "partial": cv2.estimateAffinePartial2D}[
        check_choice("registration.estimator", estimator)]
    if estimator == "partial" and robust == "magsac":
        # OpenCV's estimateAffinePartial2D has no USAC method (only RANSAC / LMEDS).
        log.debug("estimateAffinePartial2D does not support USAC_MAGSAC; using RANSAC")
        method = cv2.RANSAC
    cv2.setRNGSeed(int(seed))
    m, inl = fit(pts_m.astype(np.float32), pts_f.astype(np.float32), method=method,
                 ransacReprojThreshold=float(threshold), maxIters=5000, confidence=0.999)
    if m is None or inl is None:
        return None, 0
    return np.vstack([m, [0, 0, 1]]).astype(np.float64), int(inl.sum())


def affine_is_plausible(a: np.ndarray, max_scale: float = 1.5, max_anisotropy: float = 1.3) -> bool:
    """True for an affine whose linear part is close to a similarity (consecutive sections):
    singular values within [1/max_scale, max_scale] and their ratio <= max_anisotropy."""
    s = np.linalg.svd(a[:2, :2], compute_uv=False)
    return bool(s[1] > 1.0 / max_scale and s[0] < max_scale and s[0] / s[1] <= max_anisotropy)


def warp_mask(mask: np.ndarray, a: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Warps a bool mask with the (3, 3) affine ``a`` (src px -> dst px) onto ``out_shape``."""
    import cv2
    out = cv2.warpAffine(mask.astype(np.uint8), a[:2].astype(np.float64),
                         (int(out_shape[1]), int(out_shape[0])), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks of the same shape."""
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 0.0


def mask_moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Centroid (2,), principal axes (2, 2) as columns (major first), stds (2,), area of a mask."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    c = pts.mean(0)
    cov = np.cov((pts - c).T) if len(pts) > 2 else np.eye(2)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    return c, v[:, order], np.sqrt(np.maximum(w[order], 1e-12)), float(len(pts))


def _content(sec: SectionImage, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-resolution content for the rotation search, at long side ``size``:
    (h, w, 3) float32 Lab channels standardised inside the tissue (0 outside), blurred;
    (h, w) float32 mask; (3, 3) small px -> low px."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(sec.rgb), cv2.COLOR_RGB2LAB).astype(np.float32)
    img, m = resize_long_side(lab, size)
    msk, _ = resize_long_side(sec.mask.astype(np.float32), size)
    inside = msk > 0.5
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    out = np.zeros_like(img)
    if inside.any():
        for c in range(3):
            v = img[..., c][inside]
            out[..., c] = np.where(inside, (img[..., c] - v.mean()) / (v.std() + 1e-3), 0.0)
    return out, inside.astype(np.float32), m


def _similarity(c_from, c_to, angle, scale, reflect=False) -> np.ndarray:
    """(3, 3): rotate by ``angle`` rad (after an optional x-reflection) and scale about c_from,
    then move c_from onto c_to."""
    ca, sa = np.cos(angle), np.sin(angle)
    lin = scale * np.array([[ca, -sa], [sa, ca]]) @ np.diag([-1.0 if reflect else 1.0, 1.0])
    a = np.eye(3)
    a[:2, :2] = lin
    a[:2, 2] = np.asarray(c_to) - lin @ np.asarray(c_from)
    return a


def mask_moments_affine(moving: "SectionImage | np.ndarray", fixed: "SectionImage | np.ndarray",
                        allow_reflection: bool = True, step_deg: float = 10.0,
                        size: int = 128) -> tuple[np.ndarray, float]:
    """Similarity aligning the tissue masks' centroids (isotropic scale sqrt(area ratio)),
    with the rotation chosen among candidates (moving -> fixed, small px).

    Candidates: the principal-axes alignments (four axis-sign combinations; two are
    reflections, tried only when allowed) and a rotation sweep every ``step_deg`` degrees
    (principal axes are ill-defined for round tissue), refined to 1 degree around the best.
    Score: normalised cross-correlation of the low-resolution (long side ``size``) tissue
    content (Lab channels standardised inside the mask, 0 outside), plus 0.5 x the
    low-resolution mask Dice (which decides for textureless tissue); a reflection is kept
    only when it beats the best rotation by > 0.02.
    Accepts SectionImages or bare bool masks (then the score is the mask overlap).
    Returns ((3, 3), mask Dice of the chosen transform).
    """
    import cv2

    def as_section(x):
        if isinstance(x, SectionImage):
            return x
        m = np.asarray(x, bool)
        g = np.where(m, 128, 255).astype(np.uint8)
        return SectionImage("mask", np.dstack([g] * 3), g, m, m.shape, np.eye(3))

    mv, fx = as_section(moving), as_section(fixed)
    if mv.mask.sum() < 3 or fx.mask.sum() < 3:
        return np.eye(3), dice(warp_mask(mv.mask, np.eye(3), fx.shape), fx.mask)
    cm, vm, _, am = mask_moments(mv.mask)
    cf, vf, _, af = mask_moments(fx.mask)
    scale = float(np.sqrt(af / am))
    low_m, msk_m, dm = _content(mv, size)
    low_f, msk_f, df = _content(fx, size)
    dm_inv = np.linalg.inv(dm)
    den_f = float((low_f * low_f).sum())
    sum_f = float(msk_f.sum())

    def score(a):
        b = (df @ a @ dm_inv)[:2]
        shape = (low_f.shape[1], low_f.shape[0])
        w = cv2.warpAffine(low_m, b, shape, flags=cv2.INTER_LINEAR)
        wm = cv2.warpAffine(msk_m, b, shape, flags=cv2.INTER_LINEAR)
        den = float(np.sqrt((w * w).sum() * den_f))
        ncc = float((w * low_f).sum()) / den if den > 0 else 0.0
        d = 2.0 * float((wm * msk_f).sum()) / (float(wm.sum()) + sum_f + 1e-9)
        return ncc + 0.5 * d

    cands = []   # (score, matrix, reflection, angle or None)
    for sx in (1.0, -1.0):
        for sy in (1.0, -1.0):
            r = vf @ np.diag([sx, sy]) @ vm.T
            refl = bool(np.linalg.det(r) < 0)
            if refl and not allow_reflection:
                continue
            a = np.eye(3)
            a[:2, :2] = scale * r
            a[:2, 2] = cf - scale * r @ cm
            cands.append((score(a), a, refl, None if refl else float(np.arctan2(r[1, 0], r[0, 0]))))
    for ang in np.deg2rad(np.arange(0.0, 360.0, step_deg)):
        a = _similarity(cm, cf, ang, scale)
        cands.append((score(a), a, False, float(ang)))
    rot = max((c for c in cands if not c[2]), key=lambda c: c[0])
    # Local refinement of the best rotation.
    best = rot
    for d in np.deg2rad(np.arange(-step_deg / 2, step_deg / 2 + 1e-9, 1.0)):
        a = _similarity(cm, cf, rot[3] + d, scale)
        sc = score(a)
        if sc > best[0]:
            best = (sc, a, False, rot[3] + d)
    refl = [c for c in cands if c[2]]
    if refl:
        rb = max(refl, key=lambda c: c[0])
        if rb[0] > best[0] + 0.02:
            log.info("mask moments: a reflection fits better (ncc %.3f vs %.3f)", rb[0], best[0])
            best = rb
    a = best[1]
    return a, dice(warp_mask(mv.mask, a, fx.shape), fx.mask)


def content_refine(moving: SectionImage, fixed: SectionImage, init: np.ndarray,
                   sizes: tuple[int, ...] = (128, 256, 512)) -> tuple[np.ndarray, float]:
    """Coarse-to-fine affine refinement of ``init`` (moving small -> fixed small) maximising
    the normalised cross-correlation of the tissue content (``_content``: Lab standardised
    inside the mask, 0 outside) at long sides ``sizes`` (capped at the small images' size),
    6 parameters, Powell's method. Returns ((3, 3), final NCC)."""
    import cv2
    from scipy.optimize import minimize

    m = np.asarray(init, np.float64)
    ncc = 0.0
    cap = max(max(moving.shape), max(fixed.shape))
    for size in sorted({min(int(s), cap) for s in sizes}):
        cm, _, dm = _content(moving, size)
        cf, mf, df = _content(fixed, size)
        if not mf.any():
            break
        b0 = df @ m @ np.linalg.inv(dm)
        ys, xs = np.nonzero(mf)
        c = np.eye(3)
        c[:2, 2] = [xs.mean(), ys.mean()]
        c_inv = np.linalg.inv(c)
        den_f = float(np.sqrt((cf * cf).sum()))
        shape = (cf.shape[1], cf.shape[0])

        def mat(x, b0=b0, c=c, c_inv=c_inv):
            d = np.eye(3)
            d[:2, :2] += x[:4].reshape(2, 2)
            d[:2, 2] = 10.0 * x[4:]            # translation in units of 10 low-res px
            return c @ d @ c_inv @ b0

        def loss(x, cm=cm, cf=cf, den_f=den_f, shape=shape, mat=mat):
            w = cv2.warpAffine(cm, mat(x)[:2], shape, flags=cv2.INTER_LINEAR)
            den = float(np.sqrt((w * w).sum())) * den_f
            return -float((w * cf).sum()) / den if den > 0 else 0.0

        r = minimize(loss, np.zeros(6), method="Powell",
                     options={"xtol": 1e-4, "ftol": 1e-5, "maxfev": 1500})
        if r.fun < loss(np.zeros(6)):
            m = np.linalg.inv(df) @ mat(r.x) @ dm
        ncc = -float(min(r.fun, loss(np.zeros(6))))
    return m, ncc


@dataclasses.dataclass
class InitialAffine:
    """Result of the initial (pre-ANTs) alignment of a pair, in small-image px.

    matrix: (3, 3) moving small px -> fixed small px. inliers: robust-fit inliers (0 for the
    fallback). method: the matcher name or "mask-moments". n_matches: ratio-test matches.
    """

    matrix: np.ndarray
    inliers: int
    method: str
    n_matches: int


def initial_affine(moving: SectionImage, fixed: SectionImage, cfg, seed: int = 0) -> InitialAffine:
    """Keypoint affine moving -> fixed (small px); fallback when the matching gives fewer than
    ``min_inliers`` inliers or an implausible (strongly scaled/sheared) fit: mask centroids +
    rotation search (``mask_moments_affine``), then ``content_refine`` (config
    ``content_refine``, default True). The fallback is reported as method "mask-moments"."""
    name = str(_cfg(cfg, "detector")).lower()
    matcher = get_matcher(name)
    pm, pf = matcher(moving, fixed, cfg)
    a, n_in = estimate_affine(pm, pf, str(_cfg(cfg, "estimator")),
                              str(_cfg(cfg, "robust")),
                              float(_cfg(cfg, "reproj_threshold")),
                              seed)
    min_inliers = int(_cfg(cfg, "min_inliers"))
    reason = None
    if a is None or n_in < min_inliers:
        reason = f"{n_in} inliers < min_inliers={min_inliers} ({len(pm)} matches)"
    elif not affine_is_plausible(a):
        sv = np.linalg.svd(a[:2, :2], compute_uv=False)
        reason = f"implausible affine (singular values {sv[0]:.3f}, {sv[1]:.3f})"
    if reason is None:
        log.info("%s -> %s: %s affine from %d inliers of %d matches", moving.name, fixed.name,
                 name, n_in, len(pm))
        return InitialAffine(a, n_in, name, len(pm))
    m, d = mask_moments_affine(moving, fixed,
                               allow_reflection=bool(_cfg(cfg, "allow_reflection")))
    if bool(_cfg(cfg, "content_refine")):
        m2, ncc = content_refine(moving, fixed, m)
        d2 = dice(warp_mask(moving.mask, m2, fixed.shape), fixed.mask)
        if affine_is_plausible(m2) and d2 >= d - 0.02:
            m, d = m2, d2
        else:
            log.info("%s -> %s: content refinement rejected (dice %.3f -> %.3f)", moving.name,
                     fixed.name, d, d2)
    log.warning("%s -> %s: keypoint matching failed (%s); falling back to mask centroid + "
                "rotation search + content refinement (dice %.3f)", moving.name, fixed.name,
                reason, d)
    return InitialAffine(m, n_in, "mask-moments", len(pm))
