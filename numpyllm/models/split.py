"""A batch split over the cores, for models whose passes come in two layers:

    model._forward(**part_inputs) -> ModelOutput   one part's forward, on checked inputs
    model._backward(dlogits, dloss)                 its backward, from dlogits (that part's
                                                    rows) or from dloss times its loss

The batch's rows are cut in parts, and part i runs on the model itself (i = 0) or on a
replica (``numpyllm.nn.parallel``), each on its own thread with one BLAS thread. The loss is
a mean over the batch's n scored items (tokens, or rows), so with n_i of them in part i,

    L = sum_i (n_i / n) L_i,   and part i's backward starts from dL/dL_i = n_i / n;

the gradients are the sum of the parts' (a replica's are added into the model's at the
end). BERT and T5 use this. GPT has its own version, which also hands a replica's
gradients over block by block so that it never holds a whole model's worth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np

from numpyllm.models.output import ModelOutput
from numpyllm.nn.blas import blas_threads
from numpyllm.nn.module import Module, forward_cache
from numpyllm.nn.parallel import (
    add_replica_gradients,
    batch_slices,
    part_count,
    run_parts,
    synced_replicas,
    zero_replica_gradients,
)

FAILED = "failed"  # model._parts after a split forward that raised


class _Config(Protocol):
    d_model: int


class SplitModel(Module):
    """A model whose passes come in the two layers above (BERT, T5): what the split reads and
    writes on it, declared. The model sets each of these."""

    config: _Config
    num_threads: int | Literal["auto"]
    # (models, row slices, loss weights, logits shape) of a split forward, FAILED, or None
    _parts: tuple[list[SplitModel], list[slice], list[float] | None, tuple] | str | None
    _replicas: list[SplitModel]  # one per extra thread, made on first use

    def _forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        raise NotImplementedError

    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        raise NotImplementedError


def split_parts(model: SplitModel, batch: int, tokens: int) -> list[slice]:
    """The rows of each part, following ``model.num_threads`` for a pass of ``tokens`` tokens
    (see ``numpyllm.nn.parallel.part_count``); one part when the batch has a single row."""
    return batch_slices(batch, part_count(model.num_threads, tokens, model.config.d_model))


def forward_in_parts(
    model: SplitModel,
    parts: list[slice],
    inputs: dict[str, np.ndarray | None],
    counts: list[int] | None,
    **settings: Any,
) -> ModelOutput:
    """``model._forward(**inputs[rows], **settings)`` for each part at once; the parts'
    outputs joined along the batch axis, and the loss weighted by ``counts`` (each part's
    number of scored items). ``inputs`` are arrays with the batch first (or None)."""
    models = [model, *synced_replicas(model, model._replicas, len(parts) - 1)]

    def part(m: SplitModel, rows: slice) -> Callable[[], ModelOutput]:
        forward: Callable[..., ModelOutput] = m._forward  # inputs and settings by name
        sliced = {name: None if a is None else a[rows] for name, a in inputs.items()}
        return lambda: forward(**sliced, **settings)

    try:
        with blas_threads(1):  # the parts fill the cores
            outs = run_parts([part(m, rows) for m, rows in zip(models, parts)])
    except BaseException:
        model._parts = FAILED  # the parts that succeeded must not be taken for a forward
        raise
    weights = loss = None
    if outs[0].loss is not None:
        if counts is None:
            raise ValueError("forward_in_parts: a forward with a loss needs the parts' counts")
        total = max(sum(counts), 1)  # nothing scored: every part's loss is 0, and so is L
        weights = [c / total for c in counts]
        loss = float(sum(w * out.loss for w, out in zip(weights, outs)))
    joined = {
        name: np.concatenate([getattr(out, name) for out in outs])
        for name, value in vars(outs[0]).items()
        if isinstance(value, np.ndarray)
    }
    model._parts = (models, parts, weights, joined["logits"].shape)
    return ModelOutput(**joined, loss=loss)


def backward_in_parts(model: SplitModel, dlogits: np.ndarray | None) -> None:
    """Each part's backward on its own thread, then the replicas' gradients added into the
    model's."""
    if isinstance(model._parts, str):  # FAILED, and it stays so until the next forward
        raise RuntimeError(
            f"{type(model).__name__}.backward: the last forward failed, so there is nothing "
            "to go back through; run a forward again"
        )
    models, parts, weights, logits_shape = forward_cache(model._parts, model)
    if dlogits is not None:
        dlogits = np.asarray(dlogits)
        if dlogits.shape != logits_shape:
            raise ValueError(f"dlogits must have shape {logits_shape}, got {dlogits.shape}")
    elif weights is None:
        raise RuntimeError(
            f"{type(model).__name__}.backward needs a loss, and the last forward had no labels: "
            "call the model with labels=..., or pass dlogits=..."
        )
    model._parts = None
    for replica in models[1:]:
        zero_replica_gradients(replica)

    def part(i: int):
        m, rows = models[i], parts[i]
        if dlogits is not None:
            return lambda: m._backward(dlogits[rows], 1.0)
        return lambda: m._backward(None, weights[i] if weights else 1.0)

    with blas_threads(1):
        run_parts([part(i) for i in range(len(models))])
    for replica in models[1:]:
        add_replica_gradients(model, replica)
