"""Llama rows: training step, forward, greedy generation and training memory, numpyllm's
Llama against transformers' LlamaForCausalLM on the same weights, with eager and with sdpa
attention (``attn_implementation``), in the same process and threads as the GPT rows.

The configs are the GPT rows' sizes with Llama's parts: half as many key/value heads as
query heads, SwiGLU of width 8/3 d (rounded up to a multiple of 8), RMSNorm, an untied head.
The weights go over with ``numpyllm.hf.llama.to_state`` (transformers' names and layouts).

Run one memory side by hand: ``python -m benchmarks.llama --side numpyllm --config tiny``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from functools import partial

import numpy as np

from benchmarks.common import CONFIGS, QUICK_CONFIGS, BenchConfig, alternate, one_thread, summary
from benchmarks.common import torch_available as transformers_available  # checked below
from benchmarks.train import LR, WEIGHT_DECAY, numpyllm_steps

ATTENTION = ("eager", "sdpa")


def llama_config(cfg: BenchConfig, max_seq_len: int | None = None):
    from numpyllm import LlamaConfig

    return LlamaConfig(vocab_size=cfg.vocab, n_layer=cfg.layers, n_head=cfg.heads,
                       d_model=cfg.d_model, max_seq_len=max_seq_len or cfg.seq,
                       n_kv_head=max(1, cfg.heads // 2))  # fmt: skip


def _has_transformers() -> bool:
    if not transformers_available():
        return False
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def hf_llama(model, attention: str):
    """transformers' LlamaForCausalLM holding ``model``'s weights, in float32, eval mode."""
    import torch
    import transformers

    from numpyllm.hf import llama as hf

    config = transformers.LlamaConfig(**{
        k: v for k, v in hf.config_to_hf(model.config).items()
        if k not in ("architectures", "model_type", "dtype", "rope_theta")
    })  # fmt: skip
    config._attn_implementation = attention
    theirs = transformers.LlamaForCausalLM(config).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
             for k, v in hf.to_state(model).items()}  # fmt: skip
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    theirs.load_state_dict(state, strict=True)
    return theirs


def _numpyllm_side(cfg: BenchConfig, ids: np.ndarray, threads: int):
    import numpyllm as nl

    model = nl.Llama(llama_config(cfg), rng=np.random.default_rng(0))
    return (model, *numpyllm_steps(model, ids, threads))


def _torch_side(model, ids: np.ndarray, attention: str):
    import torch

    theirs = hf_llama(model, attention)
    opt = torch.optim.AdamW(theirs.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    tids = torch.from_numpy(ids.astype(np.int64))

    def train_step():
        theirs.train()
        opt.zero_grad()
        theirs(input_ids=tids, labels=tids).loss.backward()
        opt.step()

    def forward():
        theirs.eval()
        with torch.no_grad():
            return theirs(input_ids=tids).logits

    return theirs, tids, train_step, forward


def _loss_gap(model, ids, theirs, tids) -> float:
    import torch

    ours = model(ids, labels=ids).loss
    model._state = None  # no backward follows this check
    with torch.no_grad():
        return abs(ours - float(theirs(input_ids=tids, labels=tids).loss))


def _rates(times: dict, tokens: int) -> dict:
    values = {}
    for side, samples in times.items():
        s = summary([tokens / t for t in samples])
        s["median"] = tokens / summary(samples)["median"]
        values[side] = s
    return values


def run_speed(configs: dict[str, BenchConfig], threads: int, rounds: int,
              sample_seconds: float = 0.25) -> list:  # fmt: skip
    """train and forward rows per config."""
    rows = []
    for cfg in configs.values():
        ids = np.random.default_rng(1).integers(0, cfg.vocab, size=(cfg.batch, cfg.seq))
        model, np_train, np_forward = _numpyllm_side(cfg, ids, threads)
        train_sides, forward_sides, check = {"numpyllm": np_train}, {"numpyllm": np_forward}, {}
        if _has_transformers():
            for attention in ATTENTION:
                theirs, tids, t_train, t_forward = _torch_side(model, ids, attention)
                check[f"loss_gap_{attention}"] = _loss_gap(model, ids, theirs, tids)
                train_sides[f"hf_{attention}"] = t_train
                forward_sides[f"hf_{attention}"] = t_forward
        # Per core, as the GPT rows' "one thread": numpyllm unsplit on one BLAS thread, torch
        # on one thread; no split over the cores (and no thread pool's spinning) hides anything.
        _, one_thread_train, _ = _numpyllm_side(cfg, ids, 1)
        one_thread_sides = {**train_sides, "numpyllm": one_thread_train}
        kinds = (("train", train_sides, "", contextlib.nullcontext),
                 ("train", one_thread_sides, ", one thread", lambda: one_thread(threads)),
                 ("forward", forward_sides, "", contextlib.nullcontext))  # fmt: skip
        for kind, sides, variant, limit in kinds:
            with limit():
                times = alternate(sides, rounds, warmup=2, min_seconds=sample_seconds)
            rows.append({
                "section": "llama", "name": f"llama {kind} {cfg.name}{variant}", "unit": "tokens/s",
                "higher_is_better": True, "config": vars(cfg),
                "values": _rates(times, cfg.batch * cfg.seq), **check,
            })  # fmt: skip
    return rows


def run_generate(configs: dict[str, BenchConfig], rounds: int, prompt_len: int = 16,
                 new_tokens: int = 128) -> list:  # fmt: skip
    """Greedy generation, batch 1, with a KV cache on every side."""
    import numpyllm as nl

    rows = []
    for cfg in configs.values():
        model = nl.Llama(llama_config(cfg, max(cfg.seq, prompt_len + new_tokens)),
                         np.random.default_rng(0)).eval()  # fmt: skip
        prompt = np.random.default_rng(2).integers(0, cfg.vocab, size=(1, prompt_len))
        sides = {"numpyllm": partial(model.generate, prompt, max_new_tokens=new_tokens)}
        if _has_transformers():
            import torch

            tprompt = torch.from_numpy(prompt)
            for attention in ATTENTION:
                theirs = hf_llama(model, attention)

                def generate(theirs=theirs, tprompt=tprompt):
                    with torch.no_grad():
                        return theirs.generate(
                            tprompt, attention_mask=torch.ones_like(tprompt),
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, use_cache=True, pad_token_id=0,
                        ).numpy()  # fmt: skip

                sides[f"hf_{attention}"] = generate
        outputs = {name: np.asarray(fn()) for name, fn in sides.items()}
        times = alternate(sides, rounds, warmup=1)
        values = {}
        for side, samples in times.items():
            s = summary(samples)
            values[side] = {"median": new_tokens / s["median"], "spread": s["spread"], "n": s["n"]}
        ours = outputs["numpyllm"]
        rows.append({
            "section": "llama", "name": f"llama generate {cfg.name}", "unit": "tokens/s",
            "higher_is_better": True, "config": vars(cfg), "values": values,
            "same_tokens": {s: bool(np.array_equal(o, ours)) for s, o in outputs.items()
                            if s != "numpyllm"},
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------- memory
def measure(side: str, cfg: BenchConfig, threads: int, steps: int) -> dict:
    """In a fresh process: RSS growth over a baseline taken after the imports, the weights
    and a throwaway tiny step (as ``benchmarks.memory`` measures the GPT rows)."""
    from benchmarks.common import limit_threads
    from benchmarks.memory import _reset_peak, _status_kib

    limiter = limit_threads(threads)  # noqa: F841  (keeps the limit alive)
    import numpyllm as nl

    ids = np.random.default_rng(1).integers(0, cfg.vocab, size=(cfg.batch, cfg.seq))
    model = nl.Llama(llama_config(cfg), rng=np.random.default_rng(0))
    warm_cfg = BenchConfig("warm-up", 8, 1, 2, 4, 2, 1)
    warm_ids = np.zeros((1, 2), dtype=np.int64)
    warm = nl.Llama(llama_config(warm_cfg))
    if side == "numpyllm":
        warm(warm_ids, labels=warm_ids)
        warm.backward()
        nl.optim.AdamW(warm.parameters()).step()
        del warm
        model.num_threads = threads
        baseline, exact = _status_kib("VmRSS"), _reset_peak()
        opt = nl.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        opt.num_threads = threads

        def step():
            model(ids, labels=ids)
            model.backward()
            opt.step()
            opt.zero_grad()

    else:
        import torch

        theirs = hf_llama(model, side.removeprefix("hf_")).train()
        warm_theirs = hf_llama(warm, "sdpa").train()
        w = torch.from_numpy(warm_ids)
        warm_theirs(input_ids=w, labels=w).loss.backward()
        torch.optim.AdamW(warm_theirs.parameters()).step()
        del model, warm, warm_theirs
        tids = torch.from_numpy(ids.astype(np.int64))
        baseline, exact = _status_kib("VmRSS"), _reset_peak()
        opt = torch.optim.AdamW(theirs.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

        def step():
            opt.zero_grad()
            theirs(input_ids=tids, labels=tids).loss.backward()
            opt.step()

    for _ in range(steps):
        step()
    peak = _status_kib("VmHWM")
    return {"baseline_mib": baseline / 1024, "peak_mib": peak / 1024,
            "growth_mib": (peak - baseline) / 1024, "peak_reset": exact}  # fmt: skip


def run_memory(configs: dict[str, BenchConfig], threads: int, steps: int) -> list:
    sides = ["numpyllm"] + ([f"hf_{a}" for a in ATTENTION] if _has_transformers() else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for name in configs:
        values = {}
        for side in sides:
            cmd = [sys.executable, "-m", "benchmarks.llama", "--side", side, "--config", name,
                   "--threads", str(threads), "--steps", str(steps)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
            if done.returncode != 0:
                raise RuntimeError(f"memory subprocess {cmd} failed:\n{done.stderr}")
            m = json.loads(done.stdout.strip().splitlines()[-1])
            values[side] = {"median": m["growth_mib"], "spread": 0.0, "n": 1, **m}
        rows.append({"section": "llama", "name": f"llama memory {name}", "unit": "MiB",
                     "higher_is_better": False, "values": values})  # fmt: skip
    return rows


def run(configs: dict[str, BenchConfig], threads: int, rounds: int, quick: bool) -> list:
    """Every Llama row: train, forward, generate, memory."""
    rows = run_speed(configs, threads, rounds, 0.01 if quick else 0.25)
    if quick:
        rows += run_generate(configs, rounds, prompt_len=4, new_tokens=8)
    else:
        rows += run_generate(configs, rounds)
    with contextlib.suppress(FileNotFoundError):  # no /proc: no memory rows
        rows += run_memory(configs, threads, steps=1 if quick else 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", required=True, choices=["numpyllm", "hf_eager", "hf_sdpa"])
    parser.add_argument("--config", required=True, choices=[*CONFIGS, *QUICK_CONFIGS])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    cfg = {**CONFIGS, **QUICK_CONFIGS}[args.config]
    print(json.dumps(measure(args.side, cfg, args.threads, args.steps)))


if __name__ == "__main__":
    main()
