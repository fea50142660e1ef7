"""LayerNorm, RMSNorm and Dropout layers."""

from __future__ import annotations

import numpy as np

from numpyllm.functional.dropout import dropout_backward, dropout_forward
from numpyllm.functional.norms import (
    layer_norm_backward,
    layer_norm_forward,
    layer_norm_output,
    rms_norm_backward,
    rms_norm_forward,
)
from numpyllm.nn import init
from numpyllm.nn.module import Module, forward_cache


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype=np.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = init.ones((dim,), dtype)
        self.bias = init.zeros((dim,), dtype)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = layer_norm_forward(x, self.weight.data, self.bias.data, self.eps)
        return out

    def output(self) -> np.ndarray:
        """The last forward's output again, rebuilt bit for bit from the cache: a module that
        reads it in its backward need not keep its own copy."""
        if self._cache is None:
            raise RuntimeError("LayerNorm.output needs a forward first (and before backward)")
        return layer_norm_output(self._cache, self.bias.data)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        weight, bias = self.weight, self.bias
        # a frozen parameter's reduction over the rows is not made
        need = {"need_weight": weight.requires_grad, "need_bias": bias.requires_grad}
        dx, dweight, dbias = layer_norm_backward(dout, forward_cache(self._cache, self), **need)
        self._cache = None
        if dweight is not None:
            weight.grad += dweight
        if dbias is not None:
            bias.grad += dbias
        return dx


class RMSNorm(Module):
    """T5's LayerNorm: divide by the root mean square of the last axis, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=np.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = init.ones((dim,), dtype)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = rms_norm_forward(x, self.weight.data, self.eps)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dx, dweight = rms_norm_backward(dout, forward_cache(self._cache, self))
        self._cache = None
        if self.weight.requires_grad:
            self.weight.grad += dweight
        return dx


class Dropout(Module):
    """Inverted dropout. Draws its masks from ``self.rng``, a Generator the model seeds."""

    def __init__(self, p: float, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._cache: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = dropout_forward(x, self.p, self.rng, training=self.training)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dx = dropout_backward(dout, self._cache)
        self._cache = None
        return dx
