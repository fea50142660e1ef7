"""The memory report, the guard before training and generation, and the command line's
--dry-run / --ignore-memory-check: columns that follow from the model, an estimate that
matches a measured peak, and refusals that are sentences rather than a killed process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpyllm as nl
from numpyllm.memory import (
    PLANS,
    InsufficientMemoryError,
    available_memory,
    generation_bytes,
    memory_report,
    resident_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30


def tiny_gpt(dropout=0.1, max_seq_len=32) -> nl.GPT:
    config = nl.GPTConfig(
        vocab_size=50, n_layer=2, n_head=2, d_model=16, max_seq_len=max_seq_len, dropout=dropout
    )
    return nl.GPT(config, rng=np.random.default_rng(0))


def tiny_models() -> dict:
    bert = nl.BERT(nl.BertConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, max_seq_len=32))
    t5 = nl.T5(nl.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, n_layer=2, n_head=2))
    llama_config = nl.LlamaConfig(
        vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, d_model=16, max_seq_len=32
    )
    return {"GPT": tiny_gpt(), "BERT": bert, "T5": t5, "Llama": nl.Llama(llama_config)}


@pytest.mark.parametrize("name", ["GPT", "BERT", "T5", "Llama"])
def test_every_parameter_is_counted_once_and_the_columns_add_up(name):
    model = tiny_models()[name]
    report = memory_report(model, batch_size=3, seq_len=8, available=10 * GIB)
    assert name in PLANS
    assert report.parameters == sum(p.data.nbytes for p in model.parameters())
    assert report.gradients == report.parameters
    assert report.optimizer == 2 * report.parameters  # AdamW: m and v
    assert report.temporaries == max(layer.temporaries for layer in report.layers)
    expected = report.process + sum(
        getattr(report, c) for c in ("parameters", "gradients", "optimizer", "activations")
    )
    assert report.peak == expected + report.temporaries
    assert report.fits
    table = str(report)
    for layer in report.layers:
        assert layer.name in table
    assert "estimated peak" in table and "available" in table and "total" in table
    sgd = memory_report(model, batch_size=3, seq_len=8, optimizer="sgd", available=None)
    assert sgd.optimizer == 0 and sgd.fits and "unknown" in str(sgd)


@given(st.integers(1, 6), st.integers(2, 32), st.booleans(), st.sampled_from([0.0, 0.1]))
def test_activations_grow_linearly_with_the_batch_and_flops_per_token_do_not(b, t, rec, p):
    """Every kept array is (B, T, ...): doubling the batch doubles the activations exactly;
    FLOPs per token depend on T only; recomputation keeps less and computes more."""
    model = tiny_gpt(dropout=p)
    one = memory_report(model, b, t, recompute=rec, threads=1, available=None)
    two = memory_report(model, 2 * b, t, recompute=rec, threads=1, available=None)
    assert two.activations == 2 * one.activations
    assert two.flops_per_token == one.flops_per_token
    other = memory_report(model, b, t, recompute=not rec, threads=1, available=None)
    low, high = (one, other) if rec else (other, one)
    assert low.activations < high.activations
    assert low.flops_per_token > high.flops_per_token


@pytest.mark.parametrize("name", ["GPT", "BERT", "T5", "Llama"])
def test_every_model_reports_recomputation_and_the_guard_suggests_it(name):
    """Each model can recompute (the execution layer does it for any repeated block), so its
    report with recomputation keeps less, computes more, and the refusal of a run too large
    for the budget offers --gradient-checkpointing with a batch that the estimate fits."""
    model = tiny_models()[name]
    whole = memory_report(model, 8, 32, recompute=False, threads=1, available=None)
    lean = memory_report(model, 8, 32, recompute=True, threads=1, available=None)
    assert lean.recompute and lean.can_recompute
    assert lean.activations < whole.activations
    assert lean.flops_per_token > whole.flops_per_token
    assert lean.peak < whole.peak
    budget = whole.process + (whole.model_bytes + lean.model_bytes) // 2
    report = memory_report(model, 8, 32, recompute=False, threads=1, available=budget)
    assert not report.fits
    assert "--gradient-checkpointing" in report.fitting  # alone: the whole batch then fits
    assert "--gradient-checkpointing" in report.suggestions()
    assert memory_report(model, 8, 32, recompute=True, threads=1, available=budget).fits


def test_gpt_flops_per_token_agree_with_the_models_own_estimate():
    model = tiny_gpt()
    report = memory_report(model, 2, 32, recompute=False, available=None)
    assert report.flops_per_token == pytest.approx(model.estimate_flops_per_token(32), rel=1e-3)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="no memory plan for SimpleNN"):
        memory_report(nl.SimpleNN(4, 8), 2, 8)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        memory_report(tiny_gpt(), 0, 8)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        memory_report(tiny_gpt(), 1, 8, optimizer="lion")


def test_available_memory_reads_the_system_or_the_limit(monkeypatch):
    monkeypatch.delenv("NUMPYLLM_MEMORY_LIMIT", raising=False)
    found = available_memory()
    assert found is None or found > resident_bytes() > 0
    monkeypatch.setenv("NUMPYLLM_MEMORY_LIMIT", "1.5G")
    assert available_memory() == int(1.5 * GIB)
    monkeypatch.setenv("NUMPYLLM_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="NUMPYLLM_MEMORY_LIMIT"):
        available_memory()


def test_a_report_that_does_not_fit_says_both_figures_and_settings_that_do_fit():
    model = tiny_gpt(max_seq_len=512)
    whole = memory_report(model, batch_size=64, seq_len=512, recompute=False, available=None)
    lean = memory_report(model, batch_size=64, seq_len=512, recompute=True, available=None)
    budget = whole.process + (whole.model_bytes + lean.model_bytes) // 2
    report = memory_report(model, batch_size=64, seq_len=512, recompute=False, available=budget)
    assert not report.fits
    with pytest.raises(InsufficientMemoryError) as info:
        report.check()
    message = str(info.value)
    assert f"{report.peak / 2**20:,.1f} MiB" in message and f"{budget / 2**20:,.1f} MiB" in message
    assert "--gradient-checkpointing" in message
    rows = int(message.split("--per-device-train-batch-size ")[1].split(";")[0])
    tokens = int(message.split("--seq-len ")[1].rstrip("."))
    for b, t in ((rows, 512), (64, tokens)):
        assert memory_report(model, b, t, recompute=False, available=budget).fits
    for b, t in ((rows + 1, 512), (64, tokens + 1)):  # the largest that fit
        assert not memory_report(model, b, t, recompute=False, available=budget).fits


def test_trainer_refuses_a_step_that_does_not_fit_unless_told(monkeypatch, tmp_path):
    model = tiny_gpt()
    data = {"input_ids": np.zeros((4, 32), dtype=np.int64)}
    data["labels"] = data["input_ids"]
    monkeypatch.setenv("NUMPYLLM_MEMORY_LIMIT", str(resident_bytes() + 1000))
    args = nl.TrainingArguments(tmp_path, max_steps=1, per_device_train_batch_size=4)
    with pytest.raises(InsufficientMemoryError, match="needs about .* available"):
        nl.Trainer(model, args, train_dataset=data)
    args = nl.TrainingArguments(tmp_path, max_steps=1, ignore_memory_check=True)
    nl.Trainer(model, args, train_dataset=data)  # no error
    assert not any(tmp_path.iterdir())


def test_generation_that_does_not_fit_is_refused_before_allocating(monkeypatch):
    model = tiny_gpt(max_seq_len=100_000)
    prompt = np.zeros((1, 4), dtype=np.int64)
    need = generation_bytes(model, 1, 4, 50_004)
    monkeypatch.setenv("NUMPYLLM_MEMORY_LIMIT", str(resident_bytes() + need // 2))
    with pytest.raises(InsufficientMemoryError, match=r"generating 50,004 tokens .* would fit"):
        model.generate(prompt, max_new_tokens=50_000)
    assert model.generate(prompt, max_new_tokens=3).shape == (1, 7)  # a short one fits


def _cli(*argv: str, env_extra: dict | None = None, timeout: int = 120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "numpyllm", *argv],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=False,
    )  # fmt: skip


def test_dry_run_prints_the_report_and_writes_nothing(tmp_path):
    out_dir, cache = tmp_path / "run", tmp_path / "cache"
    done = _cli("train", "--dry-run", "--preset", "tiny", "--tokenizer", "char",
                "--output-dir", str(out_dir), "--cache-dir", str(cache))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "block 1" in done.stdout and "estimated peak" in done.stdout
    assert not out_dir.exists() and not cache.exists()


def test_a_context_far_too_long_gets_a_sentence_not_the_oom_killer(tmp_path):
    done = _cli("train", "--seq-len", "100000", "--max-steps", "1", "--tokenizer", "char",
                "--output-dir", str(tmp_path / "run"),
                env_extra={"NUMPYLLM_MEMORY_LIMIT": "16G"})  # fmt: skip
    assert done.returncode == 1, (done.returncode, done.stderr)
    message = done.stderr.strip()
    assert message.startswith("numpyllm: error: this run needs about"), message
    assert "16,384.0 MiB is available" in message
    for setting in ("--per-device-train-batch-size", "--gradient-checkpointing", "--seq-len"):
        assert setting in message, message
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


MEASURE = """
import json
import numpy as np
from numpyllm.cli import build_parser, common
from numpyllm.memory import memory_report
from numpyllm.models.gpt import GPT
from numpyllm.trainer import Trainer

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

args = build_parser().parse_args(
    ["train", "--preset", "small", "--output-dir", "unused", "--disable-tqdm"]
)
corpus, _ = common.load_corpus(None)
tokenizer, _ = common.make_tokenizer("bpe", corpus, args.vocab_size)
dataset = common.token_dataset(corpus, tokenizer, args)  # encoded (and cached) first
model = GPT(common.model_config(args, tokenizer.vocab_size), rng=np.random.default_rng(0))
report = memory_report(model, args.per_device_train_batch_size, model.config.max_seq_len)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM from here on: the training steps' peak. (ru_maxrss would also count
    # the encoding, and the forking pytest worker's memory, which Linux carries over exec.)
trainer = Trainer(model, common.training_arguments(args, 10), train_dataset=dataset)
rng = np.random.default_rng(0)
for step in range(1, 4):  # the training step, as Trainer.train runs it
    batch = trainer.train_dataset.train_batch(args.per_device_train_batch_size, rng)
    trainer._forward_backward(batch, step)
    trainer.optimizer.step()
    model.zero_grad()
print(json.dumps({"estimate": report.peak, "measured": kib("VmHWM") * 1024}))
"""


def test_estimate_is_within_a_quarter_of_the_measured_peak_for_the_small_preset(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMPYLLM_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.75 <= result["estimate"] / result["measured"] <= 1.25, result
