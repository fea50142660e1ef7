"""Layers with state: parameters, the forward cache, and a hand-written backward."""

from numpyllm.nn.attention import MultiHeadAttention
from numpyllm.nn.feed_forward import FeedForward, activation_pair
from numpyllm.nn.linear import Embedding, Linear
from numpyllm.nn.module import Module, ModuleList
from numpyllm.nn.norms import Dropout, LayerNorm, RMSNorm
from numpyllm.nn.parameter import Parameter

__all__ = [
    "Dropout",
    "Embedding",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "Module",
    "ModuleList",
    "MultiHeadAttention",
    "Parameter",
    "RMSNorm",
    "activation_pair",
]
