"""One image interface for section images: JPEG / PNG, pyramidal TIFF and whole-slide images.

`open_slide(path)` returns a `Slide`: ``size`` (W, H) of level 0, ``um_per_px`` (level-0 pixel
size from the file's metadata, None when the file has none), ``levels`` ((W, H) and downsample
of each pyramid level) and ``read_region(level, box)`` -> (h, w, 3) uint8 RGB of the box
(x0, y0, x1, y1) in that level's pixels. Backends, tried in this order:

* ``openslide`` (openslide-python + openslide-bin, optional): SVS, NDPI, MRXS, ... and TIFF;
  pixel size from ``openslide.mpp-x/y``;
* ``tifffile``: plain pyramidal / tiled TIFF (regions are read through tifffile's zarr store,
  so a level is never decoded whole); pixel size from the resolution tags (cm / inch units);
* OpenCV for JPEG / PNG (the whole image is decoded once, as before; no pyramid; no pixel size).

The pipeline works in *working pixels* of ``config.data.um_per_px`` µm (every px size in the
config is at that resolution). `WorkingImage` is a section's slide seen at the working
resolution: ``scale`` = level-0 px per working px; patches and tiles are read by region at the
coarsest level whose pixels are not larger than a working pixel (level 0 when none coarser
fits) and resized to the working size; the registration thumbnail is read from a low level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np

from asign_jax.data.image import check_image_file, header_size, read_rgb, resize_long_side
from asign_jax.errors import DataError

logger = logging.getLogger(__name__)

PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".ome.tif")
HER2ST_UM_PER_PX = 0.6875
"""µm per pixel assumed for the HER2ST JPEGs: the ST array's 200 µm spot pitch over the
~291 px measured between array neighbours in sections C2-C6 and B4 (least-squares fit of
pixel on array coordinates: 289-292 px). The config's px sizes are at this resolution."""


@dataclasses.dataclass
class Level:
    """One pyramid level: size (W, H) and downsample (level-0 px per level px)."""

    width: int
    height: int
    downsample: float


def _nominal_downsample(w0: int, h0: int, w: int, h: int) -> float:
    """Power of two when the level is a ceil-divided halving chain, else the mean ratio."""
    for k in range(0, 16):
        f = 2 ** k
        if -(-w0 // f) == w and -(-h0 // f) == h:
            return float(f)
    return 0.5 * (w0 / w + h0 / h)


class Slide:
    """Base class; subclasses set ``path``, ``levels``, ``um_per_px`` and ``_read``."""

    path: Path
    levels: list
    um_per_px: Optional[float]
    backend: str

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of level 0."""
        return self.levels[0].width, self.levels[0].height

    def read_region(self, level: int, box) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 RGB of ``box`` = (x0, y0, x1, y1) in level px (inside)."""
        if not 0 <= int(level) < len(self.levels):
            raise DataError(f"{self.path}: level {level} missing (the slide has "
                            f"{len(self.levels)} levels)")
        lv = self.levels[int(level)]
        x0, y0, x1, y1 = (int(v) for v in box)
        if x0 < 0 or y0 < 0 or x1 > lv.width or y1 > lv.height or x1 <= x0 or y1 <= y0:
            raise DataError(f"{self.path}: region {(x0, y0, x1, y1)} outside level {level} "
                            f"({lv.width} x {lv.height} px)")
        return self._read(int(level), x0, y0, x1, y1)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= ``downsample`` (level 0 when none)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= downsample * (1 + 1e-9) and lv.downsample >= self.levels[best].downsample:
                best = i
        return best

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def close(self) -> None:
        pass


class PlainSlide(Slide):
    """JPEG / PNG through OpenCV: decoded whole on first read (as ``read_rgb`` always did)."""

    backend = "opencv"

    def __init__(self, path: Path):
        self.path = Path(path)
        check_image_file(self.path)
        h, w = header_size(self.path)
        self.levels = [Level(w, h, 1.0)]
        self.um_per_px = None
        self._rgb = None

    def _read(self, level, x0, y0, x1, y1):
        if self._rgb is None:
            self._rgb = read_rgb(self.path)
        return self._rgb[y0:y1, x0:x1]

    def close(self):
        self._rgb = None


class TiffSlide(Slide):
    """Pyramidal / tiled TIFF through tifffile: regions read from the zarr store per level."""

    backend = "tifffile"

    def __init__(self, path: Path):
        import tifffile
        import zarr
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self._store = series.aszarr()
            z = zarr.open(self._store, mode="r")
        except Exception as e:  # noqa: BLE001 - tifffile / zarr raise many types
            raise DataError(f"{self.path}: cannot open as a TIFF slide ({e})") from e
        arrays = [z] if isinstance(z, zarr.Array) else [z[str(i)] for i in range(len(series.levels))]
        shapes = []
        for a in arrays:
            axes = series.levels[0].axes if len(arrays) > 1 else series.axes
            if a.ndim != 3 or axes[-1] != "S" or a.shape[-1] not in (3, 4):
                raise DataError(f"{self.path}: TIFF series {series.axes} {a.shape} is not RGB "
                                "(Y, X, 3)")
            shapes.append(a.shape)
        self._arrays = arrays
        h0, w0 = shapes[0][:2]
        self.levels = [Level(s[1], s[0], _nominal_downsample(w0, h0, s[1], s[0]))
                       for s in shapes]
        self.um_per_px = _tiff_um_per_px(self._tif.pages[0])

    def _read(self, level, x0, y0, x1, y1):
        return np.asarray(self._arrays[level][y0:y1, x0:x1, :3], dtype=np.uint8)

    def close(self):
        self._tif.close()


def _tiff_um_per_px(page) -> Optional[float]:
    """Pixel size from XResolution/YResolution with unit cm or inch (None otherwise)."""
    try:
        tags = page.tags
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        xr = tags["XResolution"].value if "XResolution" in tags else None
    except Exception:  # noqa: BLE001
        return None
    if xr is None:
        return None
    num, den = xr if isinstance(xr, tuple) else (xr, 1)
    if not num or not den:
        return None
    per_unit = num / den                     # px per unit
    um = {2: 25400.0, 3: 10000.0}.get(unit)
    if um is None or per_unit <= 1.0:
        return None
    if unit == 2 and abs(per_unit - 72.0) < 1e-6:     # the writers' 72 dpi default: no size
        return None
    return um / per_unit


class OpenSlideSlide(Slide):
    """Any format openslide reads (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF)."""

    backend = "openslide"

    def __init__(self, path: Path, handle):
        self.path = Path(path)
        self._os = handle
        self.levels = [Level(int(w), int(h), float(d)) for (w, h), d in
                       zip(handle.level_dimensions, handle.level_downsamples)]
        props = handle.properties
        try:
            mx, my = float(props.get("openslide.mpp-x", "nan")), float(props.get("openslide.mpp-y", "nan"))
        except ValueError:
            mx = my = float("nan")
        self.um_per_px = 0.5 * (mx + my) if math.isfinite(mx) and math.isfinite(my) else None

    def _read(self, level, x0, y0, x1, y1):
        d = self.levels[level].downsample
        # openslide takes the top-left in level-0 px and the size in level px
        img = self._os.read_region((int(round(x0 * d)), int(round(y0 * d))), level,
                                   (x1 - x0, y1 - y0))
        return np.asarray(img.convert("RGB"), dtype=np.uint8)

    def close(self):
        self._os.close()


def _openslide():
    try:
        import openslide  # noqa: F401
        return openslide
    except Exception:  # noqa: BLE001 - missing package or shared library
        return None


def open_slide(path) -> Slide:
    """Opens an image file with the first backend that reads it (see the module docstring).

    Raises DataError naming the file when it does not exist or no backend can open it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    suffix = path.suffix.lower()
    if suffix in PLAIN_SUFFIXES:
        return PlainSlide(path)
    if suffix in (".tif", ".tiff", ".btf"):
        return TiffSlide(path)   # tifffile first: exact pixels, no colour management
    openslide = _openslide()
    if openslide is None:
        raise DataError(f"{path}: {suffix} slides need openslide (pip install "
                        "openslide-python openslide-bin)")
    try:
        return OpenSlideSlide(path, openslide.OpenSlide(str(path)))
    except Exception as e:  # noqa: BLE001 - OpenSlideUnsupportedFormatError, OpenSlideError
        raise DataError(f"{path}: openslide cannot open this slide ({e})") from e


def is_plain(path) -> bool:
    """True for JPEG / PNG (read whole by OpenCV, as before slides existed)."""
    return Path(path).suffix.lower() in PLAIN_SUFFIXES


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """np.pad 'reflect' index map (edge replication when one reflection is not enough)."""
    if n == 1:
        return np.zeros_like(idx)
    out = np.where(idx < 0, -idx, idx)
    out = np.where(out >= n, 2 * (n - 1) - out, out)
    return np.clip(out, 0, n - 1)


class WorkingImage:
    """A slide seen at the working resolution (``scale`` level-0 px per working px).

    ``shape`` is (H, W, 3) in working px; ``crop_patches(centers_xy, size)`` gives the same
    patches as ``features.patches.crop_patches`` on the decoded image (reflect padding at the
    border) without holding level 0 whole.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, slide: Slide, scale: float = 1.0):
        if not scale > 0:
            raise DataError(f"{slide.path}: working scale must be > 0, got {scale}")
        self.slide = slide
        self.scale = float(scale)
        w0, h0 = slide.size
        if abs(self.scale - 1.0) < 1e-12:
            self.scale = 1.0
            self.shape = (h0, w0, 3)
        else:
            self.shape = (int(math.floor(h0 / self.scale)), int(math.floor(w0 / self.scale)), 3)

    @property
    def path(self) -> Path:
        return self.slide.path

    def fingerprint(self) -> str:
        """What the pixels depend on (file identity and scale), for feature-cache keys."""
        return hashlib.sha256(f"{self.slide.fingerprint()}@{self.scale!r}".encode()).hexdigest()[:32]

    def read_working(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 of a box inside the working frame."""
        if self.scale == 1.0:
            return self.slide.read_region(0, (x0, y0, x1, y1))
        import cv2
        level = self.slide.best_level(self.scale)
        lv = self.slide.levels[level]
        f = self.scale / lv.downsample                       # level px per working px
        bx0, by0 = int(math.floor(x0 * f)), int(math.floor(y0 * f))
        bx1 = min(lv.width, max(bx0 + 1, int(math.ceil(x1 * f))))
        by1 = min(lv.height, max(by0 + 1, int(math.ceil(y1 * f))))
        region = self.slide.read_region(level, (bx0, by0, bx1, by1))
        interp = cv2.INTER_AREA if f > 1 else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(region), (x1 - x0, y1 - y0), interpolation=interp)

    def crop(self, x0: int, y0: int, size: int) -> np.ndarray:
        """``size`` x ``size`` window with top-left (x0, y0), reflected at the border."""
        h, w = self.shape[:2]
        xs = _reflect(np.arange(x0, x0 + size), w)
        ys = _reflect(np.arange(y0, y0 + size), h)
        bx0, bx1, by0, by1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        block = self.read_working(bx0, by0, bx1, by1)
        return block[(ys - by0)[:, None], (xs - bx0)[None, :]]

    def crop_patches(self, centers_xy: np.ndarray, size: int) -> np.ndarray:
        """(n, size, size, 3) uint8 patches centred on ``centers_xy`` (working px)."""
        size = int(size)
        tl = np.round(np.asarray(centers_xy, dtype=np.float64)).astype(np.int64) - size // 2
        out = np.empty((len(tl), size, size, 3), dtype=np.uint8)
        for i, (x, y) in enumerate(tl.reshape(-1, 2)):
            out[i] = self.crop(int(x), int(y), size)
        return out

    def read_small(self, long_side: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
        """Low-resolution RGB for registration / tissue masks from a low pyramid level.

        Returns (rgb (h, w, 3) uint8, working (H, W), to_small (3, 3) working px -> small px),
        pixel centres at integer coordinates (as ``registration.preprocess.read_small_rgb``).
        """
        target = min(int(long_side), max(self.shape[:2]))
        level = 0
        for i, lv in enumerate(self.slide.levels):     # coarsest level still >= the target
            if max(lv.width, lv.height) >= target and \
                    lv.downsample > self.slide.levels[level].downsample:
                level = i
        lv = self.slide.levels[level]
        img = self.slide.read_region(level, (0, 0, lv.width, lv.height))
        f = lv.downsample / self.scale                        # working px per level px
        to_level = np.array([[1.0 / f, 0, 0.5 / f - 0.5], [0, 1.0 / f, 0.5 / f - 0.5],
                             [0, 0, 1]])
        rgb, to_small = resize_long_side(np.ascontiguousarray(img), long_side)
        return rgb, self.shape[:2], to_small @ to_level


def open_working(path, scale: float = 1.0):
    """The section image at working resolution: for a JPEG / PNG at scale 1 the decoded
    (H, W, 3) uint8 array (as before), else a lazily read `WorkingImage`."""
    if is_plain(path) and float(scale) == 1.0:
        return read_rgb(Path(path))
    return WorkingImage(open_slide(path), scale)
