"""Data parallelism over the cores of one machine: split the batch, run each part on its own
thread with its own copy of the model's modules, and add the parts' gradients.

Why threads work here: NumPy releases Python's global lock inside BLAS calls and inside
ufunc loops over large arrays, which is where a training step spends its time, so two
threads computing two halves of a batch run on two cores at once. Why split the batch
rather than each matmul (what a multi-threaded BLAS does): the matrices of a small model
take well under a millisecond, and a BLAS that splits each of them pays a thread hand-off
per matmul, while a split batch pays two hand-offs per pass (start and join), and every
elementwise pass (LayerNorm, GELU, softmax), which NumPy runs on one core, is split too.

A replica shares every parameter's ``data`` with the model (nothing is copied) and has
its own module objects, so its forward caches and its gradients are its own. The loss of
a batch is a mean over its tokens; split in parts of n_i tokens each, it is
L = sum_i (n_i / n) L_i, so part i starts its backward from dL/dL_i = n_i / n, and the
parameter gradient is the sum of the parts' gradients.
"""

from __future__ import annotations

import collections
import contextvars
import copy
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import numpy as np

from numpyllm.nn.module import Module, ModuleT
from numpyllm.nn.parameter import Parameter

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Under "auto", a pass of fewer than this many tokens * d_model is not split. Below it the
# parts' Python overhead dominates, and threads running Python take turns on the
# interpreter lock (in slices of up to 5 ms) rather than running at once. Measured on a
# 2-layer GPT training on 2 cores: 16k gave 0.55x the unsplit speed, 33k 0.8-0.9x, 65k
# 1.1-1.5x, 131k 1.5x.
MIN_SPLIT_WORK = 1 << 16


def part_count(setting: int | str, tokens: int, width: int) -> int:
    """Parts to split a pass of ``tokens`` rows of ``width`` (d_model) into: an int
    ``setting`` as it is; "auto": the cores this process may use, or 1 for a pass below
    ``MIN_SPLIT_WORK``."""
    if setting != "auto":
        return int(setting)
    return 1 if tokens * width < MIN_SPLIT_WORK else available_cores()


def run_parts(tasks: list[Callable[[], Any]]) -> list[Any]:
    """Run ``tasks[0]`` on this thread and the others on worker threads, at the same time;
    return their results in order. An exception in any task is raised here, after all
    tasks have finished (so no task is left running on half-updated state).

    Each worker runs in a copy of the caller's context, so settings such as
    ``np.errstate`` apply to every part as they would to one thread."""
    global _pool
    if len(tasks) == 1:
        return [tasks[0]()]
    with _pool_lock:
        if _pool is None or _pool._max_workers < len(tasks) - 1:
            _pool = ThreadPoolExecutor(len(tasks) - 1, thread_name_prefix="numpyllm")
        pool = _pool
    futures = [pool.submit(contextvars.copy_context().run, task) for task in tasks[1:]]
    first: Any = None
    error: BaseException | None = None
    try:
        first = tasks[0]()
    except BaseException as exc:  # noqa: BLE001 (re-raised below, after the join)
        error = exc
    results = [first]
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
    if error is not None:
        raise error
    return results


PartT = TypeVar("PartT")

# An op spreads its parts over the cores (``on_cores``) only when it covers at least this
# many elements: handing parts to a worker thread and back costs ~80 us (the thread pool's
# hand-off and the BLAS limit), about one element-wise pass over 2^19 float32 elements, so
# from this size on an op of several passes gains more than the hand-off costs.
MIN_SPREAD_ELEMENTS = 1 << 19


def on_cores(
    run: Callable[[PartT], None], parts: Sequence[PartT], elements: int | None = None
) -> None:
    """``run(part)`` for every part, spread over as many threads as BLAS may use now, each
    thread taking the next part as it becomes free; in turn on this thread when BLAS may use
    one (inside one part of a split batch, where the cores are already taken), when there is
    one part, or when ``elements`` (the size of the whole op) is below
    ``MIN_SPREAD_ELEMENTS``.

    How a single op uses the cores of an unsplit pass (the op benchmarks, a batch of one
    long row): the BLAS thread count is the pass's core budget, so an op never adds threads
    to cores a split batch has already filled. The parts must be independent (each writes
    its own views, reading shared inputs) and call BLAS on one thread each.

    Why threads take parts as they become free rather than a fixed share each: on a busy
    machine one core may lose whole scheduler slices, and a fixed share would leave the
    other idle at the end.
    """
    from numpyllm.nn.blas import blas_threads, current_threads

    n = min(current_threads() or 1, available_cores(), len(parts))
    if n < 2 or (elements is not None and elements < MIN_SPREAD_ELEMENTS):
        for part in parts:
            run(part)
        return
    queue = collections.deque(parts)
    with blas_threads(1):
        run_parts([partial(_run_from, run, queue)] * n)


def _run_from(run: Callable[[PartT], None], queue: collections.deque) -> None:
    """``run`` each part taken from ``queue`` until it is empty."""
    while True:
        try:
            part = queue.popleft()  # atomic: no two threads get the same part
        except IndexError:
            return
        run(part)


def batch_slices(batch: int, parts: int) -> list[slice]:
    """Split range(batch) into ``min(parts, batch)`` contiguous slices of near-equal size."""
    parts = max(1, min(parts, batch))
    bounds = [batch * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


TreeT = TypeVar("TreeT", bound=Module)  # a module inside the tree being replicated


def replicate(module: ModuleT) -> ModuleT:
    """A copy of ``module``'s tree whose parameters share the original's ``data`` arrays.

    Module objects are new (so forward caches are the replica's own), as are Parameter
    objects (so gradients are); a Parameter shared by two modules (tied weights) stays
    shared. Call ``sync_replica`` before each use: an optimizer may have rebound ``data``.
    """
    clones: dict[int, Any] = {}

    def clone_module(m: TreeT) -> TreeT:
        if id(m) in clones:
            return clones[id(m)]
        c = copy.copy(m)
        clones[id(m)] = c
        object.__setattr__(c, "_parameters", {})
        object.__setattr__(c, "_modules", {})
        for name, p in m._parameters.items():
            if id(p) not in clones:
                clones[id(p)] = Parameter(p.data, requires_grad=p.requires_grad)
            c._parameters[name] = clones[id(p)]
            object.__setattr__(c, name, clones[id(p)])
        for name, child in m._modules.items():
            c._modules[name] = clone_module(child)
            object.__setattr__(c, name, c._modules[name])
        if "_cache" in vars(c):
            object.__setattr__(c, "_cache", None)
        return c

    return clone_module(module)


def sync_replica(module: Module, replica: Module) -> None:
    """Point the replica's parameters at the module's current arrays, copy the train/eval
    mode, and draw each of its dropout Generators from the module's own (so every random
    mask is a function of the module's Generators, and a checkpoint of those resumes
    exactly)."""
    for p, r in zip(module.parameters(), replica.parameters(), strict=True):
        r.data = p.data
        if r.requires_grad != p.requires_grad:  # frozen or unfrozen since the last pass
            r.requires_grad = p.requires_grad
    for m, r_module in zip(module.modules(), replica.modules(), strict=True):
        object.__setattr__(r_module, "training", m.training)
        rng = vars(m).get("rng")
        if isinstance(rng, np.random.Generator) and m.training and getattr(m, "p", 0) > 0:
            object.__setattr__(r_module, "rng", np.random.default_rng(rng.integers(2**63)))


def synced_replicas(module: ModuleT, kept: list[ModuleT], count: int) -> list[ModuleT]:
    """``count`` replicas of ``module``, made on first use and kept in ``kept`` (the module's
    own ``_replicas`` list), each synced to it (``sync_replica``) for the pass about to run."""
    while len(kept) < count:
        replica = replicate(module)
        object.__setattr__(replica, "_replicas", [])  # not the module's list: a replica has none
        for p in replica.parameters():  # made when a backward needs them
            free_gradient(p)
        kept.append(replica)
    replicas = kept[:count]
    for replica in replicas:
        sync_replica(module, replica)
    return replicas


def zero_replica_gradients(replica: Module) -> None:
    """Fresh zero gradients for a replica's backward (freed again by ``add_replica_gradients``,
    so a replica holds no gradient memory between steps)."""
    for r in replica.parameters():
        if r.requires_grad:
            r.grad = np.zeros_like(r.data)


def add_replica_gradients(module: Module, replica: Module) -> None:
    """module.grad += replica.grad for every parameter; the replica's gradients are freed."""
    for p, r in zip(module.parameters(), replica.parameters(), strict=True):
        if r.requires_grad:
            p.grad += r.grad
            free_gradient(r)


def free_gradient(p: Parameter) -> None:
    """Drop ``p``'s gradient array: a replica holds none between its passes (until
    ``zero_replica_gradients``)."""
    p.grad = None  # type: ignore[assignment]  # no array until zero_replica_gradients
