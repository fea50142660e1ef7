"""Long contexts: causal attention forward + backward at T = 2,048, 8,192 and 16,384 tokens,
numpyllm's blocked attention (online softmax, O(T) memory) against PyTorch's
``scaled_dot_product_attention``, in tokens/s and in peak memory.

Shapes: one row, 8 heads of 64 dimensions (GPT-2's head size), float32. Speed: the sides in
alternating rounds in this process. Memory: each side and length in a fresh subprocess;
the growth of the resident set's high-water mark (VmHWM, reset after the inputs and a
warm-up call at T = 256) over one forward + backward, so it counts what attention itself
allocates: the outputs and gradients (O(T)) and the score temporaries (O(T^2) unless
blocked).

Run one memory side by hand: ``python -m benchmarks.long_context --side numpyllm --seq 8192``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.common import alternate, summary, torch_available

LENGTHS = (2048, 8192, 16384)
HEADS, HEAD_DIM = 8, 64


def _inputs(seq: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    shape = (1, HEADS, seq, HEAD_DIM)
    return tuple(rng.standard_normal(shape, dtype=np.float32) for _ in range(4))


def _step(side: str, seq: int):
    """A function running one causal forward + backward of ``side`` at length ``seq``."""
    q, k, v, dout = _inputs(seq)
    if side == "numpyllm":
        from numpyllm.functional.attention import attention_backward, attention_forward

        def step():
            out, cache = attention_forward(q, k, v, causal=True)
            return attention_backward(dout, cache, out=out)

        return step
    import torch

    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tdout = torch.from_numpy(dout)

    def torch_step():
        for t in (tq, tk, tv):
            t.grad = None
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        out.backward(tdout)

    return torch_step


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(side: str, seq: int, threads: int) -> dict:
    """In the subprocess: MiB of resident-set growth over one forward + backward."""
    from benchmarks.common import limit_threads

    limiter = limit_threads(threads)  # noqa: F841  (keeps the limit alive)
    _step(side, 256)()  # warm-up: lazily built machinery is not the step's
    step = _step(side, seq)
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    step()
    return {"growth_mib": (_status_kib("VmHWM") - baseline) / 1024}


def _memory_in_subprocess(side: str, seq: int, threads: int) -> float:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.long_context", "--side", side, "--seq", str(seq)]
    cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"long-context subprocess {cmd} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_mib"]


def run(threads: int, rounds: int, lengths: tuple[int, ...] = LENGTHS) -> list:
    sides = ["numpyllm"] + (["torch_sdpa"] if torch_available() else [])
    rows = []
    for seq in lengths:
        times = alternate({side: _step(side, seq) for side in sides}, rounds)
        rows.append(
            {
                "section": "long context",
                "name": f"causal attention fwd+bwd, T={seq:,}",
                "unit": "tokens/s",
                "higher_is_better": True,
                "values": {
                    side: {**summary([seq / t for t in samples])}
                    for side, samples in times.items()
                },
            }
        )
        memory = {side: _memory_in_subprocess(side, seq, threads) for side in sides}
        rows.append(
            {
                "section": "long-context memory",
                "name": f"causal attention fwd+bwd, T={seq:,}",
                "unit": "MiB",
                "higher_is_better": False,
                "values": {s: {"median": m, "spread": 0.0, "n": 1} for s, m in memory.items()},
            }
        )
        print(f"  long context T={seq} done", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", required=True, choices=["numpyllm", "torch_sdpa"])
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(measure_memory(args.side, args.seq, args.threads)))


if __name__ == "__main__":
    main()
