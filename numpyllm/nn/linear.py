"""Linear and Embedding layers."""

from __future__ import annotations

import numpy as np

from numpyllm.functional.embedding import embedding_backward, embedding_forward
from numpyllm.functional.linear import linear_backward, linear_forward
from numpyllm.nn import init
from numpyllm.nn.module import Module, forward_cache


class Linear(Module):
    """y = x W + b with W stored (in_features, out_features)."""

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
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        bias = self.bias.data if self.bias is not None else None
        out, self._cache = linear_forward(x, self.weight.data, bias)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dx, dweight, dbias = linear_backward(dout, forward_cache(self._cache, self))
        self._cache = None
        self.weight.grad += dweight
        if self.bias is not None:
            self.bias.grad += dbias
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
        self.weight.grad += embedding_backward(dout, forward_cache(self._cache, self))
        self._cache = None
