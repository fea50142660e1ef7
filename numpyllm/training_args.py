"""TrainingArguments: the settings of one training run, with Hugging Face's names.

    args = TrainingArguments(output_dir="runs/tiny", max_steps=2000, learning_rate=3e-4,
                             per_device_train_batch_size=16, seq_len=128, warmup_steps=100)

How long a run is: ``max_steps`` when it is > 0, otherwise ``num_train_epochs``
epochs, where an epoch is ``steps_per_epoch(batch_size)`` of the training data
(for language-model data: n_train_tokens // (batch_size * seq_len) steps).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULER_TYPES = ("cosine", "linear", "constant")


@dataclass
class TrainingArguments:
    """Settings of a training run (names and defaults follow Hugging Face where they exist).

    output_dir                    folder for checkpoints, metrics.jsonl and loss.png
    num_train_epochs              length of the run in epochs (used when max_steps <= 0)
    max_steps                     length of the run in optimizer steps; -1 = use epochs
    per_device_train_batch_size   rows per training batch
    per_device_eval_batch_size    rows per evaluation batch (None = the training size)
    learning_rate                 peak learning rate of AdamW
    warmup_steps                  linear warmup from 0 to the peak over this many steps
    lr_scheduler_type             "cosine", "linear" (decay to 0 at the last step) or "constant"
    weight_decay                  AdamW's decoupled decay on matrices (not biases/norms/embeddings)
    adam_beta1/2, adam_epsilon    AdamW's betas and epsilon
    max_grad_norm                 clip the global gradient norm to this; None or 0 = no clipping
    logging_steps                 write a metrics line every this many steps
    eval_steps                    evaluate every this many steps; None = only at the end
    eval_batches                  how many evaluation batches an evaluation uses (None = all)
    save_steps                    checkpoint every this many steps; None or 0 = only at the end
    save_total_limit              keep only this many newest checkpoints (None = keep all)
    seed                          seeds the Generator that draws the training batches
    resume_from_checkpoint        a checkpoint folder, an output folder, or True (newest in
                                  output_dir) to continue a run exactly where it stopped
    disable_tqdm                  no progress bar
    seq_len                       tokens per row for language-model data (None = the model's
                                  context length, ``model.config.max_seq_len``)
    gradient_checkpointing        recompute each block's activations in the backward instead
                                  of keeping them (the model's ``recompute_activations``): about
                                  half the peak memory, for about a third more arithmetic
    ignore_memory_check           train even when the estimated peak memory of a step
                                  (``numpyllm.memory_report``) exceeds the memory available;
                                  by default the Trainer raises InsufficientMemoryError first
    ddp_backend                   "mpi": train data-parallel over the ranks of an ``mpiexec``
                                  launch (``numpyllm.distributed``); None: the same, found
                                  by itself when launched by ``mpiexec -n N`` with N > 1;
                                  "none": one process whatever the launcher says. The batch
                                  size is per rank: the global batch is N times it
    """

    output_dir: str | os.PathLike
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int | None = None
    learning_rate: float = 5e-4
    warmup_steps: int = 0
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    logging_steps: int = 10
    eval_steps: int | None = None
    eval_batches: int | None = 20
    save_steps: int | None = 500
    save_total_limit: int | None = None
    seed: int = 42
    resume_from_checkpoint: str | os.PathLike | bool | None = None
    disable_tqdm: bool = False
    seq_len: int | None = None
    gradient_checkpointing: bool = False
    ignore_memory_check: bool = False
    ddp_backend: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            raise ValueError(f"output_dir must be a non-empty path, got {self.output_dir!r}")
        _check_int(self, "max_steps", minimum=None)
        if self.max_steps <= 0:
            epochs = self.num_train_epochs
            if isinstance(epochs, bool) or not isinstance(epochs, numbers.Real):
                raise ValueError(f"num_train_epochs must be a number, got {epochs!r}")
            if not (math.isfinite(epochs) and epochs > 0):
                raise ValueError(
                    f"num_train_epochs must be > 0 when max_steps <= 0 "
                    f"(max_steps={self.max_steps}), got {epochs!r}"
                )
        _check_int(self, "per_device_train_batch_size", minimum=1)
        _check_int(self, "per_device_eval_batch_size", minimum=1, optional=True)
        _check_int(self, "warmup_steps", minimum=0)
        _check_int(self, "logging_steps", minimum=1)
        _check_int(self, "eval_steps", minimum=1, optional=True)
        _check_int(self, "eval_batches", minimum=1, optional=True)
        _check_int(self, "save_steps", minimum=0, optional=True)
        _check_int(self, "save_total_limit", minimum=1, optional=True)
        _check_int(self, "seed", minimum=0)
        _check_int(self, "seq_len", minimum=2, optional=True)  # an input and a target at least
        if self.max_steps > 0 and self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})"
            )
        if self.lr_scheduler_type not in SCHEDULER_TYPES:
            raise ValueError(
                f"lr_scheduler_type must be one of {SCHEDULER_TYPES}, "
                f"got {self.lr_scheduler_type!r}"
            )
        _check_float(self, "learning_rate", low=0.0, low_inclusive=False)
        _check_float(self, "weight_decay", low=0.0)
        _check_float(self, "adam_beta1", low=0.0, high=1.0)
        _check_float(self, "adam_beta2", low=0.0, high=1.0)
        _check_float(self, "adam_epsilon", low=0.0)
        if self.max_grad_norm is not None:
            _check_float(self, "max_grad_norm", low=0.0)
        resume = self.resume_from_checkpoint
        if not (resume is None or isinstance(resume, (bool, str, os.PathLike))):
            raise ValueError(f"resume_from_checkpoint must be None, True or a path, got {resume!r}")
        if self.ddp_backend not in (None, "mpi", "none"):
            raise ValueError(f"ddp_backend must be 'mpi', 'none' or None, got {self.ddp_backend!r}")
        for name in ("disable_tqdm", "gradient_checkpointing", "ignore_memory_check"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def eval_batch_size(self) -> int:
        """Rows per evaluation batch: per_device_eval_batch_size, else the training size."""
        if self.per_device_eval_batch_size is None:
            return self.per_device_train_batch_size
        return self.per_device_eval_batch_size

    def to_dict(self) -> dict[str, Any]:
        """The arguments as JSON-ready values (paths as strings)."""
        out = asdict(self)
        for key in ("output_dir", "resume_from_checkpoint"):
            if isinstance(out[key], os.PathLike):
                out[key] = os.fspath(out[key])
        return out


def _check_int(args: TrainingArguments, name: str, minimum: int | None, optional=False) -> None:
    value = getattr(args, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an integer or None" if optional else "an integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    value = int(value)  # a NumPy integer becomes a plain int (JSON-ready)
    setattr(args, name, value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(
    args: TrainingArguments,
    name: str,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
) -> None:
    value = getattr(args, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    setattr(args, name, value)
    too_low = value < low if low_inclusive else value <= low
    too_high = high is not None and value >= high
    if too_low or too_high:
        lower = "[" if low_inclusive else "("
        upper = f"{high})" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {lower}{low}, {upper}, got {value!r}")
