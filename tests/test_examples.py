"""Every example of the article runs, on tiny settings, and shows what it says it shows.

Each script in examples/ has ``main(argv)`` returning its key numbers; the tests call it
in-process with small flags, check those numbers against independent expectations and
look for the lines the script prints.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_plots import assert_png_picture

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# A GPT small enough to train for a few dozen steps in about a second.
TINY_GPT = ["--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--d-model", "32",
            "--seq-len", "32", "--batch-size", "8", "--quiet"]  # fmt: skip


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_blas_thread():
    """Tiny matrices: BLAS threads only add overhead (and stall badly on a busy machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")  # shared: the corpus is encoded once per vocab


@pytest.fixture(autouse=True)
def example_env(monkeypatch, tmp_path, cache_dir):
    """Token cache and default output folders in temporary places; examples/ importable
    (the GPT examples import small_gpt, as they do when run as scripts)."""
    monkeypatch.setenv("NUMPYLLM_CACHE", str(cache_dir))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)
    with one_blas_thread():
        yield


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- self_attention.py ------------------------------------------------------------------------
def test_self_attention(capsys):
    result = load_example("self_attention").main(["--samples", "500"])
    out = capsys.readouterr().out
    # the article's numbers, worked out by hand: scores [2, 0, 2]
    e = np.exp([2.0, 0.0, 2.0])
    np.testing.assert_allclose(result["article_weights"], [e / e.sum()], rtol=1e-12)
    np.testing.assert_allclose(result["article_output"], [[3.0, 4.0]], rtol=1e-12)
    assert result["one_row_agrees"] and "same as the article's? True" in out
    np.testing.assert_allclose(
        result["scaled_weights"], [softmax(np.array([2.0, 0.0, 2.0]) / math.sqrt(3))]
    )
    # two query rows: one sum over the matrix gives rows that do not sum to 1
    article_sums, per_row_sums = result["two_rows_article_sums"], result["two_rows_per_row_sums"]
    assert article_sums.sum() == pytest.approx(1.0) and np.all(article_sums < 0.9)
    np.testing.assert_allclose(per_row_sums, [1.0, 1.0])
    # var(q.k) grows like d; scaling by 1/sqrt(d) keeps it near 1 and the softmax unsaturated
    table = result["scaling"]
    for d, row in table.items():
        assert row["var"] == pytest.approx(d, rel=0.2)
        assert row["var_scaled"] == pytest.approx(1.0, rel=0.2)
        assert row["max_weight_scaled"] < 0.4
    assert table[4]["max_weight"] < table[64]["max_weight"] < table[512]["max_weight"]
    assert table[512]["max_weight"] > 0.85
    assert result["gradcheck_error"] < 1e-6 and "the backward is right" in out


# ---- tokenization.py --------------------------------------------------------------------------
def test_tokenization(capsys):
    result = load_example("tokenization").main(["--vocab-size", "512"])
    out = capsys.readouterr().out
    text = "Hello, world!"
    bpe, char = result["bpe"], result["char"]
    assert bpe["decoded"] == text and char["decoded"] == text
    assert "".join(bpe["tokens"]).replace("Ġ", " ") == text  # Ġ is GPT-2's picture of a space
    assert char["tokens"] == list(text)
    assert len(bpe["ids"]) < len(char["ids"]) and bpe["vocab_size"] == 512
    assert result["chars_per_token"]["byte-level BPE"] > 2 * result["chars_per_token"]["char-level"]
    assert result["unseen_bpe_round_trip"] and not result["unseen_char_round_trip"]
    assert f"Tokens: {bpe['tokens']}" in out and f"Token IDs: {bpe['ids']}" in out


# ---- multi_head_attention.py ------------------------------------------------------------------
def test_multi_head_attention(capsys):
    result = load_example("multi_head_attention").main(
        ["--batch", "1", "--seq-len", "4", "--sampled", "2"]
    )
    out = capsys.readouterr().out
    assert out.startswith("MultiHeadAttention(\n  (q_proj): Linear(")
    assert "1,050,624 parameters" in out
    shapes = result["shapes"]
    assert shapes["q"] == (1, 4, 512) and shapes["heads"] == (1, 8, 4, 64)
    assert shapes["scores"] == shapes["weights"] == (1, 8, 4, 4)
    assert shapes["merged"] == shapes["out"] == (1, 4, 512)
    assert result["step_by_step_diff"] < 1e-4  # the steps are what the module computes
    flat = result["mean_max_weight"]
    assert flat["1/sqrt(d_head)"] > flat["1/sqrt(d_model), article"] > 1 / 4
    assert result["gradcheck_small"] < 1e-6 and result["gradcheck_big"] < 1e-6
    # the key bias: no gradient but float64 rounding; in float32 the noise of float32's
    assert result["key_bias_ratio"]["float64"] < 1e-13
    assert 1e-11 < result["key_bias_ratio"]["float32"] < 1e-4


# ---- pretraining_loss.py ----------------------------------------------------------------------
def test_pretraining_loss(capsys):
    result = load_example("pretraining_loss").main(
        ["--steps", "30", "--vocab-size", "300", "--d-model", "32", "--seq-len", "32",
         "--batch-size", "8"]
    )  # fmt: skip
    out = capsys.readouterr().out
    ln_v = math.log(300)
    assert result["ln_vocab"] == pytest.approx(ln_v)
    assert result["untrained_loss"] == pytest.approx(ln_v, abs=0.3)  # about uniform
    assert result["mlm_loss"] == pytest.approx(ln_v, abs=0.3)
    assert 0.05 < result["masked_fraction"] < 0.3  # about 15% of the tokens chosen
    assert result["held_out_loss"] < ln_v - 0.5  # 30 steps already beat uniform guessing
    assert "Loss:" in out and "<mask>" in out


# ---- fine_tuning.py ---------------------------------------------------------------------------
def test_fine_tuning(tmp_path, capsys):
    result = load_example("fine_tuning").main(
        ["--pretrain-steps", "8", "--sentences", "160", "--epochs", "2", "--vocab-size", "300",
         "--n-layer", "1", "--d-model", "32", "--seq-len", "32", "--quiet",
         "--output-dir", str(tmp_path / "ft")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert result["checkpoints_kept"] == ["checkpoint-6", "checkpoint-8"]  # save_total_limit=2
    assert result["new_text_loss_after"] < result["new_text_loss_before"] - 1.0
    assert (tmp_path / "ft" / "results" / "loss.png").is_file()
    assert "new sentences" in out and "Python's help pages" in out


# ---- first_llm.py -----------------------------------------------------------------------------
FIRST_LLM_TINY = ["--steps", "25", "--batch-size", "8", "--vocab-size", "300", "--n-layer",
                  "1", "--d-model", "32", "--seq-len", "32", "--quiet"]  # fmt: skip


def test_first_llm(tmp_path, capsys):
    result = load_example("first_llm").main([*FIRST_LLM_TINY, "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    for step in range(1, 8):
        assert f"Step {step}." in out
    assert len(result["input_ids"]) > 3
    assert result["text_before"].startswith("Hello, world!")
    assert result["text_after"].startswith("Hello, world!")
    assert result["eval_loss_after"] < result["eval_loss_before"] - 0.5


def test_first_llm_from_a_pretrained_folder(tmp_path, capsys):
    """--model loads a Hugging Face style folder (config.json, model.safetensors, tokenizer)."""
    from numpyllm import GPT, GPTConfig
    from numpyllm.data import builtin_corpus
    from numpyllm.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(builtin_corpus(), vocab_size=300)
    config = GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
    folder = tmp_path / "gpt2-like"
    GPT(config).save_pretrained(folder)
    tokenizer.save(folder)
    result = load_example("first_llm").main(
        ["--model", str(folder), "--steps", "3", "--batch-size", "4", "--seq-len", "32",
         "--quiet", "--output-dir", str(tmp_path / "run")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert f"GPT.from_pretrained({str(folder)!r})" in out
    assert result["input_ids"] == tokenizer.encode("Hello, world!")


# ---- gpt.py, chatbot.py, pictures.py (a small trained GPT) -----------------------------------
def test_gpt(tmp_path, capsys):
    result = load_example("gpt").main(
        [*TINY_GPT, "--steps", "30", "--max-tokens", "12", "--output-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    texts = result["texts"]
    assert set(texts) == {"greedy", "temperature 0.7", "temperature 1.5", "top-k 10", "top-p 0.9"}
    for name, text in texts.items():
        assert text.startswith("Once upon a time") and f"--- {name} ---" in out
    assert result["greedy_repeats"] and result["seed_changes_sample"]
    table = result["next_token"]
    top = [p for _, p in table[1.0]]
    assert top == sorted(top, reverse=True)
    assert table[0.7][0][1] > table[1.0][0][1] > table[1.5][0][1]  # T < 1 sharpens
    assert 1 <= table["nucleus_size"] <= 300
    assert (tmp_path / "checkpoint-30" / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, cache_dir) -> Path:
    """A tiny GPT trained by small_gpt, as a checkpoint folder with its tokenizer."""
    output_dir = tmp_path_factory.mktemp("tiny-gpt")
    with pytest.MonkeyPatch.context() as patch, one_blas_thread():
        patch.setenv("NUMPYLLM_CACHE", str(cache_dir))
        small_gpt = load_example("small_gpt")
        parser = small_gpt.argparse.ArgumentParser()
        small_gpt.add_arguments(parser, "test")
        args = parser.parse_args([*TINY_GPT, "--steps", "20", "--output-dir", str(output_dir)])
        with contextlib.redirect_stdout(io.StringIO()):
            small_gpt.train(args)
    return output_dir / "checkpoint-20"


def test_chatbot_answers_until_quit(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is a list?\n\nquit\nnever read\n"))
    exchanges = load_example("chatbot").main(
        ["--checkpoint", str(tiny_checkpoint), "--max-length", "30"]
    )
    out = capsys.readouterr().out
    assert [question for question, _ in exchanges] == ["What is a list?"]
    assert "You: What is a list?\nChatbot: " in out  # piped input is echoed
    assert out.count("Chatbot:") == 1 and "never read" not in out


def test_chatbot_stops_at_end_of_input(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you?"))  # no quit, no newline
    exchanges = load_example("chatbot").main(
        ["--checkpoint", str(tiny_checkpoint), "--max-length", "20", "--greedy"]
    )
    assert [question for question, _ in exchanges] == ["hello", "how are you?"]
    assert all(isinstance(answer, str) for _, answer in exchanges)


def test_pictures(tmp_path, capsys):
    result = load_example("pictures").main(
        [*TINY_GPT, "--steps", "30", "--output-dir", str(tmp_path), "--prompt", "The list"]
    )
    paths = result["paths"]
    assert set(paths) == {"loss", "attention", "positions"}
    for path in paths.values():
        assert Path(path).parent == tmp_path
        assert_png_picture(path)
    assert len(result["heads"]) == 2  # one layer, two heads
    for where in result["heads"].values():
        assert 0 <= where["self"] <= 1 and 0 <= where["previous"] <= 1
    assert "attention.png" in capsys.readouterr().out


def test_pictures_from_a_checkpoint(tiny_checkpoint, tmp_path):
    result = load_example("pictures").main(
        ["--checkpoint", str(tiny_checkpoint), "--output-dir", str(tmp_path), "--head", "-1"]
    )
    for path in result["paths"].values():
        assert_png_picture(path)  # loss.png redrawn from the checkpoint's training log


# ---- bert.py ----------------------------------------------------------------------------------
def test_bert(capsys):
    result = load_example("bert").main(
        ["--mlm-steps", "5", "--steps", "300", "--d-model", "64", "--vocab-size", "300"]
    )
    out = capsys.readouterr().out
    batch, tokens, width = result["hidden_shape"]
    assert (batch, width) == (1, 64) and tokens > 10  # one vector per token of the sentence
    assert result["mlm_loss_first"] == pytest.approx(math.log(300), abs=0.3)
    # chance is 50%, reading only the adjective 60%: the held-out sentences need the context
    assert result["test_accuracy"] >= 0.8
    assert "last_hidden_state (1," in out and "held-out accuracy" in out


# ---- t5.py ------------------------------------------------------------------------------------
def test_t5(capsys):
    result = load_example("t5").main(
        ["--steps", "600", "--eval-every", "300", "--train-size", "1500", "--test-size", "100",
         "--target", "0.3"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert [step for step, _ in result["history"]] == [300, 600]
    # guessing a spelling of 1 to 4 digits is right far less than 1% of the time
    assert result["accuracy"] >= 0.3
    assert result["steps_to_target"] in (300, 600)
    assert "held-out exact match" in out and "'spell: 2024' ->" in out


# ---- lora.py ----------------------------------------------------------------------------------
def test_lora_next_to_full_fine_tuning(tmp_path, capsys):
    result = load_example("lora").main(
        ["--pretrain-steps", "4", "--sentences", "120", "--epochs", "1", "--vocab-size", "300",
         "--n-layer", "1", "--d-model", "32", "--seq-len", "32", "--lora-learning-rate", "3e-2",
         "--learning-rate", "1e-2", "--quiet", "--output-dir", str(tmp_path / "lora")]
    )  # fmt: skip
    out = capsys.readouterr().out
    full, lora = result["full"], result["LoRA"]
    assert full["trainable"] == full["total"]
    d, r = 32, 8  # c_attn (d -> 3d), attention's c_proj (d -> d), c_fc (d -> 4d), c_proj (4d -> d)
    assert lora["trainable"] == r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    assert lora["total"] == full["total"] + lora["trainable"]  # the adapters come on top
    assert full["loss_after"] < full["loss_before"] - 1.0
    assert lora["loss_after"] < lora["loss_before"]
    assert lora["saved_kib"] < full["saved_kib"] / 3
    assert (tmp_path / "lora" / "LoRA" / "adapter" / "adapter_config.json").is_file()
    assert "trainable parameters" in out and "LoRA r=8" in out


# ---- llama.py ---------------------------------------------------------------------------------
def test_llama(capsys):
    result = load_example("llama").main(
        ["--steps", "20", "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--d-model",
         "32", "--seq-len", "32", "--batch-size", "8", "--eval-batches", "2", "--quiet"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert result["rope_score_change"] < 1e-12  # the score depends on m - n only
    ratio = result["llama_parameters"] / result["gpt_parameters"]
    assert 0.85 < ratio < 1.15  # about the same size
    ln_v = math.log(result["vocab_size"])
    assert result["gpt_eval_loss"] < ln_v - 0.5 and result["llama_eval_loss"] < ln_v - 0.5
    assert "held-out loss" in out and "largest change of the RoPE score" in out
