"""Multi-head attention and the per-node transformer layer of MSAGNet.

Nothing here mixes nodes: every node attends only over its OWN token sequence. The official
code's bugs avoided here (see docs/official_code.md §4): its cross-attention had
one key, so the softmax was 1 and the query (the spot) was ignored; its transformer reshaped a
(3, N, D) stack with ``view(N, 3, D)``, mixing nodes.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of each node's queries over that node's keys.

    Shapes: ``query`` (N, Lq, Dq), ``key_value`` (M, Lk, Dkv) -> (N, Lq, hidden).
    ``kv_index`` (N,) int, optional: node n attends over ``key_value[kv_index[n]]``. The K/V
    projections run on the M distinct token sets BEFORE the gather (many spots share one
    region tile), which is the same result as gathering first, for less compute.
    Without ``kv_index``, M == N and node n attends over ``key_value[n]``.

    Softmax scale is 1/sqrt(head_dim) (paper eq. 2, per head). Dropout acts on the attention
    probabilities. With a single key (Lk = 1) the weights are 1 and the layer is out(value(kv)),
    so no query/key parameters are made. The weights (N, heads, Lq, Lk) are sown as
    ``intermediates/attention_weights``.
    """

    hidden: int
    heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, query: jnp.ndarray, key_value: jnp.ndarray,
                 kv_index: Optional[jnp.ndarray] = None, *, train: bool) -> jnp.ndarray:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        head_dim = self.hidden // self.heads
        dense = lambda name: nn.DenseGeneral((self.heads, head_dim), name=name)
        v = dense("value")(key_value)                     # (M, Lk, h, d)
        if kv_index is not None:
            v = v[kv_index]                               # (N, Lk, h, d): gather, no mixing
        n, lq, lk = query.shape[0], query.shape[1], key_value.shape[1]
        if lk == 1:
            # softmax over one key is 1 whatever the query: no query/key projections, which
            # would get exactly zero gradient (the official cross-attention's failure mode)
            weights = jnp.ones((n, self.heads, lq, 1), v.dtype)
        else:
            q = dense("query")(query)                     # (N, Lq, h, d)
            k = dense("key")(key_value)
            if kv_index is not None:
                k = k[kv_index]
            logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
            weights = nn.softmax(logits, axis=-1)         # (N, h, Lq, Lk)
        self.sow("intermediates", "attention_weights", weights)
        weights = nn.Dropout(self.dropout)(weights, deterministic=not train)
        out = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
        return nn.DenseGeneral(self.hidden, axis=(-2, -1), name="out")(out)


class TransformerLayer(nn.Module):
    """Pre-LN transformer encoder layer over each node's own token sequence.

    ``tokens`` (N, L, hidden) -> (N, L, hidden): x += Drop(MHSA(LN x)); x += Drop(MLP(LN x)),
    MLP = Dense(mlp_ratio*hidden) -> GELU -> Dense(hidden). L is 3 (spot: [h, region, global]),
    2 (region: [h, global]) or 1 (global: [h]); with L = 1 self-attention reduces to
    out(value(x)) (no query/key parameters).

    ``outputs`` (static, optional): compute only the first ``outputs`` tokens' outputs
    (N, outputs, hidden). Every token is still a key/value, so those outputs are exactly the
    full layer's ``[:, :outputs]`` (same parameters; in train mode the dropout masks are drawn
    for the smaller shape). MSAGNet keeps only the node token of each layer, so the queries,
    the attention output, the residuals and the MLP run on 1 of the L tokens: about half the
    layer's matmul FLOPs at L = 3 (docs/performance.md).
    """

    hidden: int
    heads: int
    mlp_ratio: int = 2
    dropout: float = 0.0
    outputs: Optional[int] = None

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        drop = nn.Dropout(self.dropout)
        y = nn.LayerNorm(name="ln_attn")(tokens)
        n_out = tokens.shape[1] if self.outputs is None else self.outputs
        y = MultiHeadAttention(self.hidden, self.heads, self.dropout, name="attn")(
            y[:, :n_out], y, train=train)
        x = tokens[:, :n_out] + drop(y, deterministic=not train)
        y = nn.LayerNorm(name="ln_mlp")(x)
        y = nn.Dense(self.mlp_ratio * self.hidden, name="mlp_in")(y)
        y = nn.Dense(self.hidden, name="mlp_out")(nn.gelu(y))
        return x + drop(y, deterministic=not train)
