"""SwiGLU: the gated feed-forward of Llama, PaLM and most LLMs since.

    MLP(x) = W_down (silu(x W_gate) ⊙ (x W_up))         W_gate, W_up (d, d_ff), W_down (d_ff, d)

    silu(g) = g σ(g),   σ(g) = 1 / (1 + e^{-g})         ("swish" with β = 1)

The three matrix products are ordinary linear layers; this module holds the part between
them, h = silu(g) ⊙ u for g = x W_gate and u = x W_up. One branch decides how much of the
other passes: the "gate" g through a smooth switch (silu is ~0 for g << 0 and ~g for
g >> 0), the "up" value u as it is. With three matrices instead of two, d_ff is usually
taken as about 8/3 d so that the MLP has the parameter count of a 4d two-matrix MLP.

Backward, elementwise, with dh = dL/dh:

    dL/du = dh ⊙ silu(g)
    dL/dg = dh ⊙ u ⊙ silu'(g),   silu'(g) = σ(g) + g σ(g)(1 - σ(g)) = σ(g) (1 + g (1 - σ(g)))

(σ' = σ (1 - σ)). The cache keeps g, u and σ(g): silu(g) = g σ(g) is one product away.
"""

from __future__ import annotations

import numpy as np


def silu_forward(g: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """y = g σ(g). Returns y and the cache (g, σ(g))."""
    g = np.asarray(g)
    if not np.issubdtype(g.dtype, np.floating):
        raise TypeError(f"silu: expected a floating-point array, got dtype {g.dtype}")
    sig = _sigmoid(g)
    return g * sig, (g, sig)


def silu_backward(dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """dg = dout ⊙ σ(g) (1 + g (1 - σ(g)))."""
    g, sig = cache
    return dout * _silu_derivative(g, sig)


def swiglu_forward(
    gate: np.ndarray, up: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """h = silu(gate) ⊙ up. Shapes: gate, up (..., d_ff) -> h (..., d_ff), gate's dtype.

    Passes: σ (four in place), g σ, ⊙ u.
    """
    gate, up = np.asarray(gate), np.asarray(up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate and up must have one shape, got {gate.shape}, {up.shape}")
    if not np.issubdtype(gate.dtype, np.floating) or gate.dtype != up.dtype:
        raise TypeError(
            f"swiglu: gate and up must share one floating dtype, got {gate.dtype}, {up.dtype}"
        )
    sig = _sigmoid(gate)
    h = gate * sig
    h *= up
    return h, (gate, up, sig)


def swiglu_backward(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(dgate, dup) for h = silu(gate) ⊙ up (derivation in the module docstring)."""
    gate, up, sig = cache
    dout = np.asarray(dout, dtype=gate.dtype)
    dup = gate * sig  # silu(g)
    dup *= dout
    dgate = _silu_derivative(gate, sig)
    dgate *= dout
    dgate *= up
    return dgate, dup


def swiglu_inference(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``swiglu_forward``'s h alone, computed in ``gate``'s memory (which it overwrites):
    for generation and for a forward whose backward is not wanted."""
    sig = _sigmoid(gate)
    gate *= sig
    gate *= up
    return gate


def _sigmoid(g: np.ndarray) -> np.ndarray:
    """σ(g) = 1 / (1 + e^{-g}); e^{-g} overflowing to inf for g << 0 gives the right 0."""
    s = np.negative(g)
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)
    return s


def _silu_derivative(g: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """σ(g) (1 + g (1 - σ(g))), a fresh array."""
    d = 1.0 - sig
    d *= g
    d += 1.0
    d *= sig
    return d
