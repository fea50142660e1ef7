"""GPT training step (forward + backward + AdamW) and forward-only throughput, both sides."""

from __future__ import annotations

import contextlib

import numpy as np

from benchmarks.common import (
    BenchConfig,
    alternate,
    gpt_config,
    one_thread,
    summary,
    torch_available,
)

LR, WEIGHT_DECAY = 3e-4, 0.1


def _numpyllm_side(cfg: BenchConfig, ids: np.ndarray, threads: int, recompute: bool = False):
    import numpyllm as nl

    model = nl.GPT(gpt_config(cfg), rng=np.random.default_rng(0))
    return (model, *numpyllm_steps(model, ids, threads, recompute))


def numpyllm_steps(model, ids: np.ndarray, threads: int, recompute: bool = False):
    """(train_step, forward) of any numpyllm causal model on ``ids``, on ``threads`` cores
    (the batch split, AdamW's threads; one BLAS thread when ``threads`` is 1)."""
    import numpyllm as nl

    model.num_threads = threads  # the same core budget as BLAS and torch
    if threads == 1:
        model.blas_threads = 1
    model.recompute_activations = recompute
    opt = nl.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    opt.num_threads = threads

    def train_step():
        model.train()
        model(ids, labels=ids)
        model.backward()
        opt.step()
        opt.zero_grad()

    def forward():
        model.eval()
        return model(ids).logits

    return train_step, forward


def _torch_side(model, ids: np.ndarray, attention: str, recompute: bool = False):
    import torch

    from benchmarks.torch_gpt import TorchGPT

    tmodel = TorchGPT(model.config, attention=attention, recompute=recompute)
    tmodel.load_numpyllm(model)
    opt = torch.optim.AdamW(tmodel.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    tids = torch.from_numpy(ids.astype(np.int64))

    def train_step():
        opt.zero_grad()
        _, loss, _ = tmodel(tids, labels=tids)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad():
            return tmodel(tids)[0]

    return tmodel, tids, train_step, forward


def _loss_gap(model, ids, tmodel, tids) -> float:
    """|loss_numpyllm - loss_torch| on the same weights: proves both sides compute one model."""
    import torch

    ours = model(ids, labels=ids).loss
    model._cache = None  # no backward follows this check
    with torch.no_grad():
        theirs = float(tmodel(tids, labels=tids)[1])
    return abs(ours - theirs)


def run(
    configs: dict[str, BenchConfig],
    threads: int,
    rounds: int,
    peaks: tuple[float, float],
    sample_seconds: float = 0.25,
) -> list:
    """Rows per config: train, train with recomputation, train on one thread, forward; each
    sample lasts >= sample_seconds. ``peaks``: the sgemm peak in GFLOP/s on ``threads``
    threads and on one."""
    rows = []
    for cfg in configs.values():
        rng = np.random.default_rng(1)
        ids = rng.integers(0, cfg.vocab, size=(cfg.batch, cfg.seq), dtype=np.int64)
        tokens = cfg.batch * cfg.seq
        model, np_train, np_forward = _numpyllm_side(cfg, ids, threads)
        flops_per_token = model.estimate_flops_per_token(cfg.seq)
        train_sides = {"numpyllm": np_train}
        forward_sides = {"numpyllm": np_forward}
        check = {}
        if torch_available():
            for attention in ("explicit", "sdpa"):
                tmodel, tids, t_train, t_forward = _torch_side(model, ids, attention)
                check[f"loss_gap_{attention}"] = _loss_gap(model, ids, tmodel, tids)
                train_sides[f"torch_{attention}"] = t_train
                forward_sides[f"torch_{attention}"] = t_forward
        # The same step with activation recomputation (the memory-saving setting), against
        # the same PyTorch steps, and against PyTorch recomputing each block as well
        # (torch.utils.checkpoint, sdpa): the like-for-like comparison.
        _, recompute_train, _ = _numpyllm_side(cfg, ids, threads, recompute=True)
        recompute_sides = {**train_sides, "numpyllm": recompute_train}
        if torch_available():
            recompute_sides["torch_sdpa_recompute"] = _torch_side(model, ids, "sdpa", True)[2]
        # Per core: numpyllm unsplit with one BLAS thread against torch on one thread, the
        # measure of per-core efficiency that no split over the cores can hide.
        _, one_thread_train, _ = _numpyllm_side(cfg, ids, 1)
        one_thread_sides = {**train_sides, "numpyllm": one_thread_train}
        kinds = (
            ("train", train_sides, "", contextlib.nullcontext, peaks[0]),
            ("train", recompute_sides, ", recompute", contextlib.nullcontext, peaks[0]),
            ("train", one_thread_sides, ", one thread", lambda: one_thread(threads), peaks[1]),
            ("forward", forward_sides, "", contextlib.nullcontext, peaks[0]),
        )
        for kind, sides, variant, limit, peak_gflops in kinds:
            with limit():
                times = alternate(sides, rounds, warmup=2, min_seconds=sample_seconds)
            values = {}
            for side, samples in times.items():
                s = summary([tokens / t for t in samples])  # tokens/s per round
                s["median"] = tokens / summary(samples)["median"]
                values[side] = s
            row = {
                "section": kind,
                "name": f"{kind} {cfg.name}{variant}",
                "unit": "tokens/s",
                "higher_is_better": True,
                "config": vars(cfg),
                "values": values,
                **check,
            }
            if kind == "train":
                gflops = {s: v["median"] * flops_per_token / 1e9 for s, v in values.items()}
                row["gflops"] = gflops
                row["peak_gflops"] = peak_gflops
                row["fraction_of_peak"] = {s: g / peak_gflops for s, g in gflops.items()}
            rows.append(row)
    return rows
