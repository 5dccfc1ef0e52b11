"""Expression normalisation of spots and tiles, selectable by name.

* ``asign`` (official ASIGN ``5_3_normalization``): y_g = ln((c_g + 1) / sum_{g'} (c_{g'} + 1)),
  the sum over the SELECTED genes; pseudo-count 1, natural log, no scale factor.
* ``triplex`` (TRIPLEX): y_g = log1p(1e4 * c_g / sum_{g'} c_{g'}) over the selected genes;
  a row with total 0 gives zeros. Optional smoothing (``smooth=True``) AFTER normalisation:
  each spot's values become the mean over the spots whose array coordinates lie in its
  3x3 box (|dx| <= 1 and |dy| <= 1, itself included).
* ``stnet`` (ST-Net): y_g = ln((1 + c_g) / (n_all_genes + sum_all c)), where the sum and the
  gene count are over ALL genes of the section (before gene selection), so the caller passes
  ``all_totals`` (per row) and ``n_all_genes``.

The same function normalises tile labels: pass the tile's summed counts (and, for ``stnet``,
the summed all-gene totals of its member spots).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from asign_jax.errors import ConfigError

METHODS = ("asign", "triplex", "stnet")


def check_method(method: str, smooth: bool = False) -> None:
    """Raises ConfigError for an unknown method, or smoothing with a method other than triplex."""
    if method not in METHODS:
        raise ConfigError(f"data.normalization={method!r} is unknown; valid names: "
                          f"{', '.join(METHODS)}")
    if smooth and method != "triplex":
        raise ConfigError(f"data.smooth=True is only defined for data.normalization='triplex' "
                          f"(got {method!r})")


def smooth_3x3(values: np.ndarray, array_xy: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Mean of ``values`` over the spots in each spot's 3x3 array-grid box.

    Args:
      values: (N, G) per-spot values.
      array_xy: (N, 2) array-grid coordinates (x, y).
      chunk: rows processed at once (memory is chunk x N).

    Returns:
      (N, G) float64; row i = mean of rows j with |x_j - x_i| <= 1 and |y_j - y_i| <= 1.
    """
    values = np.asarray(values, dtype=np.float64)
    xy = np.asarray(array_xy, dtype=np.float64)
    if xy.shape != (len(values), 2):
        raise ValueError(f"array_xy must be ({len(values)}, 2), got {xy.shape}")
    out = np.empty_like(values)
    eps = 1e-9
    for a in range(0, len(values), chunk):
        d = np.abs(xy[a:a + chunk, None, :] - xy[None, :, :])   # (c, N, 2)
        mask = (d <= 1.0 + eps).all(axis=-1).astype(np.float64)  # (c, N), diagonal is 1
        out[a:a + chunk] = (mask @ values) / mask.sum(axis=1, keepdims=True)
    return out


def normalize(counts: np.ndarray, method: str, *, array_xy: Optional[np.ndarray] = None,
              smooth: bool = False, all_totals: Optional[np.ndarray] = None,
              n_all_genes: Optional[int] = None) -> np.ndarray:
    """Normalises raw counts row by row (a row = a spot or a tile).

    Args:
      counts: (N, G) raw counts of the selected genes (non-negative).
      method: one of ``METHODS``.
      array_xy: (N, 2) array-grid coordinates; required when ``smooth``.
      smooth: triplex only: 3x3 array-neighbourhood smoothing after normalisation.
      all_totals: (N,) stnet only: per-row total count over ALL genes of the section.
      n_all_genes: stnet only: number of ALL genes of the section.

    Returns:
      (N, G) float32.
    """
    check_method(method, smooth)
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"counts must be (N, G), got shape {c.shape}")
    if method == "asign":
        y = np.log((c + 1.0) / (c + 1.0).sum(axis=1, keepdims=True))
    elif method == "triplex":
        total = c.sum(axis=1, keepdims=True)
        safe = np.where(total > 0, total, 1.0)
        y = np.where(total > 0, np.log1p(1e4 * c / safe), 0.0)
        if smooth:
            if array_xy is None:
                raise ValueError("triplex smoothing needs array_xy (N, 2)")
            y = smooth_3x3(y, array_xy)
    else:  # stnet
        if all_totals is None or n_all_genes is None:
            raise ValueError("stnet normalisation needs all_totals (N,) and n_all_genes: the "
                             "per-row total and number of ALL genes before selection")
        tot = np.asarray(all_totals, dtype=np.float64).reshape(-1)
        if tot.shape != (len(c),):
            raise ValueError(f"all_totals must be ({len(c)},), got {tot.shape}")
        y = np.log((1.0 + c) / (float(n_all_genes) + tot)[:, None])
    return y.astype(np.float32)
