"""Keras layers of KuaiFormer, one mechanism per module."""

from tfkf.layers.augmentation import EventSubstitution
from tfkf.layers.attention import RotaryMultiHeadAttention, rotary
from tfkf.layers.compression import GroupCompressor
from tfkf.layers.embedding import CandidateTower, ItemSideFeatures, TokenEmbedding, serialize_unbuilt
from tfkf.layers.query_tokens import QueryTokens
from tfkf.layers.rms_norm import RMSNorm
from tfkf.layers.transformer import (GatedFeedForward, TransformerBlock, causal_mask, cut_point_mask,
                                     padding_mask)
