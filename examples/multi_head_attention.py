"""Multi-head attention with d_model = 512 and 8 heads, step by step, with every shape printed.

    Q = x W_q + b_q, K = x W_k + b_k, V = x W_v + b_v       (B, T, 512) each
    split into 8 heads of d_head = 512 / 8 = 64             (B, 8, T, 64)
    scores  = Q K^T / sqrt(d_head)                          (B, 8, T, T)
    weights = softmax(scores) over the keys                 (B, 8, T, T)
    out     = weights V, heads merged back, then W_o        (B, T, 512)

The article's module divides the scores by sqrt(d_model) = 22.6 instead of
sqrt(d_head) = 8: each head's dot products have 64 terms, not 512, so its scores come
out sqrt(8) = 2.8 times too small and the attention too flat. The script measures
that, then checks numpyllm's hand-written backward pass with finite differences:
every element of a small float64 instance, and sampled elements of the 512-wide one.
Last, it shows that the key bias b_k gets no gradient: exactly none in the maths, and
in float32 only rounding noise (docs/attention.md explains why, and what Adam makes of it).

    python examples/multi_head_attention.py [--batch 2] [--seq-len 10] [--sampled 10]
"""

from __future__ import annotations

import argparse

import numpy as np

import numpyllm as nl
from numpyllm.functional.multi_head_attention import (
    merge_heads,
    multi_head_attention_backward,
    multi_head_attention_forward,
    split_heads,
)

NAMES = [f"{p}_{kind}" for p in "qkvo" for kind in ("weight", "bias")]


def self_attention_forward(x, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias,
                           o_weight, o_bias, n_head):  # fmt: skip
    """Self-attention as a function of x and the eight weight arrays (what gradcheck varies)."""
    weights = dict(zip(NAMES, (q_weight, q_bias, k_weight, k_bias, v_weight, v_bias,
                               o_weight, o_bias)))  # fmt: skip
    return multi_head_attention_forward(x, x, weights, n_head)


def self_attention_backward(dout, cache) -> dict:
    """x feeds the queries and the keys/values: its gradient is the sum of both paths."""
    dx_q, dx_kv, grads = multi_head_attention_backward(dout, cache)
    return {"x": dx_q + dx_kv, **grads}


def layer_weights(module: nl.nn.MultiHeadAttention) -> dict[str, np.ndarray]:
    """The layer's arrays by the names the functional op takes: q_weight, q_bias, ..."""
    weights = {}
    for p in "qkvo":
        projection = getattr(module, f"{p}_proj")  # a Linear: weight (in, out), bias (out,)
        weights[f"{p}_weight"], weights[f"{p}_bias"] = projection.weight.data, projection.bias.data
    return weights


def check_gradients(module, x, rng, max_elements=None) -> float:
    """Max relative error of the analytic gradients of x and every weight (float64)."""
    inputs = {"x": x, **layer_weights(module)}
    errors = nl.gradcheck(
        self_attention_forward,
        self_attention_backward,
        inputs,
        kwargs={"n_head": module.n_head},
        rng=rng,
        max_elements=max_elements,
    )
    return max(errors.values())


def main(argv: list[str] | None = None) -> dict:
    """Print the shapes, the scaling comparison and the gradient checks; returns them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="sequences in the batch")
    parser.add_argument("--seq-len", type=int, default=10, help="tokens per sequence")
    parser.add_argument(
        "--sampled", type=int, default=10, help="elements per tensor checked on the 512-wide one"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds weights and inputs")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    d_model, num_heads = 512, 8
    d_head = d_model // num_heads

    multi_head_attn = nl.nn.MultiHeadAttention(d_model, num_heads, rng=rng)
    print(multi_head_attn)
    print(f"{multi_head_attn.num_parameters():,} parameters (4 x (512 x 512 + 512))")

    # The forward pass step by step, with the module's own weights.
    x = rng.standard_normal((args.batch, args.seq_len, d_model)).astype(np.float32)
    w = layer_weights(multi_head_attn)
    shapes = {}

    def step(key: str, label: str, array: np.ndarray, note: str = "") -> None:
        shapes[key] = array.shape
        print(f"{label:<34} {str(array.shape):<16} {note}".rstrip())

    print()
    step("x", "x", x, "(batch, tokens, d_model)")
    q = x @ w["q_weight"] + w["q_bias"]  # (B, T, 512) @ (512, 512) -> (B, T, 512)
    k = x @ w["k_weight"] + w["k_bias"]
    v = x @ w["v_weight"] + w["v_bias"]
    step("q", "project q = x W_q + b_q", q, "(and k, v the same way)")
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))  # (B, T, 512) -> (B, 8, T, 64)
    step("heads", "split heads", q, "(batch, heads, tokens, d_head)")
    scores = q @ k.swapaxes(-1, -2) / np.float32(np.sqrt(d_head))  # (B, 8, T, T)
    step("scores", f"scores = q k^T / sqrt({d_head})", scores, "(batch, heads, query, key)")
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)  # softmax over the keys
    step("weights", "weights = softmax(scores)", weights, "each row sums to 1")
    heads = weights @ v  # (B, 8, T, T) @ (B, 8, T, 64) -> (B, 8, T, 64)
    step("attended", "weights v", heads)
    merged = merge_heads(heads)  # (B, 8, T, 64) -> (B, T, 512)
    step("merged", "merge heads", merged)
    out = merged @ w["o_weight"] + w["o_bias"]  # (B, T, 512) -> (B, T, 512)
    step("out", "out = merged W_o + b_o", out)
    diff = float(np.abs(out - multi_head_attn(x)).max())
    print(f"max |step by step - module(x)| = {diff:.1e}")

    # The article's scale: sqrt(d_model) where sqrt(d_head) belongs. With unit-variance
    # queries and keys (what a trained layer's are, roughly) the difference is stark.
    qn, kn = rng.standard_normal(q.shape), rng.standard_normal(k.shape)  # (B, 8, T, 64)
    print(f"\nscaling, unit-variance q and k per head (d_head = {d_head}):")
    flatness = {}
    scales = {"1/sqrt(d_head)": d_head**-0.5, "1/sqrt(d_model), article": d_model**-0.5}
    for name, scale in scales.items():
        s = qn @ kn.swapaxes(-1, -2) * scale  # (B, 8, T, T)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        flatness[name] = float(p.max(axis=-1).mean())
        print(f"  {name:<26} score std {s.std():.2f}, mean largest weight {flatness[name]:.3f}"
              f" (uniform would be {1 / args.seq_len:.3f})")  # fmt: skip
    print("  the article's scale shrinks the scores sqrt(8) = 2.8x: the attention is much flatter")

    # Gradients: all elements of a small float64 layer, sampled ones of the 512-wide one.
    small = nl.nn.MultiHeadAttention(16, 4, rng=rng, std=0.5).astype(np.float64)
    small_error = check_gradients(small, rng.standard_normal((2, 5, 16)), rng)
    big = multi_head_attn.astype(np.float64)
    big_error = check_gradients(big, x[:1, :4].astype(np.float64), rng, args.sampled)
    print("\ngradcheck (max relative error over x and all 8 weight tensors, float64):")
    print(f"  d_model 16, 4 heads, every element:         {small_error:.1e}")
    print(f"  d_model 512, 8 heads, {args.sampled} elements per tensor: {big_error:.1e}")
    ok = max(small_error, big_error) < 1e-6
    print(f"  {'< 1e-6: the backward is right' if ok else 'TOO LARGE: a bug'}")

    # The key bias adds q_i . b_k to every score of row i, which the softmax ignores: its
    # exact gradient is 0. The computed one is the rounding of a sum that cancels.
    print("\nkey bias gradient, compared with the query bias's (docs/attention.md):")
    key_bias = {}
    dout = rng.standard_normal(x.shape)
    for dtype in (np.float64, np.float32):
        layer = multi_head_attn.astype(dtype)
        layer.zero_grad()
        layer(x.astype(dtype))
        layer.backward(dout.astype(dtype))
        db_k, db_q = (np.abs(getattr(layer, f"{p}_proj").bias.grad).max() for p in "kq")
        key_bias[np.dtype(dtype).name] = float(db_k / db_q)
        print(f"  {np.dtype(dtype).name}: max |db_k| = {db_k:.1e}, max |db_q| = {db_q:.1e}, "
              f"ratio {db_k / db_q:.0e}")  # fmt: skip
    print("  zero to float64 rounding; in float32 only the noise of float32 rounding is left")
    return {
        "shapes": shapes,
        "step_by_step_diff": diff,
        "mean_max_weight": flatness,
        "gradcheck_small": small_error,
        "gradcheck_big": big_error,
        "key_bias_ratio": key_bias,
    }


if __name__ == "__main__":
    main()
