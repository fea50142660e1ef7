"""Linear and Embedding layers."""

from __future__ import annotations

import numpy as np

from numpyllm.functional.embedding import embedding_backward, embedding_forward
from numpyllm.functional.linear import linear_backward
from numpyllm.nn import init
from numpyllm.nn.module import Module, forward_cache


class Linear(Module):
    """y = x W + b with W stored (in_features, out_features).

    Models call every projection through this class's methods, never through
    ``weight.data`` directly, so that a subclass (a LoRA linear) can stand in for
    any projection and a frozen weight's gradient product is skipped everywhere:

    * ``forward(x)`` / ``backward(dout)``: the layer keeps its input between them;
    * ``project(x, out=None)``: the same output, nothing kept (inference, or a caller
      that keeps x itself or can rebuild it);
    * ``backward_from_input(dout, x)``: the backward of ``project(x)``, given x again.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rng: np.random.Generator | None = None,
        std: float = 0.02,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight = init.normal(rng, (in_features, out_features), std, dtype)
        self.bias = init.zeros((out_features,), dtype) if bias else None
        self._cache: np.ndarray | None = None

    @property
    def in_features(self) -> int:
        return self.weight.shape[0]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.project(x)
        self._cache = x
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, self._cache = forward_cache(self._cache, self), None
        return self.backward_from_input(dout, x)

    def project(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x (..., in) -> x W + b (..., out), written into ``out`` (a C-contiguous array of
        that shape) when given. Nothing is kept for a backward."""
        weight = self.weight.data
        if x.shape[-1] != weight.shape[0]:
            raise ValueError(
                f"linear: x has last dimension {x.shape[-1]} but weight expects "
                f"{weight.shape[0]} (weight shape {weight.shape})"
            )
        x2 = x.reshape(-1, x.shape[-1])  # (N, in): BLAS sees one 2-D product
        y2 = np.matmul(x2, weight, out=None if out is None else out.reshape(len(x2), -1))
        if self.bias is not None:
            y2 += self.bias.data
        return y2.reshape(*x.shape[:-1], weight.shape[1]) if out is None else out

    def backward_from_input(self, dout: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The backward of ``project(x)``: adds dW = x^T dout and db = sum of dout's rows into
        the gradients of the parameters that require them (a frozen W's product is never
        formed) and returns dx = dout W^T (..., in)."""
        weight, bias = self.weight, self.bias
        has_bias = bias is not None and bias.requires_grad
        dx, dweight, dbias = linear_backward(
            dout, (x, weight.data, has_bias), need_weight=weight.requires_grad
        )
        if dweight is not None:
            weight.grad += dweight
        if bias is not None and dbias is not None:
            bias.grad += dbias
        return dx


class Embedding(Module):
    """out[..., :] = W[ids[...]]: a table lookup whose backward is a scatter-add."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rng: np.random.Generator | None = None,
        std: float = 0.02,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight = init.normal(rng, (num_embeddings, embedding_dim), std, dtype)
        self._cache: tuple | None = None

    def forward(self, ids: np.ndarray) -> np.ndarray:
        out, self._cache = embedding_forward(ids, self.weight.data)
        return out

    def backward(self, dout: np.ndarray) -> None:
        cache, self._cache = forward_cache(self._cache, self), None
        if self.weight.requires_grad:
            self.weight.grad += embedding_backward(dout, cache)
