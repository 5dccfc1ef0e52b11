"""Image files: header size, completeness, and decoding with clear errors.

A truncated JPEG decodes "successfully" in OpenCV: libjpeg prints a warning on stderr and fills
the missing rows with flat grey. So before decoding, ``check_image_file`` looks at the file
itself: a JPEG must hold its end-of-image marker (FF D9) near its end, a PNG its IEND chunk,
and after decoding ``read_rgb`` compares the decoded size with the header's. A failure is a
DataError naming the file; nothing parses the decoder's stderr.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from asign_jax import fingerprint
from asign_jax.errors import DataError

# Whole-slide H&E images exceed PIL's decompression-bomb limit (~179 Mpx); only headers are read.
Image.MAX_IMAGE_PIXELS = None

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"          # the IEND chunk type and its fixed CRC
TAIL_BYTES = 4096
"""How far from the end of the file the end marker may sit (some writers append padding)."""


def header_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (no decoding)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise DataError(f"{path}: cannot read image header ({e})") from e
    return int(h), int(w)


def check_image_file(path: Path) -> None:
    """Raises DataError unless ``path`` exists and, for JPEG / PNG, ends with its end marker.

    In entropy-coded JPEG data a 0xFF byte is always followed by 0x00 or a restart marker, so
    FF D9 near the end is the real end-of-image marker, not image data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    fingerprint.note(path)               # an input of the stage being built (run manifests)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(PNG_MAGIC))
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
    if size == 0:
        raise DataError(f"{path}: image file is empty")
    if head.startswith(JPEG_MAGIC) and JPEG_END not in tail:
        raise DataError(f"{path}: truncated JPEG ({size} bytes, no end-of-image marker FF D9 "
                        "at the end); copy the file again")
    if head.startswith(PNG_MAGIC) and PNG_END not in tail:
        raise DataError(f"{path}: truncated PNG ({size} bytes, no IEND chunk at the end); "
                        "copy the file again")


def read_rgb(path: Path) -> np.ndarray:
    """Reads a complete image as (H, W, 3) uint8 RGB; raises DataError naming the file."""
    path = Path(path)
    check_image_file(path)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot decode image (corrupt or unsupported format)")
    expect = header_size(path)
    if img.shape[:2] != expect:
        raise DataError(f"{path}: decoded size {img.shape[:2]} differs from the header's "
                        f"{expect} (EXIF orientation or a damaged file); re-save the image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def scale_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """(3, 3) pixel-centre-exact map between two resamplings of the same field of view:
    x_dst = (x_src + 0.5) * W_dst / W_src - 0.5, likewise y."""
    sx = dst_hw[1] / src_hw[1]
    sy = dst_hw[0] / src_hw[0]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def resize_long_side(img: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Resizes so that the long side is ``long_side`` (never upsamples).
    Returns (resized, (3, 3) src px -> resized px)."""
    h, w = img.shape[:2]
    s = min(1.0, long_side / max(h, w))
    if s >= 1.0:
        return img, np.eye(3)
    dst = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    out = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    return out, scale_matrix((h, w), dst)


def jpeg_reductions(path: Path):
    """The 1/2, 1/4, 1/8 reductions OpenCV's libjpeg decodes in the DCT domain (what reduced
    JPEG decoding gives registration), as RGB; None for anything but a JPEG."""
    if Path(path).suffix.lower() not in (".jpg", ".jpeg"):
        return None
    out = []
    for flag in (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4,
                 cv2.IMREAD_REDUCED_COLOR_8):
        out.append(cv2.cvtColor(cv2.imread(str(path), flag), cv2.COLOR_BGR2RGB))
    return out
