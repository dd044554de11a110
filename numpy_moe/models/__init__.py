"""The image models of posts 000 and 004 (a conv net with a sparse MoE classifier, Sparse-MLP), the
multi-task models of Ma et al. 2018 (MMoE, OMoE, shared-bottom) and a tiny Transformer language model with
MoE feed-forward sublayers (:mod:`numpy_moe.models.transformer`)."""
from .image_moe import ImageMoEClassifier
from .mmoe import MMoE, SharedBottom
from .sparse_mlp import SparseMLP
from .transformer import TransformerLM

__all__ = ["ImageMoEClassifier", "MMoE", "SharedBottom", "SparseMLP", "TransformerLM"]
