"""``numpyllm train``'s default run against the bare training step at the same shapes: what
the Trainer (batches, gradient clipping, the schedule, the progress bar and logging),
evaluation and checkpoints cost on top of the model's own step.

Sides of the row (tokens/s):

* ``numpyllm``: the demo, built as ``numpyllm train`` builds it (its tokenizer, vocabulary,
  preset, dropout and Trainer), projected to the whole default run: the Trainer's time per
  step, from two runs of different lengths (so what every run costs once, a final
  evaluation, checkpoint and loss plot, cancels out), times the default steps, plus one
  evaluation per ``eval_steps`` and one checkpoint per ``save_steps`` (each timed on its own).
* ``bare step``: forward, backward and AdamW on the same model and batch shape, dropout on,
  nothing else: the demo's ratio against it is the cost of the Trainer, evaluation and
  checkpoints.
* ``bench small``: the same bare step at the train section's "small" shapes (its smaller
  vocabulary, no dropout), where numpyllm is measured against PyTorch.

Every side splits its batch over ``threads`` cores (``numpyllm train``'s default: every
core the process may use).

The row also records the pieces (seconds per step, per evaluation, per checkpoint, and the
tokenizer's training) and the projected wall time of the default run's training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CONFIGS, gpt_config, summary


def _demo_args(output_dir: str, quick: bool) -> argparse.Namespace:
    """``numpyllm train``'s flags: its defaults, or a tiny character-level run for --quick."""
    from numpyllm.cli import build_parser

    argv = ["train", "--output-dir", output_dir, "--disable-tqdm"]
    if quick:
        argv += ["--tokenizer", "char", "--preset", "tiny", "--max-steps", "4"]
    return build_parser().parse_args(argv)


def _bare_step(config, batch: int, threads: int):
    """Forward, backward and AdamW on random ids, in training mode (dropout as configured)."""
    import numpyllm as nl

    model = nl.GPT(config, rng=np.random.default_rng(0))
    model.num_threads = threads
    ids = np.random.default_rng(1).integers(0, config.vocab_size, size=(batch, config.max_seq_len))
    opt = nl.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)

    def step() -> None:
        model.train()
        model(ids, labels=ids)
        model.backward()
        opt.step()
        opt.zero_grad()

    return step


def run(quick: bool, rounds: int, threads: int) -> list:
    from numpyllm.checkpoint import save_checkpoint
    from numpyllm.cli import common as cli
    from numpyllm.models.gpt import GPT
    from numpyllm.trainer import Trainer

    short, long = (1, 3) if quick else (10, 30)  # the two Trainer runs' lengths, in steps
    with tempfile.TemporaryDirectory(prefix="numpyllm-demo-bench-") as tmp:
        args = _demo_args(str(Path(tmp) / "run"), quick)
        default_steps = args.max_steps
        corpus, _ = cli.load_corpus(args.data)
        start = time.perf_counter()
        tokenizer, _ = cli.make_tokenizer(args.tokenizer, corpus, args.vocab_size)
        dataset = cli.token_dataset(corpus, tokenizer, args)
        tokenizer_seconds = time.perf_counter() - start
        config = cli.model_config(args, tokenizer.vocab_size)
        model = GPT(config, rng=np.random.default_rng(args.seed))
        model.num_threads = threads
        batch = args.per_device_train_batch_size
        tokens_per_step = batch * config.max_seq_len

        def trainer(steps: int, folder: str) -> Trainer:
            args.output_dir = str(Path(tmp) / folder)
            targs = cli.training_arguments(args, default_steps, max_steps=steps, warmup_steps=0)
            return Trainer(model, targs, train_dataset=dataset, tokenizer=tokenizer)

        def timed_run(steps: int) -> float:
            t = trainer(steps, f"run-{steps}")
            begin = time.perf_counter()
            t.train()
            return time.perf_counter() - begin

        bench = CONFIGS["small"] if not quick else CONFIGS["tiny"]
        bare = _bare_step(config, batch, threads)
        small = _bare_step(gpt_config(bench), bench.batch, threads)
        probe = trainer(1, "probe")
        per_step: list[float] = []
        bare_times: list[float] = []
        small_times: list[float] = []
        evals: list[float] = []
        saves: list[float] = []
        for r in range(rounds):  # alternating: a burst of load elsewhere hits every side
            bare()
            begin = time.perf_counter()
            for _ in range(short):
                bare()
            bare_times.append((time.perf_counter() - begin) / short)
            small()
            begin = time.perf_counter()
            for _ in range(short):
                small()
            small_times.append((time.perf_counter() - begin) / short)
            per_step.append((timed_run(long) - timed_run(short)) / (long - short))
            begin = time.perf_counter()
            probe.evaluate()
            evals.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            save_checkpoint(Path(tmp) / f"save-{r}", model, optimizer=probe.optimizer,
                            scheduler=probe.scheduler, tokenizer=tokenizer,
                            trainer_state={"global_step": 0})  # fmt: skip
            saves.append(time.perf_counter() - begin)

    step_s, eval_s, save_s = (summary(x)["median"] for x in (per_step, evals, saves))
    n_evals = default_steps // args.eval_steps if args.eval_steps else 0
    n_saves = default_steps // args.save_steps if args.save_steps else 0
    run_seconds = default_steps * step_s + n_evals * eval_s + n_saves * save_s
    demo = [tokens_per_step / max(s, 1e-9) for s in per_step]
    values = {
        "numpyllm": {
            **summary(demo),
            "median": default_steps * tokens_per_step / run_seconds,
        },
        "bare step": summary([tokens_per_step / t for t in bare_times]),
        "bench small": summary([bench.batch * bench.seq / t for t in small_times]),
    }
    return [
        {
            "section": "demo",
            "name": "numpyllm train (default run)" if not quick else "numpyllm train (quick)",
            "unit": "tokens/s",
            "higher_is_better": True,
            "values": values,
            "pieces": {
                "tokenizer_and_data_s": tokenizer_seconds,
                "trainer_step_s": step_s,
                "bare_step_s": summary(bare_times)["median"],
                "evaluation_s": eval_s,
                "checkpoint_s": save_s,
                "evaluations": n_evals,
                "checkpoints": n_saves,
                "steps": default_steps,
                "projected_training_s": run_seconds,
            },
        }
    ]
