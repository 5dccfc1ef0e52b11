"""The registration stage's output: every section's points in the reference section's frame.

Saved as ``<workdir>/registration/<sample_id>/registered.npz`` (+ ``qc.json`` beside it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from asign_jax import atomic
from asign_jax.errors import DataError


@dataclasses.dataclass
class RegisteredSample:
    """Spot and tile centres of every section mapped into the reference section's frame.

    Attributes:
      sample_id: the sample.
      reference: index of the reference (middle) section, L // 2.
      section_names: (L,) names in layer order.
      affines: (L, 3, 3) float64 homogeneous affine mapping a section's full-resolution pixel
        (x, y, 1) to the reference's full-resolution pixel frame (identity for the reference).
        With SyN enabled this is only the linear part; the points below include the warp.
      spot_xy: list of L arrays (N_l, 2), registered spot centres (full-res reference pixels).
      region_xy / global_xy: list of L arrays (R_l, 2) / (Q_l, 2), registered tile centres.
    """

    sample_id: str
    reference: int
    section_names: list[str]
    affines: np.ndarray
    spot_xy: list[np.ndarray]
    region_xy: list[np.ndarray]
    global_xy: list[np.ndarray]

    def save(self, workdir: Path) -> Path:
        d = Path(workdir) / "registration" / self.sample_id
        d.mkdir(parents=True, exist_ok=True)
        arrays = {"affines": self.affines}
        for i in range(len(self.section_names)):
            arrays[f"spot_xy_{i}"] = self.spot_xy[i]
            arrays[f"region_xy_{i}"] = self.region_xy[i]
            arrays[f"global_xy_{i}"] = self.global_xy[i]
        meta = json.dumps({"sample_id": self.sample_id, "reference": int(self.reference),
                           "section_names": list(self.section_names)})
        return atomic.write_npz(d / "registered.npz", _meta=np.asarray(meta), **arrays)

    @classmethod
    def load(cls, workdir: Path, sample_id: str) -> "RegisteredSample":
        path = Path(workdir) / "registration" / sample_id / "registered.npz"
        if not path.exists():
            raise DataError(f"{path}: sample {sample_id!r} is not registered; "
                            "run `python -m asign_jax.register` first")
        with np.load(path) as z:
            meta = json.loads(str(z["_meta"]))
            n = len(meta["section_names"])
            return cls(sample_id=meta["sample_id"], reference=meta["reference"],
                       section_names=meta["section_names"], affines=z["affines"],
                       spot_xy=[z[f"spot_xy_{i}"] for i in range(n)],
                       region_xy=[z[f"region_xy_{i}"] for i in range(n)],
                       global_xy=[z[f"global_xy_{i}"] for i in range(n)])

    @classmethod
    def identity(cls, sample_id: str, section_names: list[str], spot_xy, region_xy,
                 global_xy) -> "RegisteredSample":
        """Unregistered coordinates (a single section, or registration disabled)."""
        n = len(section_names)
        return cls(sample_id, n // 2, list(section_names), np.tile(np.eye(3), (n, 1, 1)),
                   list(spot_xy), list(region_xy), list(global_xy))
