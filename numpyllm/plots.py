"""Pictures of a GPT: the attention weights of a prompt and the similarity of learned positions.

    from numpyllm.plots import plot_attention, plot_position_similarity
    plot_attention(model, tokenizer, "The list", "attention.png", layer=0, head=0)
    plot_position_similarity(model, "positions.png")

(The training-loss curve is drawn by the Trainer itself: ``loss.png`` in its output folder.)

The numbers behind each picture come from :func:`attention_weights` and
:func:`position_similarity`, which need only NumPy. Drawing needs matplotlib, an
optional extra (``pip install numpyllm[plot]``), imported only when a picture is
drawn; figures are drawn on matplotlib's Agg canvas straight into a PNG file, with
no window and no change to pyplot's global backend.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from numpyllm.functional.embedding import embedding_forward
from numpyllm.functional.linear import linear_forward
from numpyllm.functional.multi_head_attention import split_heads
from numpyllm.functional.norms import layer_norm_forward
from numpyllm.functional.softmax import softmax_forward

__all__ = [
    "attention_weights",
    "plot_attention",
    "plot_position_similarity",
    "position_similarity",
    "token_labels",
]


def _figure_classes() -> tuple[type, type]:
    """matplotlib's Figure and Agg canvas, or an ImportError that says how to install them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "drawing pictures needs matplotlib, an optional extra of numpyllm: "
            "pip install numpyllm[plot]"
        ) from exc
    return Figure, FigureCanvasAgg


def _check_gpt(model: Any) -> None:
    for name in ("wte", "wpe", "h", "config"):
        if not hasattr(model, name):
            raise TypeError(
                f"expected a numpyllm GPT (with wte, wpe, h and config), got {type(model).__name__}"
            )


def _check_index(value: Any, count: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value < count:
        raise ValueError(f"{what} must be in 0..{count - 1}, got {value}")
    return int(value)


def attention_weights(model: Any, input_ids: Any, layer: int = 0) -> np.ndarray:
    """The attention probabilities P (H, T, T) of block ``layer`` for one sequence of ids (T,).

    P[h, i, j] is the weight query i gives key j in head h: each row sums to 1 and is
    zero above the diagonal (a token never sees the future). The model's forward keeps
    P only inside its private cache, so P is recomputed here from the block's own
    weights with the functional ops, in eval mode (no dropout):

        x    = wte[ids] + wpe[0 .. T-1], then blocks 0 .. layer-1
        u    = LN_1(x)                                     (T, d)
        [q | k | v] = u W_attn + b_attn                    (T, 3d), heads of width dh = d / H
        P_h  = softmax(q_h k_h^T / sqrt(dh), causal mask)  (T, T) per head
    """
    _check_gpt(model)
    config = model.config
    ids = np.asarray(input_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"input_ids must be a non-empty 1-D integer array, got dtype {ids.dtype} "
            f"shape {ids.shape}"
        )
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        bad = int(ids.max() if ids.max() >= config.vocab_size else ids.min())
        raise ValueError(f"token id {bad} is out of range for vocab_size {config.vocab_size}")
    T = ids.size
    if T > config.max_seq_len:
        raise ValueError(
            f"the prompt has {T} tokens, more than the context length {config.max_seq_len}"
        )
    layer = _check_index(layer, config.n_layer, "layer")

    was_training = model.training
    model.eval()
    try:
        x, _ = embedding_forward(ids[None, :], model.wte.weight.data)  # (1, T) -> (1, T, d)
        x = x + model.wpe.weight.data[:T]  # + (T, d) learned positions
        for block in list(model.h)[:layer]:
            x = block(x)  # (1, T, d), the model's own block (dropout off in eval mode)
    finally:
        model.train(was_training)
    block = model.h[layer]
    ln = block.ln_1
    u, _ = layer_norm_forward(x, ln.weight.data, ln.bias.data, ln.eps)  # (1, T, d)
    c_attn = block.attn.c_attn
    qkv, _ = linear_forward(u, c_attn.weight.data, c_attn.bias.data)  # (1, T, d) -> (1, T, 3d)
    d = config.d_model
    q = split_heads(qkv[..., :d], config.n_head)  # (1, T, d) -> (1, H, T, dh)
    k = split_heads(qkv[..., d : 2 * d], config.n_head)  # (1, H, T, dh)
    scale = 1.0 / math.sqrt(d // config.n_head)  # a Python float: keeps q's dtype
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (1, H, T, dh) @ (1, H, dh, T) -> (1, H, T, T)
    causal = np.tril(np.ones((T, T), dtype=bool))  # query i may see keys j <= i
    probs, _ = softmax_forward(scores, axis=-1, mask=causal)  # (1, H, T, T)
    return probs[0]


def token_labels(tokenizer: Any, ids: Any) -> list[str]:
    """Readable text of each token for an axis: spaces shown as '·', newlines as '\\n'."""
    labels = []
    for i in np.asarray(ids).tolist():
        text = tokenizer.decode([i])
        labels.append(text.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t") or "∅")
    return labels


def plot_attention(
    model: Any,
    tokenizer: Any,
    prompt: str,
    path: str | os.PathLike,
    layer: int = 0,
    head: int | None = 0,
) -> Path:
    """Heatmap of the attention weights of ``prompt`` in one head (or their mean over heads
    with ``head=None``) of block ``layer``; rows are queries, columns the keys they attend
    to. Writes a PNG at ``path`` and returns it."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if not ids:
        raise ValueError("the prompt is empty: there is no token to attend from")
    probs = attention_weights(model, np.asarray(ids, dtype=np.int64), layer)  # (H, T, T)
    if head is None:
        weights, which = probs.mean(axis=0), "mean over heads"
    else:
        head = _check_index(head, probs.shape[0], "head")
        weights, which = probs[head], f"head {head}"
    labels = token_labels(tokenizer, ids)

    Figure, FigureCanvasAgg = _figure_classes()
    side = min(4.0 + 0.3 * len(ids), 24.0)  # longer prompts get a bigger picture
    figure = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0)
    positions = np.arange(len(ids))
    axes.set_xticks(positions, labels, rotation=90)
    axes.set_yticks(positions, labels)
    axes.set_xlabel("key (the token attended to)")
    axes.set_ylabel("query (the token attending)")
    axes.set_title(f"attention weights, layer {layer}, {which}")
    figure.colorbar(image, ax=axes, label="weight")
    figure.tight_layout()
    return _save(figure, path)


def position_similarity(model: Any) -> np.ndarray:
    """Cosine similarity of every pair of learned position embeddings: (P, P) for wpe (P, d).

    S[i, j] = wpe_i . wpe_j / (|wpe_i| |wpe_j|). At initialisation the rows are random
    and S is near the identity; training makes nearby positions alike, which shows as
    a bright band along the diagonal.
    """
    _check_gpt(model)
    table = model.wpe.weight.data  # (P, d)
    norms = np.linalg.norm(table, axis=1, keepdims=True)  # (P, 1)
    unit = table / np.maximum(norms, np.finfo(table.dtype).tiny)  # (P, d), rows of length 1
    return unit @ unit.T  # (P, d) @ (d, P) -> (P, P)


def plot_position_similarity(model: Any, path: str | os.PathLike) -> Path:
    """Heatmap of :func:`position_similarity`; writes a PNG at ``path`` and returns it."""
    similarity = position_similarity(model)
    Figure, FigureCanvasAgg = _figure_classes()
    figure = Figure(figsize=(6.5, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(similarity, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    axes.set_xlabel("position j")
    axes.set_ylabel("position i")
    axes.set_title("cosine similarity of learned position embeddings")
    figure.colorbar(image, ax=axes, label="cosine similarity")
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
