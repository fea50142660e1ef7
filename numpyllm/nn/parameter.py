"""A trainable tensor: the value and the gradient of the loss with respect to it."""

from __future__ import annotations

import numpy as np


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype).

    Two rules every layer follows:

    * Read ``p.data`` afresh on every call. An optimizer may rebind ``data`` and
      ``grad`` to views into one flat buffer, so a cached reference goes stale.
    * Accumulate into the gradient in place (``p.grad += g``), never rebind it.
      A weight used twice (a tied embedding and output head) then receives the
      sum of both contributions, and ``zero_grad`` is part of the contract.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        data = np.asarray(data)
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"a Parameter holds floating-point data, got dtype {data.dtype}")
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"
