"""Linear and Embedding layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from numpyllm.functional.embedding import embedding_backward, embedding_forward
from numpyllm.functional.linear import linear_backward, linear_parameter_gradients
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

    Both multiply by ``matrix(rows)``, the weight as the layer applies it to that many rows
    (a LoRA layer folds its update into it when that is cheaper).
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

    def matrix(self, rows: int) -> np.ndarray:
        """The (in, out) matrix ``rows`` rows of x are multiplied by: the weight itself."""
        return self.weight.data

    def joins(self, rows: int) -> bool:
        """Whether ``project`` over ``rows`` rows is x @ matrix(rows) + b and nothing more,
        so that its product can be joined with other layers' (``fused_project``)."""
        return type(self) is Linear

    def adapter_backward(self, dout: np.ndarray, x: np.ndarray) -> None:
        """Gradients of parameters beyond W and b, after a joined product (none here; a LoRA
        layer's adapter)."""

    def needs_input(self) -> bool:
        """Whether the backward reads x: only dW = x^T g does (dx = g W^T and db do not)."""
        return self.weight.requires_grad

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.project(x)
        # A frozen weight's backward needs x's shape alone: a stand-in with x's shape and
        # no memory (every stride 0) is kept instead, and x is freed once its caller is done
        # with it (e.g. a frozen output projection's (B, T, d_ff) input, in a LoRA run).
        self._cache = x if self.needs_input() else np.broadcast_to(x.dtype.type(0), x.shape)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, self._cache = forward_cache(self._cache, self), None
        return self.backward_from_input(dout, x)

    def project(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x (..., in) -> x W + b (..., out), written into ``out`` (a C-contiguous array of
        that shape) when given. Nothing is kept for a backward."""
        x2 = x.reshape(-1, x.shape[-1])  # (N, in): BLAS sees one 2-D product
        weight = self.matrix(len(x2))
        if x.shape[-1] != weight.shape[0]:
            raise ValueError(
                f"linear: x has last dimension {x.shape[-1]} but weight expects "
                f"{weight.shape[0]} (weight shape {weight.shape})"
            )
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
            dout, (x, self.matrix(dout.size // dout.shape[-1]), has_bias),
            need_weight=weight.requires_grad,
        )
        if dweight is not None:
            weight.grad += dweight
        if bias is not None and dbias is not None:
            bias.grad += dbias
        return dx

    def parameter_backward(self, dout: np.ndarray, x: np.ndarray) -> None:
        """``backward_from_input`` for a caller that needs no dx (nothing below it trains):
        dW = x^T dout and db = sum of dout's rows for the parameters that require them, and
        the dx = dout W^T product (as costly as the forward's) is never formed."""
        weight, bias = self.weight, self.bias
        dweight, dbias = linear_parameter_gradients(
            dout, x, weight.requires_grad, bias is not None and bias.requires_grad
        )
        if dweight is not None:
            weight.grad += dweight
        if bias is not None and dbias is not None:
            bias.grad += dbias


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


# ---- projections of one input, side by side -------------------------------------------------
def fused_project(layers: Sequence[Linear], x: np.ndarray) -> np.ndarray:
    """Several projections of the same x, their outputs side by side:

        y = [x W_1 + b_1 | x W_2 + b_2 | ...] = x [W_1 | W_2 | ...] + [b_1 | b_2 | ...]

    Shapes: x (..., in), layer i (in, out_i) -> y (..., Σ out_i); a caller takes each
    layer's output as a view of its columns.

    For plain Linears (Llama's q/k/v and gate/up projections) this is one matrix product
    with the weights' columns put side by side: one pass over x and one large BLAS call
    instead of several smaller ones. The side-by-side weight (in × Σ out numbers) is made
    afresh on every call, a small cost next to the product (rows · in · Σ out): each
    Parameter keeps its own array, which an optimizer may rebind to a slice of its flat
    buffer, so the layers' names, shapes and gradients stay as they are. A LoRA linear
    joins with its update folded into its matrix (``LoraLinear.folds``); one that does not
    fold (dropout on, a few rows) projects through its own method and the outputs are joined.
    """
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    if not _all_join(layers, len(x2)):
        return np.concatenate([layer.project(x) for layer in layers], axis=-1)
    weight = np.concatenate([layer.matrix(len(x2)) for layer in layers], axis=1)  # (in, Σ out)
    y2 = x2 @ weight  # (N, in) @ (in, Σ out) -> (N, Σ out)
    for layer, cols in zip(layers, _columns(layers)):
        if layer.bias is not None:
            y2[:, cols] += layer.bias.data
    return y2.reshape(*x.shape[:-1], weight.shape[1])


def fused_project_backward(layers: Sequence[Linear], dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The backward of ``fused_project(layers, x)``: dout (..., Σ out_i) -> dx (..., in).

    With W = [W_1 | W_2 | ...] the forward is one linear map, so

        dx = dout W^T = Σ_i dout_i W_i^T        (the layers' input gradients added)
        dW = x^T dout = [x^T dout_1 | x^T dout_2 | ...],   db_i = 1^T dout_i

    and each layer's gradient is its block of columns, added into its own ``.grad`` (a
    frozen layer's block is not added; if every weight is frozen x^T dout is not formed).
    With W_i a LoRA layer's folded W' the dx product carries its adapter's share, and the
    adapter's gradients come from its block of dout (``adapter_backward``).
    """
    rows = dout.size // dout.shape[-1]
    if not _all_join(layers, rows):
        dx = None
        for layer, cols in zip(layers, _columns(layers)):
            part = layer.backward_from_input(dout[..., cols], x)  # (..., in)
            dx = part if dx is None else np.add(dx, part, out=dx)
        assert dx is not None, "fused_project_backward needs at least one layer"
        return dx
    weight = np.concatenate([layer.matrix(rows) for layer in layers], axis=1)  # (in, Σ out)
    g2 = dout.reshape(-1, dout.shape[-1])  # (N, Σ out)
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    dx = (g2 @ weight.T).reshape(x.shape)  # (N, Σ out) @ (Σ out, in) -> (..., in)
    dweight = x2.T @ g2 if any(layer.weight.requires_grad for layer in layers) else None
    ones = None
    for layer, cols in zip(layers, _columns(layers)):
        if dweight is not None and layer.weight.requires_grad:
            layer.weight.grad += dweight[:, cols]  # (in, out_i)
        if layer.bias is not None and layer.bias.requires_grad:
            ones = np.ones(len(g2), dtype=g2.dtype) if ones is None else ones
            layer.bias.grad += ones @ g2[:, cols]  # column sums, as linear_backward takes them
        layer.adapter_backward(g2[:, cols], x2)
    return dx


def fused_input_to_keep(layers: Sequence[Linear], x: np.ndarray) -> np.ndarray:
    """What a caller of ``fused_project`` keeps for ``fused_project_backward``: x if some
    layer's backward reads it, else (every weight frozen) a stand-in of x's shape with no
    memory, as ``Linear.forward`` keeps."""
    if any(layer.needs_input() for layer in layers):
        return x
    return np.broadcast_to(x.dtype.type(0), x.shape)


def _all_join(layers: Sequence[Linear], rows: int) -> bool:
    return all(layer.joins(rows) for layer in layers)


def _columns(layers: Sequence[Linear]) -> list[slice]:
    """Each layer's columns in the side-by-side output."""
    ends = np.cumsum([0] + [layer.out_features for layer in layers]).tolist()
    return [slice(a, b) for a, b in zip(ends[:-1], ends[1:])]
