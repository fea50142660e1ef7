"""Clipping gradients by their global L2 norm."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from numpyllm.nn.parameter import Parameter


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    r"""Scale all gradients together so their global L2 norm is at most ``max_norm``.

    The global norm treats every gradient as one long vector::

        norm = sqrt(sum_p sum_i grad_p[i]^2)

    and, when ``max_norm / (norm + 1e-6) < 1``, every gradient is multiplied in
    place by that factor (the 1e-6 keeps the division safe; this is
    torch.nn.utils.clip_grad_norm_'s rule, so a norm within 1e-6 below
    ``max_norm`` is scaled by a factor just under 1). Directions are kept; only
    the length shrinks.

    Returns the norm measured *before* clipping, as a Python float (inf or nan
    if a gradient holds inf or nan; a nan norm leaves the gradients as they are).

    When the gradients are views that exactly tile one flat buffer (as after
    building an optimizer on them), the norm and the scaling run once over that
    buffer instead of once per parameter. Each parameter counts once, however
    often it is listed; frozen parameters (``requires_grad = False``) are skipped.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating)):
        raise TypeError(f"max_norm must be a number, got {max_norm!r}")
    if not max_norm > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    if isinstance(params, Parameter):
        params = [params]
    unique: dict[int, Parameter] = {}
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"clip_grad_norm expects Parameters, got {type(p).__name__}")
        if p.requires_grad:  # a frozen parameter has no gradient to measure or scale
            unique.setdefault(id(p), p)
    grads = _coalesce([p.grad for p in unique.values()])

    total = 0.0
    for g in grads:
        flat = g.reshape(-1)
        if flat.dtype.itemsize < 4:
            flat = flat.astype(np.float32)  # a float16 sum of squares overflows at 256
        total += float(np.dot(flat, flat))
    norm = math.sqrt(total)
    coef = float(max_norm) / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return norm


def _coalesce(grads: list[np.ndarray]) -> list[np.ndarray]:
    """Replace views that exactly tile a common contiguous base by that base."""
    by_base: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
    out = []
    for g in grads:
        base = g.base
        if (
            base is not None
            and isinstance(base, np.ndarray)
            and base.dtype == g.dtype
            and base.flags.c_contiguous
            and base.flags.writeable
            and g.flags.c_contiguous
        ):
            by_base.setdefault(id(base), (base, []))[1].append(g)
        else:
            out.append(g)
    for base, views in by_base.values():
        if len(views) > 1 and _tiles(base, views):
            out.append(base.reshape(-1))
        else:
            out.extend(views)
    return out


def _tiles(base: np.ndarray, views: list[np.ndarray]) -> bool:
    """True if the (contiguous) views cover ``base`` exactly, without overlap."""
    if sum(v.size for v in views) != base.size:
        return False
    spans = sorted((v.__array_interface__["data"][0], v.nbytes) for v in views)
    end = base.__array_interface__["data"][0]
    for start, nbytes in spans:
        if start != end:
            return False  # a gap or an overlap
        end = start + nbytes
    return True
