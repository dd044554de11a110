"""Claims of the public docstrings (the API reference of the documentation site), each pinned by a test.

Found by the docstring audit: every test here checks one sentence of a docstring against what the code
does; the docstring it pins is named in the test's own docstring. Measured time: under 2 s.
"""
import numpy as np
import pytest

import numpy_moe as nm
from numpy_moe.routing import Capacity


def test_moe_diagnostics_importance_is_taken_before_capacity_even_with_renormalisation():
    """MoE.diagnostics: "importance : (E,) sum over the batch of each expert's combine weights (before
    capacity)". Renormalising after dropping divided the weights the importance summed, so a sample whose
    choices were all dropped added w / eps (about 1e15) to its experts' importance."""
    x = np.random.default_rng(0).standard_normal((10, 4))
    free = nm.MoE(4, 3, 4, top_k=2, seed=1)
    free.forward(x)
    for renormalize in (False, True):
        layer = nm.MoE(4, 3, 4, top_k=2, seed=1, capacity=Capacity(0.5, renormalize=renormalize))
        layer.forward(x)
        assert layer.diagnostics["dropped"] > 0
        np.testing.assert_allclose(layer.diagnostics["importance"], free.diagnostics["importance"], rtol=1e-12)
    mask = np.arange(10) % 3 != 0  # with a mask: the counted samples' gate weights, before capacity
    layer = nm.MoE(4, 3, 4, top_k=2, seed=1, capacity=Capacity(0.5, renormalize=True))
    layer.forward(x, mask=mask)
    r = free.routing
    want = np.bincount(r.expert[mask[r.sample]], weights=r.weight[mask[r.sample]], minlength=4)
    np.testing.assert_allclose(layer.diagnostics["importance"], want, rtol=1e-12)


def test_moe_diagnostics_after_a_forward_that_raised_says_a_forward_is_needed():
    """MoE.diagnostics: "Routing statistics of the last forward"; with no forward to report it raises the
    ValueError "needs a forward pass first". A first forward that raised (a bad mask) had already stored the
    output shape, so diagnostics went on to an AttributeError about the layer's missing expert outputs."""
    layer = nm.MoE(4, 3, 4, top_k=2, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 4))
    with pytest.raises(ValueError, match="mask"):
        layer.forward(x, mask=np.zeros(8, bool))
    with pytest.raises(ValueError, match="needs a forward pass first"):
        layer.diagnostics
    layer.forward(x)
    assert layer.diagnostics["samples_per_expert"].sum() == 16
