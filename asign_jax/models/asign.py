"""MSAGNet + CLI (paper §III-C/D, App. F): the full ASIGN model on one padded 3D sample.

Data flow (N_s spots, N_r region nodes, N_q global nodes, hidden H, G genes):

1. Multi-level fusion (eq. 2-3). f_s = Dense(H)(spot feat). Multi-head cross-attention with f_s
   as the single query over the T tokens of the spot's region tile -> f'_s, and over the T
   tokens of its global tile -> f''_s (K/V projections map the D_in tokens straight to H).
   F = Dense(H)(concat(f_s, f'_s, f''_s)). ``use_cross_attention=False``: F = f_s.
2. Spatial-aware graph block per scale (``SpatialGraphBlock``, separate parameters): the spot
   block runs on F with context [region feature, global feature] of each spot; the region
   block on Dense(H)(region feat) with context [its global feature]; the global block on
   Dense(H)(global feat) with no context. The region/global "features" used as context are
   these same projections of the pooled tile features.
3. Regression head per scale: LayerNorm + Dense(G) -> p_s, p_r, p_g. With
   ``spot_offset="known"`` the spot head predicts the DEVIATION from the mean label of the
   sample's known spots (p_s = mean_known + head(h_s)): the level of a sample is read from its
   own known layer, not learnt from other patients (the labels' per-sample offsets otherwise
   dominate the spot MSE). ``image_skip``: p_s also gets a linear path (x - mean) W from the
   spot's image feature, W initialised at the ridge regression of the fold's training labels
   on their features (``training.loop.init_image_skip``): the pooled image features carry a
   linear signal that the deep path, trained a few hundred steps, does not pick up.
4. CLI (``asign_jax.models.cli``): label propagation from the known spots + eq.-6 blend -> p'_s.

Only the GAT message passing and the CLI propagation move information between nodes of the
same graph; spot outputs read their region/global tile by index (a gather), never the reverse.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import jraph
import ml_collections

from asign_jax.config import check_choice
from asign_jax.graph.contract import EDGE_CROSS, edge_mask, node_mask
from asign_jax.models.cli import CrossLayerImputation, known_mean
from asign_jax.models.attention import MultiHeadAttention, TransformerLayer
from asign_jax.models import sparse
from asign_jax.models.gat import GATLayer


class _GraphLayer(nn.Module):
    """One layer of ``SpatialGraphBlock``: GAT (optional) then the per-node transformer.

    (h (N, H), context ((rows (M_c, H), index (N,)), ...), graph arrays, train) -> (h_l, h_l):
    the scan carry and the per-layer output. ``train`` is positional because ``nn.scan``
    broadcasts it.
    """

    hidden: int
    heads: int
    mlp_ratio: int
    dropout: float
    use_gat: bool

    @nn.compact
    def __call__(self, h, context, senders, receivers, edge_weight, edge_type, edge_mask, layout,
                 train):
        if self.use_gat:
            h = GATLayer(self.hidden, self.heads, self.dropout, name="gat")(
                h, senders, receivers, edge_weight, edge_type, edge_mask, train=train,
                layout=layout)
        # tokens [h_n, rows_1[index_1[n]], ...]; only the node token's output is kept, the
        # context tokens are keys / values only, projected on their distinct rows
        h = TransformerLayer(self.hidden, self.heads, self.mlp_ratio, self.dropout, outputs=1,
                             name="transformer")(h[:, None, :], train=train,
                                                 context=context)[:, 0]
        return h, h


class SpatialGraphBlock(nn.Module):
    """Spatial-aware graph attention block (eq. 4 + App. F): L x (GAT layer -> transformer layer).

    Layer l: g_l = GAT_l(h_{l-1}) (message passing over the 3D graph), then a pre-LN transformer
    layer over the node's OWN token sequence [g_l, context_1, ..., context_C]; its first output
    token is h_l. The layers are stacked (h_l feeds GAT_{l+1}); the paper's "output of each
    layer passed through a corresponding transformer layer" does not say whether GAT_{l+1} reads
    g_l or h_l, we take h_l (interleaved GAT-transformer). The output is sum_l softmax(w)_l h_l
    with learned w (L,), starting uniform (App. F: "weighted and aggregated").
    Context tokens get a learned type embedding (C, H) so the attention can tell them apart;
    the node token has none. ``use_gat=False`` drops the GAT layers (transformer layers only).
    The L layers have separate parameters, stacked on a leading axis by ``nn.scan`` (one
    compiled layer body instead of L: compile time).

    ``remat``: each layer's activations are recomputed in the backward pass
    (``nn.remat`` = jax.checkpoint) instead of stored: memory per node falls, time rises.

    Shapes: h (N, H); context: C >= 0 pairs (rows (M_c, H), index (N,) int), node n's c-th
    context token being rows[index[n]] (its region / global tile's feature: the LayerNorm and
    K/V projections run on the M_c tiles, not on N gathered copies); graph arrays (E,) ->
    (N, H). A node's output depends only on nodes within ``layers`` hops.
    """

    hidden: int
    heads: int
    layers: int
    mlp_ratio: int
    dropout: float
    use_gat: bool = True
    remat: bool = False

    @nn.compact
    def __call__(self, h: jnp.ndarray, context: tuple, senders: jnp.ndarray,
                 receivers: jnp.ndarray, edge_weight: jnp.ndarray, edge_type: jnp.ndarray,
                 edge_mask: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        n_ctx = len(context)
        if n_ctx:
            type_emb = self.param("context_embedding", nn.initializers.normal(0.02),
                                  (n_ctx, self.hidden))
            context = tuple((rows + type_emb[c], index)
                            for c, (rows, index) in enumerate(context))
        # train (argument 9, self = 0) is a Python bool: static for the checkpoint
        layer = nn.remat(_GraphLayer, static_argnums=(9,), prevent_cse=False) if self.remat \
            else _GraphLayer
        layers = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0},
                         split_rngs={"params": True, "dropout": True},
                         in_axes=nn.broadcast, length=self.layers)(
            self.hidden, self.heads, self.mlp_ratio, self.dropout, self.use_gat, name="layers")
        # the CSR views of the edges (models.sparse), built once for the L layers
        lay = sparse.layout(senders, receivers, h.shape[0]) if self.use_gat else None
        _, outs = layers(h, context, senders, receivers, edge_weight, edge_type, edge_mask, lay,
                         train)                                             # (L, N, H)
        w = nn.softmax(self.param("layer_weights", nn.initializers.zeros, (self.layers,)))
        return jnp.einsum("l,lnh->nh", w, outs)


def _edges(g: jraph.GraphsTuple, cross_layer: bool = True) -> tuple:
    """(senders, receivers, weight, type, mask); ``cross_layer=False`` masks the cross-layer
    edges out (the 2D graph of ASIGN 2D / Table IV, on the same stored 3D graph)."""
    mask = edge_mask(g)
    if not cross_layer:
        mask = mask & (g.edges["type"] != EDGE_CROSS)
    return g.senders, g.receivers, g.edges["weight"], g.edges["type"], mask


class RegressionHead(nn.Module):
    """LayerNorm + Dense(G): (N, H) -> (N, G) normalised expression, one head per scale.
    ``zeros``: the Dense starts at zero, so the head's first output is its bias alone."""

    n_genes: int
    zeros: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        init = nn.initializers.zeros if self.zeros else nn.linear.default_kernel_init
        return nn.Dense(self.n_genes, kernel_init=init, name="out")(nn.LayerNorm(name="ln")(x))


class ASIGN(nn.Module):
    """ASIGN = MSAGNet + Cross-layer Imputation on one padded sample (graph/contract.py).

    ``__call__(spot, region, glob, known, *, train)``: ``known`` (N_s,) bool marks the spots
    whose labels feed the CLI; it is intersected with ``spot.nodes["label_mask"]`` and the node
    padding mask, so a label that may not be used never enters. Returns
      spot (N_s, G) p'_s final, spot_model (N_s, G) p_s, imputed (N_s, G) p_i,
      region (N_r, G) p_r, global (N_q, G) p_g, alpha (G,) blend weight of p_s,
      reached (N_s,) bool (spots the propagation reached; without CLI, the known spots),
      node_alpha (N_s,) the CLI's per-sender trust alpha_j (ones without CLI).
    No Python control flow on array values, so it can be vmapped over samples. Dropout rng:
    "dropout". ``cfg`` is ``config.model.asign`` (``factory.model_config``).
    """

    cfg: ml_collections.ConfigDict
    n_genes: int

    def lr_multipliers(self) -> tuple:
        """(module, learning-rate factor) pairs for ``training.state.make_optimizer``. The CLI
        has a handful of scalars per gene / a Dense(1): with Adam each moves at most ~lr a step,
        far too slow for a blend weight that must travel several logits. The linear image path
        starts at a ridge fit (``training.loop.init_image_skip``); at the network's rate Adam
        would move each of its D x G weights by ~lr a step. ``lr_multiplier`` scales all of
        ASIGN ("*": every module), so its rate is set apart from the baselines' train rate."""
        m = float(self.cfg.lr_multiplier)
        return (("cli", m * float(self.cfg.cli_lr_multiplier)),
                ("image_skip", m * float(self.cfg.skip_lr_multiplier)), ("*", m))

    @staticmethod
    def graph_hops(cfg, exact: bool) -> int:
        """Hops over the spot graph a spatial tile's halo needs (``training.subgraph``):
        gat_layers (the network exact on a tile's core nodes), plus cli_iterations when
        ``exact`` (the propagation too). ``cfg``: ``config.model.asign``."""
        hops = int(cfg.gat_layers) if cfg.use_gat else 0
        if exact and cfg.use_cli:
            hops += int(cfg.cli_iterations)
        return hops

    def output_init(self) -> dict:
        """How ``training.loop`` starts this model from the training labels before step 0:
        ``relative_spot_bias`` (the spot head's bias relative to the known spots' mean, which
        ``spot_offset="known"`` adds) and ``image_skip`` (the labels the linear image path's
        ridge fit reads, ``skip_fit``; None without the path). A model without this method
        keeps a plain head bias at the mean training label."""
        c = self.cfg
        return {"relative_spot_bias": c.spot_offset == "known",
                "image_skip": str(c.skip_fit) if c.image_skip else None}

    @nn.compact
    def __call__(self, spot: jraph.GraphsTuple, region: jraph.GraphsTuple,
                 glob: jraph.GraphsTuple, known: jnp.ndarray, *, train: bool) -> dict:
        c, hidden = self.cfg, self.cfg.hidden
        drop = nn.Dropout(c.dropout)
        ridx, gidx = spot.nodes["region_idx"], spot.nodes["global_idx"]

        # -- multi-level fusion (eq. 2-3) ------------------------------------------------------
        r_feat = nn.Dense(hidden, name="region_proj")(region.nodes["feat"])   # (N_r, H)
        g_feat = nn.Dense(hidden, name="global_proj")(glob.nodes["feat"])     # (N_q, H)
        f_s = nn.Dense(hidden, name="spot_proj")(spot.nodes["feat"])          # (N_s, H)
        if c.use_cross_attention:
            attend = lambda name, tokens, idx: MultiHeadAttention(
                hidden, c.heads, c.dropout, name=name)(f_s[:, None], tokens, idx,
                                                       train=train)[:, 0]
            f_r = attend("cross_attn_region", region.nodes["tokens"], ridx)
            f_g = attend("cross_attn_global", glob.nodes["tokens"], gidx)
            fused = nn.Dense(hidden, name="fusion")(jnp.concatenate([f_s, f_r, f_g], -1))
        else:
            fused = f_s
        fused = drop(fused, deterministic=not train)

        # -- spatial-aware graph blocks, one per scale -----------------------------------------
        block = lambda name: SpatialGraphBlock(hidden, c.heads, c.gat_layers,
                                               c.transformer_mlp_ratio, c.dropout, c.use_gat,
                                               bool(c.remat), name=name)
        # context tokens as (tile rows, index per node): a spot's [region, global] features,
        # a region node's global feature, none for a global node
        spot_ctx = ((r_feat, ridx), (g_feat, gidx))
        region_ctx = ((g_feat, region.nodes["global_idx"]),)
        glob_ctx = ()
        cross = bool(c.cross_layer_edges)
        h_s = block("spot_block")(fused, spot_ctx, *_edges(spot, cross), train=train)
        h_r = block("region_block")(drop(r_feat, deterministic=not train), region_ctx,
                                    *_edges(region, cross), train=train)
        h_g = block("global_block")(drop(g_feat, deterministic=not train), glob_ctx,
                                    *_edges(glob, cross), train=train)

        real = node_mask(spot)
        known = known & spot.nodes["label_mask"] & real
        zeros = check_choice("model.asign.spot_head_init", c.spot_head_init) == "zeros"
        p_s = RegressionHead(self.n_genes, zeros, name="spot_head")(h_s)      # (N_s, G)
        if c.image_skip:
            # a linear path from the image feature, set to a ridge fit by training.loop
            p_s = p_s + nn.Dense(self.n_genes, kernel_init=nn.initializers.zeros,
                                 name="image_skip")(spot.nodes["feat"])
        if check_choice("model.asign.spot_offset", c.spot_offset) == "known":
            p_s = p_s + known_mean(spot.nodes["label"], known)[None]
        p_r = RegressionHead(self.n_genes, name="region_head")(h_r)           # (N_r, G)
        p_g = RegressionHead(self.n_genes, name="global_head")(h_g)           # (N_q, G)

        # -- cross-layer imputation (eq. 5-6) --------------------------------------------------
        if c.use_cli:
            senders, receivers, weight, _, emask = _edges(spot, cross)
            cli = CrossLayerImputation(c.cli_iterations, c.cli_node_alpha, c.cli_start,
                                       name="cli")(
                h_s, p_s, spot.nodes["label"], known, senders, receivers, weight, emask, real)
        else:
            cli = {"spot": p_s, "imputed": p_s, "alpha": jnp.ones((self.n_genes,), p_s.dtype),
                   "reached": known, "node_alpha": jnp.ones(p_s.shape[:1], p_s.dtype)}
        return {"spot": cli["spot"], "spot_model": p_s, "imputed": cli["imputed"],
                "region": p_r, "global": p_g, "alpha": cli["alpha"], "reached": cli["reached"],
                "node_alpha": cli["node_alpha"]}
