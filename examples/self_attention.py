"""Self-attention on the article's numbers: its way, the right way, and why they differ.

The article computes

    scores  = query . key^T
    weights = exp(scores) / sum(exp(scores))       <- ONE sum over the whole score matrix
    output  = weights . value

Transformers normalise each query's row on its own and divide the scores by sqrt(d):

    weights = softmax(query . key^T / sqrt(d))     <- a softmax per row (per query)

This script prints both on the article's query/key/value, shows that with a single
query row the two normalisations coincide (the whole matrix IS one row) but that with
two rows they do not, shows why the 1/sqrt(d) matters (dot products of random vectors
have variance d, so unscaled softmaxes saturate as d grows), and checks numpyllm's
hand-written backward pass against finite differences.

    python examples/self_attention.py [--samples 20000] [--keys 16] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

import numpyllm as nl
from numpyllm.functional.attention import attention_backward, attention_forward

# The article's example, as float64 arrays.
QUERY = np.array([[1.0, 0.0, 1.0]])  # (1, 3): one query
KEY = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # (3, 3): three keys
VALUE = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (3, 2): one value per key


def article_attention(query: np.ndarray, key: np.ndarray, value: np.ndarray):
    """The article's computation: unscaled scores, exp normalised over the WHOLE matrix."""
    scores = query @ key.T  # (Tq, d) @ (d, Tk) -> (Tq, Tk)
    weights = np.exp(scores) / np.sum(np.exp(scores))  # one sum for all rows together
    return weights @ value, weights  # (Tq, Tk) @ (Tk, dv) -> (Tq, dv)


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Softmax of each row on its own (the row maximum is subtracted for stability)."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def show(name: str, array: np.ndarray) -> None:
    text = np.array2string(np.asarray(array), precision=4, suppress_small=True)
    print(f"{name}\n{text}")


def scaling_table(samples: int, keys: int, rng: np.random.Generator) -> dict[int, dict]:
    """For growing d: variance of q.k for standard-normal q, k, and how peaked the softmax
    over ``keys`` keys becomes without and with the 1/sqrt(d) scaling."""
    print(f"\nWhy divide by sqrt(d): q, k ~ N(0, 1)^d, softmax over {keys} keys")
    print(f"{'d':>5} {'var(q.k)':>10} {'var(q.k/sqrt d)':>16} {'max weight':>11} {'scaled':>8}")
    table = {}
    for d in (4, 64, 512):
        q = rng.standard_normal((samples, 1, d))  # (S, 1, d): one query per sample
        k = rng.standard_normal((samples, keys, d))  # (S, K, d)
        dots = (q @ k.swapaxes(1, 2))[:, 0]  # (S, 1, d) @ (S, d, K) -> (S, K)
        # Each q.k is a sum of d products of unit-variance numbers: variance d.
        unscaled_max = softmax_rows(dots).max(axis=-1).mean()
        scaled_max = softmax_rows(dots / np.sqrt(d)).max(axis=-1).mean()
        row = {
            "var": float(dots.var()),
            "var_scaled": float((dots / np.sqrt(d)).var()),
            "max_weight": float(unscaled_max),
            "max_weight_scaled": float(scaled_max),
        }
        table[d] = row
        print(
            f"{d:>5} {row['var']:>10.1f} {row['var_scaled']:>16.3f} "
            f"{row['max_weight']:>11.3f} {row['max_weight_scaled']:>8.3f}"
        )
    print(
        "Without the scaling, scores spread like sqrt(d): at d = 512 the softmax puts almost\n"
        "all weight on one key (nearly one-hot), where its gradient P * (dP - sum dP P) is\n"
        "almost zero, so attention stops learning. Dividing by sqrt(d) keeps variance 1."
    )
    return table


def main(argv: list[str] | None = None) -> dict:
    """Print the comparison; returns the key numbers (weights, outputs, errors)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="draws per d in the table")
    parser.add_argument("--keys", type=int, default=16, help="keys per softmax in the table")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random draws")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    result: dict = {}

    # 1. The article's way.
    print("The article's attention: scores = q k^T, weights = exp(scores) / sum(exp(scores))")
    output, weights = article_attention(QUERY, KEY, VALUE)
    show("scores", QUERY @ KEY.T)
    show("weights", weights)
    show("output", output)
    result["article_weights"], result["article_output"] = weights, output

    # 2. A softmax per row, unscaled (numpyllm's attention with scale=1): with one query
    #    row the whole matrix IS that row, so the weights and the output are the article's.
    per_row = softmax_rows(QUERY @ KEY.T)
    same, _ = attention_forward(QUERY, KEY, VALUE, scale=1.0)
    print("\nsoftmax per row, unscaled: numpyllm attention_forward(q, k, v, scale=1.0)")
    show("weights", per_row)
    show("output", same)
    agree = bool(np.allclose(per_row, weights) and np.allclose(same, output))
    print(f"same as the article's? {agree}: with ONE query row, the whole matrix is that row")
    result["one_row_agrees"] = agree

    # 3. The right way: scores divided by sqrt(d), d = 3 here.
    right, _ = attention_forward(QUERY, KEY, VALUE)  # scale defaults to 1/sqrt(d)
    scaled_weights = softmax_rows(QUERY @ KEY.T / np.sqrt(3))
    assert np.allclose(scaled_weights @ VALUE, right)  # the same computation, written out
    print("\nThe transformer's attention: softmax(q k^T / sqrt(3)) per row")
    show("weights", scaled_weights)
    show("output", right)
    print(
        "(The output is [3, 4] both times: keys 0 and 2 get equal weights and the values\n"
        " are symmetric around [3, 4]; the weights show the difference: scaling flattens them.)"
    )
    result["scaled_weights"], result["scaled_output"] = scaled_weights, right

    # 4. Two query rows: the article's single sum mixes the rows.
    two_queries = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # (2, 3)
    article_two, article_two_weights = article_attention(two_queries, KEY, VALUE)
    per_row_two, _ = attention_forward(two_queries, KEY, VALUE, scale=1.0)
    per_row_weights = softmax_rows(two_queries @ KEY.T)
    print("\nTwo queries, the article's normalisation:")
    show("weights", article_two_weights)
    show("row sums", article_two_weights.sum(axis=1))
    show("output", article_two)
    print("Softmax per row (numpyllm, scale 1):")
    show("weights", per_row_weights)
    show("row sums", per_row_weights.sum(axis=1))
    show("output", per_row_two)
    print(
        "With one sum over the matrix, a query's weights depend on the OTHER queries and do\n"
        "not add up to 1, so its output is not a weighted average of the values."
    )
    result["two_rows_article_sums"] = article_two_weights.sum(axis=1)
    result["two_rows_per_row_sums"] = per_row_weights.sum(axis=1)

    # 5. The scaling, measured.
    result["scaling"] = scaling_table(args.samples, args.keys, rng)

    # 6. The backward pass against finite differences (float64, random upstream gradient).
    errors = nl.gradcheck(
        attention_forward, attention_backward, {"q": QUERY, "k": KEY, "v": VALUE}, rng=rng
    )
    q, k, v = (rng.standard_normal((2, 5, 4)) for _ in range(3))  # batch 2, 5 tokens, d 4
    causal_errors = nl.gradcheck(
        attention_forward,
        attention_backward,
        {"q": q, "k": k, "v": v},
        kwargs={"causal": True},
        rng=rng,
    )
    worst = max(*errors.values(), *causal_errors.values())
    print("\ngradcheck of attention_backward (max relative error per input):")
    for name, errs in (("article's numbers", errors), ("random, causal, B=2", causal_errors)):
        print(f"  {name:<21}" + ", ".join(f"d{n} {e:.1e}" for n, e in errs.items()))
    verdict = "< 1e-6: the backward is right" if worst < 1e-6 else "TOO LARGE: a bug"
    print(f"  worst {worst:.1e} {verdict}")
    result["gradcheck_error"] = worst
    return result


if __name__ == "__main__":
    main()
