"""Finite-difference gradient checking.

Every backward pass in numpyllm is written by hand, so every one of them is
checked against numbers obtained without calculus: perturb one input element
by a small h, re-run the forward pass, and see how the loss moved.

The loss used is L = sum(out * dout) for a random upstream gradient ``dout``.
A random ``dout`` matters: with ``dout`` all ones, L = sum(out), and for
LayerNorm or softmax (whose outputs sum to a constant along a row) the input
gradient of that L is zero whatever the backward computes, so a wrong backward
would pass.

Derivatives use the fourth-order central stencil

    f'(x) ≈ [f(x - 2h) - 8 f(x - h) + 8 f(x + h) - f(x + 2h)] / (12 h)

whose truncation error is O(h^4), so a fairly large h (1e-3) can be used and
round-off stays near 1e-12. Work in float64: in float32 round-off alone is
about 1e-7 / h.

Example::

    import numpy as np
    import numpyllm as nl
    from numpyllm.functional.linear import linear_forward, linear_backward

    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(4, 3)), "weight": rng.normal(size=(3, 2)),
              "bias": rng.normal(size=2)}
    errors = nl.gradcheck(linear_forward, linear_backward, inputs)
    assert max(errors.values()) < 1e-6     # {'x': 3e-11, 'weight': 2e-11, 'bias': 1e-11}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def numerical_gradient(
    f: Callable[[], float],
    x: np.ndarray,
    h: float = 1e-3,
    indices: Sequence[tuple[int, ...]] | None = None,
) -> np.ndarray:
    """dL/dx by the fourth-order central stencil, where ``L = f()`` reads ``x``.

    ``x`` is perturbed in place and restored. With ``indices`` only those
    elements are differentiated and a 1-D array of their derivatives is
    returned; otherwise an array shaped like ``x``.
    """
    grad: np.ndarray
    if indices is None:
        indices = list(np.ndindex(x.shape))
        grad = np.zeros(x.shape, dtype=np.float64)
        flat_out = grad.reshape(-1)
    else:
        flat_out = np.zeros(len(indices), dtype=np.float64)
        grad = flat_out
    for k, idx in enumerate(indices):
        original = x[idx]
        values = []
        for step in (-2.0, -1.0, 1.0, 2.0):
            x[idx] = original + step * h
            values.append(float(f()))
        x[idx] = original
        f_m2, f_m1, f_p1, f_p2 = values
        flat_out[k] = (f_m2 - 8.0 * f_m1 + 8.0 * f_p1 - f_p2) / (12.0 * h)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = 1e-4) -> float:
    """max_i |a_i - n_i| / max(|a_i|, |n_i|, floor), element by element.

    The floor keeps elements whose true gradient is (near) zero from turning
    round-off into a huge ratio: below ``floor`` the comparison is absolute.
    """
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"gradient shape {analytic.shape} != numerical shape {numeric.shape}")
    if analytic.size == 0:
        return 0.0
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    return float(np.max(np.abs(analytic - numeric) / scale))


def _as_named(grads: Any, names: Sequence[str]) -> dict[str, np.ndarray | None]:
    if isinstance(grads, Mapping):
        return {name: grads.get(name) for name in names}
    if isinstance(grads, np.ndarray):
        grads = (grads,)
    grads = tuple(grads)
    if len(grads) < len(names):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(names)} inputs")
    return dict(zip(names, grads[: len(names)]))


def gradcheck(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[Any, Any], Any],
    inputs: Mapping[str, np.ndarray],
    kwargs: Mapping[str, Any] | None = None,
    dout: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    h: float = 1e-3,
    max_elements: int | None = None,
) -> dict[str, float]:
    """Compare ``backward`` with finite differences of ``forward``; max relative error per input.

    ``forward(**inputs, **kwargs) -> (out, cache)`` and ``backward(dout, cache)``
    is the numpyllm op convention. ``inputs`` are the arrays to differentiate,
    in the order the backward returns their gradients (or, if the backward
    returns a dict, under the same names); ``kwargs`` holds everything else
    (ids, masks, flags). Inputs are converted to float64 copies.

    ``dout`` defaults to a standard-normal draw from ``rng`` shaped like ``out``.
    With ``max_elements`` each input is checked on at most that many randomly
    chosen elements (every element otherwise).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    kwargs = dict(kwargs or {})
    arrays = {name: np.array(value, dtype=np.float64) for name, value in inputs.items()}

    out, cache = forward(**arrays, **kwargs)
    out = np.asarray(out)
    if dout is None:
        dout = rng.standard_normal(out.shape)
    dout = np.asarray(dout, dtype=np.float64)
    analytic = _as_named(backward(dout.copy() if dout.ndim else dout, cache), list(arrays))

    def objective() -> float:
        value, _ = forward(**arrays, **kwargs)
        return float(np.sum(np.asarray(value, dtype=np.float64) * dout))

    errors: dict[str, float] = {}
    for name, x in arrays.items():
        grad = analytic[name]
        if grad is None:
            raise ValueError(f"backward returned no gradient for input {name!r}")
        grad = np.asarray(grad)
        if grad.shape != x.shape:
            raise ValueError(f"gradient of {name!r} has shape {grad.shape}, input has {x.shape}")
        if max_elements is not None and x.size > max_elements:
            flat = rng.choice(x.size, size=max_elements, replace=False)
            indices = [np.unravel_index(i, x.shape) for i in flat]
            numeric = numerical_gradient(objective, x, h, indices)
            errors[name] = relative_error(np.array([grad[i] for i in indices]), numeric)
        else:
            errors[name] = relative_error(grad, numerical_gradient(objective, x, h))
    return errors


def gradcheck_model(
    model: Any,
    loss_fn: Callable[[], float],
    rng: np.random.Generator | None = None,
    samples_per_tensor: int = 3,
    h: float = 1e-3,
) -> dict[str, float]:
    """Check ``model.backward()`` against finite differences of ``loss_fn``, per parameter.

    ``loss_fn()`` runs the model's forward and returns the scalar loss; call it
    on a model converted with ``model.astype(np.float64)`` and with dropout off.
    For every parameter tensor this checks ``samples_per_tensor`` randomly chosen
    coordinates and one random-direction directional derivative
    d/de L(theta + e u) = <grad, u>, which sees every coordinate at once.
    Returns the max relative error per parameter name (frozen parameters are skipped).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    model.zero_grad()
    loss_fn()
    model.backward()
    errors: dict[str, float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen: no gradient to check
        grad = param.grad.astype(np.float64)
        count = min(samples_per_tensor, param.data.size)
        flat = rng.choice(param.data.size, size=count, replace=False)
        indices = [np.unravel_index(i, param.data.shape) for i in flat]
        numeric = numerical_gradient(loss_fn, param.data, h, indices)
        error = relative_error(np.array([grad[i] for i in indices]), numeric)

        direction = rng.standard_normal(param.data.shape)
        direction /= np.linalg.norm(direction)
        directional = _directional_derivative(loss_fn, param.data, direction, h)
        analytic_directional = np.array([np.sum(grad * direction)])
        error = max(error, relative_error(analytic_directional, np.array([directional])))
        errors[name] = error
    return errors


def _directional_derivative(
    loss_fn: Callable[[], float], x: np.ndarray, direction: np.ndarray, h: float
) -> float:
    """d/de loss(x + e u) at e = 0, moving every element of x at once; x is restored."""
    original = x.copy()
    step = np.zeros(1)

    def along_direction() -> float:
        x[...] = original + step[0] * direction
        return float(loss_fn())

    try:
        return float(numerical_gradient(along_direction, step, h)[0])
    finally:
        x[...] = original
