"""The image models of posts 000 and 004 (a conv net with a sparse MoE classifier, Sparse-MLP) and the
multi-task models of Ma et al. 2018 (MMoE, OMoE, shared-bottom)."""
from .image_moe import ImageMoEClassifier
from .mmoe import MMoE, SharedBottom
from .sparse_mlp import SparseMLP

__all__ = ["ImageMoEClassifier", "MMoE", "SharedBottom", "SparseMLP"]
