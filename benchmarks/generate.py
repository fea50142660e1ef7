"""Greedy generation with a KV cache: numpyllm vs the torch GPT vs transformers' generate."""

from __future__ import annotations

import tempfile
from functools import partial

import numpy as np

from benchmarks.common import BenchConfig, alternate, gpt_config, summary, torch_available


def _transformers_side(model, prompt: np.ndarray, new_tokens: int, workdir: str):
    """transformers' GPT2LMHeadModel on the same weights (save_gpt2 -> from_pretrained)."""
    try:
        import torch
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    model.save_pretrained(workdir)
    hf = GPT2LMHeadModel.from_pretrained(workdir, torch_dtype=torch.float32).eval()
    ids = torch.from_numpy(prompt)
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            return hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # never stop early on an "eos" token
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            ).numpy()

    return run


def run(
    configs: dict[str, BenchConfig], rounds: int, prompt_len: int = 16, new_tokens: int = 128
) -> list:
    import numpyllm as nl

    rows = []
    for cfg in configs.values():
        context = prompt_len + new_tokens
        model = nl.GPT(gpt_config(cfg, max_seq_len=max(cfg.seq, context)), np.random.default_rng(0))
        model.eval()
        prompt = np.random.default_rng(2).integers(0, cfg.vocab, size=(1, prompt_len))
        sides = {"numpyllm": partial(model.generate, prompt, max_new_tokens=new_tokens)}
        with tempfile.TemporaryDirectory() as workdir:
            if torch_available():
                import torch

                from benchmarks.torch_gpt import TorchGPT

                tmodel = TorchGPT(model.config, attention="sdpa").eval()
                tmodel.load_numpyllm(model)
                tprompt = torch.from_numpy(prompt)
                sides["torch_cache"] = partial(tmodel.generate_greedy, tprompt, new_tokens)
                hf = _transformers_side(model, prompt, new_tokens, workdir)
                if hf is not None:
                    sides["transformers"] = hf
            outputs = {name: np.asarray(fn()) for name, fn in sides.items()}  # torch -> numpy too
            times = alternate(sides, rounds, warmup=1)
        ours = outputs["numpyllm"]
        values = {}
        for side, samples in times.items():
            s = summary(samples)
            values[side] = {
                "median": new_tokens / s["median"],
                "spread": s["spread"],
                "n": s["n"],
            }
        rows.append(
            {
                "section": "generate",
                "name": f"generate {cfg.name}",
                "unit": "tokens/s",
                "higher_is_better": True,
                "config": vars(cfg),
                "prompt_len": prompt_len,
                "new_tokens": new_tokens,
                "values": values,
                # greedy decoding of one model: every side should pick the same tokens
                "same_tokens": {
                    s: bool(np.array_equal(o, ours)) for s, o in outputs.items() if s != "numpyllm"
                },
            }
        )
    return rows
