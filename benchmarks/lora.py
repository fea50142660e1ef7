"""LoRA fine-tuning against full fine-tuning, and against PyTorch + peft: step time and peak
memory of one training step (forward, backward, AdamW) on the benchmark GPT configs.

    python -m benchmarks.lora                       # small, medium, gpt2; 2 threads, 7 rounds
    python -m benchmarks.lora --configs tiny --rounds 3 --threads 1

Sides, on the same model (weights copied into the torch GPT of ``benchmarks.torch_gpt``):
  numpyllm full     every weight trained (the ``train`` row of ``python -m benchmarks``)
  numpyllm LoRA     r = 8, alpha = 16 on c_attn and both c_proj; the rest frozen
  torch LoRA        peft's LoRA, same targets and rank, sdpa attention
  torch full        every weight trained, sdpa attention

Configs: ``small`` and ``medium`` (``benchmarks.common``: activations outweigh their weights)
and ``gpt2``, GPT-2 124M's shape (V 50257, 12 layers, 12 heads, d 768, 1024 positions; seq 128,
batch 4; random weights), the size of checkpoint LoRA is used on: its weights are ~1.1x a
LoRA step's activations and temporaries.

Time: the sides run in turn, round after round, each sample at least 0.25 s; a step cell is
the median over the rounds, a ratio cell the median of the per-round ratios (the two sides
ran back to back) with their range. Memory: each side in a fresh subprocess, the peak of
the resident set over two steps, less the process's baseline before the model was built (as
``benchmarks.memory`` measures it, but with the free heap handed back after building, so the
float64 draws of the random initialisation, which a loaded checkpoint never makes, do not
count): weights, gradients, optimizer state and the steps' arrays. Targets: LoRA step
<= 0.75x the full step, LoRA peak <= 0.6x the full peak, and numpyllm LoRA at least as fast
as torch + peft.

Measured (AMD EPYC Zen 4, 2 cores, quiet machine, 5 rounds; paired ratios, median (range)):
    config, threads  LoRA/full time     vs torch+peft      LoRA/full memory
    gpt2, 1          0.64 (0.56-0.66)   1.26x (1.08-1.35)  0.39  (916 / 2358 MiB)
    gpt2, 2          0.54 (0.51-0.55)   1.33x (1.15-2.05)  0.33  (898 / 2720 MiB)
    small, 1         0.79 (0.78-0.90)   1.17x (1.09-1.21)  0.89
    medium, 1        0.77 (0.63-0.80)   1.09x (0.99-1.17)  0.71
    small, 2         0.83 (0.80-0.85)   1.22x (1.17-1.23)  0.87
    medium, 2        0.76 (0.76-0.90)   1.09x (0.92-1.12)  0.72

gpt2 meets every target; small and medium, whose activations outweigh their weights, miss
the memory and time targets (docs/lora.md). On a loaded machine torch's spinning thread
pool suffers most with two threads: there the one-thread torch column is the fair one.
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

# GPT-2 124M's shape (random weights, nothing downloaded), with its 1024 learned positions: a
# pretrained checkpoint of the size LoRA is used on, whose weights (P = 124M numbers) outweigh
# a small batch's activations, unlike the benchmark presets above, whose activations dominate.
LORA_CONFIGS = {"gpt2": BenchConfig("gpt2", 50257, 12, 12, 768, 128, 4)}
POSITIONS = {"gpt2": 1024}
ALL_CONFIGS = {**CONFIGS, **QUICK_CONFIGS, **LORA_CONFIGS}

R, ALPHA = 8, 16
NUMPYLLM_TARGETS = ["c_attn", "c_proj"]
TORCH_TARGETS = ["c_attn", "attn_proj", "mlp_proj"]  # the same layers in benchmarks.torch_gpt
LR, WEIGHT_DECAY = 3e-4, 0.1
SIDES = ["numpyllm full", "numpyllm LoRA", "torch LoRA", "torch full"]
RECOMPUTE = [False]  # --recompute: numpyllm's activation recomputation (its memory setting)


def _gpt_config(cfg: BenchConfig):
    return gpt_config(cfg, max_seq_len=POSITIONS.get(cfg.name))


def _numpyllm(cfg: BenchConfig, ids: np.ndarray, threads: int, lora: bool):
    import numpyllm as nl

    model = nl.GPT(_gpt_config(cfg), rng=np.random.default_rng(0))
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

    tmodel = TorchGPT(_gpt_config(cfg), attention="sdpa")
    tmodel.load_numpyllm(nl.GPT(_gpt_config(cfg), rng=np.random.default_rng(0)))
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
    step = _make(side, cfg, ids, threads)
    _return_free_heap()
    _reset_peak()  # the peak of the steps: weights, optimizer state and the steps' arrays
    for _ in range(steps):
        step()
    return (_status_kib("VmHWM") - baseline) / 1024


def _return_free_heap() -> None:
    """Give the free heap back to the kernel (glibc). Building a model with random weights
    draws each one in float64 and converts it: heap blocks that numpyllm's allocator policy
    (``numpyllm.nn.allocator``) keeps after they are freed, which a fine-tuning run that
    loads its checkpoint never makes, and which would otherwise count as its memory."""
    import ctypes
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)


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


# the ratios the targets are about, each taken round by round (the two sides ran back to back)
RATIOS = {"LoRA / full": ("numpyllm LoRA", "numpyllm full"),
          "speed vs torch+peft": ("torch LoRA", "numpyllm LoRA")}  # fmt: skip


def _paired(over: list[float], under: list[float]) -> dict:
    """Median, lowest and highest of the per-round ratios over[i] / under[i]."""
    ratios = [a / b for a, b in zip(over, under)]
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}


def run(configs: list[str], threads: int, rounds: int) -> list[dict]:
    limiter = limit_threads(threads)  # noqa: F841
    sides = SIDES if torch_available() and not RECOMPUTE[0] else SIDES[:2]
    rows = []
    for name in configs:
        cfg = ALL_CONFIGS[name]
        ids = _ids(cfg)
        steps = {side: _make(side, cfg, ids, threads) for side in sides}
        times = alternate(steps, rounds, min_seconds=0.25)
        del steps
        row: dict = {"config": name, "tokens": cfg.batch * cfg.seq, "ratios": {}}
        for key, (over, under) in RATIOS.items():
            if over in times and under in times:
                row["ratios"][key] = _paired(times[over], times[under])
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
        ratios = row.get("ratios", {})
        lines.append(
            f"| {row['config']} | {1e3 * full:.1f} ms | {1e3 * lora:.1f} ms | "
            f"{_ratio(ratios.get('LoRA / full'), lora / full)} | {1e3 * tl:.1f} ms | "
            f"{_ratio(ratios.get('speed vs torch+peft'), tl / lora)}x | {1e3 * tf:.1f} ms | "
            f"{mf:.1f} MiB | "
            f"{ml:.1f} MiB | {ml / mf:.2f} | {mt:.1f} MiB |"
            + (f" (timing spread up to {spread:.0%})" if spread > 0.2 else "")
        )
    return "\n".join(lines)


def _ratio(paired: dict | None, of_medians: float) -> str:
    """The median of the per-round ratios and their range, or the medians' ratio alone."""
    if paired is None:
        return f"{of_medians:.2f}"
    return f"{paired['median']:.2f} ({paired['min']:.2f}-{paired['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium,gpt2")
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
        cfg = ALL_CONFIGS[names[0]]
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
