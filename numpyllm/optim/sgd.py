"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from numpyllm.nn.parameter import Parameter
from numpyllm.optim.optimizer import Optimizer, _Segment


class SGD(Optimizer):
    r"""Stochastic gradient descent, with torch.optim.SGD's conventions (no dampening).

    With learning rate alpha, momentum mu and weight decay lambda, step t does::

        g_t = grad f(theta_{t-1}) + lambda * theta_{t-1}      # L2 decay joins the gradient
        b_t = g_t                       if t == 1              # momentum buffer (mu != 0)
        b_t = mu * b_{t-1} + g_t        otherwise
        g_t = g_t + mu * b_t            if nesterov            # look ahead along the buffer
        g_t = b_t                       otherwise
        theta_t = theta_{t-1} - alpha * g_t

    With mu = 0 this is plain SGD: theta_t = theta_{t-1} - alpha * g_t. The
    momentum form (velocity summing raw gradients, the learning rate applied
    afterwards) is Sutskever et al. (2013) as PyTorch writes it; it equals the
    classical form when alpha is constant.

    Per-parameter state: ``momentum_buffer`` (created on the first step when
    mu != 0).
    """

    _optional_state = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        for key in ("lr", "momentum", "weight_decay"):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise TypeError(f"SGD {key} must be a number, got {value!r}")
            if not value >= 0.0:
                raise ValueError(f"SGD {key} must be >= 0, got {value!r}")
        if group["nesterov"] and group["momentum"] == 0:
            raise ValueError("SGD with nesterov=True needs momentum > 0")

    def _prepare(self, segment: _Segment, group: dict[str, Any]) -> tuple:
        mu = float(group["momentum"])
        first = False
        if mu != 0.0 and "momentum_buffer" not in segment.state:
            segment.state["momentum_buffer"] = np.empty_like(segment.data)
            first = True  # b_1 = g_1: the block update copies instead of accumulating
        return (
            float(group["lr"]),
            mu,
            bool(group["nesterov"]),
            float(group["weight_decay"]),
            first,
        )

    def _update_block(
        self, segment: _Segment, lo: int, hi: int, scratch: list[np.ndarray], hyper: tuple
    ) -> None:
        lr, mu, nesterov, weight_decay, first = hyper
        theta, g = segment.data[lo:hi], segment.grad[lo:hi]
        tmp, step = scratch
        if weight_decay != 0.0:
            np.multiply(theta, weight_decay, out=tmp)  # lambda * theta
            tmp += g  # g + lambda * theta (the gradient itself is left untouched)
            g = tmp
        if mu != 0.0:
            b = segment.state["momentum_buffer"][lo:hi]
            if first:
                np.copyto(b, g)
            else:
                b *= mu
                b += g
            if nesterov:
                np.multiply(b, mu, out=step)
                step += g  # g + mu * b
                g = step
            else:
                g = b
        np.multiply(g, lr, out=step)  # alpha * g (step may alias g: elementwise, so safe)
        theta -= step
