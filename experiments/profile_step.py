"""Where a training step's time goes, JAX and the PyTorch port, split by model part.

The step and the sample are those of ``bench_torch.py`` (a 4-section Visium block of N spots,
D 1024, T 16, hidden 256, G 250, SGD-momentum). For each size:

* JAX: a ``jax.profiler`` trace of ``--steps`` steps; every XLA thunk (fusion, custom call,
  gather, ...) of the trace is mapped to its HLO instruction's metadata (``op_name``: the Flax
  module path and the jax primitive; ``source_file``) in the compiled module's text, and its
  time summed into a part (``PARTS``). Thunks of one step may run concurrently on the 2 cores,
  so the parts add up to the summed thunk time, reported beside the wall time.
* PyTorch: ``torch.profiler`` of the same number of steps; forward ops are attributed to the
  part whose ``record_function`` range they run in (``bench_torch_model.torch_forward``
  labels its parts), backward ops to the part of the forward op with the same autograd sequence number.
* The cost analysis of the compiled JAX step (FLOPs, bytes; ``roofline.step_cost``).

Writes ``<out>/results.json`` (default ``--out runs/experiments/profile_step``).

    python experiments/profile_step.py --sizes 4000 --steps 2 [--torch] [--out DIR]
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from pathlib import Path

import jax

import bench_torch   # experiments/ (the script's folder) is on sys.path
import bench_torch_model
import roofline

from asign_jax import atomic, entry

PARTS = ("encoder dense", "cross-attention", "GAT gather", "GAT segment softmax",
         "GAT scatter/aggregate", "GAT other", "node transformer", "CLI", "heads", "losses",
         "optimiser", "other")


def jax_part(op_name: str, source: str, opcode: str) -> str:
    """The model part of one HLO instruction from its metadata (module path, source file)."""
    if "optax" in source or "/optax/" in op_name or "apply_updates" in op_name:
        return "optimiser"
    if "cli" in op_name.split("/") or "models/cli.py" in source or "sparse.py" in source and \
            "cli" in op_name:
        return "CLI"
    if "cross_attn" in op_name:
        return "cross-attention"
    if "/gat/" in op_name or "gat.py" in source or "sparse.py" in source:
        if "masked_segment_softmax" in op_name or "segment_max" in op_name or \
                re.search(r"gat\.py:(2[0-9]|3[0-5])\b", source):
            return "GAT segment softmax"
        if opcode in ("scatter", "custom-call") or "scatter" in op_name or "ffi" in op_name:
            return "GAT scatter/aggregate"
        if opcode == "gather" or "gather" in op_name:
            return "GAT gather"
        return "GAT other"
    if "transformer" in op_name:
        return "node transformer"
    if any(k in op_name for k in ("region_proj", "global_proj", "spot_proj", "fusion/")):
        return "encoder dense"
    if "_head" in op_name or "image_skip" in op_name:
        return "heads"
    if "losses.py" in source or "pcc" in op_name:
        return "losses"
    if "/layers/" in op_name or "_block" in op_name:
        return "node transformer"        # the block's scan bookkeeping and layer mix
    return "other"


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([\w\-]+)\(")
_META = re.compile(r'op_name="([^"]*)"')
_SRC = re.compile(r'source_file="([^"]*)"\s+source_line=(\d+)')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_index(hlo_text: str) -> dict:
    """{instruction name: (op_name, "file:line", opcode)} of a compiled module's text; a fusion
    without metadata takes that of the first instruction with metadata in its computation."""
    comp_meta, cur = {}, None
    info, calls = {}, {}
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            m = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", line)
            cur = m.group(1) if m else None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(2)
        op = _META.search(line)
        src = _SRC.search(line)
        meta = (op.group(1) if op else "", f"{src.group(1)}:{src.group(2)}" if src else "")
        info[name] = (meta, opcode)
        c = _CALLS.search(line)
        if c:
            calls[name] = c.group(1)
        if cur and meta[0] and cur not in comp_meta:
            comp_meta[cur] = meta
    out = {}
    for name, (meta, opcode) in info.items():
        if not meta[0] and name in calls:
            meta = comp_meta.get(calls[name], meta)
        out[name] = (meta[0], meta[1], opcode)
    return out


def _trace_events(logdir: str) -> list:
    path = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
    d = json.load(gzip.open(sorted(path)[-1]))
    return d["traceEvents"] if isinstance(d, dict) else d


def profile_jax(setup: dict, steps: int) -> dict:
    """Part -> seconds per step (summed thunk time), the wall time per step and the cost."""
    compiled = setup["compiled"]
    cost = roofline.step_cost(compiled)
    index = hlo_index(compiled.as_text())
    setup["j_step"]()
    logdir = tempfile.mkdtemp(prefix="asign_prof_")
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        setup["j_step"]()
    wall = (time.perf_counter() - t0) / steps
    jax.profiler.stop_trace()
    parts, ops, kinds = collections.Counter(), collections.Counter(), collections.Counter()
    for e in _trace_events(logdir):
        a = e.get("args") or {}
        if e.get("ph") != "X" or "hlo_op" not in a:
            continue
        op_name, src, opcode = index.get(a["hlo_op"], ("", "", ""))
        part = jax_part(op_name, src, opcode)
        parts[part] += e["dur"] * 1e-6 / steps
        ops[(part, a["hlo_op"], opcode, op_name[-90:])] += e["dur"] * 1e-6 / steps
        prim = op_name.rsplit("/", 1)[-1] if op_name else opcode
        kinds[(part, prim)] += e["dur"] * 1e-6 / steps
    return {"parts": dict(parts), "wall_s": wall, "cost": cost,
            "top_ops": [(k, round(v, 4)) for k, v in ops.most_common(25)],
            "kinds": [(k, round(v, 4)) for k, v in kinds.most_common(30)]}


def profile_torch(setup: dict, steps: int) -> dict:
    """Part -> seconds per step of the PyTorch port (self CPU time of its ops)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    bench_torch_model.PROFILE = True
    t_step = setup["t_step"]
    t_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            t_step()
        wall = (time.perf_counter() - t0) / steps
    events = prof.events()
    labels = [e for e in events if e.name.startswith("part:")]
    # forward ops: inside a "part:" range of the same thread
    seq_part, parts = {}, collections.Counter()

    def part_of(e):
        best = None
        for lab in labels:
            if lab.thread == e.thread and lab.time_range.start <= e.time_range.start and \
                    e.time_range.end <= lab.time_range.end:
                if best is None or lab.time_range.start >= best.time_range.start:
                    best = lab
        return best.name[5:] if best is not None else None

    fwd = [e for e in events if not e.name.startswith("part:") and e.sequence_nr >= 0
           and "Backward" not in e.name and "backward" not in e.name]
    for e in fwd:
        p = part_of(e)
        if p is not None:
            seq_part.setdefault(e.sequence_nr, p)
    for e in events:
        if e.name.startswith("part:") or e.name.startswith("ProfilerStep"):
            continue
        if e.cpu_parent is not None and not e.cpu_parent.name.startswith("part:"):
            continue                      # counted through its top-level parent
        if "evaluate_function" in e.name or "Backward" in e.name:
            p = seq_part.get(e.sequence_nr, "backward (unattributed)")
        else:
            p = part_of(e) or ("optimiser" if "Optimizer" in e.name or "sgd" in e.name.lower()
                               else "other")
        parts[p] += e.cpu_time_total * 1e-6 / steps
    bench_torch_model.PROFILE = False
    del torch
    return {"parts": dict(parts), "wall_s": wall}


def main(a):
    ba = bench_torch.default_args(torch_compile=0)
    print(f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPU threads")
    peak = roofline.machine_peak()
    print(f"machine: matmul {peak['matmul_gflops']:.1f} GFLOP/s, stream {peak['stream_gbs']:.1f} GB/s")
    res = {}
    for spots in [int(v) for v in a.sizes.split(",")]:
        setup = bench_torch.build(spots, ba)
        pj = profile_jax(setup, a.steps)
        tot = sum(pj["parts"].values())
        ach = roofline.achieved(setup["matmul_flops"], pj["cost"]["bytes"], pj["wall_s"], peak)
        print(f"\n{setup['nodes']} nodes, {setup['edges']} spot edges. JAX step {pj['wall_s']:.2f} s "
              f"wall, thunks {tot:.2f} s; matmul {setup['matmul_flops'] / 1e9:.1f} GFLOP (jaxpr), "
              f"XLA cost {pj['cost']['flops'] / 1e9:.1f} GFLOP, "
              f"{pj['cost']['bytes'] / 1e9:.2f} GB -> {ach['gflops']:.1f} GFLOP/s "
              f"({100 * ach['flop_frac']:.0f}% of matmul peak), {ach['gbs']:.1f} GB/s "
              f"({100 * ach['byte_frac']:.0f}% of stream)")
        row = {"nodes": setup["nodes"], "edges": setup["edges"], "jax": pj}
        if a.torch:
            pt = profile_torch(setup, a.steps)
            row["torch"] = pt
            ttot = sum(pt["parts"].values())
            print(f"PyTorch step {pt['wall_s']:.2f} s wall, ops {ttot:.2f} s")
        print(f"{'part':<24} {'JAX s':>8} {'%':>5}" + (f" {'torch s':>8} {'%':>5}" if a.torch else ""))
        keys = list(PARTS) + sorted(set(row.get("torch", {}).get("parts", {})) - set(PARTS))
        for k in keys:
            j = pj["parts"].get(k, 0.0)
            line = f"{k:<24} {j:>8.3f} {100 * j / tot:>5.1f}"
            if a.torch:
                t = row["torch"]["parts"].get(k, 0.0)
                line += f" {t:>8.3f} {100 * t / ttot:>5.1f}"
            print(line)
        print("JAX time by (part, primitive of the fused op's root): seconds per step")
        for k, v in pj["kinds"][:20]:
            print(f"  {v:7.3f}  {k}")
        print("top JAX thunks (part, hlo op, opcode, op_name tail): seconds per step")
        for k, v in pj["top_ops"][:15]:
            print(f"  {v:7.3f}  {k}")
        res[spots] = row
    out = atomic.write_json(Path(a.out) / "results.json", json.loads(json.dumps(res, default=str)))
    print(f"written: {out}")


if __name__ == "__main__":
    entry.run_script(main, "profile_step", config="none",
                     sizes=("4000", "Spots per sample (comma-separated)."),
                     steps=(2, "Profiled steps per size."),
                     torch=(False, "Also profile the PyTorch port."))
