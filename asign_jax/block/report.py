"""The block's ``summary.json`` (one row per section, the model, the files, the times) and
its printout at the end of ``python -m asign_jax.impute``."""

from __future__ import annotations

from pathlib import Path


def summary(manifest, sections, origins, frames, lattices, genes, model_info, warnings,
            times, written, figs, out: Path, work: Path) -> dict:
    """``summary.json``: one row per section, the model, the files written (the volume read
    back with its measured spots unchanged, else impute stopped), the times."""
    rows = []
    qc = {s["name"]: s for s in frames.qc["sections"]}
    for l, (s, o) in enumerate(zip(sections, origins)):
        rows.append({"section": s.name, "layer": l, "z": manifest.z()[l], "origin": o,
                     "spots": s.n_spots, "dice_after": qc[s.name]["dice_after"],
                     "pitch_px": round(lattices[s.name].pitch, 1)})
    return {"sample": manifest.sample_id, "sections": rows, "genes": len(genes),
            "model": {k: v for k, v in model_info.items() if k != "config"},
            "measured_unchanged": True, "warnings": list(warnings),
            "seconds": {k: round(v, 1) for k, v in times.items()},
            "written": {"volume": str(written["volume"]),
                        "sections": [str(written[s.name]) for s in sections],
                        "figures": [str(p) for p in figs],
                        "registration": str(work / "registration" / manifest.sample_id),
                        "work": str(work)}}


def print_summary(summary: dict, out: Path) -> None:
    head = ("section", "layer", "z", "origin", "spots", "dice_after", "pitch_px")
    cells = [head] + [tuple("-" if r[k] is None else str(r[k]) for k in head)
                      for r in summary["sections"]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    print(f"\nblock {summary['sample']}: {summary['genes']} genes; model "
          f"{summary['model']['source']} (step {summary['model']['step']}, "
          f"{summary['model']['checkpoint']})")
    for c in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(c, widths)))
    w = summary["written"]
    print(f"\nvolume:       {w['volume']} (every spot; X imputed, layers['measured'])")
    print(f"per section:  {out / 'sections'}/<section>.h5ad (squidpy / sc.pl.spatial)")
    print(f"figures:      {out / 'figures'} ({len(w['figures'])} files)")
    print(f"registration: {w['registration']} (qc.json, overlay.png)")
    print(f"summary:      {out / 'summary.json'}; intermediate stages: {w['work']}")
    if summary.get("warnings"):
        print(f"\n{len(summary['warnings'])} warning(s), also in summary.json:")
        for w in summary["warnings"]:
            print(f"  WARNING: {w}")
    print(f"time:         {summary['seconds']['total']:.0f} s "
          + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items() if k != "total"))
