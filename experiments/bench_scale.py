"""Scale: graph build, one training epoch, full-block imputation and peak RSS vs. block size.

A synthetic block of L sections x n spots on a Visium hexagonal lattice (``visium_block``),
image features drawn directly (the ``embeddings`` path: no image is encoded), the base model
config (hidden 256, 3 GAT layers, 10 CLI iterations, G genes). Per size, in its own process:

* graph: ``graph.build.build_sample_graph`` (spot, region and global 3D graphs);
* epoch: every training tile once (``batches.build_pool`` with ``train.max_graph_nodes``:
  full graph when it fits, else spatial tiles with a gat_layers-hop halo), one jitted
  training step per tile (``training.step``), timed after a warm-up step on tile 0 whose time
  (compile + one step) is reported apart as ``train_compile_s``;
* impute: the whole block through ``subgraph.tiled_eval`` (the network in tiles with a
  gat_layers-hop halo, the CLI's propagation once over the whole graph; known layer 0, the
  other layers imputed; compile time included);
* peak RSS of the process.

The last line fits cost ~ n^k between consecutive sizes (k = log-log slope).

Writes ``<out>/results.json`` (default ``--out runs/experiments/bench_scale``).

    python experiments/bench_scale.py --sizes 3600,25000,100000
    python experiments/bench_scale.py --sizes 100000 --max_nodes 40000 --remat   # < 16 GiB
    python experiments/bench_scale.py --sizes 250000 --no_train        # imputation only
    python experiments/bench_scale.py --sizes 3600 --dtype bfloat16    # e.g. on a GPU
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from visium_block import make_block   # experiments/ (the script's folder) is on sys.path

from asign_jax import atomic, entry
from asign_jax.config import base_config
from asign_jax.graph import roles
from asign_jax.graph.padding import budget_for, pad_sample
from asign_jax.models import factory
from asign_jax.training import batches, folds, state as state_lib, step as step_lib, subgraph


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, tree)


def run_size(n: int, a) -> dict:
    c = base_config()
    c.train.max_graph_nodes = a.max_nodes
    c.model.asign.remat = bool(a.remat)
    c.train.optimizer, c.train.learning_rate = "adam", 1e-3
    dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    row = {"spots_per_section": n, "sections": a.sections, "spots": n * a.sections}
    t: dict = {}
    g = make_block(n, a.sections, a.genes, feat_dim=a.din, n_tokens=a.tokens, timings=t)
    row.update(data_s=round(t["data"], 1), graph_s=round(t["graph"], 1),
               spot_edges=int(g.spot.n_edge[0]), rss_after_graph_gb=round(rss_gb(), 2))
    print(f"{n}: graph {t['graph']:.1f} s, {row['spot_edges']} spot edges", flush=True)
    model, loss_fn = factory.build(c, a.genes)
    if not a.no_train:
        # one fold: the block is a training sample; a second copy of the block held out
        # would double memory, so the pool holds the block alone
        fold = folds.Fold(index=0, test_samples=(), train_samples=("V",), known_layer={})
        t0 = time.perf_counter()
        pool = batches.build_pool({"V": g}, fold, seed=0, **subgraph.pool_options(c))
        row["tiles_train"] = len(pool)
        row["tile_s"] = round(time.perf_counter() - t0, 1)
        st = state_lib.create_train_state(model, c.train, pool.example(), jax.random.PRNGKey(0))
        st = st.replace(params=cast(st.params, dtype))
        step = step_lib.make_train_step(model, loss_fn, c)
        rng = jax.random.PRNGKey(1)
        take = lambda i: cast(jax.device_put(pool.take(np.array([i]))), dtype)
        t0 = time.perf_counter()        # warm-up: compile + one step on tile 0, not timed
        st, m = step(st, take(0), rng)
        float(m["loss"])
        row["train_compile_s"] = round(time.perf_counter() - t0, 1)
        times, losses = [], []
        for i in range(len(pool)):      # then one timed epoch: every tile once
            batch = take(i)
            t0 = time.perf_counter()
            st, m = step(st, batch, jax.random.fold_in(rng, i + 1))
            losses.append(float(m["loss"]))
            times.append(time.perf_counter() - t0)
        row["epoch_s"] = round(sum(times), 1)
        row["train_loss"] = [round(losses[0], 4), round(losses[-1], 4)]
        row["rss_after_train_gb"] = round(rss_gb(), 2)
        params = st.params
        del pool, st
        print(f"{n}: epoch {row['epoch_s']} s over {row['tiles_train']} tile(s)", flush=True)
    else:      # untrained parameters: initialised on one small tile (shapes only matter)
        small = subgraph.cut_tile(g, subgraph.plan_tiles(g, 2048, 0)[0], 0,
                                  hide_halo_labels=True).graph
        example = {s: pad_sample(small, budget_for([small])).graph(s)
                   for s in ("spot", "region", "global")}
        params = cast(state_lib.create_train_state(model, c.train, example,
                                                   jax.random.PRNGKey(0)).params, dtype)
    masked = roles.mask_sample(g, "test", known_layer=0)
    del g
    fn = step_lib.make_eval_fn(model)
    # the pipeline's tiled imputation (``subgraph.tiled_eval``): the network in tiles with a
    # gat_layers-hop halo, then the CLI over the whole graph
    row["tiles_impute"] = len(subgraph.plan_tiles(masked, int(a.max_nodes),
                                                   factory.graph_hops(c, exact=False)))
    t0 = time.perf_counter()
    out = subgraph.tiled_eval(lambda s: fn(params, cast(s, dtype)), c)(masked)
    row["impute_s"] = round(time.perf_counter() - t0, 1)
    test = np.asarray(masked.spot.nodes["layer"]) != 0
    row["imputed_finite"] = bool(np.isfinite(np.asarray(out["spot"], np.float32)[test]).all())
    row["peak_rss_gb"] = round(rss_gb(), 2)
    print(f"{n}: impute {row['impute_s']} s; peak RSS {row['peak_rss_gb']} GB", flush=True)
    return row


def growth(rows, key):
    out = []
    for r0, r1 in zip(rows, rows[1:]):
        if r0.get(key) and r1.get(key):
            out.append(round(math.log(r1[key] / r0[key]) / math.log(r1["spots"] / r0["spots"]), 2))
    return out


def main(a):
    if a.one:
        print("ROW " + json.dumps(run_size(a.one, a)), flush=True)
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {os.cpu_count()} CPU "
          f"threads; load average {os.getloadavg()[0]:.1f}; L={a.sections}, G={a.genes}, "
          f"D={a.din}, T={a.tokens}, max_graph_nodes={a.max_nodes}, {a.dtype}")
    rows = []
    for n in [int(v) for v in a.sizes.split(",")]:
        args = [f"--{k}={v}" for k, v in vars(a).items()
                if k not in ("sizes", "out", "one", "no_train", "remat", "verbose")]
        args += [f"--{k}" for k in ("no_train", "remat") if getattr(a, k)]
        proc = subprocess.run([sys.executable, __file__, *args, "--one", str(n)],
                              capture_output=True, text=True)
        lines = proc.stdout.splitlines()
        print("\n".join(l for l in lines if not l.startswith("ROW ")), flush=True)
        row = [l for l in lines if l.startswith("ROW ")]
        if proc.returncode or not row:
            print(f"{n}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            continue
        rows.append(json.loads(row[0][4:]))
        print(json.dumps(rows[-1]), flush=True)
        atomic.write_json(Path(a.out) / "results.json", {"args": vars(a), "rows": rows})
    for key in ("graph_s", "epoch_s", "impute_s", "peak_rss_gb"):
        print(f"{key}: {[r.get(key) for r in rows]}  growth exponent k (cost ~ n^k): "
              f"{growth(rows, key)}")


if __name__ == "__main__":
    entry.run_script(main, "bench_scale", config="none",
                     sizes=("3600,25000,100000,250000", "Spots per section (comma-separated)."),
                     sections=(4, "Sections L."), genes=(250, "Genes G."),
                     din=(512, "Embedding dim D."), tokens=(4, "Tokens T per tile."),
                     max_nodes=(60000, "train.max_graph_nodes."),
                     no_train=(False, "Graph + imputation only."),
                     remat=(False, "model.asign.remat: recompute the graph layers in the backward "
                                   "pass (less memory per tile node)."),
                     dtype=("float32", "Compute dtype.", ("float32", "bfloat16")),
                     one=(0, "(internal) run one size in this process and print its row."))
