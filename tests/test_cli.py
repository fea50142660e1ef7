"""End-to-end tests of the ``numpyllm`` command, each run in a subprocess on tiny settings."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numpyllm.cli import main

# Short sentences with a lot of repetition: a tiny model learns them in a few steps.
TEXT = (
    "the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat.\n"
    "the sun is hot and the sea is blue. the cat ran to the sea and the dog ran to the sun.\n"
) * 30
NEW_TEXT = "one two three four five six seven eight nine ten.\n" * 40
TINY = ["--tokenizer", "char", "--preset", "tiny", "--n-layer", "1", "--seq-len", "32"]


def run_cli(*args: str, cache: Path, stdin: str | None = None, timeout: float = 120):
    env = {
        **os.environ,
        "NUMPYLLM_CACHE": str(cache),
        "OPENBLAS_NUM_THREADS": "1",  # tiny matrices: threads only add overhead
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("NUMPYLLM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "numpyllm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("numpyllm: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def number_after(label: str, text: str) -> float:
    match = re.search(rf"{label}\s+([0-9.]+)", text)
    assert match, f"no {label!r} in:\n{text}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "data.txt").write_text(TEXT, encoding="utf-8")
    (folder / "new.txt").write_text(NEW_TEXT, encoding="utf-8")
    (folder / "empty.txt").write_text("  \n\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def trained(workdir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = workdir / "run"
    result = run_cli(
        "train",
        "--data",
        str(workdir / "data.txt"),
        *TINY,
        "--output-dir",
        str(out),
        "--max-steps",
        "40",
        "--learning-rate",
        "1e-2",
        "--warmup-steps",
        "5",
        "--eval-steps",
        "20",
        "--save-steps",
        "10",
        "--save-total-limit",
        "2",
        "--disable-tqdm",
        "--seed",
        "0",
        cache=workdir / "cache",
    )
    return out, result


# ------------------------------------------------------------------------ train


def test_train_writes_checkpoints_and_beats_the_unigram_baseline(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # save_total_limit=2 keeps the two newest of checkpoint-10..40
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-30", "checkpoint-40"]
    for file in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.json"):
        assert (out / "checkpoint-40" / file).is_file()
    # the run folder itself holds the final model as a Hugging Face folder, as
    # transformers' Trainer.save_model writes it: the weights of the last checkpoint
    for file in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):  # fmt: skip
        assert (out / file).is_file(), file
    assert (out / "model.safetensors").read_bytes() == (
        out / "checkpoint-40" / "model.safetensors"
    ).read_bytes()
    assert (out / "metrics.jsonl").is_file()
    stdout = result.stdout
    for word in ("parameters", "tokens", "40 steps", "--- sample 1 ---", "numpyllm chat"):
        assert word in stdout, word
    loss = number_after("validation loss", stdout)
    baseline = number_after("unigram baseline", stdout)
    assert loss < baseline  # repetitive text: context helps a lot, even after 40 steps
    assert f"perplexity {math.exp(loss):,.2f}" in stdout
    assert f"perplexity {math.exp(baseline):,.2f}" in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("Next: numpyllm generate")


def test_train_refuses_to_mix_runs_in_one_output_dir(trained, workdir):
    out, _ = trained
    result = run_cli(
        "train",
        "--data",
        str(workdir / "data.txt"),
        *TINY,
        "--output-dir",
        str(out),
        cache=workdir / "cache",
    )
    assert_one_line_error(result, 2, "--resume-from-checkpoint", "--overwrite-output-dir")


# --------------------------------------------------------------- using a checkpoint


def test_generate_prints_prompt_and_continuation(trained, workdir):
    out, _ = trained
    args = ("generate", str(out), "--prompt", "the cat", "--max-new-tokens", "25")
    greedy = [run_cli(*args, "--greedy", cache=workdir / "cache") for _ in range(2)]
    for result in greedy:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("the cat")
        assert len(result.stdout.rstrip("\n")) == len("the cat") + 25  # one char per token
    assert greedy[0].stdout == greedy[1].stdout  # greedy decoding is deterministic

    sampled = run_cli(
        *args,
        "--num-samples",
        "2",
        "--seed",
        "3",
        "--top-p",
        "0.9",
        "--temperature",
        "1.2",
        cache=workdir / "cache",
    )
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.count("--- sample") == 2


def test_chat_answers_then_quits(trained, workdir):
    out, _ = trained
    result = run_cli(
        "chat",
        str(out),
        "--seed",
        "0",
        "--max-new-tokens",
        "20",
        stdin="hello\nwhere is the cat?\nQuit\nnever read\n",
        cache=workdir / "cache",
    )
    assert result.returncode == 0, result.stderr
    replies = re.findall(r"Chatbot: (.*)", result.stdout)
    assert len(replies) == 2  # "Quit" ended the loop before the last line
    assert all(reply.strip() for reply in replies)
    assert "Traceback" not in result.stderr


def test_chat_hello_quit(trained, workdir):
    out, _ = trained
    result = run_cli("chat", str(out), stdin="hello\nquit\n", cache=workdir / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Chatbot: ") == 1
    assert "You: hello" in result.stdout  # piped input is echoed, so stdout reads as a dialogue


def test_chat_leaves_cleanly_at_end_of_input(trained, workdir):
    out, _ = trained
    result = run_cli(
        "chat",
        str(out),
        "--greedy",
        "--max-new-tokens",
        "5",
        stdin="hello",
        cache=workdir / "cache",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Chatbot:") == 1
    assert "Traceback" not in result.stderr


def test_eval_prints_loss_and_perplexity(trained, workdir):
    out, _ = trained
    result = run_cli("eval", str(out), "--data", str(workdir / "data.txt"), cache=workdir / "cache")
    assert result.returncode == 0, result.stderr
    loss = number_after("loss", result.stdout)
    perplexity = number_after("perplexity", result.stdout.replace(",", ""))
    assert 0 < loss < 5
    assert perplexity == pytest.approx(math.exp(loss), abs=0.01)  # printed to 2 decimals
    # A checkpoint folder itself gives the same numbers as its output folder (newest).
    direct = run_cli(
        "eval",
        str(out / "checkpoint-40"),
        "--data",
        str(workdir / "data.txt"),
        cache=workdir / "cache",
    )
    assert number_after("loss", direct.stdout) == loss


def test_finetune_continues_training_on_new_text(trained, workdir):
    out, _ = trained
    target = workdir / "finetuned"
    result = run_cli(
        "finetune",
        str(out / "checkpoint-40"),
        "--data",
        str(workdir / "new.txt"),
        "--output-dir",
        str(target),
        "--max-steps",
        "15",
        "--learning-rate",
        "1e-2",
        "--warmup-steps",
        "0",
        "--disable-tqdm",
        "--gradient-checkpointing",  # the memory setting: same maths, recomputed activations
        cache=workdir / "cache",
    )
    assert result.returncode == 0, result.stderr
    before = number_after("before      validation loss", result.stdout)
    after = number_after("after       validation loss", result.stdout)
    assert after < before
    assert (target / "checkpoint-15" / "model.safetensors").is_file()
    state = json.loads((target / "checkpoint-15" / "trainer_state.json").read_text())
    assert state["global_step"] == 15
    assert state["args"]["gradient_checkpointing"] is True


def test_finetune_with_lora_saves_an_adapter_that_generate_and_eval_apply(trained, workdir):
    out, _ = trained
    base = out / "checkpoint-40"
    target = workdir / "lora"
    result = run_cli(
        "finetune", str(base), "--data", str(workdir / "new.txt"), "--output-dir", str(target),
        "--max-steps", "15", "--learning-rate", "1e-2", "--warmup-steps", "0", "--disable-tqdm",
        "--lora-r", "4", "--lora-alpha", "8", "--lora-target-modules", "c_attn,c_proj", "--merge",
        cache=workdir / "cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"trainable params [\d,]+ of [\d,]+ \(\d+\.\d\d%\)", result.stdout)
    before = number_after("before      validation loss", result.stdout)
    after = number_after("after       validation loss", result.stdout)
    assert after < before
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["target_modules"] == ["c_attn", "c_proj"]
    assert (target / "adapter_model.safetensors").is_file()
    assert not (target / "training").exists()  # only the adapter (and the merged model) stay
    evals = [
        run_cli("eval", str(base), "--data", str(workdir / "new.txt"), "--adapter", str(target),
                cache=workdir / "cache"),
        run_cli("eval", str(target / "merged"), "--data", str(workdir / "new.txt"),
                cache=workdir / "cache"),
    ]  # fmt: skip
    for e in evals:
        assert e.returncode == 0, e.stderr
    adapted, merged = (number_after("loss", e.stdout) for e in evals)
    assert adapted == pytest.approx(merged, abs=1e-3)
    gen = run_cli("generate", str(base), "--adapter", str(target), "--prompt", "the",
                  "--max-new-tokens", "5", "--greedy", cache=workdir / "cache")  # fmt: skip
    assert gen.returncode == 0 and gen.stdout.startswith("the"), gen.stderr
    bad = run_cli("finetune", str(base), "--data", str(workdir / "new.txt"), "--lora-r", "2",
                  "--lora-target-modules", "query", cache=workdir / "cache")  # fmt: skip
    assert_one_line_error(bad, 2, "query", "c_attn")


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(workdir):
    out = workdir / "interrupted"
    args = [
        "train",
        "--data",
        str(workdir / "data.txt"),
        *TINY,
        "--output-dir",
        str(out),
        "--logging-steps",
        "1",
        "--disable-tqdm",
        "--save-steps",
        "0",
    ]
    env = {**os.environ, "NUMPYLLM_CACHE": str(workdir / "cache"), "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "numpyllm", *args, "--max-steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        metrics.is_file() and len(metrics.read_text().splitlines()) >= 3
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    saved = [p for p in out.iterdir() if p.name.startswith("checkpoint-")]
    assert len(saved) == 1
    assert f"saved to {saved[0]}" in stderr
    step = int(saved[0].name.split("-")[1])
    resumed = run_cli(
        *args, "--max-steps", str(step + 3), "--resume-from-checkpoint", cache=workdir / "cache"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (out / f"checkpoint-{step + 3}").is_dir()


def test_interrupted_lora_finetune_resumes_from_its_adapter_checkpoint(trained, workdir):
    out, _ = trained
    base, target = out / "checkpoint-40", workdir / "lora-resumed"
    args = ["finetune", str(base), "--data", str(workdir / "new.txt"), "--output-dir",
            str(target), "--lora-r", "2", "--lora-bias", "lora_only", "--lora-dropout", "0.1",
            "--logging-steps", "1", "--save-steps", "0", "--disable-tqdm"]  # fmt: skip
    env = {**os.environ, "NUMPYLLM_CACHE": str(workdir / "cache"), "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "numpyllm", *args, "--max-steps", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)  # fmt: skip
    metrics = target / "training" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        metrics.is_file() and len(metrics.read_text().splitlines()) >= 2
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    (saved,) = [p for p in (target / "training").iterdir() if p.name.startswith("checkpoint-")]
    assert (saved / "adapter_model.safetensors").is_file()
    assert not (saved / "model.safetensors").exists()
    step = int(saved.name.split("-")[1])
    resumed = run_cli(*args, "--max-steps", str(step + 2), "--resume-from-checkpoint",
                      str(target), cache=workdir / "cache")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming a run of 100000 steps as a run of {step + 2}" in resumed.stderr
    assert json.loads((target / "adapter_config.json").read_text())["bias"] == "lora_only"
    assert not (target / "training").exists()


# ------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command, flags",
    [
        ([], ["train", "finetune", "eval", "generate", "chat"]),
        (
            ["train"],
            [
                "--data",
                "--tokenizer",
                "--vocab-size",
                "--preset",
                "--n-layer",
                "--d-model",
                "--seq-len",
                "--dropout",
                "--output-dir",
                "--max-steps",
                "--num-train-epochs",
                "--per-device-train-batch-size",
                "--learning-rate",
                "--warmup-steps",
                "--weight-decay",
                "--max-grad-norm",
                "--logging-steps",
                "--eval-steps",
                "--save-steps",
                "--save-total-limit",
                "--seed",
                "--resume-from-checkpoint",
                "default: 1500",
            ],
        ),
        (
            ["finetune"],
            ["CHECKPOINT", "--data", "--learning-rate", "--max-steps", "--gradient-checkpointing"],
        ),
        (["eval"], ["CHECKPOINT", "--data", "--split", "perplexity"]),
        (
            ["generate"],
            [
                "CHECKPOINT",
                "--prompt",
                "--max-new-tokens",
                "--greedy",
                "--do-sample",
                "--temperature",
                "--top-k",
                "--top-p",
                "--seed",
                "--num-samples",
                "default: 0.8",
            ],
        ),
        (["chat"], ["CHECKPOINT", "--history-turns", "exit", "quit", "--temperature"]),
    ],
)
def test_help_mentions_key_flags(command, flags, capsys):
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, flag


def test_module_entry_point_help(workdir):
    result = run_cli("generate", "--help", cache=workdir / "cache")
    assert result.returncode == 0
    assert "--top-p" in result.stdout


# ----------------------------------------------------------------------- errors


def test_missing_data_file(workdir):
    result = run_cli(
        "train",
        "--data",
        str(workdir / "nope.txt"),
        *TINY,
        "--output-dir",
        str(workdir / "x"),
        cache=workdir / "cache",
    )
    assert_one_line_error(result, 1, "nope.txt")


def test_empty_corpus(workdir):
    result = run_cli(
        "train",
        "--data",
        str(workdir / "empty.txt"),
        *TINY,
        "--output-dir",
        str(workdir / "y"),
        cache=workdir / "cache",
    )
    assert_one_line_error(result, 1, "empty")


def test_corrupted_checkpoint(trained, workdir):
    out, _ = trained
    broken = workdir / "broken"
    broken.mkdir()
    for file in (out / "checkpoint-40").iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage, not tensors" * 10)
    for command in (["generate", str(broken), "--prompt", "the"], ["eval", str(broken)]):
        result = run_cli(*command, cache=workdir / "cache")
        assert_one_line_error(result, 1, "model.safetensors")


def test_missing_checkpoint(workdir):
    result = run_cli("chat", str(workdir / "no-such-run"), stdin="hi\n", cache=workdir / "cache")
    assert_one_line_error(result, 1, "no-such-run")


def test_bad_top_p_is_a_usage_error(trained, workdir):
    out, _ = trained
    result = run_cli(
        "generate", str(out), "--prompt", "the cat", "--top-p", "1.5", cache=workdir / "cache"
    )
    assert_one_line_error(result, 2, "--top-p", "1.5")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--max-steps", "ten"], ["--max-steps", "ten"]),
        (["--n-head", "3", "--d-model", "64"], ["--d-model", "--n-head"]),
        (["--warmup-steps", "50", "--max-steps", "10"], ["--warmup-steps"]),
        (["--tokenizer", "bpe", "--vocab-size", "100"], ["--vocab-size"]),
    ],
)
def test_bad_training_flags_are_usage_errors(flags, words, workdir):
    result = run_cli(
        "train",
        "--data",
        str(workdir / "data.txt"),
        "--tokenizer",
        "char",
        "--output-dir",
        str(workdir / "z"),
        *flags,
        cache=workdir / "cache",
    )
    assert_one_line_error(result, 2, *words)


def test_token_id_beyond_the_model_vocabulary(trained, workdir):
    from numpyllm.tokenizer import Tokenizer

    out, _ = trained
    bigger = Tokenizer.char_level(TEXT + "".join(chr(c) for c in range(0x3B1, 0x3C9)))
    bigger.save(workdir / "bigger.json")
    result = run_cli(
        "generate",
        str(out),
        "--prompt",
        "the",
        "--tokenizer",
        str(workdir / "bigger.json"),
        cache=workdir / "cache",
    )
    assert_one_line_error(result, 1, "out of range")
