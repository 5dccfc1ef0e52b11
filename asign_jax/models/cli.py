"""Cross-layer Imputation (CLI, paper §III-D, eq. 5-6): weighted label propagation on the 3D
spot graph from the known spots, then an adaptive per-gene blend with the model prediction.

Differences from the official code (docs/official_code.md §4.7-4.8), following
the paper instead: edges are weighted by the 3D edge weight e_ij and a learned per-node alpha_j
(the official LP used the binary adjacency), unknown nodes start from the model prediction (not
zeros), and the blend puts alpha on the MODEL prediction (eq. 6).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asign_jax.config import check_choice
from asign_jax.models import sparse

MIN_TRUST = 1e-12
"""A node whose incoming trust sum_j alpha_j e_ij is at most this is treated as having no
usable in-edge (it keeps its value). Without it, learned alpha_j = sigmoid(.) that all
underflow toward 0 around a node leave a subnormal denominator whose gradient (x / d^2)
overflows to inf and turns the whole update into NaN (seen: ASIGN without GAT on the
synthetic demo, fold 1, step 5). Real graphs have sums of order 1, so nothing else changes."""

DENSE_MAX_NODES = 128
"""``propagate(..., dense=None)`` uses the dense form up to this many (padded) nodes.

Measured (``experiments/bench_kernels.py``, 10 iterations forward + backward, G = 250, Visium
lattice graphs with ~24 in-edges per node, 2-core CPU): dense 1.6 / 12 / 14 / 55 / 684 ms
against the CSR product's 5.9 / 18.6 / 8.2 / 17 / 108 ms at 64 / 128 / 256 / 512 / 1024
nodes; the dense form wins up to 128 nodes only. (The old gather + segment-sum form took
52 / 127 / 372 / 584 / 1167 ms.)"""


def propagate(pred: jnp.ndarray, labels: jnp.ndarray, known: jnp.ndarray,
              senders: jnp.ndarray, receivers: jnp.ndarray, edge_weight: jnp.ndarray,
              node_alpha: jnp.ndarray, edge_mask: jnp.ndarray, node_mask: jnp.ndarray,
              n_iter: int, dense: Optional[bool] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Label propagation (eq. 5, read as a weighted AVERAGE) for ``n_iter`` iterations.

    Args:
      pred: (N, G) model prediction p_s; the start value of unknown nodes.
      labels: (N, G) labels; only rows with ``known`` are read.
      known: (N,) bool, nodes whose label is given. They stay fixed, bit-identical to ``labels``.
      senders, receivers: (E,) int; messages flow sender j -> receiver i.
      edge_weight: (E,) float e_ij > 0 (the 3D graph weight).
      node_alpha: (N,) float alpha_j in (0, 1), the learned trust of sender j.
      edge_mask, node_mask: (E,), (N,) bool; False = padding, which never contributes.
      n_iter: static number of iterations (the paper uses 10).
      dense: static. True: each iteration is one (N, N) @ (N, G) matmul with the row-normalised
        weight matrix (built by one scatter of E scalars); False: a CSR product
        (``models.sparse.spmm``) of the fixed edge weights e_ij with alpha * p, linear in
        E x G, no (E, G) intermediate. Same result (to float rounding); None picks dense for
        N <= ``DENSE_MAX_NODES`` (measured crossover). Why not the gather of the (E, G) sender
        rows + segment sum: XLA's CPU gather/scatter of (E, G) rows dominated a training step.

    Update of an unknown node i (t -> t+1), with w_ij = alpha_j * e_ij over valid in-edges:
      p_i^{t+1} = sum_j w_ij p_j^t / sum_j w_ij
    The paper's eq. 5 divides by sum_j e_ij only, which would shrink every value by the mean
    alpha (labels are log-normalised, around -5, so that is a bias, not a weighting); dividing
    by sum_j w_ij makes alpha_j a relative trust of neighbour j. Unknown neighbours contribute
    their current value (initially their model prediction).

    "Reached": known nodes are reached at t=0; a node becomes reached once any in-neighbour is
    reached. Only reached unknown nodes are updated, so an unknown node that no known node
    reaches within ``n_iter`` hops keeps exactly its model prediction.

    Returns ``(imputed (N, G), reached (N,) bool)``; padded rows are 0 / False. Garbage (even
    NaN) in padded rows or in the labels of unknown nodes never reaches real outputs or gradients
    (``jnp.where`` before any arithmetic). Gradients flow to ``pred`` and ``node_alpha``.
    """
    n_node = pred.shape[0]
    dense = n_node <= DENSE_MAX_NODES if dense is None else dense
    known = known & node_mask
    valid = (edge_mask & node_mask[senders] & node_mask[receivers]
             & jnp.isfinite(edge_weight) & (edge_weight > 0))
    alpha = jnp.where(node_mask, node_alpha, 0.0)
    e = jnp.where(valid, edge_weight, 0.0)
    w = jnp.where(valid, alpha[senders] * e, 0.0)                          # (E,)
    denom = jax.ops.segment_sum(w, receivers, n_node)                       # (N,)
    has_in = denom > MIN_TRUST
    safe_denom = jnp.where(has_in, denom, 1.0)

    pred = jnp.where(node_mask[:, None], pred, 0.0)
    labels = jnp.where(known[:, None], labels, 0.0)
    p0 = jnp.where(known[:, None], labels, pred)

    if dense:
        average, reached_from = _dense_steps(w, valid, senders, receivers, safe_denom, n_node)
    else:
        average, reached_from = _sparse_steps(e, alpha, valid, senders, receivers, safe_denom,
                                              n_node)

    def body(_, carry):
        p, reached = carry
        reached_next = reached | reached_from(reached)
        update = reached_next & ~known & has_in
        p = jnp.where(update[:, None], average(p), p)
        p = jnp.where(known[:, None], labels, p)
        return p, reached_next

    p, reached = jax.lax.fori_loop(0, n_iter, body, (p0, known))
    p = jnp.where(known[:, None], labels, p)
    p = jnp.where(node_mask[:, None], p, 0.0)
    return p, reached & node_mask


def _dense_steps(w, valid, senders, receivers, safe_denom, n_node):
    """``propagate``'s two per-iteration maps in the dense form: ``average(p)`` (N, G) -> (N, G)
    is one matmul with the row-normalised (N_recv, N_send) weight matrix built from the (E,)
    weights ``w`` = alpha_j e_ij; ``reached_from(reached)`` (N,) bool -> (N,) bool marks nodes
    with a valid in-edge from a reached node (a 0/1 adjacency matvec)."""
    # padded / invalid edges add exact zeros; every row of p is finite (masked by the caller)
    mat = jnp.zeros((n_node, n_node), w.dtype).at[receivers, senders].add(w)
    mat = mat / safe_denom[:, None]                                         # (N_recv, N_send)
    adj = jnp.zeros((n_node, n_node), w.dtype).at[receivers, senders].max(
        valid.astype(w.dtype))

    def average(p):
        return jnp.matmul(mat, p, precision=jax.lax.Precision.HIGHEST)

    def reached_from(reached):
        return adj @ reached.astype(w.dtype) > 0

    return average, reached_from


def _sparse_steps(e, alpha, valid, senders, receivers, safe_denom, n_node):
    """The same two maps as ``_dense_steps`` in the CSR form, linear in E x G: e (E,) are the
    masked graph weights e_ij, alpha (N,) the masked sender trust."""
    # sum_j alpha_j e_ij p_j = A_e (alpha * p): a CSR product with the FIXED graph weights
    # (no per-edge gradient), alpha enters through an (N, G) elementwise product
    lay = sparse.layout(senders, receivers, n_node)

    def average(p):
        return sparse.spmm(e, alpha[:, None].astype(p.dtype) * p, lay) / \
            safe_denom[:, None]

    def reached_from(reached):
        return jax.ops.segment_max((valid & reached[senders]).astype(jnp.int32),
                                   receivers, n_node) > 0

    return average, reached_from


propagate_jit = jax.jit(propagate, static_argnames=("n_iter", "dense"))


def blend(pred: jnp.ndarray, imputed: jnp.ndarray, theta: jnp.ndarray) -> tuple[jnp.ndarray,
                                                                              jnp.ndarray]:
    """Eq. 6: p'_s = alpha * p_s + (1 - alpha) * p_i with alpha = sigmoid(theta) per gene (G,).

    alpha weighs the MODEL prediction, as in the paper (the official code weighs the LP side).
    Returns ``(p'_s (N, G), alpha (G,))``.
    """
    alpha = jax.nn.sigmoid(theta)
    return mix(pred, imputed, alpha), alpha


def mix(pred, imputed, alpha):
    """Eq. 6 for a given weight: alpha * p_s + (1 - alpha) * p_i, alpha (G,) on the model
    prediction. numpy or jax arrays (the validation refit and the tiled imputation use it on
    host arrays)."""
    return alpha * pred + (1.0 - alpha) * imputed


def fit_blend(pred: np.ndarray, imputed: np.ndarray, truth: np.ndarray,
              shrinkage: float = 1.0) -> np.ndarray:
    """Per-gene eq.-6 weight alpha (G,) in [0, 1] by least squares on held-out spots.

    Minimises sum_spots (alpha p_s + (1 - alpha) p_i - y)^2 per gene:
    alpha_g = sum (p_s - p_i)(y - p_i) / sum (p_s - p_i)^2, shrunk toward the pooled
    alpha* = sum_g num_g / sum_g den_g with ``shrinkage`` x the mean denominator as the prior's
    weight (a gene whose two predictions barely differ gets alpha*), then clipped to [0, 1].
    pred, imputed, truth: (M, G) on spots whose labels neither prediction saw (validation).
    """
    d = np.asarray(pred, np.float64) - np.asarray(imputed, np.float64)
    r = np.asarray(truth, np.float64) - np.asarray(imputed, np.float64)
    num, den = (d * r).sum(0), (d * d).sum(0)
    pooled = float(np.clip(num.sum() / max(den.sum(), 1e-12), 0.0, 1.0))
    prior = float(shrinkage) * float(den.mean())
    alpha = (num + prior * pooled) / np.maximum(den + prior, 1e-12)
    return np.clip(alpha, 0.0, 1.0)


def blend_logit(alpha: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """theta with sigmoid(theta) = alpha (clipped to [eps, 1 - eps]): the CLI's "theta"."""
    a = np.clip(np.asarray(alpha, np.float64), eps, 1.0 - eps)
    return np.log(a / (1.0 - a)).astype(np.float32)


def known_mean(labels: jnp.ndarray, known: jnp.ndarray) -> jnp.ndarray:
    """(G,) mean label of the ``known`` (N,) spots; zeros when there is none. Rows outside
    ``known`` are replaced before any arithmetic (a NaN there never enters)."""
    n = jnp.sum(known)
    total = jnp.sum(jnp.where(known[:, None], labels, 0.0), axis=0)
    return total / jnp.maximum(n, 1).astype(labels.dtype)


def start_value(pred: jnp.ndarray, labels: jnp.ndarray, known: jnp.ndarray,
                start: str) -> jnp.ndarray:
    """(N, G) start of the propagation: ``"model"`` = p_s (the paper), ``"known_mean"`` = the
    known spots' mean profile on every node (the network's prediction then enters the final
    p'_s through the eq.-6 blend only, not through the propagation)."""
    if check_choice("model.asign.cli_start", start) == "model":
        return pred
    return jnp.broadcast_to(known_mean(labels, known).astype(pred.dtype), pred.shape)


class CrossLayerImputation(nn.Module):
    """CLI block: alpha_j = sigmoid(Dense(1)(h_j)), ``propagate``, then the eq.-6 blend.

    "alpha_j is a learnable weight for node j" (paper) is read as a function of node j's
    representation h_j, not a free parameter per node: free per-node parameters would not
    transfer between samples (a held-out sample has other nodes). The Dense kernel starts at
    zero, so at init every alpha_j = 0.5 and the propagation is the plain e_ij-weighted average.
    ``node_alpha="fixed"``: alpha_j = 1, a parameter-free propagation (no Dense), for data
    where no training sample can teach cross-layer trust (one labelled layer per 3D sample).
    ``start``: what unknown nodes hold before the first step (``start_value``).
    theta (G,) starts at 0 (alpha = 0.5: equal trust in model and propagation); with
    ``model.asign.blend = "validation"`` it is replaced after training by ``blend_logit(fit_blend(
    ...))`` on the validation role (``training.selection``).

    Shapes: h (N, H), pred (N, G), labels (N, G), known (N,) bool, graph arrays as in
    ``propagate`` -> dict(spot (N, G), imputed (N, G), alpha (G,), reached (N,),
    node_alpha (N,)); node_alpha lets a tiled imputation run the propagation on the whole
    graph after the network ran in tiles (``training.subgraph.impute_tiled``).
    """

    n_iter: int = 10
    node_alpha: str = "learned"
    start: str = "model"

    @nn.compact
    def __call__(self, h, pred, labels, known, senders, receivers, edge_weight, edge_mask,
                 node_mask):
        if check_choice("model.asign.cli_node_alpha", self.node_alpha) == "learned":
            node_alpha = nn.sigmoid(nn.Dense(1, kernel_init=nn.initializers.zeros,
                                             name="node_alpha")(h)[:, 0])
        else:
            node_alpha = jnp.ones(h.shape[:1], pred.dtype)
        imputed, reached = propagate(start_value(pred, labels, known, self.start), labels,
                                     known, senders, receivers, edge_weight, node_alpha,
                                     edge_mask, node_mask, self.n_iter)
        theta = self.param("theta", nn.initializers.zeros, (pred.shape[-1],))
        spot, alpha = blend(pred, imputed, theta)
        return {"spot": spot, "imputed": imputed, "alpha": alpha, "reached": reached,
                "node_alpha": node_alpha}


__all__ = ["propagate", "propagate_jit", "blend", "mix", "fit_blend", "blend_logit",
           "known_mean", "start_value", "CrossLayerImputation"]
