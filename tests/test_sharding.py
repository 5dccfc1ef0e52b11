"""Data-parallel sharding: 4 fake CPU devices in a subprocess vs. one device.

The fake devices need XLA_FLAGS and NPROC (>= 2x the device count, or the CPU all-reduce can
deadlock on 2 cores; docs/stack.md) in the environment BEFORE jax is imported, hence
the subprocess.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import functools
    import jax, numpy as np, optax
    from asign_jax.config import base_config
    from asign_jax.models import factory
    from asign_jax.training import batches, checkpoint, folds, loop, sharding, state as state_lib, step
    from asign_jax.models.losses import asign_loss
    from asign_jax.testing import spatial_sample_graph

    assert jax.device_count() == 4, jax.devices()
    c = base_config()
    c.model.asign.hidden, c.model.asign.heads, c.model.asign.gat_layers = 16, 2, 1
    c.model.asign.cli_iterations, c.model.asign.transformer_mlp_ratio = 2, 1
    c.train.samples_per_step = 4
    c.train.learning_rate = 1e-2
    G = 8
    # the batches are SUBGRAPHS: spatial tiles (training/subgraph.py) of samples too large for
    # max_nodes, so the sharded step is checked on the subgraph path (the full-graph path is
    # the same step on whole samples)
    graphs = {s: spatial_sample_graph(i, n_layers=2, side=4, n_genes=G, feat_dim=8,
                                      n_tokens=2, k=3, sample_id=s)
              for i, s in enumerate("ABCD")}
    fold = folds.Fold(index=0, test_samples=("A",), train_samples=("B", "C", "D"),
                      known_layer={"A": 0})
    pool = batches.build_pool(graphs, fold, seed=0, max_nodes=24, halo=1)
    assert pool.tiled and len(pool) >= 8, pool.sample_ids
    model = factory.build(c, G)[0]
    st = state_lib.create_train_state(model, c.train, pool.example(), jax.random.PRNGKey(0))
    batch = pool.take(np.array([0, 3, 5, 7]))          # tiles of test and training samples
    rng = jax.random.PRNGKey(7)
    step_rng = jax.random.fold_in(rng, 0)            # what train_step uses at step 0
    f = functools.partial(step.loss_and_grads, model=model, loss_fn=asign_loss,
                          **step.step_options(c))

    mesh = sharding.make_mesh(4)
    assert mesh is not None and mesh.size == 4
    (l1, t1), g1 = jax.jit(f)(st.params, batch, step_rng)
    sharded_batch = sharding.shard_batch(batch, mesh)
    leaf = jax.tree.leaves(sharded_batch)[0]
    assert len(leaf.sharding.device_set) == 4 and leaf.addressable_shards[0].data.shape[0] == 1
    (l4, t4), g4 = sharding.shard_fn(f, mesh)(sharding.replicate(st.params, mesh), sharded_batch,
                                             step_rng)
    assert np.isfinite(float(l1))
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-5, atol=1e-5)
    for k in t1:
        np.testing.assert_allclose(float(t4[k]), float(t1[k]), rtol=1e-5, atol=1e-5)
    n = 0
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
        n += 1
    gnorm = float(sum(np.sum(np.square(np.asarray(a))) for a in jax.tree.leaves(g1)))
    assert gnorm > 0

    # the full sharded train step (what train_fold uses on several devices) applies exactly
    # the single-device gradients: compare with the optimizer applied to g1 on the host
    apply = jax.jit(lambda g, o, p: optax.apply_updates(p, st.tx.update(g, o, p)[0]))
    expect = apply(g1, st.opt_state, st.params)
    s4, m4 = step.make_train_step(model, asign_loss, c, mesh=mesh)(sharding.replicate(st, mesh), batch, rng)
    assert int(s4.step) == 1
    np.testing.assert_allclose(float(m4["loss"]), float(l1), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(expect), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)

    # train_fold on the mesh (same compiled step): runs, checkpoints, logs finite losses
    import json, tempfile
    from pathlib import Path
    c.train.checkpoint_every, c.train.log_every = 1, 1
    with tempfile.TemporaryDirectory() as d:
        loop.train_fold(c, model, asign_loss, pool, 0, Path(d) / "ck", Path(d) / "m.jsonl", mesh=mesh,
                        stop_after=2, progress=False)
        mngr = checkpoint.checkpoint_manager(Path(d) / "ck")
        assert mngr.latest_step() == 2
        mngr.close()
        log = [json.loads(l) for l in (Path(d) / "m.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    print("SHARDING_OK", n, "gradient leaves")
""")


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", NPROC="8",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "SHARDING_OK" in proc.stdout


def test_make_mesh_picks_a_divisor():
    from asign_jax.training import sharding
    assert sharding.make_mesh(4, n_devices=1) is None            # one device: plain jit
