"""One training run, as ``mpiexec -n N python run_training.py ...`` or called in-process.

Used by the distributed tests: a tiny GPT on a toy token cycle, so that N ranks of batch b
can be compared with one process of batch N b. Options make a rank fail on purpose.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from numpyllm.data import TokenDataset
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.trainer import Trainer
from numpyllm.training_args import TrainingArguments

VOCAB, SEQ = 32, 16


def train(
    output_dir: str | Path,
    dtype: str = "float64",
    batch: int = 4,
    steps: int = 3,
    save_steps: int | None = None,
    resume: bool = False,
    dropout: float = 0.0,
    ddp_backend: str | None = None,
) -> dict[str, Any]:
    config = GPTConfig(
        vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=SEQ, dropout=dropout
    )
    model = GPT(config, rng=np.random.default_rng(0)).astype(np.dtype(dtype))
    cycle = np.random.default_rng(7).integers(0, VOCAB, size=23)
    data = TokenDataset.from_ids(np.tile(cycle, 120), vocab_size=VOCAB, val_fraction=0.1)
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-2,
        weight_decay=0.1,
        logging_steps=1,
        eval_steps=steps,
        save_steps=save_steps,
        seq_len=SEQ,
        eval_batches=4,
        disable_tqdm=True,
        ddp_backend=ddp_backend,
        resume_from_checkpoint=True if resume else None,
    )
    return Trainer(model, args, train_dataset=data).train()


class _WriteWatch:
    """Counts this process's writes to the file system, seen through Python's audit hooks."""

    def __init__(self, root: Path) -> None:
        self.root = str(root.resolve())
        self.writes: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode = args[1] or "r"
            flags = args[2] or 0
            writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
            if writing and os.path.abspath(args[0]).startswith(self.root):
                self.writes.append(f"open {args[0]}")
        elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
            path = os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike)) else ""
            if os.path.abspath(path).startswith(self.root):
                self.writes.append(f"{event} {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-steps", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--fail-rank", type=int, default=None, help="this rank raises")
    parser.add_argument("--kill-rank", type=int, default=None, help="this rank is killed")
    parser.add_argument("--nudge-rank", type=int, default=None, help="this rank's weights move")
    args = parser.parse_args()
    rank = int(os.environ.get("PMI_RANK", "0"))
    watch = _WriteWatch(Path(args.output_dir)) if rank != 0 else None
    if rank == args.nudge_rank:  # as a bit flipped by faulty memory would
        import numpyllm.trainer as trainer_module

        forward_backward = trainer_module.Trainer._forward_backward

        def nudged(self: Trainer, batch: dict, step: int) -> tuple[float, float]:
            if step == 2:
                next(iter(self.model.parameters())).data.reshape(-1)[0] += 1e-3
            return forward_backward(self, batch, step)

        trainer_module.Trainer._forward_backward = nudged  # type: ignore[method-assign]
    if rank in (args.fail_rank, args.kill_rank):
        import numpyllm.trainer as trainer_module

        original = trainer_module.Trainer._forward_backward

        def failing(self: Trainer, batch: dict, step: int) -> tuple[float, float]:
            if step == 2:
                if args.kill_rank is not None:
                    os.kill(os.getpid(), 9)
                raise RuntimeError(f"injected failure at step {step}")
            return original(self, batch, step)

        trainer_module.Trainer._forward_backward = failing  # type: ignore[method-assign]
    metrics = train(
        args.output_dir,
        args.dtype,
        args.batch,
        args.steps,
        args.save_steps,
        args.resume,
        args.dropout,
    )
    if watch is not None:
        print(f"rank {rank} writes: {len(watch.writes)} {watch.writes[:3]}", flush=True)
    else:
        print(f"rank 0 done at step {metrics['global_step']}", flush=True)
    if metrics["interrupted"]:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
