"""Data-parallel training over MPI ranks against one process, on the benchmark GPT configs.

    python -m benchmarks.distributed                  # small and medium, 3 rounds
    python -m benchmarks --only mpi                   # the same, as a section of the run

Sides, each a Trainer run of the same global batch (2 b rows) in a fresh process group:
  1 process x 1 core     num_threads = 1, one BLAS thread
  2 ranks x 1 core       ``mpiexec -n 2``: b rows per rank, one Allreduce per gradient buffer
  1 process x 2 threads  the in-process split of the batch over the cores

Reported: tokens/s (training steps only, after warm-up steps), the scaling efficiency of the
two ranks (their tokens/s over twice the one-core figure), gradient bytes each rank sends
to Allreduce per step and the time spent in it. Needs the ``mpi`` extra; without mpiexec
the section reports nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import CONFIGS, QUICK_CONFIGS, BenchConfig, gpt_config

WARMUP_STEPS = 3
SIDES = ("1 process x 1 core", "2 ranks x 1 core", "1 process x 2 threads")


def _worker(cfg: BenchConfig, rows_per_rank: int, steps: int, threads: int) -> None:
    """One Trainer run; rank 0 prints a JSON line with tokens/s and the Allreduce figures."""
    import numpyllm as nl

    model = nl.GPT(gpt_config(cfg), rng=np.random.default_rng(0))
    model.num_threads = threads
    ids = np.random.default_rng(1).integers(0, cfg.vocab, size=200_000)
    data = nl.TokenDataset.from_ids(ids, vocab_size=cfg.vocab, val_fraction=0.01)
    out = tempfile.mkdtemp(prefix="numpyllm-bench-mpi-")
    args = nl.TrainingArguments(
        output_dir=out,
        max_steps=WARMUP_STEPS + steps,
        per_device_train_batch_size=rows_per_rank,
        logging_steps=1,
        eval_batches=1,
        save_steps=None,
        disable_tqdm=True,
        ignore_memory_check=True,
    )
    trainer = nl.Trainer(model, args, train_dataset=data)
    trainer.train()
    world = trainer.world
    if world.rank == 0:
        measured = trainer.log_history[WARMUP_STEPS : WARMUP_STEPS + steps]
        per_rank = statistics.median(e["tokens_per_sec"] for e in measured if "loss" in e)
        print(json.dumps({
            "tokens_per_sec": per_rank * world.size,  # every rank trains as many tokens
            "bytes_per_step": getattr(world, "bytes_reduced", 0) / (WARMUP_STEPS + steps),
            "allreduce_ms_per_step": 1e3 * getattr(world, "seconds_reducing", 0.0)
            / (WARMUP_STEPS + steps),
        }), flush=True)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)


def _launch(side: str, cfg: BenchConfig, steps: int, mpiexec: str) -> dict:
    rows = cfg.batch // 2 if side.startswith("2 ranks") else cfg.batch
    threads = 2 if side.endswith("2 threads") else 1
    command = [sys.executable, "-m", "benchmarks.distributed", "--worker", cfg.name,
               "--rows", str(rows), "--steps", str(steps), "--threads", str(threads)]  # fmt: skip
    if side.startswith("2 ranks"):
        command = [mpiexec, "-n", "2", *command]
    blas = "2" if threads == 2 else "1"
    env = {**os.environ, "OMP_NUM_THREADS": blas, "OPENBLAS_NUM_THREADS": blas,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{side} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(configs: dict[str, BenchConfig], rounds: int, steps: int = 10) -> list:
    """Rows for ``benchmarks.report``; empty when mpiexec is not installed."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which(
        "mpiexec"
    )
    if mpiexec is None:
        print("  mpi: no mpiexec (pip install -e '.[mpi]'): skipped", file=sys.stderr)
        return []
    rows = []
    for cfg in configs.values():
        cfg = BenchConfig(cfg.name, cfg.vocab, cfg.layers, cfg.heads, cfg.d_model, cfg.seq,
                          max(2, cfg.batch - cfg.batch % 2))  # fmt: skip
        samples: dict[str, list[dict]] = {side: [] for side in SIDES}
        for _ in range(rounds):  # sides alternate, so load from elsewhere hits each alike
            for side in SIDES:
                samples[side].append(_launch(side, cfg, steps, mpiexec))
        values = {}
        for side, got in samples.items():
            speeds = [g["tokens_per_sec"] for g in got]
            med = statistics.median(speeds)
            values[side] = {"median": med, "spread": (max(speeds) - min(speeds)) / med,
                            "n": len(speeds)}  # fmt: skip
        ranks = samples["2 ranks x 1 core"]
        one = values["1 process x 1 core"]["median"]
        rows.append({
            "section": "mpi",
            "name": f"train {cfg.name}, global batch {cfg.batch}",
            "unit": "tokens/s",
            "higher_is_better": True,
            "values": values,
            "scaling_efficiency": values["2 ranks x 1 core"]["median"] / (2 * one),
            "bytes_per_step": statistics.median(g["bytes_per_step"] for g in ranks),
            "allreduce_ms_per_step": statistics.median(g["allreduce_ms_per_step"] for g in ranks),
        })  # fmt: skip
    return rows


def table(rows: list) -> str:
    head = "| config | " + " | ".join(SIDES) + " | 2-rank efficiency | MiB sent/step | " \
        "Allreduce ms/step |"
    lines = [head, "|" + "---|" * (len(SIDES) + 4)]
    for r in rows:
        cells = [f"{r['values'][s]['median']:,.0f} ±{100 * r['values'][s]['spread']:.0f}%"
                 for s in SIDES]  # fmt: skip
        lines.append(
            f"| {r['name']} | " + " | ".join(cells) + f" | {100 * r['scaling_efficiency']:.0f}% | "
            f"{r['bytes_per_step'] / 2**20:.2f} | {r['allreduce_ms_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--configs", default="small,medium")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--quick", action="store_true", help="a tiny model, one round")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    every = {**CONFIGS, **QUICK_CONFIGS}
    if args.worker:
        _worker(every[args.worker], args.rows, args.steps, args.threads)
        return 0
    configs = QUICK_CONFIGS if args.quick else {n: CONFIGS[n] for n in args.configs.split(",")}
    rows = run(configs, 1 if args.quick else args.rounds, 2 if args.quick else args.steps)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
