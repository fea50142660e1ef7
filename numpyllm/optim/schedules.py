"""Learning-rate schedules: multipliers of the base rate, and a scheduler that applies them.

Each schedule maps a step number to a multiplier of the base learning rate.
All warm up linearly from 0 at step 0 to 1 at ``warmup_steps``::

    multiplier(s) = s / warmup_steps                      for s < warmup_steps

then hold or decay. With ``p = (s - warmup_steps) / (total_steps - warmup_steps)``
the fraction of the decay done, clipped to [0, 1] and r = ``min_ratio``::

    cosine:  r + (1 - r) * (1 + cos(pi * p)) / 2
    linear:  r + (1 - r) * (1 - p)
    constant: 1

These are the values of Hugging Face transformers' ``get_cosine_schedule_with_warmup``
(with ``min_lr_rate`` = r in its min-lr variant), ``get_linear_schedule_with_warmup``
and ``get_constant_schedule_with_warmup`` for every step up to ``total_steps``.
After ``total_steps`` the multiplier stays at r; transformers' cosine would
rise again there.

Bind the lengths with ``functools.partial`` (the step comes first) to get the
``lr_lambda`` an :class:`LRScheduler` takes::

    sched = LRScheduler(opt, partial(warmup_cosine, warmup_steps=100, total_steps=5000))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from numpyllm.optim.optimizer import Optimizer


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1, then half a cosine down to ``min_ratio`` at ``total_steps``."""
    _check(step, warmup_steps, total_steps, min_ratio)
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    progress = min(progress, 1.0)  # hold at the floor after total_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cosine * (1.0 - min_ratio) + min_ratio


def warmup_linear(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1, then a straight line down to ``min_ratio`` at ``total_steps``."""
    _check(step, warmup_steps, total_steps, min_ratio)
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    # (total - s) / (total - warmup) rather than 1 - progress: the same rounding as transformers
    remaining = max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    return remaining * (1.0 - min_ratio) + min_ratio


def constant_with_warmup(step: int, warmup_steps: int, total_steps: int | None = None) -> float:
    """Linear warmup to 1, then 1 for ever. ``total_steps`` is accepted and ignored, so the
    three schedules can be called alike."""
    _check(step, warmup_steps, None, 0.0)
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    return 1.0


def _warmup(step: int, warmup_steps: int) -> float:
    return float(step) / float(max(1, warmup_steps))


def _check(step: int, warmup_steps: int, total_steps: int | None, min_ratio: float) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and total_steps < warmup_steps:
        raise ValueError(
            f"total_steps must be >= warmup_steps, got total_steps={total_steps}, "
            f"warmup_steps={warmup_steps}"
        )
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")


class LRScheduler:
    """Set each group's learning rate to ``base_lr * lr_lambda(step)`` (torch's LambdaLR).

    ``base_lr`` is each group's ``lr`` when the scheduler is built, and building
    it already applies ``lr_lambda(0)``. Call ``step()`` once after each
    ``optimizer.step()``: the k-th call sets the rate for the optimizer's step
    k + 1 to ``base_lr * lr_lambda(k)``. ``lr_lambda`` is one callable for every
    group or a list with one per group.

    ``state_dict()`` is ``{"last_step": int, "base_lrs": [float, ...]}``; the
    lambdas are code, not state, so rebuild the scheduler with the same ones
    before ``load_state_dict``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
    ):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        n_groups = len(optimizer.param_groups)
        if callable(lr_lambda):
            self.lr_lambdas = [lr_lambda] * n_groups
        else:
            self.lr_lambdas = list(lr_lambda)
            if len(self.lr_lambdas) != n_groups or not all(map(callable, self.lr_lambdas)):
                raise ValueError(
                    f"lr_lambda must be a callable or a list of {n_groups} callables (one per "
                    f"group), got {lr_lambda!r}"
                )
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def step(self) -> None:
        """Advance one step and set every group's lr."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rates the scheduler set most recently, one per group."""
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step and base rates, and set every group's lr from them."""
        if not isinstance(state_dict, dict) or {"last_step", "base_lrs"} - state_dict.keys():
            raise ValueError(
                f"scheduler state_dict must be a dict with 'last_step' and 'base_lrs', "
                f"got {state_dict!r}"
            )
        last_step, base_lrs = state_dict["last_step"], list(state_dict["base_lrs"])
        if isinstance(last_step, bool) or not isinstance(last_step, int) or last_step < 0:
            raise ValueError(f"last_step must be an integer >= 0, got {last_step!r}")
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state_dict has {len(base_lrs)} base learning rates, the optimizer has "
                f"{len(self.optimizer.param_groups)} groups"
            )
        self.last_step = last_step
        self.base_lrs = [float(lr) for lr in base_lrs]
        self._apply()

    def _apply(self) -> None:
        for group, base_lr, lr_lambda in zip(
            self.optimizer.param_groups, self.base_lrs, self.lr_lambdas
        ):
            group["lr"] = base_lr * float(lr_lambda(self.last_step))
