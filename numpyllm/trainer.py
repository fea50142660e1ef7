"""Trainer: the training loop, with logging, evaluation, checkpoints and exact resume.

    trainer = Trainer(model, TrainingArguments("runs/tiny", max_steps=1000), train_dataset=ds)
    metrics = trainer.train()          # Ctrl-C saves a checkpoint and returns
    trainer.evaluate()                 # {"eval_loss": ..., "perplexity": ...}

One step: draw a batch, forward, stop if the loss is not finite, backward, clip the
global gradient norm, optimizer step, scheduler step, zero the gradients.

Output folder: ``metrics.jsonl`` (one JSON object per line: training lines with
step, loss, lr, grad_norm, tokens_per_sec, elapsed; evaluation lines with eval_loss
and perplexity), ``loss.png`` (when matplotlib is installed) and
``checkpoint-<step>`` folders (see :mod:`numpyllm.checkpoint`).

Exact resume: a checkpoint holds the parameters, the optimizer and scheduler
state, the step, the state of the Generator that draws batches and of every
Generator the model holds (its dropout layers'). Training N steps, stopping and
resuming to 2N gives the same parameters bit for bit as training 2N straight.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from numpyllm.batches import Batches, as_batches
from numpyllm.checkpoint import (
    check_config,
    load_model_weights,
    model_type_of,
    read_optimizer_state,
    read_trainer_state,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    save_model_files,
)
from numpyllm.distributed import SingleProcess, world_for
from numpyllm.memory import check_training_memory
from numpyllm.optim import (
    AdamW,
    LRScheduler,
    clip_grad_norm,
    constant_with_warmup,
    param_groups_for_weight_decay,
    warmup_cosine,
    warmup_linear,
)
from numpyllm.training_args import TrainingArguments

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
# name -> schedule(step, warmup_steps=..., total_steps=...) -> the learning rate's multiplier
_SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": warmup_cosine, "linear": warmup_linear, "constant": constant_with_warmup
}


def _row_length(batches: Batches) -> int | None:
    """Tokens per training row: LMBatches' seq_len, or the width of the input_ids arrays."""
    seq_len = getattr(batches, "seq_len", None)
    if seq_len is not None:
        return int(seq_len)
    ids = getattr(batches, "train", {}).get("input_ids") if hasattr(batches, "train") else None
    return int(ids.shape[1]) if ids is not None and np.ndim(ids) == 2 else None


class TrainingError(RuntimeError):
    """Training cannot go on (a loss or gradient that is nan or inf, a model without a loss)."""


class Trainer:
    """Train ``model`` on ``train_dataset`` with the settings in ``args``.

    ``train_dataset`` / ``eval_dataset``: a batches object (:mod:`numpyllm.batches`),
    a TokenDataset (wrapped in LMBatches with ``args.seq_len``, default the model's
    context length) or a dict of arrays (ArrayBatches). Without ``eval_dataset``
    evaluation uses the training data's own evaluation batches (a TokenDataset's
    "val" split). ``optimizer`` defaults to AdamW over weight-decay groups,
    ``scheduler`` to ``args.lr_scheduler_type`` with warmup, over the run's length.
    """

    def __init__(
        self,
        model: Any,
        args: TrainingArguments,
        train_dataset: Any,
        eval_dataset: Any = None,
        tokenizer: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
    ) -> None:
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a TrainingArguments, got {type(args).__name__}")
        model_type_of(model)  # fail now, not at the first checkpoint, for a model we cannot save
        if args.gradient_checkpointing:
            if not hasattr(model, "recompute_activations"):
                raise ValueError(
                    f"gradient_checkpointing: {type(model).__name__} cannot recompute its "
                    "activations (GPT, BERT and T5 can)"
                )
            model.recompute_activations = True
        self.model = model
        self.args = args
        # the ranks of a distributed run (numpyllm.distributed), or this process alone
        self.world: SingleProcess = world_for(args.ddp_backend)
        self.tokenizer = tokenizer
        self.output_dir = Path(args.output_dir)
        seq_len = args.seq_len or getattr(getattr(model, "config", None), "max_seq_len", None)
        self.train_dataset: Batches = as_batches(train_dataset, seq_len)
        self.eval_dataset: Batches = (
            as_batches(eval_dataset, seq_len) if eval_dataset is not None else self.train_dataset
        )
        self.seq_len = seq_len
        batch_size = args.per_device_train_batch_size
        row_length = _row_length(self.train_dataset)
        if not args.ignore_memory_check and row_length is not None:
            # before the first step allocates anything: a clear error, not the OOM killer
            check_training_memory(model, batch_size, row_length)
        global_batch = batch_size * self.world.size  # each rank takes its b rows of it
        self.steps_per_epoch = max(1, int(self.train_dataset.steps_per_epoch(global_batch)))
        if args.max_steps > 0:
            self.total_steps = args.max_steps
        else:
            self.total_steps = max(1, math.ceil(args.num_train_epochs * self.steps_per_epoch))
        if args.warmup_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps ({args.warmup_steps}) exceeds the run's {self.total_steps} steps"
            )
        self.optimizer = optimizer if optimizer is not None else self._default_optimizer()
        self.scheduler = scheduler if scheduler is not None else self._default_scheduler()
        self.rng = np.random.default_rng(args.seed)  # draws the training batches, nothing else
        if self.world.rank:  # the ranks' dropout masks are independent draws, not copies
            for _, generator in self._model_generators():
                _jump(generator, self.world.rank)
        # Ctrl-C in a distributed run: a rank notes the SIGINT it got, the note rides in the
        # next step's reduction, and the sum is the decision every rank takes alike (a rank
        # must never act on its own note: it could come between the reduction and the check,
        # on one rank only, and leave the ranks in different collectives for ever)
        self._interrupt_noted = False
        self._stop_agreed = False
        self.global_step = 0
        self.log_history: list[dict[str, Any]] = []
        self._elapsed_before = 0.0  # seconds spent in earlier runs of a resumed training

    # ------------------------------------------------------------------ setup

    def _default_optimizer(self) -> AdamW:
        args = self.args
        return AdamW(
            param_groups_for_weight_decay(self.model, args.weight_decay),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )

    def _default_scheduler(self) -> LRScheduler:
        schedule = _SCHEDULES[self.args.lr_scheduler_type]
        lr_lambda = functools.partial(
            schedule, warmup_steps=self.args.warmup_steps, total_steps=self.total_steps
        )
        return LRScheduler(self.optimizer, lr_lambda)

    def _model_generators(self) -> Iterator[tuple[str, np.random.Generator]]:
        """Every Generator the model holds (its dropout layers' ``rng``), by dotted name."""
        for module_name, module in self.model.named_modules():
            for attr, value in vars(module).items():
                if isinstance(value, np.random.Generator):
                    yield (f"{module_name}.{attr}" if module_name else attr), value

    def _rng_state(
        self, generators: list[tuple[str, np.random.Generator]] | None = None
    ) -> dict[str, Any]:
        """Copies of the batch Generator's state and of every model Generator's state."""
        named = self._model_generators() if generators is None else generators
        return {
            "batches": self.rng.bit_generator.state,
            "model": {name: g.bit_generator.state for name, g in named},
        }

    def _set_rng_state(self, state: dict[str, Any], folder: Path) -> None:
        try:
            self.rng.bit_generator.state = state["batches"]
            saved = state["model"]
            by_rank = state.get("model_by_rank") or [saved]
            if self.world.rank < len(by_rank):
                saved = by_rank[self.world.rank]
            elif self.world.rank:  # more ranks than the run had: new independent streams
                saved = _jumped_states(saved, self.world.rank)
            for name, generator in self._model_generators():
                if name not in saved:
                    raise ValueError(f"no state for the model's Generator {name!r}")
                generator.bit_generator.state = saved[name]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"trainer_state.json in {folder} has unusable RNG states: {exc}"
            ) from exc

    # ------------------------------------------------------------- resuming

    def _resume(self, spec: str | os.PathLike | Literal[True]) -> Path:
        folder = resolve_checkpoint(self.output_dir if spec is True else spec)
        state = read_trainer_state(folder)
        optimizer_state, scheduler_state = read_optimizer_state(folder)
        if state is None or optimizer_state is None:
            raise ValueError(
                f"{folder} has no trainer_state.json or optimizer state: it can be loaded as a "
                f"model (numpyllm.checkpoint.load_model) but not resumed"
            )
        check_config(self.model, folder)
        load_model_weights(self.model, folder)
        self.optimizer.load_state_dict(optimizer_state)
        if scheduler_state is not None and hasattr(self.scheduler, "load_state_dict"):
            self.scheduler.load_state_dict(scheduler_state)
        self._set_rng_state(state.get("rng", {}), folder)
        self.global_step = int(state["global_step"])
        self.log_history = list(state.get("log_history", []))
        self._elapsed_before = float(state.get("elapsed", 0.0))
        if state.get("total_steps") not in (None, self.total_steps):
            warnings.warn(
                f"resuming a run of {state['total_steps']} steps as a run of {self.total_steps} "
                f"steps: the learning-rate schedule differs from the original run's",
                stacklevel=3,
            )
        return folder

    # ------------------------------------------------------------- training

    def train(self, resume_from_checkpoint: str | os.PathLike | bool | None = None) -> dict:
        """Run the training loop to ``total_steps``; returns the final metrics.

        A nan/inf loss raises :class:`TrainingError` naming the step (nothing is saved
        for it). Ctrl-C saves a checkpoint at the last finished step and returns
        metrics with ``"interrupted": True``.
        """
        args = self.args
        resume = resume_from_checkpoint
        if resume is None:
            resume = args.resume_from_checkpoint
        if self.world.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None and resume is not False:
            folder = self._resume(resume)
            self._print(f"resumed from {folder} at step {self.global_step}")
            self._rewrite_metrics()
        elif self.global_step == 0:
            self._rewrite_metrics()  # a fresh run starts a fresh metrics file

        self.model.train()
        batch_size = args.per_device_train_batch_size
        run_losses: list[float] = []
        window = {"loss": 0.0, "steps": 0, "tokens": 0, "start": time.perf_counter()}
        run_tokens = 0
        start = time.perf_counter()
        interrupted = False
        saved_at: int | None = None
        checkpoint: Path | None = None
        evaluated: dict[str, float] | None = None
        generators = list(self._model_generators())  # walked once: the model does not change
        previous_handler = None
        if self.world.distributed and threading.current_thread() is threading.main_thread():
            # Ctrl-C (mpiexec forwards it to every rank) only asks to stop; the ranks agree
            # on it in the next step's reduction and all stop after that step, which rank 0
            # saves. Noting it again (a second signal) changes nothing.
            previous_handler = signal.signal(signal.SIGINT, self._note_interrupt)
        resume_rng = self._rng_state(generators)  # what a checkpoint of the last done step needs
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc="training",
            unit="step",
            disable=args.disable_tqdm or self.world.rank != 0,
            dynamic_ncols=True,
        )
        global_batch = batch_size * self.world.size
        try:
            while self.global_step < self.total_steps:
                step = self.global_step + 1
                batch = self._rank_rows(self.train_dataset.train_batch(global_batch, self.rng))
                loss, grad_norm = self._forward_backward(batch, step)
                lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses
                with _interrupts_deferred():  # never stop half-way through an update
                    self.optimizer.step()
                    if self.scheduler is not None:
                        self.scheduler.step()
                    self.model.zero_grad()
                    self.global_step = step
                    resume_rng = self._rng_state(generators)
                if self._stop_agreed:  # decided in this step's reduction, alike on every rank
                    raise KeyboardInterrupt

                tokens = _count_tokens(batch)
                run_losses.append(loss)
                run_tokens += tokens
                window["loss"] += loss
                window["steps"] += 1
                window["tokens"] += tokens
                tokens_per_sec = run_tokens / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(
                    loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:.0f}", refresh=False
                )
                bar.update(1)

                last = step == self.total_steps
                if step % args.logging_steps == 0 or last:
                    self.world.check_identical(self._parameter_buffers(), step)
                    self._log_window(window, lr, grad_norm, start)
                if args.eval_steps and step % args.eval_steps == 0 or last:
                    evaluated = self._evaluate_and_log(start)
                if args.save_steps and step % args.save_steps == 0 or last:
                    checkpoint = self._save(resume_rng, start)
                    saved_at = step
        except KeyboardInterrupt:
            interrupted = True
            self.model.train()
            if window["steps"]:
                self._log_window(window, float(self.optimizer.param_groups[0]["lr"]), None, start)
            if saved_at != self.global_step:
                checkpoint = self._save(resume_rng, start)
            bar.close()
            if self.world.rank == 0:
                print(f"\ninterrupted at step {self.global_step}; checkpoint saved to {checkpoint}")
        except Exception as exc:
            if self.world.distributed and not isinstance(exc, TrainingError):
                # this rank alone failed: end every rank now rather than leave the others
                # waiting for ever in the next Allreduce
                self.world.abort(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            bar.close()
            self._plot()  # also when training failed: the curve up to a divergence helps
        if checkpoint is None:  # nothing was left to train: point at the final checkpoint
            checkpoint = self.output_dir / f"checkpoint-{self.global_step}"
            if not checkpoint.is_dir():
                checkpoint = self._save(self._rng_state(), start)

        runtime = time.perf_counter() - start
        metrics: dict[str, Any] = {
            "global_step": self.global_step,
            "epoch": self.global_step / self.steps_per_epoch,
            "train_loss": float(np.mean(run_losses)) if run_losses else float("nan"),
            "train_runtime": runtime,
            "tokens_per_sec": run_tokens / max(runtime, 1e-9),
            "interrupted": interrupted,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
        }
        if evaluated is not None:
            metrics.update(evaluated)
        return metrics

    def _note_interrupt(self, signum: int, frame: Any) -> None:
        self._interrupt_noted = True

    def _rank_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This rank's rows [r b, (r + 1) b) of a global batch (all of it in one process)."""
        if not self.world.distributed:
            return batch
        b = self.args.per_device_train_batch_size
        rows = slice(self.world.rank * b, (self.world.rank + 1) * b)
        return {key: value[rows] for key, value in batch.items()}

    def _forward_backward(self, batch: dict[str, np.ndarray], step: int) -> tuple[float, float]:
        """Loss and gradient norm (before clipping) of one batch; gradients clipped in place.

        Over ranks, the loss is the mean over every rank's scored items,
        L = sum_r (n_r / n) L_r, so each rank's gradient is scaled by n_r / n and summed.
        """
        out_loss = self.model(**batch).loss
        if out_loss is None:
            raise TrainingError(
                f"the model returned no loss at step {step}: the batches must hold labels"
            )
        loss = float(out_loss)
        share = 1.0
        if self.world.distributed:
            items = _scored_items(self.model, batch)
            # one small Allreduce: the loss, the item count and whether any rank was interrupted
            total, n, stops = self.world.sum_values([loss * items, items, self._interrupt_noted])
            loss = float(total / max(n, 1.0))
            share = items / max(n, 1.0)
            self._stop_agreed = stops > 0
        if not math.isfinite(loss):
            raise TrainingError(
                f"loss is {loss} at step {step}; training stopped (nothing was saved for this "
                f"step). Try a lower learning_rate or more warmup_steps."
            )
        self.model.backward()
        if self.world.distributed:
            for buffer in self._gradient_buffers():
                buffer *= share
                self.world.allreduce_sum(buffer)  # now sum_r (n_r / n) dL_r, on every rank
        grad_norm = self._clip_gradients()
        if not math.isfinite(grad_norm):
            raise TrainingError(
                f"gradient norm is {grad_norm} at step {step}; training stopped (nothing was "
                f"saved for this step)"
            )
        return loss, grad_norm

    def _gradient_buffers(self) -> list[np.ndarray]:
        """The gradients as few contiguous arrays as the optimizer allows (one Allreduce each)."""
        buffers = getattr(self.optimizer, "gradient_buffers", None)
        if buffers is not None:
            return list(buffers())
        return [p.grad for p in self.model.parameters() if p.requires_grad]

    def _parameter_buffers(self) -> list[np.ndarray]:
        buffers = getattr(self.optimizer, "parameter_buffers", None)
        if buffers is not None:
            return list(buffers())
        return [p.data for p in self.model.parameters()]

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.args.max_grad_norm:
            return clip_grad_norm(params, self.args.max_grad_norm)
        total = 0.0
        for p in params:
            g = p.grad.reshape(-1)
            total += float(np.dot(g, g))
        return math.sqrt(total)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset: Any = None) -> dict[str, float]:
        """Mean loss over the evaluation batches (weighted by rows) and its exp, the perplexity.

        The model is in eval mode (no dropout) during, and back in its previous mode after.
        """
        data = as_batches(eval_dataset, self.seq_len) if eval_dataset is not None else None
        result = self._evaluate(data or self.eval_dataset)
        if result is None:
            raise ValueError(
                "no evaluation data: pass eval_dataset, or a training dataset with a "
                "validation split at least seq_len tokens long"
            )
        return result

    def _evaluate(self, data: Batches) -> dict[str, float] | None:
        was_training = self.model.training
        self.model.eval()
        total, rows = 0.0, 0
        try:
            size, rank = self.args.eval_batch_size, self.world.rank
            # over ranks, as in training: batches N times the size, rank r takes its rows
            batches = data.eval_batches(size * self.world.size, self.args.eval_batches)
            for global_batch in batches:
                batch = {k: v[rank * size : (rank + 1) * size] for k, v in global_batch.items()}
                if len(next(iter(batch.values()))) == 0:
                    continue  # a short last batch with no rows left for this rank
                out = self.model(**batch)
                if out.loss is None:
                    raise TrainingError("the model returned no loss on an evaluation batch")
                n = len(next(iter(batch.values())))
                total += float(out.loss) * n
                rows += n
        finally:
            self.model.train(was_training)
        if self.world.distributed:
            summed, rows_sum = self.world.sum_values([total, rows])
            total, rows = float(summed), int(rows_sum)
        if rows == 0:
            return None
        eval_loss = total / rows
        perplexity = math.exp(eval_loss) if eval_loss < 700 else float("inf")
        return {"eval_loss": eval_loss, "perplexity": perplexity}

    def _evaluate_and_log(self, start: float) -> dict[str, float] | None:
        result = self._evaluate(self.eval_dataset)
        if result is not None:
            entry = {"step": self.global_step, **result, "elapsed": self._elapsed(start)}
            self._append_log(entry)
            if not self.args.disable_tqdm:
                tqdm.write(
                    f"step {self.global_step}: eval_loss {result['eval_loss']:.4f}, "
                    f"perplexity {result['perplexity']:.2f}"
                )
        return result

    # --------------------------------------------------------------- logging

    def _elapsed(self, start: float) -> float:
        return self._elapsed_before + (time.perf_counter() - start)

    def _log_window(
        self, window: dict[str, float], lr: float, grad_norm: float | None, start: float
    ) -> None:
        now = time.perf_counter()
        entry = {
            "step": self.global_step,
            "epoch": self.global_step / self.steps_per_epoch,
            "loss": window["loss"] / window["steps"],
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_sec": window["tokens"] / max(now - window["start"], 1e-9),
            "elapsed": self._elapsed(start),
        }
        self._append_log(entry)
        window.update(loss=0.0, steps=0, tokens=0, start=now)

    def _append_log(self, entry: dict[str, Any]) -> None:
        self.log_history.append(entry)
        if self.world.rank != 0:
            return  # rank 0 alone writes files
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl = the log history so far (on resume: up to the checkpoint's step)."""
        if self.world.rank != 0:
            return
        lines = "".join(json.dumps(entry) + "\n" for entry in self.log_history)
        (self.output_dir / METRICS_FILE).write_text(lines, encoding="utf-8")

    def _print(self, message: str) -> None:
        if not self.args.disable_tqdm and self.world.rank == 0:
            tqdm.write(message)

    def _plot(self) -> Path | None:
        """loss.png: training and evaluation loss against the step (skipped without matplotlib).

        A failure to draw is a warning, never an error that could hide the training's own.
        """
        if self.world.rank != 0:
            return None
        try:
            return plot_losses(self.log_history, self.output_dir / PLOT_FILE)
        except Exception as exc:  # any plotting problem at all
            warnings.warn(f"could not write {PLOT_FILE}: {exc}", stacklevel=2)
            return None

    # ----------------------------------------------------------- checkpoints

    def save_model(self, output_dir: str | os.PathLike | None = None) -> Path:
        """Write the model (and tokenizer) as a Hugging Face model folder into ``output_dir``
        (default: ``args.output_dir``), as transformers' ``Trainer.save_model`` does, so that
        ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads the run's final model."""
        folder = Path(output_dir if output_dir is not None else self.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        save_model_files(folder, self.model, self.tokenizer)
        if self.tokenizer is not None:
            self.tokenizer.save(folder)
        return folder

    def _save(self, rng_state: dict[str, Any], start: float) -> Path:
        path = self.output_dir / f"checkpoint-{self.global_step}"
        # identical ranks, checked before rank 0 writes them for all
        self.world.check_identical(self._parameter_buffers(), self.global_step)
        if self.world.distributed:  # every rank's own streams, so that the same ranks resume
            rng_state = {**rng_state, "model_by_rank": self.world.gather(rng_state["model"])}
        if self.world.rank != 0:
            self.world.barrier()  # rank 0 is writing: nobody goes on (and fails) before it ends
            return path
        trainer_state = {
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "epoch": self.global_step / self.steps_per_epoch,
            "elapsed": self._elapsed(start),
            "rng": rng_state,
            "log_history": self.log_history,
            "args": self.args.to_dict(),
        }
        save_checkpoint(
            path,
            self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            tokenizer=self.tokenizer,
            trainer_state=trainer_state,
        )
        if self.args.save_total_limit is not None:
            rotate_checkpoints(self.output_dir, self.args.save_total_limit)
        self.world.barrier()
        return path


def plot_losses(log_history: list[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Draw training loss (and evaluation loss, if any) against step into a PNG file.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change);
    returns None when matplotlib is not installed or there is nothing to draw.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train and not evals:
        return None
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if train:
        axes.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.2)
    if evals:
        axes.plot(*zip(*evals), label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per token)")
    axes.set_title("training")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    return path


def _count_tokens(batch: dict[str, np.ndarray]) -> int:
    """Tokens in a batch: the size of input_ids; for other inputs, the number of rows."""
    ids = batch.get("input_ids")
    if ids is None:
        return len(next(iter(batch.values())))
    return int(np.asarray(ids).size)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C until the block is done, then raise KeyboardInterrupt.

    The optimizer step updates the parameters block by block: an interrupt in the
    middle would leave a mix of old and new values, which no checkpoint should hold.
    Only in the main thread, and only when SIGINT has Python's default handler.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _scored_items(model: Any, batch: dict[str, np.ndarray]) -> int:
    """How many items the batch's loss is a mean over: labels other than -100 (the first
    column left out for a model that shifts its labels, as causal language models do), or
    the rows when the labels are one per row (classification) or absent."""
    labels = batch.get("labels")
    if labels is None or np.ndim(labels) < 2:
        return len(next(iter(batch.values())))
    labels = np.asarray(labels)
    if getattr(model, "shifts_labels", False):
        labels = labels[:, 1:]
    return int(np.count_nonzero(labels != -100))


def _jump(generator: np.random.Generator, times: int) -> None:
    """Move a Generator ``times`` jumps of 2^127 draws on (a stream no other rank reaches)."""
    bit_generator = generator.bit_generator
    jumped = getattr(bit_generator, "jumped", None)
    if jumped is None:
        raise TypeError(
            f"a distributed run needs jumpable Generators (PCG64, Philox, ...), "
            f"got {type(bit_generator).__name__}"
        )
    bit_generator.state = jumped(times).state


def _jumped_states(states: dict[str, Any], times: int) -> dict[str, Any]:
    """Rank 0's saved Generator states moved on as ``_jump`` moves a new rank's."""
    out = {}
    for name, state in states.items():
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        _jump(generator, times)
        out[name] = generator.bit_generator.state
    return out
