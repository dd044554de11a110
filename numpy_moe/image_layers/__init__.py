"""Layers for the image models: Conv2d, MaxPool2d, Flatten, Unflatten, LayerNorm, GELU (posts 000 and 004).

Images are NCHW arrays: (N, C, H, W) with N samples, C channels, H and W the height and width (in this
module C, H and W carry their image meaning, not "classes" and "hidden"); F is the number of output
channels of a convolution and k its kernel size.

- :mod:`.conv`: :class:`Conv2d` (channels-last im2col) and :class:`MaxPool2d` (strided views, or im2col
  when windows overlap), with their memory layout.
- :mod:`.windows`: :func:`im2col` / :func:`col2im`, :func:`im2row` / :func:`row2im`, :func:`output_size`,
  :func:`image_columns`.
- :mod:`.checks`: :func:`check_images`, :func:`check_image_size`; :func:`cast_finite` (from numpy_moe.validation).
- :mod:`.shape`: :class:`Flatten`, :class:`Unflatten`.
- :mod:`.norm`: :class:`LayerNorm`, :class:`GELU` (MLP-Mixer, the transformer).
"""
from .checks import cast_finite, check_image_size, check_images
from .conv import Conv2d, MaxPool2d
from .norm import GELU, LayerNorm
from .shape import Flatten, Unflatten
from .windows import col2im, im2col, im2row, image_columns, output_size, row2im

__all__ = ["GELU", "Conv2d", "Flatten", "LayerNorm", "MaxPool2d", "Unflatten", "cast_finite", "check_image_size",
           "check_images", "col2im", "im2col", "im2row", "image_columns", "output_size", "row2im"]
