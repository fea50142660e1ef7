"""The smallest network there is worth training: one hidden ReLU layer, one sigmoid output.

    z = x W_1 + b_1           (N, in) -> (N, hidden)      the layer ``hidden``
    a = relu(z)
    s = a W_2 + b_2           (N, hidden) -> (N, 1)        the layer ``output``: the logits
    p = sigmoid(s)            probability of class 1       (``predict_proba``)

    loss = mean_n [ -y_n log p_n - (1 - y_n) log(1 - p_n) ]   binary cross-entropy

The loss is computed from the logits s, never from p: the form
max(s, 0) - s y + log1p(exp(-|s|)) stays finite for any s, while log(p) of a
rounded p = 0 is -inf.

With 2 inputs and 3 hidden units (the defaults) this is the binary classifier of the
article the project grew from. ``make_two_moons`` draws a two-class data set for it.
"""

from __future__ import annotations

import numpy as np

from numpyllm.functional.activations import relu_backward, relu_forward, sigmoid_forward
from numpyllm.functional.linear import linear_forward
from numpyllm.functional.losses import bce_with_logits_backward, bce_with_logits_forward
from numpyllm.models.output import ModelOutput
from numpyllm.nn.linear import Linear
from numpyllm.nn.module import Module


def _uniform_init(layer: Linear, rng: np.random.Generator) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as torch.nn.Linear starts.

    A net this small depends on a wide start: with weights of std 0.02 the three hidden
    units begin almost identical and learn slowly.
    """
    fan_in = layer.weight.shape[0]
    bound = 1.0 / np.sqrt(fan_in)
    dtype = layer.weight.dtype
    layer.weight.data[...] = rng.uniform(-bound, bound, layer.weight.shape).astype(dtype)
    if layer.bias is not None:
        layer.bias.data[...] = rng.uniform(-bound, bound, layer.bias.shape).astype(dtype)


class SimpleNN(Module):
    """in_features -> hidden (ReLU) -> 1 logit; see the module docstring for the maths."""

    def __init__(
        self, in_features: int = 2, hidden: int = 3, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SimpleNN {name} must be a positive integer, got {value!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features = int(in_features)
        self.hidden_size = int(hidden)
        self.hidden = Linear(in_features, hidden, rng=rng)
        self.output = Linear(hidden, 1, rng=rng)
        _uniform_init(self.hidden, rng)
        _uniform_init(self.output, rng)
        self._cache: tuple | None = None

    def _check_x(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"x must be a numeric array, got dtype {x.dtype}")
        return x.astype(self.dtype, copy=False)  # compute in the parameters' dtype

    def _check_labels(self, labels, n: int) -> np.ndarray:
        y = np.asarray(labels)
        if y.shape not in ((n,), (n, 1)):
            raise ValueError(f"labels must have shape ({n},) or ({n}, 1), got {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 or 1")
        return y.reshape(n, 1).astype(self.dtype)

    def forward(self, x: np.ndarray, labels: np.ndarray | None = None) -> ModelOutput:
        """Logits s (N, 1) (pre-sigmoid); loss = binary cross-entropy when labels (N,) given."""
        x = self._check_x(x)
        z = self.hidden(x)  # (N, in) -> (N, hidden)
        a, relu_cache = relu_forward(z)  # (N, hidden)
        logits = self.output(a)  # (N, hidden) -> (N, 1)
        loss, loss_cache = None, None
        if labels is not None:
            y = self._check_labels(labels, x.shape[0])  # (N, 1)
            loss_value, loss_cache = bce_with_logits_forward(logits, y)
            loss = float(loss_value)
        self._cache = (relu_cache, loss_cache, logits.shape)
        return ModelOutput(logits=logits, loss=loss, hidden_states=a)

    def backward(self, dlogits: np.ndarray | None = None) -> None:
        """Accumulate parameter gradients for the last forward, from dloss = 1 or ``dlogits``.

        ds = (p - y) / N (the fused sigmoid + BCE gradient); then
        dW_2 = a^T ds, db_2 = sum ds, da = ds W_2^T, dz = da * [z > 0],
        dW_1 = x^T dz, db_1 = sum dz.
        """
        if self._cache is None:
            raise RuntimeError("SimpleNN.backward called without a preceding forward (or twice)")
        relu_cache, loss_cache, logits_shape = self._cache
        if dlogits is None:
            if loss_cache is None:
                raise RuntimeError(
                    "SimpleNN.backward needs a loss: call the model with labels=..., "
                    "or pass dlogits=..."
                )
            dlogits = bce_with_logits_backward(1.0, loss_cache)  # (N, 1)
        elif np.shape(dlogits) != logits_shape:
            raise ValueError(f"dlogits must have shape {logits_shape}, got {np.shape(dlogits)}")
        self._cache = None
        da = self.output.backward(dlogits)  # (N, 1) -> (N, hidden)
        self.hidden.backward(relu_backward(da, relu_cache))  # (N, hidden) -> (N, in)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """p = sigmoid(logits), shape (N, 1): the article's forward output."""
        x = self._check_x(x)
        # the functional ops directly: a prediction leaves the layers' caches alone
        hidden, output = self.hidden, self.output
        b_hidden = None if hidden.bias is None else hidden.bias.data
        b_output = None if output.bias is None else output.bias.data
        z, _ = linear_forward(x, hidden.weight.data, b_hidden)  # (N, in) -> (N, hidden)
        a, _ = relu_forward(z)
        logits, _ = linear_forward(a, output.weight.data, b_output)  # (N, hidden) -> (N, 1)
        p, _ = sigmoid_forward(logits)
        return p

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class labels (N,) int64: 1 where p > 0.5 (logit > 0)."""
        return (self.predict_proba(x)[:, 0] > 0.5).astype(np.int64)

    def __repr__(self) -> str:
        # the layout the article prints for its torch version of this network
        return (
            "SimpleNN(\n"
            f"  (hidden): Linear(in_features={self.in_features}, "
            f"out_features={self.hidden_size}, bias=True)\n"
            f"  (output): Linear(in_features={self.hidden_size}, out_features=1, bias=True)\n"
            ")"
        )


def make_two_moons(
    n: int, noise: float, rng: np.random.Generator, gap: float = 0.0, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles: x (n, 2) of ``dtype``, y (n,) int64 in {0, 1}, shuffled.

    Class 0 lies on (cos t, sin t + gap), class 1 on (1 - cos t, 0.5 - sin t - gap),
    t ~ U[0, pi], plus Gaussian noise of std ``noise``. With gap = 0 (the classic set) no
    straight line separates them; a positive ``gap`` pulls the moons apart vertically by
    2 * gap, which makes the task easier.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    n0 = n // 2
    y = np.zeros(n, dtype=np.int64)
    y[n0:] = 1
    t = rng.uniform(0.0, np.pi, n)  # (n,)
    upper = np.stack([np.cos(t), np.sin(t) + gap], axis=1)  # (n, 2)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t) - gap], axis=1)  # (n, 2)
    x = np.where(y[:, None] == 0, upper, lower)  # (n, 2)
    x = x + noise * rng.standard_normal((n, 2))
    order = rng.permutation(n)
    return x[order].astype(dtype), y[order]
