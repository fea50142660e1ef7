"""Learning-rate schedules: exact multipliers, shape properties, and the LRScheduler."""

import math
from functools import partial

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import (
    SGD,
    AdamW,
    LRScheduler,
    constant_with_warmup,
    warmup_cosine,
    warmup_linear,
)


@pytest.mark.parametrize("schedule", [warmup_cosine, warmup_linear, constant_with_warmup])
def test_warmup_values(schedule):
    assert schedule(0, 10, 110) == 0.0
    assert schedule(5, 10, 110) == 0.5
    assert schedule(9, 10, 110) == 0.9
    assert schedule(10, 10, 110) == 1.0


def test_cosine_decay_values():
    assert warmup_cosine(60, 10, 110) == 0.5  # halfway: (1 + cos(pi / 2)) / 2
    assert warmup_cosine(35, 10, 110) == pytest.approx((1 + math.cos(math.pi / 4)) / 2, abs=1e-15)
    assert warmup_cosine(110, 10, 110) == 0.0  # end of decay
    assert warmup_cosine(500, 10, 110) == 0.0  # after total_steps: stays at the floor
    assert warmup_cosine(60, 10, 110, min_ratio=0.1) == pytest.approx(0.55, abs=1e-15)
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1, abs=1e-15)
    assert warmup_cosine(111, 10, 110, min_ratio=0.1) == pytest.approx(0.1, abs=1e-15)
    assert warmup_cosine(5, 10, 110, min_ratio=0.1) == 0.5  # warmup starts from 0 regardless


def test_linear_decay_values():
    assert warmup_linear(60, 10, 110) == 0.5
    assert warmup_linear(85, 10, 110) == 0.25
    assert warmup_linear(110, 10, 110) == 0.0
    assert warmup_linear(111, 10, 110) == 0.0
    assert warmup_linear(60, 10, 110, min_ratio=0.2) == pytest.approx(0.6, abs=1e-15)
    assert warmup_linear(110, 10, 110, min_ratio=0.2) == pytest.approx(0.2, abs=1e-15)
    assert warmup_linear(1000, 10, 110, min_ratio=0.2) == pytest.approx(0.2, abs=1e-15)


def test_constant_after_warmup():
    assert constant_with_warmup(10, 10) == 1.0
    assert constant_with_warmup(10**6, 10, 110) == 1.0


@pytest.mark.parametrize("schedule", [warmup_cosine, warmup_linear, constant_with_warmup])
def test_no_warmup_starts_at_one(schedule):
    assert schedule(0, 0, 100) == 1.0


@pytest.mark.parametrize("schedule", [warmup_cosine, warmup_linear])
@given(
    warmup=st.integers(0, 50),
    decay=st.integers(1, 200),
    min_ratio=st.floats(0.0, 1.0),
)
def test_shape_rises_then_falls_within_bounds(schedule, warmup, decay, min_ratio):
    total = warmup + decay
    values = [schedule(s, warmup, total, min_ratio) for s in range(total + 20)]
    rising, falling = values[: warmup + 1], values[warmup:]
    assert all(a <= b for a, b in zip(rising, rising[1:]))
    assert all(a >= b - 1e-15 for a, b in zip(falling, falling[1:]))
    assert all(min_ratio - 1e-15 <= v <= 1.0 for v in falling)
    assert values[warmup] == 1.0
    assert values[total] == pytest.approx(min_ratio, abs=1e-15)
    assert values[total + 19] == pytest.approx(min_ratio, abs=1e-15)


@pytest.mark.parametrize(
    "args", [(-1, 10, 100), (5, -1, 100), (5, 10, 9), (5, 10, 100, 1.5), (5, 10, 100, -0.1)]
)
def test_bad_arguments_raise(args):
    with pytest.raises(ValueError):
        warmup_cosine(*args)
    with pytest.raises(ValueError):
        warmup_linear(*args)


def two_group_optimizer():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    return SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)


def test_scheduler_applies_lambda_zero_at_construction_then_each_step():
    opt = two_group_optimizer()
    lam = partial(warmup_cosine, warmup_steps=4, total_steps=12)
    sched = LRScheduler(opt, lam)
    assert sched.base_lrs == [0.1, 0.5]
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    for k in range(1, 15):
        sched.step()
        assert sched.get_last_lr() == [0.1 * lam(k), 0.5 * lam(k)]
    assert sched.last_step == 14


def test_first_step_with_warmup_uses_lr_zero():
    p = Parameter(np.ones(3))
    opt = AdamW([p], lr=1.0, weight_decay=0.5)
    LRScheduler(opt, partial(warmup_linear, warmup_steps=10, total_steps=100))
    p.grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(p.data, 1.0)  # lr 0: neither the Adam step nor the decay moved it


def test_one_lambda_per_group():
    opt = two_group_optimizer()
    sched = LRScheduler(opt, [lambda s: 1.0, lambda s: 0.5**s])
    sched.step()
    sched.step()
    assert sched.get_last_lr() == [0.1, 0.125]
    with pytest.raises(ValueError, match="one per"):
        LRScheduler(opt, [lambda s: 1.0])


def test_scheduler_state_dict_round_trip():
    lam = partial(warmup_cosine, warmup_steps=3, total_steps=10, min_ratio=0.1)
    opt = two_group_optimizer()
    sched = LRScheduler(opt, lam)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    assert state == {"last_step": 5, "base_lrs": [0.1, 0.5]}

    opt2 = two_group_optimizer()
    opt2.param_groups[0]["lr"] = 7.0  # a different starting lr would give a different base
    sched2 = LRScheduler(opt2, lam)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.1 * lam(6), 0.5 * lam(6)]
    with pytest.raises(ValueError, match="last_step"):
        sched2.load_state_dict({"last_step": 1})
    with pytest.raises(ValueError, match="base learning rates"):
        sched2.load_state_dict({"last_step": 1, "base_lrs": [0.1]})
