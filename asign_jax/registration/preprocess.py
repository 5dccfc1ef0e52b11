"""Downscaled grayscale images and tissue masks for registration.

Every section is read once at low resolution (long side ``long_side`` px). The mapping between
full-resolution pixels and the small image is kept as a 3x3 homogeneous matrix acting on
(x=col, y=row, 1) with pixel centres at integer coordinates, so callers only ever see
full-resolution coordinates.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.data.image import check_image_file, header_size, resize_long_side
from asign_jax.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SectionImage:
    """One section at registration resolution.

    Attributes:
      name: section id.
      rgb: (h, w, 3) uint8 downscaled RGB (for overlays).
      gray: (h, w) uint8 downscaled grayscale.
      mask: (h, w) bool tissue mask.
      full_shape: (H, W) of the full-resolution image.
      to_small: (3, 3) full-res px (x, y, 1) -> small px.
    """

    name: str
    rgb: np.ndarray
    gray: np.ndarray
    mask: np.ndarray
    full_shape: tuple[int, int]
    to_small: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.gray.shape[:2]

    @property
    def to_full(self) -> np.ndarray:
        """(3, 3) small px -> full-res px."""
        return np.linalg.inv(self.to_small)

    def moving_image(self) -> np.ndarray:
        """(h, w) float32 image for intensity registration: inverted gray (tissue bright),
        background (outside the mask) 0, scaled to [0, 1]."""
        inv = (255.0 - self.gray.astype(np.float32)) / 255.0
        return np.where(self.mask, inv, 0.0).astype(np.float32)


def read_small_rgb(path: Path, long_side: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Reads an image at low resolution.

    Uses OpenCV's reduced JPEG decoding (factor 2/4/8, JPEG only) when that still leaves
    >= long_side px, then INTER_AREA resizing.
    Returns (rgb (h, w, 3) uint8, full (H, W), to_small (3, 3)).
    """
    import cv2

    path = Path(path)
    check_image_file(path)
    full_hw = header_size(path)
    factor = 1
    img = None
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    for f, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                    (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if jpeg and max(full_hw) / f >= long_side:
            factor = f
            img = cv2.imread(str(path), flag)
            break
    if factor == 1:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot decode image (corrupt or unsupported format)")
    expect = (-(-full_hw[0] // factor), -(-full_hw[1] // factor))
    if img.shape[:2] != expect:
        raise DataError(f"{path}: decoded size {img.shape[:2]} does not match the header size "
                        f"{full_hw} / {factor} (EXIF orientation?); re-save the image upright")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    # Reduced decoding averages factor x factor blocks: exact scale 1/factor, partial last block.
    to_reduced = np.array([[1.0 / factor, 0, 0.5 / factor - 0.5],
                           [0, 1.0 / factor, 0.5 / factor - 0.5], [0, 0, 1]])
    rgb, to_small = resize_long_side(img, long_side)
    return rgb, full_hw, to_small @ to_reduced


def tissue_mask(rgb: np.ndarray, min_fraction: float = 0.05, max_components: int = 8) -> np.ndarray:
    """(h, w) bool tissue mask of an H&E image (h, w, 3) uint8.

    Otsu threshold on saturation AND on darkness (255 - gray), both blurred; then closing,
    hole filling, opening, and the largest connected components (at most ``max_components``,
    each at least ``min_fraction`` of the largest). Falls back to darkness alone when the
    saturation has no contrast (grayscale images).
    """
    import cv2

    img = np.ascontiguousarray(rgb[..., :3])
    h, w = img.shape[:2]
    k = max(3, (min(h, w) // 200) | 1)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    sat = cv2.GaussianBlur(hsv[..., 1], (k, k), 0)
    dark = cv2.GaussianBlur(255 - cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (k, k), 0)

    def otsu(ch):
        if int(ch.max()) - int(ch.min()) < 10:
            return None
        t, m = cv2.threshold(ch, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return m.astype(bool)

    ms, md = otsu(sat), otsu(dark)
    if ms is None and md is None:
        return np.zeros((h, w), bool)
    if ms is None or ms.mean() > 0.9:
        m = md
    elif md is None:
        m = ms
    else:
        m = ms & md
    m = m.astype(np.uint8)
    r = max(1, min(h, w) // 150)
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, ker, iterations=2)
    m = fill_holes(m.astype(bool)).astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, ker)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros((h, w), bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:max_components]
    keep = [i + 1 for i in order if areas[i] >= min_fraction * areas[order[0]]]
    return np.isin(lab, keep)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fills holes of a bool mask (background not connected to the border)."""
    import cv2

    m = mask.astype(np.uint8)
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    ff = pad.copy()
    cv2.floodFill(ff, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = ff[1:-1, 1:-1] == 0
    return mask.astype(bool) | holes


def load_section(name: str, image: "Path | str | np.ndarray", long_side: int,
                 full_shape: Optional[tuple[int, int]] = None) -> SectionImage:
    """Builds a SectionImage from an image file, an (H, W, 3) uint8 RGB array or a
    `data.slide.WorkingImage` (thumbnail read from a low pyramid level).

    ``full_shape`` (H, W) is checked against the file's size when given.
    """
    import cv2

    if hasattr(image, "read_small"):           # a slide at working resolution (data.slide)
        rgb, full_hw, to_small = image.read_small(long_side)
        where = str(image.path)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] < 3:
            raise DataError(f"section {name!r}: image array must be (H, W, 3), got {image.shape}")
        full_hw = image.shape[:2]
        rgb, to_small = resize_long_side(np.ascontiguousarray(image[..., :3]), long_side)
        where = f"section {name!r}"
    else:
        rgb, full_hw, to_small = read_small_rgb(Path(image), long_side)
        where = str(image)
    if full_shape is not None and tuple(int(v) for v in full_shape) != tuple(full_hw):
        raise DataError(f"{where}: image is {tuple(full_hw)} (H, W) but the prepared section "
                        f"says {tuple(int(v) for v in full_shape)}")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mask = tissue_mask(rgb)
    if mask.sum() < 0.001 * mask.size:
        log.warning("%s: tissue mask is (almost) empty (%d px); registration of this section "
                    "will rely on the whole image", where, int(mask.sum()))
        mask = np.ones_like(mask)
    return SectionImage(name=name, rgb=rgb, gray=gray, mask=mask,
                        full_shape=(int(full_hw[0]), int(full_hw[1])), to_small=to_small)
