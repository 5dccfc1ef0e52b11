"""Multi-process data parallelism: two local CPU processes (jax.distributed, loopback only) train
the same fold as one process and must reach the same losses and parameters (SGD: Adam would
amplify float-order differences of near-zero gradients)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    mode, out = sys.argv[1], Path(sys.argv[2])
    from asign_jax.training import sharding
    if mode == "multi":
        sharding.initialize(sys.argv[3], 2, int(sys.argv[4]))
    import jax, numpy as np
    from asign_jax.config import base_config
    from asign_jax.models import factory
    from asign_jax.training import batches, folds, loop
    from asign_jax.testing import random_sample_graph

    c = base_config()
    c.model.asign.hidden, c.model.asign.heads, c.model.asign.gat_layers = 16, 2, 1
    c.model.asign.cli_iterations, c.model.asign.transformer_mlp_ratio = 2, 1
    c.train.samples_per_step, c.train.steps, c.train.optimizer = 2, 3, "sgd"
    c.train.learning_rate, c.train.log_every, c.train.checkpoint_every = 0.05, 1, 100
    graphs = {s: random_sample_graph(i, n_layers=2, spots_per_layer=8, n_region=8, n_global=6,
                                     n_genes=8, feat_dim=8, n_tokens=2, k=3, sample_id=s)
              for i, s in enumerate("ABC")}
    fold = folds.Fold(index=0, test_samples=("A",), train_samples=("B", "C"),
                      known_layer={"A": 0})
    pool = batches.build_pool(graphs, fold, seed=0)
    model, loss_fn = factory.build(c, 8)
    mesh = sharding.make_mesh(2)
    assert (mesh is None) == (mode == "single"), (mode, jax.devices())
    with tempfile.TemporaryDirectory() as d:
        state = loop.train_fold(c, model, loss_fn, pool, 0, Path(d) / f"ck{jax.process_index()}",
                                Path(d) / "m.jsonl", mesh=mesh, progress=False)
        losses = [json.loads(l)["loss"] for l in (Path(d) / "m.jsonl").read_text().splitlines()]
    params = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(jax.device_get(state.params))]
    if jax.process_index() == 0:
        out.write_text(json.dumps({"losses": losses, "params": params,
                                   "devices": jax.device_count(), "processes": jax.process_count()}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", NPROC="4",
               PYTHONPATH=os.pathsep.join([str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    coord = f"127.0.0.1:{_free_port()}"
    multi = [subprocess.Popen([sys.executable, "-c", SCRIPT, "multi", str(tmp_path / "multi.json"),
                               coord, str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    single = subprocess.run([sys.executable, "-c", SCRIPT, "single", str(tmp_path / "one.json")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    logs = []
    for p in multi:
        try:
            logs.append(p.communicate(timeout=1800)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0])
    assert single.returncode == 0, single.stderr[-3000:]
    assert all(p.returncode == 0 for p in multi), "\n".join(l[-3000:] for l in logs)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "multi.json").read_text())
    assert two["processes"] == 2 and two["devices"] == 2 and one["devices"] == 1
    assert len(one["losses"]) == 3 and np.isfinite(one["losses"]).all()
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for a, b in zip(one["params"], two["params"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert not np.allclose(one["losses"][0], one["losses"][-1])        # it trained


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
