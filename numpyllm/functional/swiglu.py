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

from numpyllm.functional.activations import _over_chunks


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
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray], overwrite: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(dgate, dup) for h = silu(gate) ⊙ up (derivation in the module docstring).

    Eight passes, chunk by chunk (as the GELUs, and over the cores as they are) with a
    chunk of scratch. ``overwrite``: the cache and dout are spent (a model's backward, which
    drops both), so dup is written into σ's memory and dgate into dout's (a C-ordered array
    of gate's dtype), and no (..., d_ff) array is allocated: fresh arrays of that size cost
    their page faults on first touch.
    """
    gate, up, sig = cache
    dout = np.asarray(dout, dtype=gate.dtype)
    if dout.shape != gate.shape:
        raise ValueError(f"swiglu: dout must have shape {gate.shape}, got {dout.shape}")
    spend = overwrite and dout.flags.c_contiguous and dout.flags.writeable
    dgate = dout if spend else np.empty_like(gate, order="C")
    dup = sig if spend else np.empty_like(gate, order="C")
    g_flat, u_flat, s_flat = gate.reshape(-1), up.reshape(-1), sig.reshape(-1)
    d_flat, dg_flat, du_flat = dout.reshape(-1), dgate.reshape(-1), dup.reshape(-1)

    def chunk(c: slice) -> None:
        g, s, d = g_flat[c], s_flat[c], d_flat[c]
        t = np.empty_like(g)  # per chunk: the chunks may run on several threads at once
        np.subtract(1.0, s, out=t)  # silu'(g) = σ (1 + g (1 - σ)), read before σ's memory
        t *= g  # is reused for dup
        t += 1.0
        t *= s
        t *= u_flat[c]  # u silu'(g)
        np.multiply(g, s, out=du_flat[c])  # silu(g)
        du_flat[c] *= d
        np.multiply(d, t, out=dg_flat[c])

    _over_chunks(chunk, g_flat.size)
    return dgate, dup


def swiglu_inference(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``swiglu_forward``'s h alone, computed in ``gate``'s memory (which it overwrites):
    for generation and for a forward whose backward is not wanted."""
    sig = _sigmoid(gate)
    gate *= sig
    gate *= up
    return gate


def _sigmoid(g: np.ndarray) -> np.ndarray:
    """σ(g) = 1 / (1 + e^{-g}) = (1 + tanh(g / 2)) / 2, a fresh array.

    The tanh form: NumPy's float32 tanh is a vector loop and its reciprocal is not, so the
    four passes cost about half of negate, exp, + 1, reciprocal (measured on a Zen 4). It
    cannot overflow, and it is 0 and 1 at the far ends as the exp form is.
    """
    s = g * 0.5
    np.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s


def _silu_derivative(g: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """σ(g) (1 + g (1 - σ(g))), a fresh array."""
    d = 1.0 - sig
    d *= g
    d += 1.0
    d *= sig
    return d
