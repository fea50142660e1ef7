"""numpyllm.plots (attention weights, position similarity, the PNGs) and `numpyllm attention`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpyllm.cli
from numpyllm.checkpoint import save_checkpoint
from numpyllm.cli import attention as attention_cli
from numpyllm.cli import common
from numpyllm.functional.multi_head_attention import merge_heads, split_heads
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.plots import (
    attention_weights,
    plot_attention,
    plot_position_similarity,
    position_similarity,
    token_labels,
)
from numpyllm.tokenizer import Tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog met.\n" * 5
CONTEXT = 16


def assert_png_picture(path: Path, min_bytes: int = 5000) -> None:
    """A real PNG of some size whose pixels are not all one colour."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    pixels = imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100, pixels.shape
    assert pixels[..., :3].reshape(-1, 3).std(axis=0).max() > 0.05, path  # not one colour


def make_model(seed: int = 0, dropout: float = 0.0) -> tuple[GPT, Tokenizer]:
    tokenizer = Tokenizer.char_level(TEXT)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=16,
        max_seq_len=CONTEXT, dropout=dropout, init_std=0.3,
    )  # fmt: skip
    return GPT(config, rng=np.random.default_rng(seed)), tokenizer


MODEL, TOKENIZER = make_model()


def block_input(model: GPT, ids: np.ndarray, layer: int) -> np.ndarray:
    """The input of block ``layer`` computed with the model's own modules (eval mode)."""
    x = model.wte(ids[None]) + model.wpe.weight.data[: ids.size]
    for block in list(model.h)[:layer]:
        x = block(x)
    return x


# ---- attention weights ----------------------------------------------------------------------
@given(
    length=st.integers(1, CONTEXT),
    layer=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_attention_weights_are_causal_distributions(length, layer, seed):
    ids = np.random.default_rng(seed).integers(0, MODEL.config.vocab_size, size=length)
    probs = attention_weights(MODEL, ids, layer)
    assert probs.shape == (MODEL.config.n_head, length, length)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(probs >= 0)
    assert np.all(np.triu(probs, k=1) == 0)  # nothing attends to the future
    np.testing.assert_allclose(probs[:, 0, 0], 1.0, rtol=1e-6)  # the first token sees itself


@pytest.mark.parametrize("layer", [0, 1])
def test_attention_weights_reproduce_the_layer_output(layer):
    """P times the layer's values, merged and projected, is what the attention layer outputs:
    so P is the attention the model really uses."""
    MODEL.eval()
    ids = np.array(TOKENIZER.encode("the cat sat on"))
    probs = attention_weights(MODEL, ids, layer)  # (H, T, T)
    block = MODEL.h[layer]
    u = block.ln_1(block_input(MODEL, ids, layer))  # (1, T, d)
    expected = block.attn(u)  # the layer's own forward
    d = MODEL.config.d_model
    v = split_heads(block.attn.c_attn(u)[..., 2 * d :], MODEL.config.n_head)  # (1, H, T, dh)
    rebuilt = block.attn.c_proj(merge_heads(probs[None] @ v))  # (1, T, d)
    np.testing.assert_allclose(rebuilt, expected, rtol=1e-4, atol=1e-6)
    MODEL.train()


def test_attention_weights_ignore_dropout_and_keep_the_mode():
    model, _ = make_model(dropout=0.5)
    model.train()
    ids = np.arange(10)
    first = attention_weights(model, ids, 1)
    second = attention_weights(model, ids, 1)
    np.testing.assert_array_equal(first, second)  # eval mode inside: no random dropout
    assert model.training  # and the caller's mode comes back


def test_attention_weights_errors():
    with pytest.raises(ValueError, match="context length"):
        attention_weights(MODEL, np.zeros(CONTEXT + 1, dtype=np.int64), 0)
    with pytest.raises(ValueError, match="layer must be in 0..1"):
        attention_weights(MODEL, np.arange(3), 2)
    with pytest.raises(ValueError, match="out of range"):
        attention_weights(MODEL, np.array([MODEL.config.vocab_size]), 0)
    with pytest.raises(ValueError, match="1-D"):
        attention_weights(MODEL, np.zeros((2, 3), dtype=np.int64), 0)
    with pytest.raises(ValueError, match="non-empty"):
        attention_weights(MODEL, np.array([], dtype=np.int64), 0)
    with pytest.raises(TypeError, match="GPT"):
        attention_weights(object(), np.arange(3), 0)


def test_token_labels_make_spaces_and_newlines_visible():
    ids = TOKENIZER.encode("a c\n")
    assert token_labels(TOKENIZER, ids) == ["a", "·", "c", "\\n"]


# ---- position similarity ----------------------------------------------------------------------
def test_position_similarity_is_the_cosine_matrix():
    similarity = position_similarity(MODEL)
    table = MODEL.wpe.weight.data.astype(np.float64)
    assert similarity.shape == (CONTEXT, CONTEXT)
    np.testing.assert_allclose(np.diagonal(similarity), 1.0, rtol=1e-5)
    np.testing.assert_allclose(similarity, similarity.T, atol=1e-6)
    i, j = 3, 11
    cosine = table[i] @ table[j] / (np.linalg.norm(table[i]) * np.linalg.norm(table[j]))
    assert similarity[i, j] == pytest.approx(cosine, rel=1e-4)
    assert np.all(np.abs(similarity) <= 1.0 + 1e-6)


def test_position_similarity_of_a_zero_row_is_zero_not_nan():
    model, _ = make_model()
    model.wpe.weight.data[5] = 0.0
    similarity = position_similarity(model)
    assert np.all(np.isfinite(similarity))
    assert np.all(similarity[5] == 0.0)


# ---- pictures ---------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [0, 1, None])
def test_plot_attention_writes_a_picture(tmp_path, head):
    path = plot_attention(MODEL, TOKENIZER, "the cat sat on", tmp_path / "sub" / "a.png", 1, head)
    assert path == tmp_path / "sub" / "a.png"
    assert_png_picture(path)


def test_plot_position_similarity_writes_a_picture(tmp_path):
    path = plot_position_similarity(MODEL, tmp_path / "positions.png")
    assert_png_picture(path)


def test_plot_attention_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_attention(MODEL, TOKENIZER, "", tmp_path / "a.png")
    with pytest.raises(ValueError, match="head must be in 0..1"):
        plot_attention(MODEL, TOKENIZER, "the cat", tmp_path / "a.png", 0, 2)
    with pytest.raises(TypeError, match="prompt must be a str"):
        plot_attention(MODEL, TOKENIZER, ["the"], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def hide_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError


def test_missing_matplotlib_says_how_to_install_it(monkeypatch, tmp_path):
    hide_matplotlib(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install numpyllm\[plot\]"):
        plot_attention(MODEL, TOKENIZER, "the cat", tmp_path / "a.png")
    with pytest.raises(ImportError, match=r"pip install numpyllm\[plot\]"):
        plot_position_similarity(MODEL, tmp_path / "p.png")
    # the numbers need NumPy only
    assert attention_weights(MODEL, np.arange(4), 0).shape == (2, 4, 4)
    assert position_similarity(MODEL).shape == (CONTEXT, CONTEXT)


# ---- `numpyllm attention` ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint-1"
    return save_checkpoint(folder, MODEL, tokenizer=TOKENIZER)


def run_attention(argv: list[str]) -> int:
    """The subcommand alone, parsed and run as the `numpyllm` command runs it."""
    parser = common.Parser(prog="numpyllm")
    attention_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["attention", *argv])
    return args.run(args)


def test_cli_attention_writes_the_picture(checkpoint, tmp_path, capsys):
    out = tmp_path / "attention.png"
    code = run_attention([str(checkpoint), "--prompt", "the dog", "--output", str(out),
                          "--layer", "1", "--head", "1"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert_png_picture(out)


def test_cli_attention_mean_over_heads_from_a_run_folder(checkpoint, tmp_path):
    out = tmp_path / "mean.png"
    run_folder = checkpoint.parent  # the newest checkpoint-<step> in it is used
    assert run_attention([str(run_folder), "--prompt", "a cat", "--output", str(out),
                          "--head", "-1"]) == 0  # fmt: skip
    assert_png_picture(out)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--layer", "2"], "--layer must be in 0..1"),
        (["--head", "2"], "--head must be in 0..1"),
        (["--head", "-2"], "--head must be in 0..1"),
        (["--prompt", ""], "--prompt is empty"),
    ],
)
def test_cli_attention_bad_flags_are_usage_errors(checkpoint, tmp_path, flags, words):
    argv = [str(checkpoint), "--prompt", "the", "--output", str(tmp_path / "x.png"), *flags]
    with pytest.raises(common.UsageError, match=words):
        run_attention(argv)
    assert not (tmp_path / "x.png").exists()


def test_cli_attention_without_matplotlib_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    hide_matplotlib(monkeypatch)
    argv = [str(checkpoint), "--prompt", "the", "--output", str(tmp_path / "x.png")]
    assert run_attention(argv) == 1
    err = capsys.readouterr().err
    assert "numpyllm: error:" in err and "pip install numpyllm[plot]" in err


@pytest.mark.skipif(
    attention_cli not in numpyllm.cli.SUBCOMMANDS,
    reason="`numpyllm attention` is not registered in numpyllm.cli yet",
)
def test_numpyllm_command_has_the_attention_subcommand(checkpoint, tmp_path, capsys):
    main = numpyllm.cli.main
    out = tmp_path / "main.png"
    assert main(["attention", str(checkpoint), "--prompt", "the", "--output", str(out)]) == 0
    assert_png_picture(out)
    assert main(["attention", str(checkpoint), "--prompt", "the", "--output", str(out),
                 "--layer", "9"]) == 2  # fmt: skip
    assert "--layer must be in 0..1" in capsys.readouterr().err
