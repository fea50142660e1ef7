"""LoRA fine-tuning against full fine-tuning, and against PyTorch + peft: step time and peak
memory of one training step (forward, backward, AdamW) on the benchmark GPT configs.

    python -m benchmarks.lora                       # small and medium, 2 threads, 7 rounds
    python -m benchmarks.lora --configs tiny --rounds 3 --threads 1

Sides, on the same model (weights copied into the torch GPT of ``benchmarks.torch_gpt``):
  numpyllm full     every weight trained (the ``train`` row of ``python -m benchmarks``)
  numpyllm LoRA     r = 8, alpha = 16 on c_attn and both c_proj; the rest frozen
  torch LoRA        peft's LoRA, same targets and rank, sdpa attention
  torch full        every weight trained, sdpa attention

Time: the sides run in turn, round after round, each sample at least 0.25 s; a cell is the
median over the rounds. Memory: each side in a fresh subprocess, the growth of the resident
set over the process's baseline during optimizer construction and two steps (as
``benchmarks.memory`` measures it). Targets: LoRA step <= 0.75x the full step, LoRA peak
<= 0.6x the full peak, and numpyllm LoRA at least as fast as torch + peft.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import (
    CONFIGS,
    QUICK_CONFIGS,
    BenchConfig,
    alternate,
    cpu_info,
    gpt_config,
    limit_threads,
    summary,
    torch_available,
)

R, ALPHA = 8, 16
NUMPYLLM_TARGETS = ["c_attn", "c_proj"]
TORCH_TARGETS = ["c_attn", "attn_proj", "mlp_proj"]  # the same layers in benchmarks.torch_gpt
LR, WEIGHT_DECAY = 3e-4, 0.1
SIDES = ["numpyllm full", "numpyllm LoRA", "torch LoRA", "torch full"]
RECOMPUTE = [False]  # --recompute: numpyllm's activation recomputation (its memory setting)


def _numpyllm(cfg: BenchConfig, ids: np.ndarray, threads: int, lora: bool):
    import numpyllm as nl

    model = nl.GPT(gpt_config(cfg), rng=np.random.default_rng(0))
    model.num_threads = threads
    model.recompute_activations = RECOMPUTE[0]
    if lora:
        config = nl.peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=NUMPYLLM_TARGETS)
        model = nl.peft.get_peft_model(model, config)
    opt = nl.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    opt.num_threads = threads

    def step() -> None:
        model(ids, labels=ids)
        model.backward()
        opt.step()
        opt.zero_grad()

    return step


def _torch(cfg: BenchConfig, ids: np.ndarray, lora: bool):
    import torch

    import numpyllm as nl
    from benchmarks.torch_gpt import TorchGPT

    tmodel = TorchGPT(gpt_config(cfg), attention="sdpa")
    tmodel.load_numpyllm(nl.GPT(gpt_config(cfg), rng=np.random.default_rng(0)))
    if lora:
        import peft

        config = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TORCH_TARGETS)
        tmodel = peft.get_peft_model(tmodel, config)
    params = [p for p in tmodel.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    tids = torch.from_numpy(ids.astype(np.int64))

    def step() -> None:
        opt.zero_grad()
        tmodel(tids, labels=tids)[1].backward()
        opt.step()

    return step


def _make(side: str, cfg: BenchConfig, ids: np.ndarray, threads: int):
    lora = side.endswith("LoRA")
    if side.startswith("numpyllm"):
        return _numpyllm(cfg, ids, threads, lora)
    return _torch(cfg, ids, lora)


def _ids(cfg: BenchConfig) -> np.ndarray:
    return np.random.default_rng(1).integers(0, cfg.vocab, size=(cfg.batch, cfg.seq))


def measure_memory(side: str, cfg: BenchConfig, threads: int, steps: int = 2) -> float:
    """In the subprocess: MiB of resident-set growth over the baseline during ``steps``."""
    from benchmarks.memory import _reset_peak, _status_kib

    limiter = limit_threads(threads)  # noqa: F841  (keeps the limit alive)
    ids = _ids(cfg)
    warm_cfg = BenchConfig("warm-up", 8, 1, 1, 8, 2, 1)
    warm = _make(side, warm_cfg, _ids(warm_cfg), threads)  # starts each library's machinery
    warm()
    del warm
    baseline = _status_kib("VmRSS")
    _reset_peak()
    step = _make(side, cfg, ids, threads)
    for _ in range(steps):
        step()
    return (_status_kib("VmHWM") - baseline) / 1024


def _memory_in_subprocess(side: str, cfg_name: str, threads: int) -> float:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "benchmarks.lora", "--memory-side", side,
           "--configs", cfg_name, "--threads", str(threads)]  # fmt: skip
    cmd += ["--recompute"] * RECOMPUTE[0]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess {cmd} failed:\n{done.stderr}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["growth_mib"])


def run(configs: list[str], threads: int, rounds: int) -> list[dict]:
    limiter = limit_threads(threads)  # noqa: F841
    sides = SIDES if torch_available() and not RECOMPUTE[0] else SIDES[:2]
    all_configs = {**CONFIGS, **QUICK_CONFIGS}
    rows = []
    for name in configs:
        cfg = all_configs[name]
        ids = _ids(cfg)
        steps = {side: _make(side, cfg, ids, threads) for side in sides}
        times = alternate(steps, rounds, min_seconds=0.25)
        del steps
        row: dict = {"config": name, "tokens": cfg.batch * cfg.seq}
        for side in sides:
            row[side] = {"seconds": summary(times[side]),
                         "memory_mib": _memory_in_subprocess(side, name, threads)}  # fmt: skip
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def t(row: dict, side: str) -> float:
        return row[side]["seconds"]["median"] if side in row else float("nan")

    def m(row: dict, side: str) -> float:
        return row[side]["memory_mib"] if side in row else float("nan")

    lines = [
        "| config | full step | LoRA step | LoRA / full (<= 0.75) | torch+peft LoRA step | "
        "speed vs torch+peft (>= 1.0) | torch full step | full peak | LoRA peak | "
        "LoRA / full (<= 0.6) | torch+peft LoRA peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        full, lora = t(row, "numpyllm full"), t(row, "numpyllm LoRA")
        row.setdefault("torch LoRA", {"seconds": {"median": float("nan")},
                                      "memory_mib": float("nan")})  # fmt: skip
        tl, tf = t(row, "torch LoRA"), t(row, "torch full")
        if not np.isfinite(tl):
            row.pop("torch LoRA")
        mf, ml, mt = m(row, "numpyllm full"), m(row, "numpyllm LoRA"), m(row, "torch LoRA")
        spread = max(row[s]["seconds"].get("spread", 0.0) for s in SIDES if s in row)
        lines.append(
            f"| {row['config']} | {1e3 * full:.1f} ms | {1e3 * lora:.1f} ms | {lora / full:.2f} | "
            f"{1e3 * tl:.1f} ms | {tl / lora:.2f}x | {1e3 * tf:.1f} ms | {mf:.1f} MiB | "
            f"{ml:.1f} MiB | {ml / mf:.2f} | {mt:.1f} MiB |"
            + (f" (timing spread up to {spread:.0%})" if spread > 0.2 else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--recompute", action="store_true",
                        help="numpyllm with recompute_activations (its memory setting); "
                        "numpyllm sides only")  # fmt: skip
    parser.add_argument("--memory-side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    RECOMPUTE[0] = args.recompute
    names = [n for n in args.configs.split(",") if n]
    if args.memory_side:
        cfg = {**CONFIGS, **QUICK_CONFIGS}[names[0]]
        growth = measure_memory(args.memory_side, cfg, args.threads)
        print(json.dumps({"growth_mib": growth}))
        return
    rows = run(names, args.threads, args.rounds)
    cpu = cpu_info()
    setting = ", recompute_activations" if args.recompute else ""
    print(f"CPU: {cpu.get('model_name', '?')}, {args.threads} threads, {args.rounds} rounds"
          f"{setting}")  # fmt: skip
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
