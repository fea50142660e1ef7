"""Shared pieces: model configs, thread limits, and alternating (A B A B) timing."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BenchConfig:
    """A GPT-2-style model and the batch it trains on."""

    name: str
    vocab: int
    layers: int
    heads: int
    d_model: int
    seq: int
    batch: int


CONFIGS = {
    "tiny": BenchConfig("tiny", 65, 2, 4, 64, 64, 32),
    "small": BenchConfig("small", 512, 4, 4, 128, 128, 16),
    "medium": BenchConfig("medium", 2048, 6, 8, 384, 256, 8),
}
# --quick: a model small enough that the whole run takes seconds.
QUICK_CONFIGS = {"quick": BenchConfig("quick", 50, 1, 2, 16, 16, 2)}


def gpt_config(cfg: BenchConfig, max_seq_len: int | None = None):
    """The numpyllm GPTConfig of a benchmark config: no dropout, so both sides compute the same."""
    from numpyllm import GPTConfig

    return GPTConfig(
        vocab_size=cfg.vocab,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        d_model=cfg.d_model,
        max_seq_len=max_seq_len or cfg.seq,
        dropout=0.0,
    )


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def limit_threads(n: int) -> dict:
    """Pin every thread pool (NumPy's BLAS, torch's intra-op pool, OpenMP) to ``n`` threads.

    Returns what the benchmark ran on (BLAS library, kernel, thread counts) for the report.
    """
    info: dict = {"threads": n}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_limits = threadpool_info = None
    if torch_available():
        import torch

        torch.set_num_threads(n)
        info["torch"] = torch.__version__
    if threadpool_limits is not None:
        # Kept alive on purpose: the limit lasts as long as the returned object.
        info["_limiter"] = threadpool_limits(limits=n)
        info["pools"] = [
            {k: p.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
            for p in threadpool_info()
        ]
    info["numpy"] = np.__version__
    return info


def cpu_info() -> dict:
    """The CPU the benchmark runs on: its model name, vendor, family and model numbers, the
    vector extensions that decide which kernels NumPy, OpenBLAS and torch pick, and the
    cores this process may use. Results differ by CPU kind, so every report names it."""
    info: dict = {"model_name": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]  # the first processor's block
    except OSError:
        text = ""
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    keys = {"model name": "model_name", "vendor_id": "vendor", "cpu family": "family"}
    keys["model"] = "model"
    for key, name in keys.items():
        if fields.get(key):
            info[name] = fields[key]
    flags = set(fields.get("flags", "").split())
    info["vector_extensions"] = [
        f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
        if f in flags
    ]  # fmt: skip
    info["cpu_count"] = os.cpu_count()
    try:
        info["cores_available"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        info["cores_available"] = os.cpu_count()
    return info


def blas_kernels(limits: dict) -> list[str]:
    """'internal_api/architecture' of each BLAS pool threadpoolctl found (e.g. 'openblas/Zen')."""
    return [
        f"{p.get('internal_api')}/{p.get('architecture')}"
        for p in limits.get("pools", [])
        if p.get("architecture")
    ]


def describe_machine(cpu: dict, kernels: list[str]) -> str:
    """One line naming the CPU, its cores and the BLAS kernel, for the printed header."""
    family = f", family {cpu['family']} model {cpu['model']}" if "family" in cpu else ""
    cores = cpu.get("cores_available") or cpu.get("cpu_count")
    return (
        f"{cpu['model_name']}{family}, {cores} cores "
        f"({' '.join(cpu.get('vector_extensions', [])) or 'no AVX'}), "
        f"BLAS kernel {', '.join(kernels) or 'unknown'}"
    )


@contextlib.contextmanager
def one_thread(threads: int) -> Iterator[None]:
    """Every side on one thread for the block (NumPy's BLAS, torch's intra-op pool); torch
    goes back to ``threads`` after it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # no BLAS thread control: BLAS keeps its own setting
        threadpool_limits = None
    torch = None
    if torch_available():
        import torch

        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1) if threadpool_limits else contextlib.nullcontext():
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(threads)


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Seconds per call of ``fn`` over ``repeat`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def alternate(
    sides: dict[str, Callable[[], object]],
    rounds: int,
    repeat: int = 1,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Time each side in turn, round after round (A B C A B C ...), so that a burst of load
    from elsewhere on the machine hits every side alike. Returns seconds per call, per round.

    Each sample is ``repeat`` back-to-back calls, more if needed to last ``min_seconds``
    (judged from the last warm-up call). Long enough samples matter: a side's first
    milliseconds can run beside the previous side's idle threads, which spin for a while
    before they sleep (OpenMP's wait policy), and a short sample would be charged for that.
    """
    repeats = {}
    for name, fn in sides.items():
        for _ in range(max(1, warmup)):
            once = timed(fn)
        repeats[name] = max(repeat, math.ceil(min_seconds / max(once, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(timed(fn, repeats[name]))
    return times


def summary(samples: list[float]) -> dict:
    """Median and spread ((max - min) / median) of a list of timings."""
    med = statistics.median(samples)
    spread = (max(samples) - min(samples)) / med if med > 0 else 0.0
    return {"median": med, "spread": spread, "n": len(samples)}


def sgemm_peak(threads: int, n: int = 1024, rounds: int = 9) -> float:
    """The machine's float32 matmul peak in GFLOP/s through NumPy's BLAS: the best round, on
    1 or ``threads`` threads (on a busy machine two BLAS threads can be slower than one)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # no thread control: measure as things are
        threadpool_limits, threads = None, 1

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    best = float("inf")
    for t in sorted({1, threads}):
        limit = threadpool_limits(limits=t, user_api="blas") if threadpool_limits else None
        with limit or contextlib.nullcontext():
            samples = alternate({"sgemm": lambda: np.matmul(a, b, out=out)}, rounds, repeat=3)
        best = min(best, *samples["sgemm"])
    return 2.0 * n**3 / best / 1e9
