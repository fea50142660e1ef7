"""numpyllm.optim against torch.optim: the same gradients give the same parameters.

Each run takes the steps of a real training loop: gradients in, global-norm
clipping, an optimizer step, a warmup-cosine LR schedule step, with two
parameter groups (different learning rates and weight decays). Gradient sizes
vary from step to step so that clipping is active on some steps and not others.
"""

from functools import partial

import numpy as np
import pytest

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import (
    SGD,
    Adam,
    AdamW,
    LRScheduler,
    clip_grad_norm,
    constant_with_warmup,
    warmup_cosine,
    warmup_linear,
)

torch = pytest.importorskip("torch")

SHAPES = [(5, 4), (4,), (3, 2, 2), (6,), ()]
STEPS = 12
MAX_NORM = 1.0
GRAD_SCALES = [0.05, 3.0, 0.1, 10.0, 0.02, 1.0, 0.3, 5.0, 0.01, 2.0, 0.2, 0.5]

# name -> (numpyllm class, torch class, shared kwargs, per-group overrides, state names)
CASES = {
    "adamw": (
        AdamW,
        "AdamW",
        {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8},
        [{"weight_decay": 0.1}, {"weight_decay": 0.0, "lr": 3e-2}],
        ("exp_avg", "exp_avg_sq"),
    ),
    "adam_l2": (
        Adam,
        "Adam",
        {"lr": 1e-2, "betas": (0.8, 0.999), "eps": 1e-6},
        [{"weight_decay": 0.05}, {"weight_decay": 0.0, "lr": 5e-3}],
        ("exp_avg", "exp_avg_sq"),
    ),
    "sgd_momentum": (
        SGD,
        "SGD",
        {"lr": 0.1, "momentum": 0.9},
        [{"weight_decay": 0.01}, {"weight_decay": 0.0, "lr": 0.05}],
        ("momentum_buffer",),
    ),
    "sgd_nesterov": (
        SGD,
        "SGD",
        {"lr": 0.1, "momentum": 0.8, "nesterov": True},
        [{"weight_decay": 0.01}, {"lr": 0.2}],
        ("momentum_buffer",),
    ),
}


def group_split(params):
    """Parameters 0, 2, 4 in group 0 and 1, 3 in group 1 (so the groups interleave)."""
    return [params[0::2], params[1::2]]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_training_loop_matches_torch(case, dtype):
    ours_class, torch_name, kwargs, overrides, state_names = CASES[case]
    rng = np.random.default_rng(0)
    initial = [np.array(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    grads = [
        [np.array(scale * rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        for scale in GRAD_SCALES
    ]
    lr_lambda = partial(warmup_cosine, warmup_steps=3, total_steps=STEPS - 2, min_ratio=0.1)

    ours = [Parameter(v.copy()) for v in initial]
    opt = ours_class([{"params": ps, **o} for ps, o in zip(group_split(ours), overrides)], **kwargs)
    sched = LRScheduler(opt, lr_lambda)

    theirs = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in initial]
    torch_opt = getattr(torch.optim, torch_name)(
        [{"params": ps, **o} for ps, o in zip(group_split(theirs), overrides)], **kwargs
    )
    torch_sched = torch.optim.lr_scheduler.LambdaLR(torch_opt, lr_lambda)

    rtol, atol = (1e-6, 1e-12) if dtype == np.float64 else (2e-5, 1e-6)
    clipped_some, passed_some = False, False
    for step_grads in grads:
        opt.zero_grad()
        for p, t, g in zip(ours, theirs, step_grads):
            p.grad += g
            t.grad = torch.from_numpy(g.copy())
        norm = clip_grad_norm(ours, MAX_NORM)
        torch_norm = float(torch.nn.utils.clip_grad_norm_(theirs, MAX_NORM))
        np.testing.assert_allclose(norm, torch_norm, rtol=rtol)
        clipped_some |= norm > MAX_NORM
        passed_some |= norm < MAX_NORM
        for p, t in zip(ours, theirs):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=rtol, atol=atol)

        opt.step()
        torch_opt.step()
        sched.step()
        torch_sched.step()

        assert sched.get_last_lr() == pytest.approx(torch_sched.get_last_lr(), rel=1e-15)
        for i, (p, t) in enumerate(zip(ours, theirs)):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(
                p.data, t.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"parameter {i}"
            )
    assert clipped_some and passed_some  # both branches of clipping were exercised

    # the optimizers' internal state agrees too (numbered in the order the optimizer got them)
    state = opt.state_dict()["state"]
    in_order = [t for ps in group_split(theirs) for t in ps]
    for i, t in enumerate(in_order):
        for name in state_names:
            np.testing.assert_allclose(
                state[f"state.{i}.{name}"], torch_opt.state[t][name].numpy(), rtol=rtol, atol=atol
            )


def test_schedules_match_transformers():
    optimization = pytest.importorskip("transformers.optimization")
    warmup, total = 7, 50
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    def multipliers(make, **kwargs):
        sched = make(dummy, num_warmup_steps=warmup, **kwargs)
        return sched.lr_lambdas[0]

    cosine = multipliers(optimization.get_cosine_schedule_with_warmup, num_training_steps=total)
    cosine_min = multipliers(
        optimization.get_cosine_with_min_lr_schedule_with_warmup,
        num_training_steps=total,
        min_lr_rate=0.1,
    )
    linear = multipliers(optimization.get_linear_schedule_with_warmup, num_training_steps=total)
    constant = multipliers(optimization.get_constant_schedule_with_warmup)
    for step in range(total + 1):
        assert warmup_cosine(step, warmup, total) == cosine(step)
        assert warmup_cosine(step, warmup, total, min_ratio=0.1) == cosine_min(step)
        assert warmup_linear(step, warmup, total) == linear(step)
        assert constant_with_warmup(step, warmup, total) == constant(step)
    for step in range(total + 1, total + 30):  # past the end: linear and constant still agree
        assert warmup_linear(step, warmup, total) == linear(step)
        assert constant_with_warmup(step, warmup, total) == constant(step)
        assert warmup_cosine(step, warmup, total) == 0.0  # transformers' cosine rises again here
