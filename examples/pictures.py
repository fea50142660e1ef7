"""Three pictures of a small GPT: its loss curve, its attention, its learned positions.

* loss.png       training (and held-out) loss against the step, drawn by the Trainer
* attention.png  the attention weights of one head for a prompt: row i is a token, column j
                 an earlier token, the colour the weight softmax(q_i . k_j / sqrt(d_head))
* positions.png  the cosine similarity of the learned position embeddings wpe[i], wpe[j]:
                 random (only the diagonal is bright) at initialisation, a bright band
                 along the diagonal once training has made nearby positions alike. (The
                 Trainer gives each row its next token as an extra label, so the last
                 position is trained too; with equal-length labels it would have no target,
                 no other token looks at it, and it would stay as it was initialised.)

Needs matplotlib (``pip install numpyllm[plot]``). The same attention picture, from a
terminal: ``numpyllm attention CHECKPOINT --prompt TEXT --output attention.png``.

    python examples/pictures.py [--steps 600] [--prompt "..."] [--layer 1] [--head 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import small_gpt

from numpyllm.checkpoint import read_trainer_state, resolve_checkpoint
from numpyllm.models.gpt import GPT
from numpyllm.plots import (
    attention_weights,
    plot_attention,
    plot_position_similarity,
    position_similarity,
)
from numpyllm.trainer import plot_losses


def neighbour_similarity(similarity: np.ndarray) -> tuple[float, float]:
    """Mean similarity of positions 1 apart, and mean |similarity| of positions > 8 apart."""
    n = similarity.shape[0]
    distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])  # (P, P): |i - j|
    return float(similarity[distance == 1].mean()), float(np.abs(similarity[distance > 8]).mean())


def describe_heads(model: GPT, ids: np.ndarray) -> dict:
    """Print where each head of each block looks, on average over the prompt's tokens."""
    print("\nwhere each head looks (mean weight over the prompt's tokens):")
    summary = {}
    for layer in range(model.config.n_layer):
        probs = attention_weights(model, ids, layer)  # (H, T, T)
        for head, p in enumerate(probs):
            own = float(np.diagonal(p).mean())  # a token attending to itself
            previous = float(np.diagonal(p, offset=-1).mean())  # ... to the token before it
            first = float(p[1:, 0].mean())  # ... to the first token of the prompt
            summary[(layer, head)] = {"self": own, "previous": previous, "first": first}
            print(
                f"  layer {layer} head {head}: itself {own:.2f}, previous token "
                f"{previous:.2f}, first token {first:.2f}"
            )
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Train (or load) a GPT and write the three PNGs; returns their paths and numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompt",
        default="The list of items is returned by the function.",
        help="text whose attention is drawn",
    )
    parser.add_argument("--layer", type=int, default=None, help="block to draw (default: last)")
    parser.add_argument("--head", type=int, default=0, help="head to draw (-1: mean of heads)")
    small_gpt.add_arguments(parser, "pictures")
    args = parser.parse_args(argv)
    model, tokenizer = small_gpt.train_or_load(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer = model.config.n_layer - 1 if args.layer is None else args.layer
    paths = {}

    # 1. The loss curve. Training just wrote it; for a loaded checkpoint, redraw it from the
    #    log the checkpoint keeps (trainer_state.json).
    if args.checkpoint:
        state = read_trainer_state(resolve_checkpoint(args.checkpoint)) or {}
        paths["loss"] = plot_losses(state.get("log_history", []), out / "loss.png")
    else:
        paths["loss"] = out / "loss.png"

    # 2. Attention weights for the prompt.
    ids = np.array(tokenizer.encode(args.prompt))
    head = None if args.head == -1 else args.head
    paths["attention"] = plot_attention(
        model, tokenizer, args.prompt, out / "attention.png", layer, head
    )
    heads = describe_heads(model, ids)

    # 3. Learned positions: compare with a freshly initialised model of the same shape.
    paths["positions"] = plot_position_similarity(model, out / "positions.png")
    trained = neighbour_similarity(position_similarity(model))
    fresh = neighbour_similarity(position_similarity(GPT(model.config)))
    print("\nposition embeddings, cosine similarity:")
    print(f"  neighbours (|i - j| = 1): {trained[0]:.2f} trained, {fresh[0]:.2f} at initialisation")
    print(f"  far apart  (|i - j| > 8): {trained[1]:.2f} trained, {fresh[1]:.2f} at initialisation")

    print("\npictures:")
    for name, path in paths.items():
        print(f"  {name:<10} {path or 'none (no training log to draw)'}")
    return {
        "paths": paths,
        "heads": heads,
        "neighbour_similarity": trained[0],
        "neighbour_similarity_at_init": fresh[0],
    }


if __name__ == "__main__":
    main()
