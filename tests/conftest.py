"""Shared test settings.

Two hypothesis profiles: ``ci`` (the default, quick) and ``thorough`` (many more
examples). Choose with ``NUMPYLLM_HYPOTHESIS=thorough pytest``.
"""

import os
import signal

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

# A shell starts a background job (`.ci/run &`, nohup) with SIGINT ignored, and that is
# inherited: numpyllm then rightly leaves Ctrl-C alone, and the tests of what Ctrl-C does
# could not send one. They test numpyllm, not the launcher: SIGINT acts as in a terminal
# (the commands they start inherit its default action too).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
