"""The execution layer on a toy model with repeated blocks: a split batch computes what one
thread computes, recomputed activations give what stored ones give, and a replica hands its
gradients over block by block, never holding more than one block's worth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.functional.activations import tanh_backward, tanh_forward
from numpyllm.functional.losses import cross_entropy_backward, cross_entropy_forward
from numpyllm.models.output import ModelOutput
from numpyllm.nn import execution
from numpyllm.nn.execution import BLOCKS, BLOCKS_RECOMPUTE, BlockSizes, Model, run_forward
from numpyllm.nn.init import child_rng
from numpyllm.nn.linear import Embedding, Linear
from numpyllm.nn.module import Module, ModuleList
from numpyllm.nn.norms import Dropout
from numpyllm.nn.parallel import batch_slices

VOCAB, D, N_BLOCKS = 13, 6, 4
RTOL, ATOL = 1e-10, 1e-12


class ToyBlock(Module):
    """y = x + drop(tanh(x W + b)); backward dx = dy + W-branch'(drop'(dy))."""

    blocks: BlockSizes = BLOCKS  # a memory-block setting, as GPT's attention and MLP have

    def __init__(self, rng: np.random.Generator, dropout: float) -> None:
        super().__init__()
        self.fc = Linear(D, D, rng=rng, std=0.5)
        self.drop = Dropout(dropout, rng=child_rng(rng))
        self._cache: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        h, self._cache = tanh_forward(self.fc(x))  # (B, T, d)
        return x + self.drop(h)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("ToyBlock.backward without its forward's cache")
        dh = tanh_backward(self.drop.backward(dout), self._cache)
        self._cache = None
        return dout + self.fc.backward(dh)


class ToyConfig:
    d_model = D


class Toy(Model):
    """ids (B, T) -> embedding -> N_BLOCKS ToyBlocks -> linear head -> logits (B, T, V);
    loss: mean cross-entropy over labels != -100."""

    def __init__(self, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.config = ToyConfig()
        self.embed = Embedding(VOCAB, D, rng=rng, std=1.0)
        self.blocks = ModuleList([ToyBlock(rng, dropout) for _ in range(N_BLOCKS)])
        self.head = Linear(D, VOCAB, rng=rng, std=0.5)
        self._cache: Any = None

    def repeated_blocks(self) -> list[Module]:
        return list(self.blocks)

    def forward(self, ids: np.ndarray, labels: np.ndarray | None = None) -> ModelOutput:
        B, T = ids.shape
        self._cache = None
        logits = np.empty((B, T, VOCAB), dtype=self.dtype)
        scored = None if labels is None else labels != -100
        inputs = {"ids": ids, "labels": labels, "logits_out": logits}
        return run_forward(self, inputs, batch=B, tokens=B * T, scored=scored)

    def _forward(self, ids, labels, logits_out) -> ModelOutput:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits_out[...] = self.head(x)
        loss = loss_cache = None
        if labels is not None:
            value, loss_cache = cross_entropy_forward(logits_out, labels, -100)
            loss = float(value)
        self._cache = loss_cache
        return ModelOutput(logits=logits_out, loss=loss, hidden_states=x)

    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        if dlogits is None:
            dlogits = cross_entropy_backward(dloss, self._cache)
        dx = self.head.backward(dlogits)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        self.embed.backward(dx)


def toy(seed: int = 0, dropout: float = 0.0) -> Toy:
    return Toy(seed, dropout).astype(np.float64)  # type: ignore[return-value]


def run(model: Toy, threads: int, ids, labels=None, dlogits=None, recompute: bool = False):
    model.num_threads, model.recompute_activations = threads, recompute
    model.zero_grad()
    out = model(ids, labels)
    model.backward(dlogits)
    return out, {name: p.grad.copy() for name, p in model.named_parameters()}


def assert_same(result, reference, exact: bool = False) -> None:
    (out, grads), (ref, ref_grads) = result, reference
    close = np.testing.assert_array_equal if exact else (
        lambda a, b, err_msg: np.testing.assert_allclose(a, b, RTOL, ATOL, err_msg=err_msg)
    )
    close(out.logits, ref.logits, err_msg="logits")
    close(out.hidden_states, ref.hidden_states, err_msg="hidden_states")
    assert (out.loss is None) == (ref.loss is None)
    if ref.loss is not None:
        assert out.loss == (ref.loss if exact else pytest.approx(ref.loss, rel=RTOL, abs=ATOL))
    assert list(grads) == list(ref_grads)
    for name, grad in grads.items():
        close(grad, ref_grads[name], err_msg=name)


@st.composite
def batches(draw):
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(0, VOCAB, size=(B, T))
    labels = rng.integers(0, VOCAB, size=(B, T))
    labels[rng.random((B, T)) >= draw(st.sampled_from([1.0, 0.5, 0.0]))] = -100
    return ids, labels


# ---- split == one thread ---------------------------------------------------------------
@given(batch=batches(), threads=st.integers(2, 4), recompute=st.booleans())
def test_split_matches_one_thread(batch, threads, recompute):
    ids, labels = batch
    model = toy(1)
    reference = run(model, 1, ids, labels)
    assert_same(run(model, threads, ids, labels, recompute=recompute), reference)
    assert len(model._replicas) == len(batch_slices(len(ids), threads)) - 1
    for replica in model._replicas:  # every replica gradient was handed over and freed
        assert all(p.grad is None for p in replica.parameters())


def test_split_from_dlogits_matches_one_thread_and_writes_into_the_given_buffer():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, VOCAB, size=(5, 4))
    dlogits = rng.standard_normal((5, 4, VOCAB))
    model = toy(2)
    reference = run(model, 1, ids, dlogits=dlogits)
    assert_same(run(model, 3, ids, dlogits=dlogits), reference)
    buffer = np.empty((5, 4, VOCAB))
    inputs = {"ids": ids, "labels": None, "logits_out": buffer}
    out = run_forward(model, inputs, batch=5, tokens=20)
    assert out.logits is buffer  # each part wrote its rows: no concatenation
    np.testing.assert_allclose(buffer, reference[0].logits, RTOL, ATOL)


def test_loss_weighs_each_part_by_its_scored_items():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, VOCAB, size=(4, 5))
    labels = ids.copy()
    labels[:2, 1:] = -100  # part 0 scores 2 tokens, part 1 scores 10
    model = toy(3)
    split = run(model, 2, ids, labels)[0].loss
    halves = [run(model, 1, ids[r], labels[r])[0].loss for r in (slice(0, 2), slice(2, 4))]
    assert split == pytest.approx((2 * halves[0] + 10 * halves[1]) / 12, rel=RTOL)
    assert abs(split - np.mean(halves)) > 1e-6


# ---- recompute == store ------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 3])
def test_recompute_gives_exactly_what_stored_activations_give(threads):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, VOCAB, size=(6, 5))
    runs = []
    for recompute in (False, True):
        model = toy(4, dropout=0.4)  # same seed: the same dropout masks, if replayed
        runs.append([run(model, threads, ids, ids, recompute=recompute) for _ in range(2)])
    for stored, recomputed in zip(*runs):
        assert_same(recomputed, stored, exact=True)
    assert runs[0][0][0].loss != runs[0][1][0].loss  # dropout is on, fresh masks each step


def test_recompute_keeps_only_each_blocks_inputs_and_uses_the_recompute_block_sizes():
    ids = np.random.default_rng(5).integers(0, VOCAB, size=(3, 4))
    model = toy(5, dropout=0.2)
    model.recompute_activations = True
    model(ids, ids)
    for block in model.blocks:
        assert block.blocks is BLOCKS_RECOMPUTE
        assert all(vars(m).get("_cache") is None for m in block.modules())  # nothing kept
        (x,), _, _ = vars(block)["_recompute"]  # but its input
        assert x.shape == (3, 4, D)
        assert "forward" not in vars(block)  # the layer's wrapper is gone after the pass
    model.backward()
    assert all(vars(block)["_recompute"] is None for block in model.blocks)
    model.recompute_activations = False
    model(ids, ids)
    assert all(block.blocks is BLOCKS for block in model.blocks)
    assert all(block._cache is not None for block in model.blocks)


# ---- gradients handed over block by block ------------------------------------------------
@pytest.mark.parametrize("recompute", [False, True])
def test_a_replica_never_holds_more_than_one_blocks_gradients(recompute, monkeypatch):
    rng = np.random.default_rng(6)
    ids = rng.integers(0, VOCAB, size=(4, 5))
    model = toy(6)
    reference = run(model, 1, ids, ids)
    run(model, 2, ids, ids)  # makes the replica
    replica = model._replicas[0]
    held: list[int] = []
    backward = ToyBlock.backward

    def probing(block: ToyBlock, dout: np.ndarray) -> np.ndarray:
        if any(block is b for b in replica.blocks):  # blocks whose gradients exist now
            held.append(sum(b.fc.weight.grad is not None for b in replica.blocks))
        return backward(block, dout)

    monkeypatch.setattr(ToyBlock, "backward", probing)
    result = run(model, 2, ids, ids, recompute=recompute)
    assert held == [1] * N_BLOCKS  # each block's own, and no other
    assert_same(result, reference)
    assert all(p.grad is None for p in replica.parameters())


def test_a_failed_part_of_the_backward_adds_nothing(monkeypatch):
    ids = np.random.default_rng(7).integers(0, VOCAB, size=(4, 5))
    model = toy(7)
    model.num_threads = 2
    model.zero_grad()
    model(ids, ids)

    def fail(*args: Any) -> None:
        raise ArithmeticError("the model's part failed")

    monkeypatch.setattr(model, "_backward", fail)
    with pytest.raises(ArithmeticError):
        model.backward()
    assert all(not np.any(p.grad) for p in model.parameters())
    assert all(p.grad is None for p in model._replicas[0].parameters())


# ---- BLAS threads ---------------------------------------------------------------------------
def test_each_part_runs_one_blas_thread_and_an_unsplit_pass_follows_blas_threads(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen: list[list[int]] = []
    forward = Toy._forward

    def recording(self, **inputs):
        info = threadpoolctl.threadpool_info()
        seen.append([i["num_threads"] for i in info if i["user_api"] == "blas"])
        return forward(self, **inputs)

    monkeypatch.setattr(Toy, "_forward", recording)
    ids = np.random.default_rng(8).integers(0, VOCAB, size=(4, 3))
    model = toy(8)
    run(model, 2, ids, ids)
    assert len(seen) == 2 and all(n == 1 for counts in seen for n in counts)
    seen.clear()
    model.blas_threads = 1
    run(model, 1, ids, ids)
    assert len(seen) == 1 and all(n == 1 for n in seen[0])


def test_failed_split_forward_leaves_nothing_to_go_back_through(monkeypatch):
    ids = np.random.default_rng(9).integers(0, VOCAB, size=(4, 3))
    model = toy(9)
    run(model, 2, ids, ids)
    monkeypatch.setattr(model._replicas[0], "_forward", lambda **_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        model(ids, ids)
    assert model._parts is execution.FAILED
    with pytest.raises(RuntimeError, match="last forward failed"):
        model.backward()


# ---- where complete gradients can be summed across processes ----------------------------------
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_on_gradients_sees_each_block_once_complete_then_the_rest(threads):
    ids = np.random.default_rng(10).integers(0, VOCAB, size=(5, 4))
    model = toy(10)
    reference = run(model, 1, ids, ids)[1]
    names = {id(p): name for name, p in model.named_parameters()}
    groups: list[list[tuple[str, np.ndarray]]] = []

    def record(params) -> None:
        groups.append([(names[id(p)], p.grad.copy()) for p in params])

    model.on_gradients = record
    run(model, threads, ids, ids)
    seen = [name for group in groups for name, _ in group]
    assert sorted(seen) == sorted(reference)  # every parameter, once
    blocks = [{name for name, _ in group} for group in groups[:N_BLOCKS]]
    assert blocks == [{f"blocks.{i}.fc.weight", f"blocks.{i}.fc.bias"}
                      for i in reversed(range(N_BLOCKS))]  # fmt: skip
    for group in groups:  # complete when reported: the final sums already
        for name, grad in group:
            np.testing.assert_allclose(grad, reference[name], RTOL, ATOL, err_msg=name)
