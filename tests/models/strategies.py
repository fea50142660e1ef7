"""Hypothesis strategies shared by the model tests."""

from __future__ import annotations

from hypothesis import strategies as st

from numpyllm import GPTConfig


@st.composite
def small_gpt_configs(
    draw,
    vocab: tuple[int, int] = (2, 17),
    max_seq_len: tuple[int, int] = (3, 9),
    heads: tuple[int, int] = (1, 3),
    head_dim: tuple[int, int] = (1, 4),
) -> GPTConfig:
    """Tiny GPT configs with every activation, no dropout and a large init (so the
    blocks do more than pass the residual stream through)."""
    n_head = draw(st.integers(*heads))
    return GPTConfig(
        vocab_size=draw(st.integers(*vocab)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        d_model=n_head * draw(st.integers(*head_dim)),
        max_seq_len=draw(st.integers(*max_seq_len)),
        dropout=0.0,
        activation=draw(st.sampled_from(["gelu_new", "gelu", "relu"])),
        init_std=0.3,
    )
