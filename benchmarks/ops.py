"""Per-op forward + backward timings: numpyllm's hand-written pairs vs torch autograd."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from benchmarks.common import alternate, one_thread, summary, torch_available

# (name, shapes) at the size of the "medium" model's activations: N = B * T = 2048 rows.
FULL = {"N": 2048, "d": 384, "ff": 1536, "B": 8, "H": 8, "T": 256, "V": 2048}
QUICK = {"N": 32, "d": 16, "ff": 64, "B": 2, "H": 2, "T": 16, "V": 50}
SAMPLE_SECONDS = 0.1


def _numpyllm_ops(s: dict, rng: np.random.Generator) -> dict:
    """name -> (arrays, fn) where fn runs forward then backward with a fixed random dout."""
    from numpyllm.functional import activations, attention, linear, losses, norms, softmax
    from numpyllm.functional import multi_head_attention as mha

    f32 = np.float32
    N, d, ff, B, H, T, V = (s[k] for k in ("N", "d", "ff", "B", "H", "T", "V"))
    dh = d // H

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(f32)

    x_lin, w_lin, b_lin, g_lin = randn(N, d), randn(d, ff, scale=0.05), randn(ff), randn(N, ff)
    x_sm, g_sm = randn(B * H, T, T), randn(B * H, T, T)
    x_ln, w_ln, b_ln, g_ln = randn(N, d), randn(d), randn(d), randn(N, d)
    x_ge, g_ge = randn(N, ff), randn(N, ff)
    q, k, v, g_at = randn(B, H, T, dh), randn(B, H, T, dh), randn(B, H, T, dh), randn(B, H, T, dh)
    x_mh, g_mh = randn(B, T, d), randn(B, T, d)
    weights = {}
    for p in "qkvo":
        weights[f"{p}_weight"] = randn(d, d, scale=0.05)
        weights[f"{p}_bias"] = randn(d, scale=0.05)
    logits, targets = randn(N, V), rng.integers(0, V, size=N)

    def op_linear():
        y, c = linear.linear_forward(x_lin, w_lin, b_lin)
        return linear.linear_backward(g_lin, c)

    def op_softmax():
        y, c = softmax.softmax_forward(x_sm)
        return softmax.softmax_backward(g_sm, c)

    def op_layernorm():
        y, c = norms.layer_norm_forward(x_ln, w_ln, b_ln)
        return norms.layer_norm_backward(g_ln, c)

    def op_gelu():
        y, c = activations.gelu_tanh_forward(x_ge)
        return activations.gelu_tanh_backward(g_ge, c)

    def op_attention():
        y, c = attention.attention_forward(q, k, v, causal=True)
        return attention.attention_backward(g_at, c)

    def op_mha():
        y, c = mha.multi_head_attention_forward(x_mh, x_mh, weights, H, causal=True)
        return mha.multi_head_attention_backward(g_mh, c)

    def op_cross_entropy():
        loss, c = losses.cross_entropy_forward(logits, targets)
        return losses.cross_entropy_backward(1.0, c)

    arrays = {
        "linear": (x_lin, w_lin, b_lin, g_lin),
        "softmax": (x_sm, g_sm),
        "layernorm": (x_ln, w_ln, b_ln, g_ln),
        "gelu_tanh": (x_ge, g_ge),
        "attention": (q, k, v, g_at),
        "multi_head_attention": (x_mh, weights, g_mh),
        "cross_entropy": (logits, targets),
    }
    fns = {
        "linear": op_linear,
        "softmax": op_softmax,
        "layernorm": op_layernorm,
        "gelu_tanh": op_gelu,
        "attention": op_attention,
        "multi_head_attention": op_mha,
        "cross_entropy": op_cross_entropy,
    }
    return {name: (arrays[name], fns[name]) for name in fns}, H


def _torch_ops(ours: dict, n_head: int) -> dict:
    """The same ops on the same arrays through torch autograd."""
    import torch
    import torch.nn.functional as F

    def leaf(a):
        return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True)

    def const(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    fns = {}
    x, w, b, g = ours["linear"][0]
    tx, tw, tb, tg = leaf(x), leaf(np.ascontiguousarray(w.T)), leaf(b), const(g)
    fns["linear"] = lambda: F.linear(tx, tw, tb).backward(tg)

    x, g = ours["softmax"][0]
    sx, sg = leaf(x), const(g)
    fns["softmax"] = lambda: torch.softmax(sx, dim=-1).backward(sg)

    x, w, b, g = ours["layernorm"][0]
    lx, lw, lb, lg = leaf(x), leaf(w), leaf(b), const(g)
    fns["layernorm"] = lambda: F.layer_norm(lx, (lx.shape[-1],), lw, lb, 1e-5).backward(lg)

    x, g = ours["gelu_tanh"][0]
    gx, gg = leaf(x), const(g)
    fns["gelu_tanh"] = lambda: F.gelu(gx, approximate="tanh").backward(gg)

    q, k, v, g = ours["attention"][0]
    aq, ak, av, ag = leaf(q), leaf(k), leaf(v), const(g)
    fns["attention"] = lambda: F.scaled_dot_product_attention(aq, ak, av, is_causal=True).backward(
        ag
    )

    x, weights, g = ours["multi_head_attention"][0]
    mx, mg = leaf(x), const(g)
    mw = {name: leaf(a.T if a.ndim == 2 else a) for name, a in weights.items()}

    def torch_mha():
        B, T, d = mx.shape
        dh = d // n_head

        def heads(name):  # (B, T, d) -> (B, H, T, dh)
            y = F.linear(mx, mw[f"{name}_weight"], mw[f"{name}_bias"])
            return y.view(B, T, n_head, dh).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads("q"), heads("k"), heads("v"), is_causal=True)
        y = F.linear(y.transpose(1, 2).reshape(B, T, d), mw["o_weight"], mw["o_bias"])
        y.backward(mg)

    fns["multi_head_attention"] = torch_mha

    logits, targets = ours["cross_entropy"][0]
    cl, ct = leaf(logits), const(targets.astype(np.int64))
    fns["cross_entropy"] = lambda: F.cross_entropy(cl, ct).backward()

    def zero_grads(fn, leaves):
        def run():
            for t in leaves:
                t.grad = None  # as an optimizer's zero_grad: each call starts afresh
            fn()

        return run

    leaves = {
        "linear": (tx, tw, tb),
        "softmax": (sx,),
        "layernorm": (lx, lw, lb),
        "gelu_tanh": (gx,),
        "attention": (aq, ak, av),
        "multi_head_attention": (mx, *mw.values()),
        "cross_entropy": (cl,),
    }
    return {name: zero_grads(fn, leaves[name]) for name, fn in fns.items()}


def run(quick: bool, rounds: int, threads: int = 1) -> list:
    """One row per op at the run's thread count (torch splits an op over its threads, a
    NumPy ufunc runs on one), and, when that is more than one, the same op with one thread
    on each side ("softmax, one thread"): the per-core comparison."""
    shapes = QUICK if quick else FULL
    ours, n_head = _numpyllm_ops(shapes, np.random.default_rng(0))
    theirs = _torch_ops(ours, n_head) if torch_available() else {}
    rows = []
    variants = [("", contextlib.nullcontext)]
    if threads > 1:
        variants.append((", one thread", lambda: one_thread(threads)))
    for variant, limit in variants:
        for name, (_, fn) in ours.items():
            sides = {"numpyllm": fn}
            if name in theirs:
                sides["torch"] = theirs[name]
            with limit():
                # Enough back-to-back calls per sample that each lasts about 0.1 s: a
                # two-thread op of a few milliseconds is at the mercy of one late thread
                # wake-up, which shorter samples let decide a whole round.
                repeat = max(1, min(200, math.ceil(SAMPLE_SECONDS / max(1e-6, _once(fn)))))
                times = alternate(sides, rounds, repeat=repeat, warmup=2)
            values = {}
            for side, samples in times.items():
                s = summary(samples)
                values[side] = {"median": s["median"] * 1e3, "spread": s["spread"], "n": s["n"]}
            rows.append(
                {
                    "section": "ops",
                    "name": name + variant,
                    "unit": "ms",
                    "higher_is_better": False,
                    "shapes": shapes,
                    "values": values,
                }
            )
    return rows


def _once(fn) -> float:
    import time

    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
