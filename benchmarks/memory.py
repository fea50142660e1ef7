"""Peak memory of a training step: RSS growth over the process's baseline, one side per
fresh subprocess (so neither side's allocator state or imports pollute the other's).

Baseline: resident set after the imports, the model's weights and one training step of a
throwaway two-token model (which starts each library's lazily built machinery: autograd
engine, thread pools, allocator arenas), so the growth is what this model's step costs.
Peak: the kernel's high-water mark (VmHWM, reset just after the baseline) over optimizer
construction and a few training steps, so it counts gradients, optimizer state and every
activation.

Run one side by hand: ``python -m benchmarks.memory --side numpyllm --config tiny``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.common import CONFIGS, QUICK_CONFIGS, BenchConfig, gpt_config, torch_available


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(side: str, cfg: BenchConfig, threads: int, steps: int, recompute: bool = False) -> dict:
    """Run in the subprocess: build, baseline, train ``steps`` steps, return MiB figures."""
    from benchmarks.common import limit_threads

    limiter = limit_threads(threads)  # noqa: F841  (keeps the limit alive)
    import numpyllm as nl

    ids = np.random.default_rng(1).integers(0, cfg.vocab, size=(cfg.batch, cfg.seq))
    model = nl.GPT(gpt_config(cfg), rng=np.random.default_rng(0))
    warm_cfg = BenchConfig("warm-up", 8, 1, 1, 4, 2, 1)
    warm_ids = np.zeros((1, 2), dtype=np.int64)
    if side == "numpyllm":
        warm = nl.GPT(gpt_config(warm_cfg))
        warm(warm_ids, labels=warm_ids)
        warm.backward()
        nl.optim.AdamW(warm.parameters()).step()
        del warm
        baseline = _status_kib("VmRSS")
        exact = _reset_peak()
        opt = nl.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        opt.num_threads = model.num_threads = threads
        model.recompute_activations = recompute

        def step():
            model(ids, labels=ids)
            model.backward()
            opt.step()
            opt.zero_grad()

    else:
        import torch

        from benchmarks.torch_gpt import TorchGPT

        tmodel = TorchGPT(model.config, attention=side.removeprefix("torch_"))
        tmodel.load_numpyllm(model)
        del model
        warm = TorchGPT(gpt_config(warm_cfg), attention="sdpa")
        torch.optim.AdamW(warm.parameters()).zero_grad()
        warm(torch.from_numpy(warm_ids), labels=torch.from_numpy(warm_ids))[1].backward()
        torch.optim.AdamW(warm.parameters()).step()
        del warm
        tids = torch.from_numpy(ids.astype(np.int64))
        baseline = _status_kib("VmRSS")
        exact = _reset_peak()
        opt = torch.optim.AdamW(tmodel.parameters(), lr=3e-4, weight_decay=0.1)

        def step():
            opt.zero_grad()
            tmodel(tids, labels=tids)[1].backward()
            opt.step()

    for _ in range(steps):
        step()
    peak = _status_kib("VmHWM")
    return {
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "growth_mib": (peak - baseline) / 1024,
        "peak_reset": exact,
    }


def _in_subprocess(
    side: str, cfg_name: str, threads: int, steps: int, recompute: bool = False
) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.memory", "--side", side, "--config", cfg_name]
    cmd += ["--threads", str(threads), "--steps", str(steps)] + ["--recompute"] * recompute
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess {cmd} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(configs: dict[str, BenchConfig], threads: int, steps: int) -> list:
    sides = ["numpyllm"]
    if torch_available():
        sides += ["torch_explicit", "torch_sdpa"]
    rows = []
    for name in configs:
        values = {}
        for side in sides:
            m = _in_subprocess(side, name, threads, steps)
            values[side] = {"median": m["growth_mib"], "spread": 0.0, "n": 1, **m}
        recomputed = _in_subprocess("numpyllm", name, threads, steps, recompute=True)
        for variant, ours in (("", values["numpyllm"]), (", recompute", recomputed)):
            ours = {"median": ours["growth_mib"], "spread": 0.0, "n": 1, **ours}
            rows.append(
                {
                    "section": "memory",
                    "name": f"memory {name}{variant}",
                    "unit": "MiB",
                    "higher_is_better": False,
                    "values": {**values, "numpyllm": ours},
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--side", required=True, choices=["numpyllm", "torch_explicit", "torch_sdpa"]
    )
    parser.add_argument("--config", required=True, choices=[*CONFIGS, *QUICK_CONFIGS])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--recompute", action="store_true", help="recompute_activations on")
    args = parser.parse_args()
    cfg = {**CONFIGS, **QUICK_CONFIGS}[args.config]
    print(json.dumps(measure(args.side, cfg, args.threads, args.steps, args.recompute)))


if __name__ == "__main__":
    main()
