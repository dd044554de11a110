"""Shared fixtures: a seeded Generator per test, so no test depends on global random state."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
