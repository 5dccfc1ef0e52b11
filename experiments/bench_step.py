"""Time of one jitted ASIGN training step on this machine (after compilation).

    python experiments/bench_step.py [--repeats 7] [--samples_per_step 1]

Two random graphs with the contract's shapes (``random_sample_graph``; k_intra 8 and
k_cross 12 / 4 / 2 for spot / region / global, as in the base config), one sample per step:
  (a) patient-C size: 910 spots over 5 layers (182 each), 300 region + 80 global nodes,
      250 genes, 2048-d features, T = 16 tokens (float16, as stored);
  (b) 128 spots (4 layers x 32) + 300 region + 80 global nodes, 250 genes, 1024-d, T = 16.
Model config: ``--config`` (with ``--config.a.b=v`` overrides), else configs/her2st.py if
present, else ``asign_jax.config.base_config()``. Writes ``<out>/results.json`` (default
``--out runs/experiments/bench_step``).
Prints the compile time and the median (and min / max) of ``--repeats`` (>= 5) steps; the batch
is placed on the device beforehand, so host-side batch assembly is not included.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from asign_jax import atomic, entry
from asign_jax.config import base_config
from asign_jax.models import factory
from asign_jax.testing import random_sample_graph
from asign_jax.training import batches, folds, state as state_lib, step as step_lib

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "a_patientC_910spots_2048d": dict(n_layers=5, spots_per_layer=182, n_region=300,
                                      n_global=80, n_genes=250, feat_dim=2048, n_tokens=16),
    "b_128spots_1024d": dict(n_layers=4, spots_per_layer=32, n_region=300, n_global=80,
                             n_genes=250, feat_dim=1024, n_tokens=16),
}
K_INTRA = {"spot": 8, "region": 8, "global": 8}
K_CROSS = {"spot": 12, "region": 4, "global": 2}


def load_config():
    path = ROOT / "configs" / "her2st.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location("her2st_config", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.get_config(), str(path.relative_to(ROOT))
    return base_config(), "asign_jax.config.base_config()"


def bench(name, shape, config, repeats):
    t0 = time.time()
    graphs = {s: random_sample_graph(i, k=K_INTRA, k_cross=K_CROSS, sample_id=s, **shape)
              for i, s in enumerate(("H", "T"))}
    fold = folds.Fold(index=0, test_samples=("H",), train_samples=("T",), known_layer={"H": 0})
    pool = batches.build_pool(graphs, fold, seed=0)
    t_build = time.time() - t0
    model, loss_fn = factory.build(config, shape["n_genes"])
    st = state_lib.create_train_state(model, config.train, pool.example(), jax.random.PRNGKey(0))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(st.params))
    step = step_lib.make_train_step(model, loss_fn, config)
    s = int(config.train.samples_per_step)
    batch = jax.device_put(pool.take(pool.step_indices(0, s)))
    rng = jax.random.PRNGKey(0)
    t0 = time.time()
    st, m = step(st, batch, rng)
    jax.block_until_ready(m)
    t_first = time.time() - t0
    times = []
    for _ in range(repeats):
        t0 = time.time()
        st, m = step(st, batch, rng)
        jax.block_until_ready((st.params, m))
        times.append(time.time() - t0)
    b = pool.budget
    print(f"{name}: padded nodes spot/region/global = {b.spot.n_node}/{b.region.n_node}/"
          f"{b.global_.n_node}, edges {b.spot.n_edge}/{b.region.n_edge}/{b.global_.n_edge}; "
          f"{n_params / 1e6:.2f}M params; {s} sample(s)/step")
    print(f"  graph build {t_build:.1f}s, first step (compile + run) {t_first:.1f}s; "
          f"step median {1e3 * statistics.median(times):.1f} ms "
          f"(min {1e3 * min(times):.1f}, max {1e3 * max(times):.1f}, n={repeats}); "
          f"loss {float(m['loss']):.3f}")
    return statistics.median(times)


def main(args):
    config, source = (args.config, "--config") if args.config is not None else load_config()
    config.train.samples_per_step = args.samples_per_step
    m = config.model.asign
    print(f"model config: {source} (hidden {m.hidden}, heads {m.heads}, gat_layers {m.gat_layers}, "
          f"cli_iterations {m.cli_iterations}); optimizer {config.train.optimizer}; "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
    medians = {name: bench(name, CASES[name], config, max(args.repeats, 5))
               for name in args.cases.split(",")}
    out = atomic.write_json(Path(args.out) / "results.json",
                            {"config": source, "step_median_s": medians})
    print(f"written: {out}")


if __name__ == "__main__":
    entry.run_script(main, "bench_step",
                     repeats=(7, "Timed steps per case (at least 5)."),
                     samples_per_step=(1, "train.samples_per_step."),
                     cases=(",".join(CASES), "Cases (comma-separated)."))
