"""Trainer, TrainingArguments and the batches objects, on a tiny GPT."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.batches import ArrayBatches, LMBatches
from numpyllm.checkpoint import list_checkpoints, load_checkpoint
from numpyllm.data import TokenDataset
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.optim import warmup_cosine
from numpyllm.trainer import Trainer, TrainingError, plot_losses
from numpyllm.training_args import TrainingArguments

VOCAB, SEQ = 32, 16


def tiny_gpt(dropout: float = 0.0, seed: int = 0) -> GPT:
    config = GPTConfig(
        vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=SEQ, dropout=dropout
    )
    return GPT(config, rng=np.random.default_rng(seed))


def toy_dataset() -> TokenDataset:
    """A sequence a small model can learn: a fixed cycle of 23 tokens, repeated."""
    cycle = np.random.default_rng(7).integers(0, VOCAB, size=23)
    return TokenDataset.from_ids(np.tile(cycle, 120), vocab_size=VOCAB, val_fraction=0.1)


def make_args(out: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=out,
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=None,
        seq_len=SEQ,
        eval_batches=2,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def params_of(model) -> dict[str, np.ndarray]:
    return {name: p.data.copy() for name, p in model.named_parameters()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- training


def test_training_learns_and_logs(tmp_path):
    out = tmp_path / "run"
    args = make_args(out, max_steps=60, logging_steps=5, eval_steps=30, warmup_steps=5)
    trainer = Trainer(tiny_gpt(), args, train_dataset=toy_dataset())
    metrics = trainer.train()

    lines = read_metrics(out)
    train_lines = [e for e in lines if "loss" in e]
    eval_lines = [e for e in lines if "eval_loss" in e]
    assert [e["step"] for e in train_lines] == list(range(5, 61, 5))
    assert [e["step"] for e in eval_lines] == [30, 60]
    for entry in train_lines:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed"} <= entry.keys()
        assert entry["tokens_per_sec"] > 0 and entry["grad_norm"] > 0
        # the lr a step used is the schedule's value for the steps before it
        expected = 1e-2 * warmup_cosine(entry["step"] - 1, 5, 60)
        assert entry["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    for entry in eval_lines:
        assert entry["perplexity"] == pytest.approx(math.exp(entry["eval_loss"]))
    elapsed = [e["elapsed"] for e in lines]
    assert elapsed == sorted(elapsed)

    # the loss falls far below chance (log 32 = 3.47) on a learnable sequence
    assert train_lines[0]["loss"] > 3.0
    assert train_lines[-1]["loss"] < 0.5 * train_lines[0]["loss"]
    assert eval_lines[-1]["eval_loss"] < 1.5
    assert metrics["global_step"] == 60 and metrics["interrupted"] is False
    assert metrics["eval_loss"] == eval_lines[-1]["eval_loss"]
    assert Path(metrics["checkpoint"]) == out / "checkpoint-60"
    assert trainer.model.training  # back in training mode after the evaluations

    plot = out / "loss.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 5_000


def test_epochs_set_the_number_of_steps(tmp_path):
    ds = toy_dataset()
    args = make_args(tmp_path, max_steps=-1, num_train_epochs=2.5, per_device_train_batch_size=2)
    trainer = Trainer(tiny_gpt(), args, train_dataset=ds)
    per_epoch = len(ds.train) // (2 * SEQ)
    assert trainer.steps_per_epoch == per_epoch
    assert trainer.total_steps == math.ceil(2.5 * per_epoch)


def test_seq_len_defaults_to_the_model_context(tmp_path):
    trainer = Trainer(tiny_gpt(), make_args(tmp_path, seq_len=None), train_dataset=toy_dataset())
    assert trainer.train_dataset.seq_len == SEQ


def test_progress_bar_shows_loss_lr_and_speed(tmp_path, capsys):
    Trainer(tiny_gpt(), make_args(tmp_path, max_steps=3, disable_tqdm=False), toy_dataset()).train()
    err = capsys.readouterr().err
    assert "training" in err and "3/3" in err
    assert "loss=" in err and "lr=" in err and "tok_s=" in err


def test_trains_a_simple_nn_on_arrays(tmp_path):
    """Any model with a loss trains: SimpleNN on two moons, from dicts of arrays."""
    from numpyllm.models.simple_nn import SimpleNN, make_two_moons

    rng = np.random.default_rng(0)
    x, y = make_two_moons(240, 0.1, rng, gap=0.2)
    data = ArrayBatches({"x": x[:200], "labels": y[:200]}, eval={"x": x[200:], "labels": y[200:]})
    model = SimpleNN(2, 8, rng=rng)
    args = make_args(tmp_path, max_steps=150, learning_rate=0.05, eval_batches=None,
                     per_device_train_batch_size=16)  # fmt: skip
    trainer = Trainer(model, args, data)
    before = trainer.evaluate()["eval_loss"]
    metrics = trainer.train()
    assert metrics["eval_loss"] < 0.5 * before
    assert trainer.steps_per_epoch == 13  # ceil(200 / 16)
    assert_same_params(params_of(load_checkpoint(tmp_path).model), params_of(model))


def test_checkpoint_rotation_keeps_the_newest(tmp_path):
    args = make_args(tmp_path, max_steps=7, save_steps=2, save_total_limit=2)
    Trainer(tiny_gpt(), args, train_dataset=toy_dataset()).train()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [6, 7]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_evaluation_does_not_change_training(tmp_path):
    """Evaluating (eval mode, fixed batches) draws from no Generator the training uses."""
    results = []
    for eval_steps in (None, 2):
        model = tiny_gpt(dropout=0.2)
        args = make_args(tmp_path / f"run-{eval_steps}", max_steps=6, eval_steps=eval_steps)
        Trainer(model, args, train_dataset=toy_dataset()).train()
        results.append(params_of(model))
    assert_same_params(*results)


def test_evaluate_is_the_row_weighted_mean_loss(tmp_path):
    model = tiny_gpt(dropout=0.3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(5, 8))
    data = ArrayBatches({"input_ids": ids, "labels": ids}, eval={"input_ids": ids, "labels": ids})
    args = make_args(tmp_path, per_device_eval_batch_size=2, eval_batches=None)
    trainer = Trainer(model, args, data)
    result = trainer.evaluate()
    model.eval()
    losses = [model(ids[i : i + 2], labels=ids[i : i + 2]).loss for i in (0, 2, 4)]
    expected = (2 * losses[0] + 2 * losses[1] + 1 * losses[2]) / 5
    assert result["eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(expected))
    assert model.training is False  # evaluate restores the mode it found
    model.train()
    trainer.evaluate()
    assert model.training is True


def test_evaluate_without_eval_data_is_a_clear_error(tmp_path):
    ids = np.zeros((4, 8), dtype=np.int64)
    trainer = Trainer(tiny_gpt(), make_args(tmp_path), {"input_ids": ids, "labels": ids})
    with pytest.raises(ValueError, match="no evaluation data"):
        trainer.evaluate()


# ------------------------------------------------------------------ resume


class Interrupting:
    """Batches that raise KeyboardInterrupt when asked for the batch of step ``at + 1``."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def train_batch(self, batch_size, rng):
        if self.calls == self.at:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.train_batch(batch_size, rng)

    def eval_batches(self, batch_size, max_batches=None):
        return self.inner.eval_batches(batch_size, max_batches)

    def steps_per_epoch(self, batch_size):
        return self.inner.steps_per_epoch(batch_size)


RESUME_SETTINGS = dict(max_steps=12, warmup_steps=3, lr_scheduler_type="cosine", eval_steps=4)


def test_resume_is_exact(tmp_path):
    """6 steps + resume to 12 == 12 straight, bit for bit (dropout on, warmup-cosine)."""
    straight = tiny_gpt(dropout=0.2, seed=0)
    args = make_args(tmp_path / "a", save_steps=6, **RESUME_SETTINGS)
    full = Trainer(straight, args, train_dataset=toy_dataset())
    full.train()

    # a new process would start from another initialisation; the checkpoint decides everything
    resumed = tiny_gpt(dropout=0.2, seed=1)
    args = make_args(tmp_path / "b", resume_from_checkpoint=tmp_path / "a" / "checkpoint-6",
                     **RESUME_SETTINGS)  # fmt: skip
    second = Trainer(resumed, args, train_dataset=toy_dataset())
    metrics = second.train()
    assert metrics["global_step"] == 12
    assert_same_params(params_of(resumed), params_of(straight))
    a, b = full.optimizer.state_dict(), second.optimizer.state_dict()
    assert a["step"] == b["step"] == 12
    for key in a["state"]:
        assert np.array_equal(a["state"][key], b["state"][key]), key
    # the resumed run's metrics continue the old ones: steps 1..12 once each
    steps = [e["step"] for e in read_metrics(tmp_path / "b") if "loss" in e]
    assert steps == list(range(1, 13))

    # resuming a finished run trains nothing and points at its final checkpoint
    again = Trainer(tiny_gpt(dropout=0.2, seed=2), make_args(tmp_path / "b", **RESUME_SETTINGS),
                    toy_dataset())  # fmt: skip
    metrics = again.train(resume_from_checkpoint=True)
    assert metrics["global_step"] == 12 and metrics["checkpoint"] == str(
        tmp_path / "b" / "checkpoint-12"
    )
    assert_same_params(params_of(again.model), params_of(straight))


def test_resume_refuses_another_config(tmp_path):
    Trainer(tiny_gpt(dropout=0.2), make_args(tmp_path, max_steps=2), toy_dataset()).train()
    trainer = Trainer(tiny_gpt(dropout=0.0), make_args(tmp_path, max_steps=2), toy_dataset())
    with pytest.raises(ValueError, match=r"config differs .*dropout: 0\.2 vs 0\.0"):
        trainer.train(resume_from_checkpoint=True)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    trainer = Trainer(tiny_gpt(), make_args(tmp_path, resume_from_checkpoint=True), toy_dataset())
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        trainer.train()


def test_train_resume_false_overrides_the_arguments(tmp_path):
    args = make_args(tmp_path, max_steps=2, resume_from_checkpoint=True)
    metrics = Trainer(tiny_gpt(), args, toy_dataset()).train(resume_from_checkpoint=False)
    assert metrics["global_step"] == 2  # a fresh run: nothing was looked up to resume


def test_resume_needs_the_dropout_state(tmp_path, monkeypatch):
    """Control: restore everything but the dropout Generators and the result differs."""
    straight = tiny_gpt(dropout=0.2)
    Trainer(straight, make_args(tmp_path / "a", save_steps=6, **RESUME_SETTINGS),
            train_dataset=toy_dataset()).train()  # fmt: skip
    real = Trainer._set_rng_state

    def without_model_rngs(self, state, folder):
        real(self, state, folder)
        for _, generator in self._model_generators():
            generator.bit_generator.state = np.random.default_rng(99).bit_generator.state

    monkeypatch.setattr(Trainer, "_set_rng_state", without_model_rngs)
    resumed = tiny_gpt(dropout=0.2)
    start = tmp_path / "a" / "checkpoint-6"
    args = make_args(tmp_path / "b", resume_from_checkpoint=start, **RESUME_SETTINGS)
    assert Trainer(resumed, args, train_dataset=toy_dataset()).train()["global_step"] == 12
    a, b = params_of(straight), params_of(resumed)
    assert any(not np.array_equal(a[name], b[name]) for name in a)


def test_keyboard_interrupt_saves_and_resume_continues_exactly(tmp_path, capsys):
    straight = tiny_gpt(dropout=0.2)
    Trainer(straight, make_args(tmp_path / "a", **RESUME_SETTINGS), toy_dataset()).train()

    out = tmp_path / "b"
    model = tiny_gpt(dropout=0.2)
    batches = Interrupting(LMBatches(toy_dataset(), SEQ), at=5)
    metrics = Trainer(model, make_args(out, **RESUME_SETTINGS), batches).train()
    assert metrics["interrupted"] is True and metrics["global_step"] == 5
    assert [step for step, _ in list_checkpoints(out)] == [5]
    assert Path(metrics["checkpoint"]) == out / "checkpoint-5"
    assert "checkpoint-5" in capsys.readouterr().out
    assert load_checkpoint(out).trainer_state["global_step"] == 5

    model = tiny_gpt(dropout=0.2, seed=3)
    metrics = Trainer(model, make_args(out, **RESUME_SETTINGS), toy_dataset()).train(
        resume_from_checkpoint=True
    )
    assert metrics["interrupted"] is False and metrics["global_step"] == 12
    assert_same_params(params_of(model), params_of(straight))


def test_interrupt_during_the_update_waits_for_it(tmp_path):
    """Ctrl-C while the optimizer updates: the update finishes, then the checkpoint is saved."""
    reference = tiny_gpt()
    Trainer(reference, make_args(tmp_path / "a", save_steps=3), toy_dataset()).train()
    expected = load_checkpoint(tmp_path / "a" / "checkpoint-3").model

    trainer = Trainer(tiny_gpt(), make_args(tmp_path / "b"), toy_dataset())
    real_step = trainer.optimizer.step

    def step_with_signal():
        if trainer.optimizer.step_count == 2:  # the update of step 3
            os.kill(os.getpid(), signal.SIGINT)
        real_step()

    trainer.optimizer.step = step_with_signal
    metrics = trainer.train()
    assert metrics["interrupted"] is True and metrics["global_step"] == 3
    assert_same_params(params_of(trainer.model), params_of(expected))
    assert_same_params(params_of(load_checkpoint(tmp_path / "b").model), params_of(expected))


# ------------------------------------------------------------------- NaN


class PoisonAt:
    """Batches that set the model's embedding to nan before handing out batch ``step``."""

    def __init__(self, inner, model, step: int):
        self.inner, self.model, self.step, self.calls = inner, model, step, 0

    def train_batch(self, batch_size, rng):
        self.calls += 1
        if self.calls == self.step:
            self.model.wte.weight.data[...] = np.nan
        return self.inner.train_batch(batch_size, rng)

    def eval_batches(self, batch_size, max_batches=None):
        return self.inner.eval_batches(batch_size, max_batches)

    def steps_per_epoch(self, batch_size):
        return self.inner.steps_per_epoch(batch_size)


def test_nan_loss_stops_and_names_the_step(tmp_path):
    model = tiny_gpt()
    batches = PoisonAt(LMBatches(toy_dataset(), SEQ), model, step=4)
    trainer = Trainer(model, make_args(tmp_path, save_steps=1), batches)
    with pytest.raises(TrainingError, match="loss is nan at step 4"):
        trainer.train()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2, 3]  # nothing for step 4
    assert trainer.global_step == 3


def test_overflow_is_caught_at_the_first_step(tmp_path):
    model = tiny_gpt()
    for p in model.parameters():
        p.data *= 1e30  # logits overflow float32 at once
    trainer = Trainer(model, make_args(tmp_path), toy_dataset())
    with (
        np.errstate(all="ignore"),
        pytest.raises(TrainingError, match=r"(loss|gradient norm) is (nan|inf) at step 1"),
    ):
        trainer.train()
    assert list_checkpoints(tmp_path) == []


# ------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "field, value",
    [
        ("per_device_train_batch_size", 0),
        ("learning_rate", -1.0),
        ("learning_rate", float("nan")),
        ("lr_scheduler_type", "exponential"),
        ("adam_beta1", 1.0),
        ("warmup_steps", -1),
        ("logging_steps", 0),
        ("save_total_limit", 0),
        ("seq_len", 1),
        ("eval_steps", 2.5),
        ("num_train_epochs", 0.0),
    ],
)
def test_bad_arguments_name_the_field(tmp_path, field, value):
    settings = {"max_steps": -1} if field == "num_train_epochs" else {}
    with pytest.raises(ValueError, match=field):
        TrainingArguments(output_dir=tmp_path, **settings, **{field: value})


def test_argument_defaults(tmp_path):
    args = TrainingArguments(output_dir=tmp_path, per_device_train_batch_size=3)
    assert args.eval_batch_size == 3 and args.max_steps == -1 and args.num_train_epochs == 1.0
    assert json.dumps(args.to_dict())  # JSON-ready for trainer_state.json
    with pytest.raises(ValueError, match="warmup_steps"):
        Trainer(tiny_gpt(), make_args(tmp_path, max_steps=5, warmup_steps=6), toy_dataset())


def test_gradient_checkpointing_recomputes_and_trains_the_same(tmp_path):
    """gradient_checkpointing turns on GPT's recompute_activations; the run is the same one,
    dropout masks included (the recomputed forward replays them)."""
    runs = {}
    for checkpointing in (False, True):
        model = tiny_gpt(dropout=0.2, seed=3)
        args = make_args(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)
        trainer = Trainer(model, args, train_dataset=toy_dataset())
        assert model.recompute_activations is checkpointing
        trainer.train()
        losses = [e["loss"] for e in read_metrics(tmp_path / str(checkpointing)) if "loss" in e]
        runs[checkpointing] = (losses, params_of(model))
    (losses, params), (losses_cp, params_cp) = runs[False], runs[True]
    assert len(losses) == 12
    np.testing.assert_allclose(losses_cp, losses, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(params_cp[name], params[name], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_needs_a_model_that_recomputes(tmp_path):
    from numpyllm.models.simple_nn import SimpleNN

    data = ArrayBatches({"x": np.zeros((8, 2), np.float32), "labels": np.zeros(8, np.int64)})
    with pytest.raises(ValueError, match="SimpleNN cannot recompute"):
        Trainer(SimpleNN(2, 8), make_args(tmp_path, gradient_checkpointing=True), data)
    with pytest.raises(ValueError, match="gradient_checkpointing must be True or False"):
        make_args(tmp_path, gradient_checkpointing="yes")


def test_model_without_labels_is_a_clear_error(tmp_path):
    ids = np.zeros((4, 8), dtype=np.int64)
    trainer = Trainer(tiny_gpt(), make_args(tmp_path), {"input_ids": ids})
    with pytest.raises(TrainingError, match="no loss at step 1"):
        trainer.train()


# --------------------------------------------------------------- batches


@given(
    n=st.integers(1, 30),
    batch_size=st.integers(1, 8),
    max_batches=st.one_of(st.none(), st.integers(1, 5)),
)
def test_array_batches_eval_in_order_and_train_rows_aligned(n, batch_size, max_batches):
    x = np.arange(n * 3).reshape(n, 3)
    y = np.arange(n) * 10
    data = ArrayBatches({"x": x, "y": y}, eval={"x": x, "y": y})
    batches = list(data.eval_batches(batch_size, max_batches))
    limit = n if max_batches is None else min(n, max_batches * batch_size)
    assert np.array_equal(np.concatenate([b["x"] for b in batches]), x[:limit])
    assert data.steps_per_epoch(batch_size) == math.ceil(n / batch_size)
    batch = data.train_batch(batch_size, np.random.default_rng(n))
    assert batch["x"].shape == (batch_size, 3)
    assert np.array_equal(batch["x"][:, 0] // 3 * 10, batch["y"])  # row i of x with row i of y
    again = data.train_batch(batch_size, np.random.default_rng(n))
    assert np.array_equal(batch["x"], again["x"])


def test_array_batches_reject_ragged_rows():
    with pytest.raises(ValueError, match="first axis"):
        ArrayBatches({"x": np.zeros((3, 2)), "y": np.zeros(4)})
    with pytest.raises(ValueError, match="keys"):
        ArrayBatches({"x": np.zeros(3)}, eval={"z": np.zeros(3)})


def test_lm_batches_windows():
    ds = toy_dataset()
    data = LMBatches(ds, SEQ)
    batch = data.train_batch(3, np.random.default_rng(0))
    assert batch["input_ids"].shape == (3, SEQ) and batch["input_ids"].dtype == np.int64
    # labels: the same window plus its next token, so the last position is trained too
    assert batch["labels"].shape == (3, SEQ + 1)
    assert np.array_equal(batch["labels"][:, :-1], batch["input_ids"])
    windows = np.concatenate([b["input_ids"] for b in data.eval_batches(4)])
    stride = SEQ - 1  # consecutive windows share one id, so every val id is scored once
    assert np.array_equal(windows[:, 0], ds.val[: len(windows) * stride : stride])
    assert len(list(data.eval_batches(1, max_batches=2))) == 2
    assert data.steps_per_epoch(2) == len(ds.train) // (2 * SEQ)


def test_plot_without_entries_writes_nothing(tmp_path):
    assert plot_losses([], tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()


def test_lora_run_checkpoints_its_adapter_and_resumes_exactly(tmp_path):
    """A LoRA run (adapter dropout on) checkpoints the adapter in PEFT's format with its
    optimizer state; 6 steps + resume to 12 == 12 straight, bit for bit."""
    import numpyllm as nl

    def lora_gpt(seed: int):
        config = nl.peft.LoraConfig(r=2, target_modules=["c_attn", "c_fc"], lora_dropout=0.3,
                                    bias="lora_only")  # fmt: skip
        return nl.peft.get_peft_model(tiny_gpt(dropout=0.2), config,
                                      rng=np.random.default_rng(seed))  # fmt: skip

    straight = lora_gpt(0)
    full = Trainer(straight, make_args(tmp_path / "a", save_steps=6, **RESUME_SETTINGS),
                   train_dataset=toy_dataset())  # fmt: skip
    full.train()
    saved = tmp_path / "a" / "checkpoint-6"
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
            "trainer_state.json"} <= {f.name for f in saved.iterdir()}  # fmt: skip
    assert not (saved / "model.safetensors").exists()  # the frozen base is not copied

    resumed = lora_gpt(1)  # another A: the checkpoint decides everything
    args = make_args(tmp_path / "b", resume_from_checkpoint=saved, **RESUME_SETTINGS)
    second = Trainer(resumed, args, train_dataset=toy_dataset())
    assert second.train()["global_step"] == 12
    assert_same_params(params_of(resumed), params_of(straight))
    a, b = full.optimizer.state_dict(), second.optimizer.state_dict()
    for key in a["state"]:
        assert np.array_equal(a["state"][key], b["state"][key]), key

    other = nl.peft.get_peft_model(tiny_gpt(), nl.peft.LoraConfig(r=3, target_modules=["c_attn"]))
    args = make_args(tmp_path / "c", resume_from_checkpoint=saved, **RESUME_SETTINGS)
    with pytest.raises(ValueError, match="other LoRA settings.*r: 2 vs 3"):
        Trainer(other, args, train_dataset=toy_dataset()).train()
