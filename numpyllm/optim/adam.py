"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from numpyllm.nn.parameter import Parameter
from numpyllm.optim.optimizer import Optimizer, _Segment


class Adam(Optimizer):
    r"""Adam: Kingma & Ba, "Adam: A Method for Stochastic Optimization", Algorithm 1.

    With step size alpha, decay rates beta1, beta2, epsilon and L2 weight decay
    lambda, step t (counting from 1) does::

        g_t     = grad f(theta_{t-1}) + lambda * theta_{t-1}   # L2 decay joins the gradient
        m_t     = beta1 * m_{t-1} + (1 - beta1) * g_t          # first moment
        v_t     = beta2 * v_{t-1} + (1 - beta2) * g_t^2        # second (raw) moment
        m_hat_t = m_t / (1 - beta1^t)                          # bias corrections: m_0 = v_0 = 0
        v_hat_t = v_t / (1 - beta2^t)
        theta_t = theta_{t-1} - alpha * m_hat_t / (sqrt(v_hat_t) + epsilon)

    as torch.optim.Adam does it (epsilon added after the square root of the
    bias-corrected v). It is evaluated as ``theta -= (alpha / (1 - beta1^t)) * m_t
    / (sqrt(v_t) / sqrt(1 - beta2^t) + epsilon)``, the same quantity.

    Because lambda * theta goes through m and v, decay on a parameter with large
    gradients is scaled down with them; AdamW decouples it.

    Per-parameter state: ``exp_avg`` (m) and ``exp_avg_sq`` (v); the step count t
    is the optimizer's ``step_count``.
    """

    _required_state = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        name = type(self).__name__
        for key in ("lr", "eps", "weight_decay"):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise TypeError(f"{name} {key} must be a number, got {value!r}")
            if not value >= 0.0:
                raise ValueError(f"{name} {key} must be >= 0, got {value!r}")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name} betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} betas[{i}] must be in [0, 1), got {beta!r}")

    def _prepare(self, segment: _Segment, group: dict[str, Any]) -> tuple:
        t = self._step_count
        beta1, beta2 = (float(b) for b in group["betas"])
        alpha, lam = float(group["lr"]), float(group["weight_decay"])
        step_size = alpha / (1.0 - beta1**t)  # alpha / (1 - beta1^t): m_hat's correction
        sqrt_correction2 = math.sqrt(1.0 - beta2**t)  # v_hat = v / (1 - beta2^t), under the sqrt
        return (alpha, beta1, beta2, float(group["eps"]), lam, step_size, sqrt_correction2)

    def _update_block(
        self, segment: _Segment, lo: int, hi: int, scratch: list[np.ndarray], hyper: tuple
    ) -> None:
        alpha, beta1, beta2, eps, lam, step_size, sqrt_correction2 = hyper
        theta, g = segment.data[lo:hi], segment.grad[lo:hi]
        m = segment.state["exp_avg"][lo:hi]
        v = segment.state["exp_avg_sq"][lo:hi]
        tmp, decayed = scratch
        if lam != 0.0:
            if self._decoupled:
                theta *= 1.0 - alpha * lam  # AdamW: theta <- theta - alpha * lambda * theta
            else:
                np.multiply(theta, lam, out=decayed)
                decayed += g  # g + lambda * theta (the gradient itself is left untouched)
                g = decayed
        m *= beta1
        np.multiply(g, 1.0 - beta1, out=tmp)
        m += tmp  # m_t = beta1 m + (1 - beta1) g
        v *= beta2
        np.multiply(g, 1.0 - beta2, out=tmp)
        tmp *= g
        v += tmp  # v_t = beta2 v + (1 - beta2) g^2
        np.sqrt(v, out=tmp)
        tmp /= sqrt_correction2
        tmp += eps  # sqrt(v_hat) + epsilon
        np.divide(m, tmp, out=tmp)
        tmp *= step_size  # alpha * m_hat / (sqrt(v_hat) + epsilon)
        theta -= tmp


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight
    Decay Regularization", Algorithm 2, with the schedule multiplier folded into alpha).

    Step t (counting from 1) first shrinks the weights, then takes a plain Adam step::

        theta_{t-1}' = theta_{t-1} - alpha * lambda * theta_{t-1}   # decay, outside m and v
        g_t     = grad f(theta_{t-1})
        m_t     = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t     = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        m_hat_t = m_t / (1 - beta1^t)
        v_hat_t = v_t / (1 - beta2^t)
        theta_t = theta_{t-1}' - alpha * m_hat_t / (sqrt(v_hat_t) + epsilon)

    exactly as torch.optim.AdamW: the decay is multiplied by the learning rate
    alpha (so a schedule on alpha scales it too) and every parameter decays at
    the same rate whatever its gradient history. Pass groups from
    :func:`param_groups_for_weight_decay` to keep biases, norms and embeddings
    out of the decay.
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
