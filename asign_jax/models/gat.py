"""Multi-head graph attention (paper eq. 4) with the 3D edge weight as an attention bias.

The official "GAT" was GraphSAGE-mean with an attention score that cancels out (zero gradient;
docs/official_code.md §4.3). This is a real GAT (Velickovic et al. 2018): the
softmax runs over each receiver's incoming edges, so neighbours are weighted differently.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from asign_jax.graph.contract import EDGE_SELF
from asign_jax.models import sparse

N_EDGE_TYPES = EDGE_SELF + 1   # EDGE_INTRA, EDGE_CROSS, EDGE_SELF


def masked_segment_softmax(logits: jnp.ndarray, segment_ids: jnp.ndarray, num_segments: int,
                           mask: jnp.ndarray) -> jnp.ndarray:
    """Softmax of ``logits`` (E, ...) over the entries sharing a segment id; masked entries get 0.

    ``mask`` (E,) bool. A segment whose entries are all masked (a padding node) gives zeros, not
    NaN, and masked logits never enter any arithmetic (they may be NaN/inf), so gradients stay
    finite. Real segments sum to 1.
    """
    mask = mask.reshape(mask.shape + (1,) * (logits.ndim - 1))
    logits = jnp.where(mask, logits, 0.0)
    seg_max = jax.ops.segment_max(jnp.where(mask, logits, -jnp.inf), segment_ids, num_segments)
    seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
    ex = jnp.where(mask, jnp.exp(jnp.where(mask, logits - seg_max[segment_ids], 0.0)), 0.0)
    denom = jax.ops.segment_sum(ex, segment_ids, num_segments)
    denom = jnp.where(denom > 0, denom, 1.0)
    return ex / denom[segment_ids]


class GATLayer(nn.Module):
    """One multi-head GAT layer, heads concatenated, ELU, then residual + LayerNorm.

    Per head k, for the edge j -> i (sender j, receiver i):
      e_ij^k = LeakyReLU_0.2(a_dst^k . W^k h_i + a_src^k . W^k h_j) + b^k_{type_ij} * weight_ij
      alpha_ij^k = softmax over the incoming edges of i (padded edges masked out)
      h'_i = LN(h_i + Drop(ELU(||_k sum_j alpha_ij^k W^k h_j)))
    The 3D edge weight (1/distance for intra-layer edges, IoU + cosine for cross-layer ones, 1
    for self loops; graph/contract.py) enters as an additive attention BIAS scaled by a learned
    scalar b per head per edge type: the paper only says W is "determined by the connections
    between nodes", this is our reading. b starts at 1, so heavier edges get more attention from
    the first step; the model can turn a type's weight off (b=0) or invert it.
    Dropout (standard GAT) is applied to alpha and to the update.

    Shapes: h (N, hidden); senders, receivers, edge_type (E,) int; edge_weight (E,) float;
    edge_mask (E,) bool -> (N, hidden). Only edges move information between nodes.
    The aggregation is a per-head CSR product (``models.sparse``); ``layout`` (optional) is
    ``sparse.layout(senders, receivers, N)``, passed by callers that reuse it across layers.
    """

    hidden: int
    heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h: jnp.ndarray, senders: jnp.ndarray, receivers: jnp.ndarray,
                 edge_weight: jnp.ndarray, edge_type: jnp.ndarray, edge_mask: jnp.ndarray,
                 *, train: bool, layout=None) -> jnp.ndarray:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        n_node, head_dim = h.shape[0], self.hidden // self.heads
        wh = nn.DenseGeneral((self.heads, head_dim), use_bias=False, name="W")(h)  # (N, k, d)
        a_src = self.param("a_src", nn.initializers.lecun_normal(), (self.heads, head_dim))
        a_dst = self.param("a_dst", nn.initializers.lecun_normal(), (self.heads, head_dim))
        b_type = self.param("edge_bias", nn.initializers.ones, (N_EDGE_TYPES, self.heads))

        score_src = jnp.einsum("nkd,kd->nk", wh, a_src)                   # (N, k)
        score_dst = jnp.einsum("nkd,kd->nk", wh, a_dst)
        weight = jnp.where(edge_mask, edge_weight, 0.0)
        etype = jnp.where(edge_mask, edge_type, 0)
        logits = nn.leaky_relu(score_dst[receivers] + score_src[senders], 0.2)
        logits = logits + b_type[etype] * weight[:, None]                   # (E, k)
        alpha = masked_segment_softmax(logits, receivers, n_node, edge_mask)
        alpha = nn.Dropout(self.dropout)(alpha, deterministic=not train)
        alpha = jnp.where(edge_mask[:, None], alpha, 0.0)
        lay = sparse.layout(senders, receivers, n_node) if layout is None else layout
        agg = sparse.spmm_heads(alpha, wh, lay)                             # (N, k, d)
        upd = nn.elu(agg.reshape(n_node, self.hidden))  # concat heads of each node (per row)
        upd = nn.Dropout(self.dropout)(upd, deterministic=not train)
        return nn.LayerNorm(name="ln")(h + upd)
