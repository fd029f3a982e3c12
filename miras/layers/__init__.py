"""Token mixers and their parts: the Miras layer, softmax attention, the short convolution and RoPE."""

from miras.layers.attention import Attention, KVCache
from miras.layers.conv import ShortConvolution
from miras.layers.miras_layer import MirasLayer, MirasLayerCache
from miras.layers.rope import RotaryEmbedding

__all__ = ["Attention", "KVCache", "MirasLayer", "MirasLayerCache", "RotaryEmbedding", "ShortConvolution"]
