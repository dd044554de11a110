"""Valid but extreme inputs and configurations: the library gives the definition's answer there (or says why
it cannot), checked against independent brute-force or float64 references written here."""
from math import ceil

import numpy as np
import pytest

from numpy_moe.gates import ExpertChoiceGate
from numpy_moe.gates.expert_choice import capacity_ceil, expert_choice_capacity
from numpy_moe.moe import MoE
from numpy_moe.routing import Capacity, expert_capacity


# ----- capacity: C = ceil(N K cf / E) >= 1 for any factor cf > 0 (MATH.md §4.1, §4.4) ----------------------

@pytest.mark.parametrize("cf", [1e-300, 1e-12, 1.9e-11])
def test_a_tiny_capacity_factor_gives_one_slot_not_zero(cf):
    """ceil of a positive number is at least 1 (DeepSpeed ``_capacity``, fairseq ``math.ceil``): the tolerance
    that reads 55.00000000000001 as 55 is relative to the product (MATH.md §4.4), so it must not read 1e-10 as 0.
    The old absolute tolerance gave C = 0 there: every assignment dropped, an output of zeros."""
    N, K, E = 100, 2, 4
    x = N * K * cf / E
    assert ceil(x) == 1
    assert capacity_ceil(x) == 1
    assert expert_capacity(N, K, E, cf) == 1 and Capacity(cf).slots(N, K, E) == 1
    assert expert_choice_capacity(N, E, cf) == 1
    moe = MoE(3, 2, E, hidden=4, top_k=K, capacity_factor=cf, seed=0)
    y = moe.forward(np.random.default_rng(0).standard_normal((N, 3)))
    per_expert = moe.diagnostics["samples_per_expert"]
    assert per_expert.max() == 1 and per_expert.sum() == np.count_nonzero(np.abs(y).sum(axis=1))
    gate = ExpertChoiceGate(3, E, capacity_factor=cf, seed=0)
    assert gate.forward(np.ones((N, 3))).sample.shape == (E,)  # one sample per expert


def test_capacity_ceil_reads_products_as_their_decimal_factor():
    """The rule the relative tolerance exists for still holds, and exact products are unchanged."""
    assert 100 * 2 * 1.1 / 4 != 55 and capacity_ceil(100 * 2 * 1.1 / 4) == 55
    assert capacity_ceil(0.0) == 0 and capacity_ceil(1.0) == 1 and capacity_ceil(1.5) == 2
    assert capacity_ceil(0.9999999999999999) == 1 and capacity_ceil(2.0000001) == 3
