"""``numpyllm train --model llama`` and the commands that take its checkpoint (eval,
generate, chat, finetune), run in-process on tiny settings."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest

from numpyllm.checkpoint import load_model
from numpyllm.cli import main
from numpyllm.models.llama import Llama
from tests.test_cli import NEW_TEXT, TEXT, TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-llama")
    (folder / "data.txt").write_text(TEXT, encoding="utf-8")
    (folder / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    return folder


def cli(capsys, monkeypatch, folder: Path, *args: str, stdin: str = "") -> tuple[int, str]:
    monkeypatch.setenv("NUMPYLLM_CACHE", str(folder / "cache"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


def test_train_a_llama_then_use_its_checkpoint(run, capsys, monkeypatch):
    out = run / "llama"
    code, text = cli(capsys, monkeypatch, run, "train", "--model", "llama", "--n-kv-head", "1",
                     "--data", str(run / "data.txt"), *TINY, "--output-dir", str(out),
                     "--max-steps", "30", "--learning-rate", "1e-2", "--warmup-steps", "3",
                     "--disable-tqdm", "--seed", "0")  # fmt: skip
    assert code == 0, text
    assert "model       Llama, 1 layers x 2 heads" in text and "1 key/value heads" in text
    loss = float(re.search(r"validation loss\s+([\d.]+)", text).group(1))
    baseline = float(re.search(r"unigram baseline\s+([\d.]+)", text).group(1))
    assert loss < baseline
    checkpoint = out / "checkpoint-30"
    model = load_model(checkpoint)  # the checkpoint's config says which model it is
    assert isinstance(model, Llama) and model.config.n_kv_head == 1
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "llama"

    code, text = cli(capsys, monkeypatch, run, "eval", str(out), "--data", str(run / "data.txt"))
    assert code == 0 and "perplexity" in text, text
    code, text = cli(capsys, monkeypatch, run, "generate", str(out), "--prompt", "the cat",
                     "--max-new-tokens", "12", "--greedy")  # fmt: skip
    assert code == 0 and text.startswith("the cat") and len(text.split("\n")[0]) >= 19, text
    code, text = cli(capsys, monkeypatch, run, "chat", str(out), "--max-new-tokens", "8",
                     stdin="hello\nquit\n")  # fmt: skip
    assert code == 0 and text.count("Chatbot: ") == 1, text
    code, text = cli(capsys, monkeypatch, run, "finetune", str(checkpoint), "--data",
                     str(run / "new.txt"), "--output-dir", str(run / "tuned"), "--max-steps",
                     "8", "--learning-rate", "1e-2", "--warmup-steps", "0", "--disable-tqdm",
                     "--gradient-checkpointing")  # fmt: skip
    assert code == 0, text
    before = float(re.search(r"before\s+validation loss\s+([\d.]+)", text).group(1))
    after = float(re.search(r"after\s+validation loss\s+([\d.]+)", text).group(1))
    assert after < before


def test_llama_flags_are_checked(run, capsys, monkeypatch):
    code, text = cli(capsys, monkeypatch, run, "train", "--n-kv-head", "1", "--max-steps", "1")
    assert code == 2 and "--model llama" in text
    code, text = cli(capsys, monkeypatch, run, "train", "--model", "llama", "--n-head", "4",
                     "--n-kv-head", "3", "--max-steps", "1", "--output-dir",
                     str(run / "bad"))  # fmt: skip
    assert code == 2 and "--n-kv-head" in text, text
