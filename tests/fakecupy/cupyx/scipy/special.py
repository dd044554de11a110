"""cupyx.scipy.special.ndtr of the fake CuPy (tests only)."""
import scipy.special

import cupy


def ndtr(x):
    return cupy._call(scipy.special.ndtr, (x,), {}, "ndtr")
