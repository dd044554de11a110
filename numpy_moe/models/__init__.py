"""The image models of seeds 000 and 004: a conv net with a sparse MoE classifier, and Sparse-MLP."""
from .image_moe import ImageMoEClassifier
from .sparse_mlp import SparseMLP

__all__ = ["ImageMoEClassifier", "SparseMLP"]
