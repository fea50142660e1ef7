"""How a model's pass runs: one mechanism for every model, so that a model file holds only
its maths.

A model (``Model`` below) writes two passes over one part of a batch, on checked inputs,

    model._forward(**part_inputs, **settings) -> Any
    model._backward(dlogits, dloss)          from dlogits (that part's rows), or from
                                             dloss times the part's loss

and names its repeated blocks (``repeated_blocks()``: the transformer layers). Its public
``forward`` checks the inputs and hands them to ``run_forward``; its ``backward`` calls
``run_backward``. This layer then decides, for the pass:

* **the split over cores.** The batch's rows are cut in parts (``num_threads``; see
  ``numpyllm.nn.parallel``), part 0 runs on the model and part i on a replica (module
  objects of their own, sharing every parameter array), each on its own thread with one
  BLAS thread. The loss is a mean over the n scored items of the batch (tokens, or rows),
  so with n_i of them in part i,

      L = sum_i (n_i / n) L_i,   and part i's backward starts from dL/dL_i = n_i / n.

* **the hand-over of gradients, block by block.** The model accumulates into its own
  gradients. A replica's block gets fresh zero gradients just before its backward goes
  through that block; once the model is done with the same block, the replica's block
  gradients are added into the model's and freed. A replica therefore holds about one
  block's gradients at a time, plus those of what is not in a block (embeddings, final
  norm), which are added at the end. The moment a block's gradient is complete (the
  ``after_block`` point below) is where gradients of several processes can be summed too.

* **recomputation** (``recompute_activations``, activation checkpointing). A block
  keeps only its inputs and the states of its dropout Generators; every cache inside it
  is dropped after its forward. Its backward first runs the forward again from those
  inputs, with the Generators set back, so the caches and dropout masks are the same
  ones, then runs the real backward. A block may define ``rebuild_caches(*inputs)``, the
  part of its forward its backward reads, to skip the rest (default: its forward). A block
  holding a module with ``draws_in_forward`` true (a LoRA layer with dropout, whose
  backward needs the mask of every projection, even of one ``rebuild_caches`` skips) runs
  its whole forward again instead, draw for draw.

* **memory blocks.** Modules holding a ``blocks: BlockSizes`` attribute (attention over
  blocks of batch rows, an MLP over blocks of token rows) get ``BLOCKS`` for a pass, or
  the smaller ``BLOCKS_RECOMPUTE`` when it recomputes.

* **BLAS threads.** A split pass runs one BLAS thread per part; an unsplit pass follows
  ``blas_threads`` (see ``numpyllm.nn.blas``: "auto" is one thread for a small pass).

Why the hooks are method wrappers: the model's ``_backward`` walks its blocks as the maths
says (``dx = block.backward(dx)``); for the length of a pass the layer wraps each block's
``forward`` / ``backward`` on the instance, and removes the wrappers afterwards, so the
model file never mentions threads, replicas or recomputation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast

import numpy as np

from numpyllm.nn import parallel
from numpyllm.nn.blas import blas_threads, threads_for_pass
from numpyllm.nn.module import Module
from numpyllm.nn.parallel import (
    add_replica_gradients,
    batch_slices,
    free_gradient,
    run_parts,
    synced_replicas,
    zero_replica_gradients,
)
from numpyllm.nn.parameter import Parameter


# ---- memory blocks -------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSizes:
    """How much of a batch attention and the MLP take at a time, so that their largest
    temporaries cost one block's worth: attention's score-sized arrays hold
    rows * H * T * (P + T) elements, the MLP's (rows, d_ff)."""

    attention_elements: int
    mlp_rows: int


# Measured on the benchmark configs (tiny / small / medium): the default blocks cost under
# 1% of training speed against whole passes. With recomputation, the setting for memory,
# the smaller blocks cost 12% / 7% / 2% of its speed for 36% / 22% / 5% less peak memory.
BLOCKS = BlockSizes(attention_elements=1 << 19, mlp_rows=1024)
BLOCKS_RECOMPUTE = BlockSizes(attention_elements=1 << 17, mlp_rows=256)


def row_blocks(n: int, rows: int) -> list[slice]:
    """0 .. n in slices of ``rows``."""
    return [slice(start, start + rows) for start in range(0, n, rows)]


def attention_row_blocks(batch: int, elements: int, per_row: int) -> list[slice]:
    """Blocks of batch rows whose score arrays (per_row = H * T * (P + T) elements a row) hold
    at most about ``elements``: attention runs block by block, so its score-sized temporaries
    (the scores, and the probabilities and their gradient in the backward: the largest arrays
    of a block's step) cost one block's worth, not the batch's."""
    return row_blocks(batch, max(1, elements // per_row))


def _use_block_sizes(model: Module, sizes: BlockSizes) -> None:
    for module in model.modules():
        if isinstance(getattr(module, "blocks", None), BlockSizes):
            object.__setattr__(module, "blocks", sizes)


# ---- the model's side of the contract -------------------------------------------------------
class Model(Module):
    """A model whose passes this layer runs (see the module docstring for the contract).

    ``num_threads``: a batch of B >= 2 rows is split in min(num_threads, B) parts computed
    at once on as many threads; "auto" (the default) is the number of cores this process
    may use, for passes of at least ``numpyllm.nn.parallel.MIN_SPLIT_WORK`` tokens *
    d_model; 1 turns it off. A forward with a key-value cache (generation) is never split.

    ``recompute_activations``: each repeated block keeps only its inputs and recomputes its
    forward in the backward: activation memory falls from about ten (B, T, d) arrays per
    block to one, for about a third more arithmetic per step.

    ``blas_threads``: BLAS threads inside an unsplit pass: an int, None (BLAS's own
    setting) or "auto" (the default): one thread when B * T * d_model is below
    ``numpyllm.nn.blas.SMALL_PASS``, BLAS's own setting otherwise.

    ``on_gradients``: None, or a function called during ``backward`` with each group of
    parameters whose gradients are complete for this backward: every repeated block as
    soon as all parts are done with it (in the order the backward reaches them; from a
    worker thread when the batch is split), then the parameters outside the blocks. Where
    gradients of several processes can be summed while the backward goes on.
    """

    num_threads: int | Literal["auto"] = "auto"
    recompute_activations: bool = False
    blas_threads: int | Literal["auto"] | None = "auto"
    on_gradients: Callable[[list[Parameter]], None] | None = None
    config: Any

    def __init__(self) -> None:
        super().__init__()
        self._parts: _Split | str | None = None  # the split forward a backward will follow
        self._replicas: list[Model] = []  # one per extra thread, made on first use
        self._pass_tokens: int | None = None  # the last pass's size, for the BLAS policy

    def repeated_blocks(self) -> list[Module]:
        """The model's repeated blocks (transformer layers): what is recomputed, and the
        unit in which gradients are handed over."""
        raise NotImplementedError(f"{type(self).__name__} names no repeated blocks")

    def backward(self, dlogits: np.ndarray | None = None) -> None:
        """Accumulate dL/dtheta into every parameter's ``.grad`` for the last forward, from
        dL/dloss = 1 on its loss, or from ``dlogits`` (the logits' shape) if given. The
        maths is the model's ``_backward``; ``run_backward`` runs it, split or not."""
        run_backward(self, dlogits)

    # one part's forward on checked inputs, as the model writes it: _forward(**inputs,
    # **settings) -> ModelOutput (see run_forward)
    _forward: Callable[..., Any]

    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        raise NotImplementedError


FAILED = "failed"  # model._parts after a split forward that raised


@dataclass
class _Split:
    """A split forward, as its backward needs it."""

    models: list[Model]
    parts: list[slice]
    weights: list[float] | None  # dL/dL_i of each part, when there is a loss
    logits_shape: tuple[int, ...]


def split_parts(model: Model, batch: int, tokens: int) -> list[slice]:
    """The rows of each part, following ``model.num_threads`` for a pass of ``tokens`` tokens
    (see ``numpyllm.nn.parallel.part_count``); one part when the batch has a single row."""
    count = parallel.part_count(model.num_threads, tokens, model.config.d_model)
    return batch_slices(batch, count)


@contextmanager
def blas_for(model: Model, tokens: int | None) -> Iterator[None]:
    """BLAS threads for an unsplit pass of ``tokens`` tokens, following ``model.blas_threads``."""
    with blas_threads(threads_for_pass(model.blas_threads, tokens, model.config.d_model)):
        yield


# ---- forward -----------------------------------------------------------------------------
def run_forward(
    model: Model,
    inputs: dict[str, np.ndarray | None],
    *,
    batch: int,
    tokens: int,
    scored: np.ndarray | None = None,
    cached: bool = False,
    **settings: Any,
) -> Any:
    """``model._forward(**inputs, **settings)`` for a batch of ``batch`` rows and ``tokens``
    tokens (the size of the pass), split over the cores or not.

    ``inputs`` are arrays with the batch first (or None), cut into the parts' rows; an
    input named ``<field>_out`` is a buffer the parts write that output field into, row by
    row (so the batch's output is not a concatenation). ``scored`` (batch first) marks the
    items the loss is a mean over: each part's loss weighs by its count of them.
    ``settings`` go to every part unchanged. A ``cached`` pass (generation with a
    key-value cache) is neither split nor recomputed.
    """
    model._parts = None
    model._pass_tokens = tokens
    parts = [slice(0, batch)] if cached else split_parts(model, batch, tokens)
    recompute = model.recompute_activations and not cached
    if len(parts) == 1:
        with blas_for(model, tokens):
            return _run_part(model, recompute, inputs, settings)

    models = [model, *cast(list[Model], synced_replicas(model, model._replicas, len(parts) - 1))]

    def part(m: Model, rows: slice) -> Callable[[], Any]:
        sliced = {name: None if a is None else a[rows] for name, a in inputs.items()}
        return lambda: _run_part(m, recompute, sliced, settings)

    try:
        with blas_threads(1):  # the parts fill the cores
            outs = run_parts([part(m, rows) for m, rows in zip(models, parts)])
    except BaseException:
        model._parts = FAILED  # the parts that succeeded must not be taken for a forward
        raise
    weights = loss = None
    if outs[0].loss is not None:
        counts = [int(np.count_nonzero(scored[rows])) for rows in parts] if scored is not None \
            else [rows.stop - rows.start for rows in parts]  # fmt: skip
        total = max(sum(counts), 1)  # nothing scored: every part's loss is 0, and so is L
        weights = [c / total for c in counts]
        loss = float(sum(w * out.loss for w, out in zip(weights, outs)))
    joined = {}
    for name, value in vars(outs[0]).items():
        if isinstance(value, np.ndarray):
            buffer = inputs.get(f"{name}_out")
            joined[name] = buffer if buffer is not None else np.concatenate(
                [getattr(out, name) for out in outs]
            )
    model._parts = _Split(models, parts, weights, joined["logits"].shape)
    return type(outs[0])(**joined, loss=loss)


def _run_part(
    model: Model, recompute: bool, inputs: dict[str, Any], settings: dict[str, Any]
) -> Any:
    """One part's forward on ``model``, with the memory blocks of the pass and, when
    recomputing, each block saving only its inputs."""
    sizes = BLOCKS_RECOMPUTE if recompute else BLOCKS
    if vars(model).get("_block_sizes") is not sizes:  # a replica copies the model's mark
        _use_block_sizes(model, sizes)
        object.__setattr__(model, "_block_sizes", sizes)
    blocks = model.repeated_blocks()
    for block in blocks:
        object.__setattr__(block, "_recompute", None)
    if not recompute:
        return model._forward(**inputs, **settings)
    for block in blocks:
        object.__setattr__(block, "forward", _saving_forward(block))
    try:
        return model._forward(**inputs, **settings)
    finally:
        for block in blocks:
            object.__delattr__(block, "forward")


def _generators(block: Module) -> list[np.random.Generator]:
    """The dropout Generators inside ``block``, each once."""
    found: dict[int, np.random.Generator] = {}
    for module in block.modules():
        rng = vars(module).get("rng")
        if isinstance(rng, np.random.Generator):
            found.setdefault(id(rng), rng)
    return list(found.values())


def _saving_forward(block: Module) -> Callable[..., Any]:
    """``block.forward`` that keeps only its inputs and its Generators' states, and drops
    every cache of the block's modules (what recomputation saves)."""
    forward = block.forward

    def run(*args: Any, **kwargs: Any) -> Any:
        states = [g.bit_generator.state for g in _generators(block)]
        out = forward(*args, **kwargs)
        for module in block.modules():
            if "_cache" in vars(module):
                object.__setattr__(module, "_cache", None)
        object.__setattr__(block, "_recompute", (args, kwargs, states))
        return out

    return run


def _rebuild(block: Module) -> None:
    """The block's forward again from its saved inputs, with its Generators set back to
    their states at the forward (so the same dropout masks), then left where they were."""
    saved = vars(block).get("_recompute")
    if saved is None:
        return
    args, kwargs, states = saved
    object.__setattr__(block, "_recompute", None)
    generators = _generators(block)
    now = [g.bit_generator.state for g in generators]
    for g, state in zip(generators, states):
        g.bit_generator.state = state
    whole = any(getattr(module, "draws_in_forward", False) for module in block.modules())
    (block.forward if whole else getattr(block, "rebuild_caches", block.forward))(*args, **kwargs)
    for g, state in zip(generators, now):
        g.bit_generator.state = state


# ---- backward ----------------------------------------------------------------------------
def run_backward(model: Model, dlogits: np.ndarray | None) -> None:
    """Accumulate the last forward's gradients into every parameter's ``.grad``: the model's
    own ``_backward`` for an unsplit forward, or each part's on its own thread, with the
    replicas' gradients handed over block by block (see the module docstring)."""
    if model._parts is FAILED:  # and it stays so until the next forward
        raise RuntimeError(
            f"{type(model).__name__}.backward called without a preceding forward: the last "
            "forward failed, so there is nothing to go back through; run a forward again"
        )
    if model._parts is None:
        blocks = model.repeated_blocks()
        reported = _Reporter(model)
        after = [partial(reported.block, i) for i in range(len(blocks))]
        with blas_for(model, model._pass_tokens), _block_hooks(blocks, after=after):
            model._backward(dlogits, 1.0)
        reported.rest(blocks)
        return
    split = model._parts
    assert isinstance(split, _Split)
    if dlogits is not None:
        dlogits = np.asarray(dlogits)
        if dlogits.shape != split.logits_shape:
            raise ValueError(f"dlogits must have shape {split.logits_shape}, got {dlogits.shape}")
    elif split.weights is None:
        raise RuntimeError(
            f"{type(model).__name__}.backward needs a loss, and the last forward had no labels: "
            "call the model with labels=..., or pass dlogits=..."
        )
    model._parts = None
    with blas_threads(1):
        _backward_in_parts(model, split, dlogits)


def _backward_in_parts(model: Model, split: _Split, dlogits: np.ndarray | None) -> None:
    """Each part's backward on its own thread. Block i's gradient is handed over in the
    parts' order: the model finishes block i, then replica 1 adds its share, then replica 2,
    ... (a fixed order of additions, so the sum is the same, bit for bit, on every run)."""
    models, parts, weights = split.models, split.parts, split.weights
    blocks = [m.repeated_blocks() for m in models]
    # handed[r][i]: part r has added its share of block i (part 0: has finished block i)
    handed = [[threading.Event() for _ in blocks[0]] for _ in models]
    failed: list[bool] = []  # the model's own part raised: nothing is to be added into it
    reported = _Reporter(model)

    # What is not in a block (embeddings, final norm, heads): a replica's gradients for it
    # live through its whole backward and are added at the end.
    in_blocks = {id(p) for block in blocks[0] for p in block.parameters()}
    params = model.parameters()
    rest = [i for i, p in enumerate(params) if id(p) not in in_blocks]
    main_rest = _pick(params, rest)
    replica_rest = [_pick(m.parameters(), rest) for m in models[1:]]
    for replica_params in replica_rest:
        for p in replica_params:
            if p.requires_grad:
                p.grad = np.zeros_like(p.data)

    def start(r: int) -> tuple[np.ndarray | None, float]:
        if dlogits is not None:
            return dlogits[parts[r]], 1.0
        assert weights is not None
        return None, weights[r]

    def hand_over(r: int, i: int) -> None:
        """Part r is done with block i: add its share after the parts before it."""
        if r > 0:
            handed[r - 1][i].wait()
            if failed:
                for p in blocks[r][i].parameters():
                    free_gradient(p)
            else:
                add_replica_gradients(blocks[0][i], blocks[r][i])
        handed[r][i].set()
        if r == len(models) - 1 and not failed:
            reported.block(i)

    def part(r: int) -> Callable[[], None]:
        own = blocks[r]
        before = None if r == 0 else [partial(zero_replica_gradients, block) for block in own]
        after = [partial(hand_over, r, i) for i in range(len(own))]

        def run() -> None:
            try:
                with _block_hooks(own, before=before, after=after):
                    models[r]._backward(*start(r))
            except BaseException:
                if r == 0:
                    failed.append(True)
                raise
            finally:  # on an error, release the parts after this one rather than leave
                for event in handed[r]:  # them waiting
                    event.set()

        return run

    try:
        run_parts([part(r) for r in range(len(models))])
    except BaseException:
        for replica in models[1:]:  # a failed backward leaves no gradient in a replica
            for q in replica.parameters():
                free_gradient(q)
        raise
    for replica_params in replica_rest:
        for p, q in zip(main_rest, replica_params):
            if q.requires_grad:
                p.grad += q.grad
                free_gradient(q)  # a replica holds no gradient between passes
    reported.rest(blocks[0])


class _Reporter:
    """Calls ``model.on_gradients`` with each group of parameters whose gradients are
    complete: a block as soon as every part has handed it over, then the rest."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.hook = model.on_gradients
        self.blocks = model.repeated_blocks()
        self.done: set[int] = set()

    def block(self, i: int) -> None:
        self.done.add(i)
        if self.hook is not None:
            self.hook(self.blocks[i].parameters())

    def rest(self, blocks: list[Module]) -> None:
        if self.hook is None:
            return
        for i, block in enumerate(blocks):  # blocks this backward did not go through
            if i not in self.done:
                self.hook(block.parameters())
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        self.hook([p for p in self.model.parameters() if id(p) not in in_blocks])


def _pick(items: list[Any], indices: list[int]) -> list[Any]:
    return [items[i] for i in indices]


@contextmanager
def _block_hooks(
    blocks: list[Module],
    before: Sequence[Callable[[], None]] | None = None,
    after: Sequence[Callable[[], None]] | None = None,
) -> Iterator[None]:
    """For the length of a backward, each block's ``backward`` runs ``before[i]``, rebuilds
    the block's caches if its forward was recomputed, runs, then runs ``after[i]``."""
    for i, block in enumerate(blocks):
        object.__setattr__(block, "backward", _hooked_backward(
            block, None if before is None else before[i], None if after is None else after[i]
        ))  # fmt: skip
    try:
        yield
    finally:
        for block in blocks:
            object.__delattr__(block, "backward")


def _hooked_backward(
    block: Module, before: Callable[[], None] | None, after: Callable[[], None] | None
) -> Callable[..., Any]:
    backward = block.backward

    def run(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before()
        _rebuild(block)
        grads = backward(*args, **kwargs)
        if after is not None:
            after()
        return grads

    return run
