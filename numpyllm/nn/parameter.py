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

    ``requires_grad = False`` freezes the parameter: its ``grad`` is None, layers
    skip the products that would only feed it (a frozen projection's x^T g is
    never formed), and optimizers, gradient clipping and the Trainer leave it out.
    Freeze before building the optimizer, which packs only trainable parameters.
    """

    __slots__ = ("data", "grad", "_requires_grad")

    data: np.ndarray
    grad: np.ndarray  # None only while frozen: layers check ``requires_grad`` before using it

    def __init__(self, data: np.ndarray, requires_grad: bool = True):
        data = np.asarray(data)
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"a Parameter holds floating-point data, got dtype {data.dtype}")
        self.data = data
        self._requires_grad = False
        self.grad = None  # type: ignore[assignment]  # set just below, by requires_grad
        self.requires_grad = requires_grad

    @property
    def requires_grad(self) -> bool:
        """Whether backward passes compute and accumulate this parameter's gradient."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be True or False, got {flag!r}")
        self._requires_grad = bool(flag)
        if not flag:
            self.grad = None  # type: ignore[assignment]  # a frozen parameter holds no gradient
        elif self.grad is None:
            # np.zeros, not zeros_like: zeroed memory from the OS costs nothing until
            # written, so a model that never runs a backward (loaded for inference) never
            # pays for it
            self.grad = np.zeros(self.data.shape, dtype=self.data.dtype)

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
        if self.grad is not None:
            self.grad[...] = 0

    def __repr__(self) -> str:
        frozen = "" if self._requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"
