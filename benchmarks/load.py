"""Loading a GPT-2-124M-sized checkpoint: numpyllm's from_pretrained vs transformers'.

The benchmark writes its own checkpoint (random weights, GPT-2's sizes: 124M parameters,
498 MB of float32) with numpyllm's save_pretrained, so nothing is downloaded. Each load runs
in a fresh Python process, the two libraries alternating, so that the timing covers a load
as a user meets it (page cache warm after the first round) and so that the peak resident
memory (``ru_maxrss``) is the load's own: the interpreter and imports, then the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import BenchConfig, gpt_config, summary, torch_available

GPT2_124M = BenchConfig("gpt2-124m", 50257, 12, 12, 768, 1024, 1)
MIB = 2**20

# Run in a child process: import, then time the load alone, then report the peak RSS. Linux's
# VmHWM is the peak of this process image; ru_maxrss (elsewhere) would also count the parent's
# memory at the fork, which Linux carries over the exec.
_CHILD = r"""
import json, resource, sys, time
side, folder = sys.argv[1], sys.argv[2]
def peak_kib():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if side == "numpyllm":
    import numpyllm
    load = numpyllm.GPT.from_pretrained
else:
    import torch, transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(int(sys.argv[3]))
    def load(path):
        return transformers.GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()
before = peak_kib()
start = time.perf_counter()
model = load(folder)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kib": peak_kib(), "before_kib": before}))
"""


def write_checkpoint(cfg: BenchConfig, folder: str) -> int:
    """A GPT of ``cfg``'s sizes with random N(0, 0.02) weights, saved; returns the file size."""
    import numpyllm as nl
    from numpyllm.nn.init import uninitialised

    with uninitialised(np.float32):  # drawn below in float32, tensor by tensor
        model = nl.GPT(gpt_config(cfg, max_seq_len=cfg.seq))
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():
        p.data[...] = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(0.02)
    model.save_pretrained(folder)
    return os.path.getsize(Path(folder) / "model.safetensors")


def _load_once(side: str, folder: str, threads: int) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, side, folder, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loading with {side} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(cfg: BenchConfig, rounds: int, threads: int, quick: bool = False) -> list:
    """Rows of load time and peak memory, numpyllm against transformers (``quick``: numpyllm
    alone, no warm-up load)."""
    sides = ["numpyllm"] + (["transformers"] if _has_transformers() and not quick else [])
    with tempfile.TemporaryDirectory() as folder:
        size = write_checkpoint(cfg, folder)
        samples: dict[str, list[dict]] = {side: [] for side in sides}
        for side in sides if not quick else ():  # warm-up: page cache, bytecode caches
            _load_once(side, folder, threads)
        for _ in range(rounds):
            for side in sides:
                samples[side].append(_load_once(side, folder, threads))
    rows = []
    time_values, rss_values, rss_extra = {}, {}, {}
    for side, runs in samples.items():
        time_values[side] = summary([1000 * r["seconds"] for r in runs])
        rss_values[side] = summary([r["peak_kib"] * 1024 / MIB for r in runs])
        rss_extra[side] = summary([(r["peak_kib"] - r["before_kib"]) * 1024 / MIB for r in runs])
    common = {"config": vars(cfg), "checkpoint_mib": size / MIB, "higher_is_better": False}
    rows.append({"section": "load", "name": f"load {cfg.name}", "unit": "ms",
                 "values": time_values, **common})  # fmt: skip
    rows.append({"section": "load memory", "name": f"peak RSS {cfg.name}", "unit": "MiB",
                 "values": rss_values, **common,
                 "peak_over_checkpoint": {s: v["median"] * MIB / size
                                          for s, v in rss_values.items()}})  # fmt: skip
    rows.append({"section": "load memory", "name": f"RSS added by the load {cfg.name}",
                 "unit": "MiB", "values": rss_extra, **common})  # fmt: skip
    return rows


def _has_transformers() -> bool:
    if not torch_available():
        return False
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True
