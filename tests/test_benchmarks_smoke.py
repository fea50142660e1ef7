"""Smoke test of the benchmark command: ``python -m benchmarks --quick`` runs end to end and
writes a table and JSON of the documented shape. No timing is asserted (CI machines vary)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
SECTIONS = {"ops", "train", "demo", "forward", "generate", "memory", "load", "load memory"}
OPS = {
    "linear",
    "softmax",
    "layernorm",
    "gelu_tanh",
    "attention",
    "multi_head_attention",
    "cross_entropy",
}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_benchmark_writes_table_and_json(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--rounds", "1", "--threads", "1"]
    done = subprocess.run(
        [*cmd, "--json", str(out_json)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The printed table: one Markdown table per section, numpyllm's column filled.
    table_lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    headers = [line for line in table_lines if "| numpyllm |" in line]
    assert {h.split("(")[0].strip("| ").strip() for h in headers} == SECTIONS
    assert any(line.startswith("| train quick |") for line in table_lines)
    assert any(line.startswith("| train quick, one thread |") for line in table_lines)
    assert any(line.startswith("| multi_head_attention |") for line in table_lines)

    result = json.loads(out_json.read_text())
    assert result["meta"]["threads"] == 1
    # The machine is named in the header and the JSON: results differ by CPU kind.
    cpu = result["meta"]["cpu"]
    assert cpu["model_name"] and cpu["cpu_count"] >= 1
    assert cpu["model_name"] in done.stdout.splitlines()[0]
    assert isinstance(result["meta"]["blas_kernel"], list)
    assert _positive(result["meta"]["sgemm_peak_gflops_one_thread"])
    assert _positive(result["meta"]["sgemm_peak_gflops"])
    rows = result["rows"]
    assert {r["section"] for r in rows} == SECTIONS
    assert {r["name"] for r in rows if r["section"] == "ops"} == OPS
    for row in rows:
        if row["name"].startswith("RSS added"):  # may round to nothing for a tiny model
            assert row["values"]["numpyllm"]["median"] >= 0.0
        else:
            assert _positive(row["values"]["numpyllm"]["median"]), row["name"]
        assert row["values"]["numpyllm"]["spread"] >= 0.0
        # loading and the demo: numpyllm alone
        if HAS_TORCH and not row["section"].startswith("load") and row["section"] != "demo":
            assert row["best_torch"] in row["values"], row["name"]
            assert _positive(row["ratio_vs_best_torch"]), row["name"]
    train = next(r for r in rows if r["section"] == "train")
    assert _positive(train["gflops"]["numpyllm"])
    assert train["fraction_of_peak"]["numpyllm"] > 0.0
    if HAS_TORCH:
        assert set(train["values"]) == {"numpyllm", "torch_explicit", "torch_sdpa"}
        # both sides computed one model: same initial loss on the same weights
        assert train["loss_gap_sdpa"] < 1e-4 and train["loss_gap_explicit"] < 1e-4
    demo = next(r for r in rows if r["section"] == "demo")
    assert set(demo["values"]) == {"numpyllm", "bare step", "bench small"}
    pieces = demo["pieces"]  # the projected run is made of its measured pieces
    assert all(_positive(pieces[k]) for k in ("trainer_step_s", "bare_step_s", "evaluation_s"))
    projected = (
        pieces["steps"] * pieces["trainer_step_s"]
        + pieces["evaluations"] * pieces["evaluation_s"]
        + pieces["checkpoints"] * pieces["checkpoint_s"]
    )
    assert math.isclose(pieces["projected_training_s"], projected, rel_tol=1e-9)
    load = next(r for r in rows if r["name"].startswith("peak RSS"))
    assert 0.0 < load["peak_over_checkpoint"]["numpyllm"]  # the interpreter, then the model
    if HAS_TORCH:
        generate = next(r for r in rows if r["section"] == "generate")
        assert {"torch_cache", "transformers"} <= set(generate["values"])


def test_results_keep_a_section_for_every_cpu_kind_measured():
    """RESULTS.md holds one section per CPU kind, each with its machine line and at least one
    table; rewriting one kind's section must not drop another's."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    sections = text.split("\n## ")[1:]
    kinds = [section.splitlines()[0] for section in sections]
    assert any(kind.startswith("AMD EPYC") for kind in kinds), kinds
    assert any(kind.startswith("Intel Xeon") for kind in kinds), kinds
    for section in sections:
        assert "Machine:" in section, section.splitlines()[0]
        assert "\n|---|" in section, section.splitlines()[0]


def test_torch_gpt_recomputing_its_blocks_gives_the_same_loss_and_gradients():
    """The torch side of the recompute row (``torch.utils.checkpoint`` per block) computes the
    same step as the plain torch side, so the row compares like with like."""
    if not HAS_TORCH:  # the library's own suite runs without torch; this checks the benchmark
        return
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    import numpyllm as nl
    from benchmarks.torch_gpt import TorchGPT

    config = nl.GPTConfig(vocab_size=30, n_layer=2, n_head=2, d_model=16, max_seq_len=12,
                          dropout=0.0)  # fmt: skip
    model = nl.GPT(config, rng=np.random.default_rng(0))
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 30, size=(3, 12)))
    grads = []
    for recompute in (False, True):
        tmodel = TorchGPT(config, attention="sdpa", recompute=recompute).double()
        tmodel.load_numpyllm(model)  # copied into the float64 parameters
        _, loss, _ = tmodel(ids, labels=ids)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in tmodel.parameters()]))
    (plain_loss, plain), (loss, recomputed) = grads
    assert loss == plain_loss
    for a, b in zip(plain, recomputed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
