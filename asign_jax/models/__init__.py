"""MSAGNet + CLI: ``ASIGN`` is the model the training code builds (see msagnet.py)."""

from asign_jax.models.attention import MultiHeadAttention, TransformerLayer
from asign_jax.models.gat import GATLayer, masked_segment_softmax
from asign_jax.models.msagnet import ASIGN, RegressionHead, SpatialGraphBlock

__all__ = ["ASIGN", "RegressionHead", "SpatialGraphBlock", "GATLayer", "masked_segment_softmax",
           "MultiHeadAttention", "TransformerLayer"]
