"""Shared helpers for the transformers parity tests (GPT-2, BERT, T5, round trips).

torch and transformers are imported only inside the helpers, so the other parity files in
this folder (and a run without torch) are not affected; each parity test module skips itself
with ``pytest.importorskip(..., reason=SKIP_TORCH)``.

Every test builds tiny random models, then moves every parameter away from its initial value
(``perturb_torch`` / ``perturb_numpy``): a fresh bias is zero and a fresh norm weight is one,
and a loader that swapped two biases or dropped a norm weight would go unnoticed on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

SKIP_TORCH = "the parity suite compares numpyllm with PyTorch; install torch (CPU build)"
SKIP_TRANSFORMERS = "the parity suite compares numpyllm with transformers; pip install transformers"
PERTURB_STD = 0.1


@dataclass(frozen=True)
class Precision:
    """One floating-point setting and the agreement required in it."""

    name: str
    np_dtype: type
    logits_atol: float  # max |ours - transformers| over logits / hidden states
    grad_rtol: float  # ||g_ours - g_torch|| / ||g_torch|| per parameter tensor

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "float64": torch.float64}[self.name]


FLOAT32 = Precision("float32", np.float32, 1e-4, 1e-4)
FLOAT64 = Precision("float64", np.float64, 1e-9, 1e-8)
PRECISIONS = [pytest.param(FLOAT32, id="float32"), pytest.param(FLOAT64, id="float64")]


def perturb_torch(model, seed: int, std: float = PERTURB_STD) -> None:
    """Add N(0, std^2) noise to every parameter of a torch model, in place, reproducibly."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.add_(std * noise.to(p.dtype))


def perturb_numpy(model, rng: np.random.Generator, std: float = PERTURB_STD) -> None:
    """Add N(0, std^2) noise to every parameter of a numpyllm model, in place."""
    for _, p in model.named_parameters():
        p.data += rng.normal(0.0, std, p.shape).astype(p.dtype)


def torch_state(model) -> dict[str, np.ndarray]:
    """A torch model's state_dict as NumPy arrays (tied weights appear under both names, as
    in a real state_dict: the loaders must accept the duplicate)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def max_abs_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"shapes differ: {ours.shape} vs {theirs.shape}"
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)), initial=0.0))


def assert_close(ours, theirs, atol: float, what: str) -> None:
    diff = max_abs_diff(ours, theirs)
    assert diff <= atol, f"{what}: max |numpyllm - transformers| = {diff:.3e} > {atol:.0e}"


def relative_error(ours: np.ndarray, theirs: np.ndarray, floor: float = 0.0) -> float:
    """||ours - theirs|| / max(||theirs||, ||ours||, floor); 0 when all three are zero."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    num = np.linalg.norm(ours - theirs)
    den = max(np.linalg.norm(theirs), np.linalg.norm(ours), floor)
    return 0.0 if den == 0.0 else float(num / den)


def assert_mapping_exact(entries, ours_model, torch_model, tied: dict[str, str]) -> None:
    """The name mapping covers every parameter on both sides exactly once.

    ``entries`` is the full numpyllm mapping; the transformers side is every entry whose name
    the torch model has (a class holds only its own heads), and must be all of the torch
    model's parameters apart from its tied aliases, which are not parameters of their own.
    """
    ours_names = [e.ours for e in entries]
    hf_names = [e.hf for e in entries]
    assert len(set(ours_names)) == len(ours_names), "a numpyllm name is mapped twice"
    assert len(set(hf_names)) == len(hf_names), "a transformers name is mapped twice"
    assert set(ours_names) == {n for n, _ in ours_model.named_parameters()}
    torch_names = {n for n, _ in torch_model.named_parameters()} - set(tied)
    unmapped = torch_names - set(hf_names)
    assert not unmapped, f"transformers parameters with no numpyllm counterpart: {unmapped}"


def assert_causal_loss_and_grads(out, ref_logits, labels, ours, theirs, entries, precision):
    """A causal LM's loss and gradients against torch: the shifted cross-entropy (position t
    predicts labels[:, t + 1]) computed by torch in the logits' own dtype equals numpyllm's
    loss, and every parameter's gradient from it equals torch autograd's. Returns torch's
    loss (transformers' own loss casts the logits to float32 first, so it is not the float64
    reference)."""
    import torch

    vocab = ref_logits.shape[-1]
    ref_loss = torch.nn.functional.cross_entropy(
        ref_logits[:, :-1].reshape(-1, vocab), torch.from_numpy(labels[:, 1:]).reshape(-1)
    )
    assert abs(out.loss - ref_loss.item()) <= precision.logits_atol
    ours.zero_grad()
    ours.backward()
    ref_loss.backward()
    assert_grads_match(entries, ours, theirs, precision.grad_rtol)
    return ref_loss


def assert_grads_match(entries, ours_model, torch_model, rtol: float) -> None:
    """Every numpyllm parameter's .grad equals torch autograd's for the mapped tensor.

    Some gradients are exactly zero in exact arithmetic, e.g. an attention key bias (softmax
    ignores a constant added to all of a query's scores), so both libraries hold only rounding
    noise there; relative errors are therefore measured against at least 1% of the largest
    gradient norm of the model (``floor``), which leaves every real gradient judged relatively.
    """
    ours = dict(ours_model.named_parameters())
    theirs = dict(torch_model.named_parameters())
    pairs = []
    for e in entries:
        if e.hf not in theirs:
            continue
        g_torch = theirs[e.hf].grad
        g_torch = np.zeros(theirs[e.hf].shape) if g_torch is None else to_numpy(g_torch)
        g_ours = ours[e.ours].grad
        assert g_ours.dtype == ours[e.ours].data.dtype, f"{e.ours}: grad dtype {g_ours.dtype}"
        pairs.append((e, g_ours, g_torch.T if e.transpose else g_torch))
    floor = 0.01 * max(float(np.linalg.norm(g.astype(np.float64))) for _, _, g in pairs)
    failures = []
    for e, g_ours, g_torch in pairs:
        err = relative_error(g_ours, g_torch, floor)
        if not err <= rtol:
            failures.append(f"{e.ours} <-> {e.hf}: relative error {err:.2e}")
    assert not failures, "gradients differ:\n" + "\n".join(failures)


def decided_steps(step_logits: list[np.ndarray], tie: float = 1e-4) -> int:
    """How many greedy steps are decided beyond rounding: generation stops being comparable
    at the first step whose two best logits are closer than the allowed logits error (there
    either library may rightly pick either token). With random weights this almost never
    happens; the step logits are compared in full regardless."""
    for step, logits in enumerate(step_logits):
        top2 = np.sort(logits, axis=-1)[:, -2:]
        if np.any(top2[:, 1] - top2[:, 0] < tie):
            return step  # this step's token may differ, and every later one depends on it
    return len(step_logits)


def padding_masks(draw, st, batch: int, seq_len: int) -> np.ndarray:
    """Draw a (batch, seq_len) 0/1 mask: each row keeps >= 1 real token and is padded on the
    left or on the right (or not at all)."""
    rows = []
    for _ in range(batch):
        real = draw(st.integers(1, seq_len))
        left = draw(st.booleans())
        row = np.zeros(seq_len, dtype=np.int64)
        if left:
            row[seq_len - real :] = 1
        else:
            row[:real] = 1
        rows.append(row)
    return np.stack(rows)
