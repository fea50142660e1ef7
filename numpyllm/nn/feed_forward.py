"""The position-wise feed-forward network of a transformer block, plain or gated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from numpyllm.functional import activations as act
from numpyllm.nn.linear import Linear
from numpyllm.nn.module import Module, forward_cache
from numpyllm.nn.norms import Dropout

# forward(x) -> (out, cache) and backward(dout, cache) -> dx
ActivationPair = tuple[
    Callable[[np.ndarray], tuple[np.ndarray, Any]], Callable[[np.ndarray, Any], np.ndarray]
]

# name -> (forward, backward); the names are the ones checkpoint configs use.
ACTIVATIONS: dict[str, ActivationPair] = {
    "relu": (act.relu_forward, act.relu_backward),
    "gelu": (act.gelu_forward, act.gelu_backward),
    "gelu_tanh": (act.gelu_tanh_forward, act.gelu_tanh_backward),
    "gelu_new": (act.gelu_tanh_forward, act.gelu_tanh_backward),
    "gelu_pytorch_tanh": (act.gelu_tanh_forward, act.gelu_tanh_backward),
}


def activation_pair(name: str) -> ActivationPair:
    """The (forward, backward) pair for an activation name, or a ValueError listing the choices."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


class FeedForward(Module):
    """FFN(x) = act(x W_in + b_in) W_out + b_out, or gated (T5 v1.1):
    FFN(x) = (act(x W_in) * (x W_gate)) W_out.

    The dropout between the two projections is T5's; BERT passes 0.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu_tanh",
        gated: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        rng: np.random.Generator | None = None,
        std_in: float = 0.02,
        std_out: float = 0.02,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.act_forward, self.act_backward = activation_pair(activation)
        self.gated = gated
        self.fc_in = Linear(d_model, d_ff, bias=bias, rng=rng, std=std_in, dtype=dtype)
        self.fc_gate = (
            Linear(d_model, d_ff, bias=bias, rng=rng, std=std_in, dtype=dtype) if gated else None
        )
        self.dropout = Dropout(dropout, rng=rng)
        self.fc_out = Linear(d_ff, d_model, bias=bias, rng=rng, std=std_out, dtype=dtype)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        h_pre = self.fc_in(x)  # (..., d_model) -> (..., d_ff)
        h, act_cache = self.act_forward(h_pre)
        gate = None
        if self.fc_gate is not None:
            gate = self.fc_gate(x)  # (..., d_ff)
            self._cache = (act_cache, h, gate)
            h = h * gate
        else:
            self._cache = (act_cache, None, None)
        h = self.dropout(h)
        return self.fc_out(h)  # (..., d_ff) -> (..., d_model)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        act_cache, activated, gate = forward_cache(self._cache, self)
        self._cache = None
        dh = self.dropout.backward(self.fc_out.backward(dout))
        dx = None
        if self.fc_gate is not None:
            dx = self.fc_gate.backward(dh * activated)
            dh = dh * gate
        dx_in = self.fc_in.backward(self.act_backward(dh, act_cache))
        return dx_in if dx is None else dx_in + dx
