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
    ``key_value`` may also be a tuple of SOURCES ``((tokens_i (M_i, L_i, Dkv), index_i),
    ...)``, index_i (N,) or None (M_i == N): each source is projected on its own M_i sets and
    gathered by its index, and node n attends over the keys of all sources in order
    (Lk = sum L_i); one source is the form above.

    Softmax scale is 1/sqrt(head_dim) (paper eq. 2, per head). Dropout acts on the attention
    probabilities. With a single key (Lk = 1) the weights are 1 and the layer is out(value(kv)),
    so no query/key parameters are made. The weights (N, heads, Lq, Lk) are sown as
    ``intermediates/attention_weights``.
    """

    hidden: int
    heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, query: jnp.ndarray, key_value, kv_index: Optional[jnp.ndarray] = None,
                 *, train: bool) -> jnp.ndarray:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        head_dim = self.hidden // self.heads
        dense = lambda name: nn.DenseGeneral((self.heads, head_dim), name=name)
        sources = (tuple(key_value) if isinstance(key_value, (tuple, list))
                   else ((key_value, kv_index),))
        v = _per_node(dense("value"), sources)            # [(N, L_i, h, d)]: gathered, no mixing
        n, lq, lk = query.shape[0], query.shape[1], sum(t.shape[1] for t, _ in sources)
        if lk == 1:
            # softmax over one key is 1 whatever the query: no query/key projections, which
            # would get exactly zero gradient (the official cross-attention's failure mode)
            weights = jnp.ones((n, self.heads, lq, 1), v[0].dtype)
        else:
            q = dense("query")(query)                     # (N, Lq, h, d)
            k = _per_node(dense("key"), sources)
            logits = jnp.concatenate([jnp.einsum("nqhd,nkhd->nhqk", q, k_i) for k_i in k], -1)
            logits = logits / jnp.sqrt(head_dim).astype(q.dtype)
            weights = nn.softmax(logits, axis=-1)         # (N, h, Lq, Lk)
        self.sow("intermediates", "attention_weights", weights)
        weights = nn.Dropout(self.dropout)(weights, deterministic=not train)
        out, start = 0.0, 0
        for v_i in v:                                     # sum over the sources' keys
            stop = start + v_i.shape[1]
            out = out + jnp.einsum("nhqk,nkhd->nqhd", weights[..., start:stop], v_i)
            start = stop
        return nn.DenseGeneral(self.hidden, axis=(-2, -1), name="out")(out)


def _per_node(project: nn.Module, sources: tuple) -> list:
    """[(N, L_i, h, d)]: ``project`` (one module, shared) on each source's M_i token sets, then
    gathered per node by the source's index (none: already per node)."""
    out = []
    for tokens, index in sources:
        p = project(tokens)                               # (M_i, L_i, h, d)
        out.append(p if index is None else p[index])
    return out


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

    ``context`` (optional): ``((rows (M_c, hidden), index (N,)), ...)``, one more key/value
    token per entry for each node n, ``rows[index[n]]``, after the L tokens. The same as
    appending the gathered rows to ``tokens``, but the LayerNorm and the K/V projections run
    on the M_c distinct rows (a spot's region and global context are its tiles' features, and
    many spots share a tile).
    """

    hidden: int
    heads: int
    mlp_ratio: int = 2
    dropout: float = 0.0
    outputs: Optional[int] = None

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, *, train: bool, context: tuple = ()) -> jnp.ndarray:
        drop = nn.Dropout(self.dropout)
        ln = nn.LayerNorm(name="ln_attn")
        y = ln(tokens)
        n_out = tokens.shape[1] if self.outputs is None else self.outputs
        # context tokens: LayerNorm and K/V projections on the M_c distinct rows, then gathered
        sources = ((y, None),) + tuple((ln(rows)[:, None], index) for rows, index in context)
        y = MultiHeadAttention(self.hidden, self.heads, self.dropout, name="attn")(
            y[:, :n_out], sources, train=train)
        x = tokens[:, :n_out] + drop(y, deterministic=not train)
        y = nn.LayerNorm(name="ln_mlp")(x)
        y = nn.Dense(self.mlp_ratio * self.hidden, name="mlp_in")(y)
        y = nn.Dense(self.hidden, name="mlp_out")(nn.gelu(y))
        return x + drop(y, deterministic=not train)
