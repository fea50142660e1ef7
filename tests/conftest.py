"""Shared test settings.

Two hypothesis profiles: ``ci`` (the default, quick) and ``thorough`` (many more
examples). Choose with ``NUMPYLLM_HYPOTHESIS=thorough pytest``.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# ci is derandomized: the same examples every run, so a red CI is never luck; the
# thorough profile searches afresh each time.
settings.register_profile(
    "ci",
    max_examples=20,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("NUMPYLLM_HYPOTHESIS", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
