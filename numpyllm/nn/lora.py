"""LoraLinear: a Linear whose frozen weight is adapted by a trainable low-rank term."""

from __future__ import annotations

import math

import numpy as np

from numpyllm.functional.dropout import dropout_backward, dropout_forward
from numpyllm.functional.lora import (
    lora_adapter_gradients,
    lora_delta_backward,
    lora_delta_forward,
    lora_weight,
)
from numpyllm.nn.linear import Linear
from numpyllm.nn.norms import Dropout
from numpyllm.nn.parameter import Parameter


class LoraLinear(Linear):
    """y = x W + b + (alpha / r) * dropout(x) A^T B^T  (``numpyllm.functional.lora``).

    Takes over a base ``Linear``'s ``weight`` and ``bias`` Parameters (the same objects,
    so the model's parameter names do not change) and adds ``lora_A`` (r, in), drawn as
    PEFT draws it (uniform in +-1/sqrt(in)), and ``lora_B`` (out, r), zero: the adapted
    layer starts as the base layer. The base parameters are not frozen here: the caller
    decides (``numpyllm.peft`` freezes every non-LoRA parameter).

    With dropout on in training, each ``project`` keeps its mask (in the dropout layer's
    cache) for the matching ``backward_from_input``; the backward consumes masks row by
    row in the order the forward made them, so a caller may project in one call and go
    back over blocks of rows, or the other way round. A recomputed block draws them again
    with its whole forward (``draws_in_forward``; ``numpyllm.nn.execution``).
    """

    def __init__(
        self,
        base: Linear,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not isinstance(base, Linear) or isinstance(base, LoraLinear):
            raise TypeError(f"LoraLinear wraps a plain Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        Linear.__init__(self, 1, 1, bias=False)  # registers the slots; replaced just below
        self.weight = base.weight
        self.bias = base.bias
        self.r = int(r)
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / self.r
        dtype = base.weight.dtype
        bound = 1.0 / math.sqrt(self.in_features)
        a = rng.uniform(-bound, bound, (self.r, self.in_features))  # PEFT's kaiming-uniform
        self.lora_A = Parameter(a.astype(dtype))
        self.lora_B = Parameter(np.zeros((self.out_features, self.r), dtype=dtype))
        self.lora_dropout = Dropout(lora_dropout, rng=rng)

    @property
    def draws_in_forward(self) -> bool:
        """Whether a forward draws dropout masks, which a recomputed pass must draw again."""
        return self.training and self.lora_dropout.p > 0.0

    def needs_input(self) -> bool:
        """Always: the adapter's gradients are products with x."""
        return True

    def delta_weight(self) -> np.ndarray:
        """The update in W's (in, out) layout: s * A^T B^T, so that W + delta_weight() is the
        merged weight."""
        s = self.lora_A.dtype.type(self.scaling)
        return (self.lora_A.data.T * s) @ self.lora_B.data.T  # (in, r) @ (r, out)

    def folds(self, rows: int) -> bool:
        """Whether a product over ``rows`` rows takes the update folded into the weight,
        W' = W + s A^T B^T: only when the adapter's input is x itself (no dropout drawn),
        and when forming W' (in out r multiply-adds) costs less than the adapter's own
        products over the rows (rows r (in + out), and two (rows, in or out) arrays more):
        a training batch folds, a generation step of a few tokens does not."""
        in_, out = self.weight.shape
        return not self.draws_in_forward and rows * (in_ + out) >= in_ * out

    def joins(self, rows: int) -> bool:
        return self.folds(rows)

    def adapter_backward(self, dout: np.ndarray, x: np.ndarray) -> None:
        """dA and dB after a folded product, added into their gradients: dout (N, out) and
        x (N, in) the adapter's input, the dx product (through W') made by the caller if
        needed."""
        dlora_a, dlora_b = lora_adapter_gradients(
            dout, x, self.lora_A.data, self.lora_B.data, self.scaling
        )
        if self.lora_A.requires_grad:
            self.lora_A.grad += dlora_a
        if self.lora_B.requires_grad:
            self.lora_B.grad += dlora_b

    def matrix(self, rows: int) -> np.ndarray:
        """W' when the product folds (``folds``), else W, the adapter going its own way."""
        if not self.folds(rows):
            return self.weight.data
        return lora_weight(self.weight.data, self.lora_A.data, self.lora_B.data, self.scaling)

    def unwrapped(self) -> Linear:
        """A plain Linear holding this layer's base Parameters (the adapter dropped)."""
        plain = Linear(1, 1, bias=False)
        plain.weight = self.weight
        plain.bias = self.bias
        return plain

    def project(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = super().project(x, out)  # x W' + b (..., out) when folded: the whole layer
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        if self.folds(len(x2)):
            return y
        drop = self.lora_dropout
        u, mask = dropout_forward(x2, drop.p, drop.rng, training=self.training)
        if mask is not None:  # kept for the backward, in the order made
            self._set_masks([*self._masks(), mask])
        delta, _ = lora_delta_forward(u, self.lora_A.data, self.lora_B.data, self.scaling)
        y.reshape(-1, y.shape[-1])[...] += delta  # x W + b + s u A^T B^T  (N, out)
        return y

    def backward_from_input(self, dout: np.ndarray, x: np.ndarray) -> np.ndarray:
        dx = super().backward_from_input(dout, x)  # dout W'^T or dout W^T; dW if trainable
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        g2 = dout.reshape(-1, dout.shape[-1])  # (N, out)
        a, b = self.lora_A.data, self.lora_B.data
        mask = self._take_mask(len(x2))
        if self.folds(len(x2)):  # dx already has the adapter's share, through W'
            self.adapter_backward(g2, x2)
            return dx
        u = x2 if mask is None else x2 * mask  # dropout(x) as the forward drew it
        h = u @ np.ascontiguousarray(a.T)  # (N, r), recomputed: thin, cheaper than kept
        du, dlora_a, dlora_b = lora_delta_backward(g2, u, h, a, b, self.scaling)
        dx.reshape(-1, x2.shape[1])[...] += dropout_backward(du, mask)
        if self.lora_A.requires_grad:
            self.lora_A.grad += dlora_a
        if self.lora_B.requires_grad:
            self.lora_B.grad += dlora_b
        return dx

    def parameter_backward(self, dout: np.ndarray, x: np.ndarray) -> None:
        """dA and dB (and the base's trainable parameters') with no dx formed: the adapter's
        input is dropout(x) as the forward drew it, and its gradients need no du."""
        super().parameter_backward(dout, x)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        mask = self._take_mask(len(x2))
        self.adapter_backward(dout.reshape(-1, dout.shape[-1]), x2 if mask is None else x2 * mask)

    def _take_mask(self, rows: int) -> np.ndarray | None:
        """The next ``rows`` rows of the masks the forward drew (None without dropout)."""
        drop = self.lora_dropout
        if not self.training or drop.p == 0.0:
            return None
        queue = self._masks()
        taken, have = [], 0
        while have < rows:
            if not queue:
                raise RuntimeError(
                    "LoraLinear backward has no dropout mask from a forward for these rows "
                    "(a backward without its forward)"
                )
            mask = queue.pop(0)
            need = rows - have
            if len(mask) > need:
                queue.insert(0, mask[need:])
                mask = mask[:need]
            taken.append(mask)
            have += len(mask)
        self._set_masks(queue)
        return taken[0] if len(taken) == 1 else np.concatenate(taken)

    # The masks live in the dropout layer's cache, which replicas of a model (numpyllm.nn.
    # parallel) start without, as they start without any other forward cache.
    def _masks(self) -> list[np.ndarray]:
        return list(vars(self.lora_dropout).get("_cache") or [])

    def _set_masks(self, masks: list[np.ndarray]) -> None:
        object.__setattr__(self.lora_dropout, "_cache", masks or None)

    def __repr__(self) -> str:
        return (
            f"LoraLinear(in={self.in_features}, out={self.out_features}, r={self.r}, "
            f"alpha={self.lora_alpha}, dropout={self.lora_dropout.p})"
        )
