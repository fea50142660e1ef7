"""Data-parallel helpers: batch slices, running parts on threads, model replicas."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.nn.linear import Linear
from numpyllm.nn.module import Module, ModuleList
from numpyllm.nn.norms import Dropout
from numpyllm.nn.parallel import (
    add_replica_gradients,
    available_cores,
    batch_slices,
    replicate,
    run_parts,
    sync_replica,
    synced_replicas,
    zero_replica_gradients,
)
from numpyllm.nn.parameter import Parameter

BARRIER_TIMEOUT = 5.0  # seconds; a serial run_parts would wait this long, then fail


# ---- available_cores -------------------------------------------------------------------
def test_available_cores_is_a_positive_int():
    cores = available_cores()
    assert isinstance(cores, int)
    assert cores >= 1


# ---- batch_slices ----------------------------------------------------------------------
@given(batch=st.integers(1, 200), parts=st.integers(1, 300))
def test_batch_slices_cover_the_batch_in_near_equal_contiguous_parts(batch, parts):
    slices = batch_slices(batch, parts)
    assert len(slices) == min(parts, batch)
    assert slices[0].start == 0
    assert slices[-1].stop == batch
    for before, after in zip(slices, slices[1:]):
        assert before.stop == after.start  # contiguous, in order
    assert all(s.step in (None, 1) for s in slices)
    sizes = [s.stop - s.start for s in slices]
    assert min(sizes) >= 1  # no empty part
    assert max(sizes) - min(sizes) <= 1
    covered = [i for s in slices for i in range(batch)[s]]
    assert covered == list(range(batch))


@pytest.mark.parametrize("parts", [0, -3])
def test_batch_slices_with_no_parts_asked_is_one_slice(parts):
    assert batch_slices(5, parts) == [slice(0, 5)]


# ---- run_parts -------------------------------------------------------------------------
@given(delays=st.lists(st.sampled_from([0.0, 0.001, 0.003]), min_size=1, max_size=5))
def test_run_parts_returns_results_in_task_order(delays):
    def task(i, delay):
        def run():
            time.sleep(delay)
            return i

        return run

    assert run_parts([task(i, d) for i, d in enumerate(delays)]) == list(range(len(delays)))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_run_parts_runs_tasks_at_once_on_distinct_threads(n):
    barrier = threading.Barrier(n, timeout=BARRIER_TIMEOUT)  # every task waits for all n

    def task():
        barrier.wait()
        return threading.get_ident()

    idents = run_parts([task] * n)
    assert len(set(idents)) == n
    assert idents[0] == threading.get_ident()  # the first task runs on the caller's thread


def test_run_parts_single_task_runs_on_the_caller_thread():
    assert run_parts([threading.get_ident]) == [threading.get_ident()]


def test_worker_exception_is_raised_after_the_other_tasks_finish():
    finished = []

    def slow(name, delay):
        def run():
            time.sleep(delay)
            finished.append(name)

        return run

    def fail():
        raise KeyError("part 1")

    # the caller's own task is quick: only a join of every worker waits for the last one
    with pytest.raises(KeyError, match="part 1"):
        run_parts([slow("first", 0.0), fail, slow("third", 0.1)])
    assert sorted(finished) == ["first", "third"]


def test_caller_task_exception_waits_for_the_workers():
    finished = threading.Event()

    def fail():
        raise ValueError("part 0")

    def slow():
        time.sleep(0.05)
        finished.set()

    with pytest.raises(ValueError, match="part 0"):
        run_parts([fail, slow])
    assert finished.is_set()


def test_first_failing_task_in_order_is_the_one_raised():
    def fail(exc):
        def run():
            raise exc

        return run

    def late_fail():
        time.sleep(0.02)  # finishes after the later task has already failed
        raise KeyError("part 1")

    with pytest.raises(KeyError, match="part 1"):
        run_parts([lambda: None, late_fail, fail(ValueError("part 2"))])


def _overflow():
    return np.array([1e308]) * 10.0


def test_workers_follow_the_callers_errstate():
    with np.errstate(all="raise"), pytest.raises(FloatingPointError):
        run_parts([lambda: None, _overflow])
    with np.errstate(all="ignore"):
        results = run_parts([lambda: None, _overflow])
    assert np.isinf(results[1]).all()


# ---- modules for the replica tests -----------------------------------------------------
class Leaf(Module):
    def __init__(self, shape, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = Parameter(rng.standard_normal(shape))
        self._cache = None


class Tree(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.first = Leaf((2, 3), seed=1)
        self.blocks = ModuleList([Leaf((3,), seed=2), Leaf((4,), seed=3)])
        self.tied = Leaf((1,))
        self.tied.weight = self.first.weight  # the same Parameter under two names
        self.drop = Dropout(p, rng=np.random.default_rng(7))
        self.proj = Linear(3, 2, rng=np.random.default_rng(4), dtype=np.float64)


def pairs(module: Module, replica: Module):
    return list(zip(module.parameters(), replica.parameters(), strict=True))


# ---- replicate -------------------------------------------------------------------------
def test_replica_shares_data_but_not_parameters_or_gradients():
    tree = Tree()
    replica = replicate(tree)
    for p, r in pairs(tree, replica):
        assert r is not p
        assert r.data is p.data
        assert r.grad is not p.grad
        assert not np.shares_memory(r.grad, p.grad)
    modules = list(tree.modules())
    for m, r in zip(modules, replica.modules(), strict=True):
        assert type(r) is type(m)
        assert r is not m


def test_replica_has_the_same_names_and_arrays():
    tree = Tree()
    replica = replicate(tree)
    state, replica_state = tree.state_dict(), replica.state_dict()
    assert list(replica_state) == list(state)
    assert all(replica_state[name] is state[name] for name in state)
    assert [n for n, _ in replica.named_modules()] == [n for n, _ in tree.named_modules()]


def test_tied_parameter_stays_one_object_in_the_replica():
    tree = Tree()
    replica = replicate(tree)
    assert replica.tied.weight is replica.first.weight
    assert replica.tied.weight is not tree.first.weight
    assert replica.tied._parameters["weight"] is replica.first._parameters["weight"]
    assert replica.num_parameters() == tree.num_parameters()


@st.composite
def tie_patterns(draw):
    """For n leaves, tie[i] = j <= i: leaf i uses leaf j's Parameter."""
    n = draw(st.integers(1, 6))
    return [draw(st.integers(0, i)) for i in range(n)]


@given(tie=tie_patterns())
def test_replica_keeps_exactly_the_original_ties(tie):
    leaves = ModuleList([Leaf((2,), seed=i) for i in range(len(tie))])
    for i, j in enumerate(tie):
        leaves[i].weight = leaves[j].weight
    replica = replicate(leaves)
    n = len(tie)
    for i in range(n):
        assert replica[i].weight.data is leaves[i].weight.data
        for j in range(n):
            same = leaves[i].weight is leaves[j].weight
            assert (replica[i].weight is replica[j].weight) == same
    assert len(replica.parameters()) == len(leaves.parameters())


def test_changing_the_replica_tree_leaves_the_original_alone():
    tree = Tree()
    names = [n for n, _ in tree.named_parameters()]
    first_weight = tree.first.weight
    replica = replicate(tree)
    replica.extra = Leaf((5,))
    replica.blocks.append(Leaf((6,)))
    replica.first.weight = Parameter(np.zeros((2, 3)))
    assert [n for n, _ in tree.named_parameters()] == names
    assert len(tree.blocks) == 2
    assert tree.first.weight is first_weight
    assert "extra" in dict(replica.named_modules())
    assert "extra" not in dict(tree.named_modules())


def test_replica_starts_with_empty_caches_and_keeps_its_own():
    tree = Tree()
    x = np.random.default_rng(0).standard_normal((4, 3))
    tree.proj(x)  # the original now holds a forward cache
    held = tree.proj._cache
    tree.first._cache = "pending"
    replica = replicate(tree)
    assert replica.proj._cache is None
    assert replica.first._cache is None
    assert tree.proj._cache is held
    assert tree.first._cache == "pending"

    # the replica's forward / backward touch its own cache and gradients only
    zero_replica_gradients(replica)
    replica.proj(2 * x)
    replica.proj.backward(np.ones((4, 2)))
    assert tree.proj._cache is held
    assert np.any(replica.proj.weight.grad != 0)
    assert not np.any(tree.proj.weight.grad)
    np.testing.assert_allclose(replica.proj.weight.grad, (2 * x).T @ np.ones((4, 2)))


# ---- sync_replica ----------------------------------------------------------------------
def test_sync_follows_a_rebinding_of_data():
    tree = Tree()
    replica = replicate(tree)
    old = [p.data for p in tree.parameters()]
    # what an optimizer does when it packs the parameters into one flat buffer
    flat = np.concatenate([p.data.ravel() for p in tree.parameters()]) + 1.0
    offset = 0
    for p in tree.parameters():
        p.data = flat[offset : offset + p.size].reshape(p.shape)
        offset += p.size
    assert all(r.data is o for (_, r), o in zip(pairs(tree, replica), old))  # stale until synced
    sync_replica(tree, replica)
    for p, r in pairs(tree, replica):
        assert r.data is p.data
        assert np.shares_memory(r.data, flat)
    assert replica.tied.weight.data is tree.first.weight.data
    np.testing.assert_array_equal(replica.proj(np.ones((1, 3))), tree.proj(np.ones((1, 3))))


def test_sync_copies_the_training_mode():
    tree = Tree()
    replica = replicate(tree)
    tree.eval()
    sync_replica(tree, replica)
    assert not any(m.training for m in replica.modules())
    tree.train()
    tree.blocks.eval()  # a mixed tree: copied module by module
    sync_replica(tree, replica)
    for m, r in zip(tree.modules(), replica.modules(), strict=True):
        assert r.training == m.training
    assert replica.training and not replica.blocks[0].training


def test_sync_reseeds_replica_dropout_from_the_module_generator():
    x = np.ones((64,))
    masks = []
    for _ in range(2):  # two identical trees: identical replica masks
        tree = Tree(p=0.5)
        replica = replicate(tree)
        sync_replica(tree, replica)
        assert replica.drop.rng is not tree.drop.rng
        first = replica.drop(x)
        sync_replica(tree, replica)  # a fresh Generator each sync: a fresh mask
        second = replica.drop(x)
        masks.append((first, second))
    np.testing.assert_array_equal(masks[0][0], masks[1][0])
    np.testing.assert_array_equal(masks[0][1], masks[1][1])
    assert not np.array_equal(masks[0][0], masks[0][1])
    # and the replica's mask is not the module's own next one
    tree = Tree(p=0.5)
    replica = replicate(tree)
    sync_replica(tree, replica)
    assert not np.array_equal(replica.drop(x), tree.drop(x))


@pytest.mark.parametrize("p, training", [(0.5, False), (0.0, True)])
def test_sync_draws_nothing_when_dropout_is_off(p, training):
    tree = Tree(p=p)
    tree.train(training)
    replica = replicate(tree)
    state = tree.drop.rng.bit_generator.state
    sync_replica(tree, replica)
    assert tree.drop.rng.bit_generator.state == state


# ---- replica gradients -----------------------------------------------------------------
def test_zero_replica_gradients_gives_fresh_zero_arrays():
    tree = Tree()
    for p in tree.parameters():
        p.grad[...] = 3.0
    replica = replicate(tree)
    for r in replica.parameters():
        r.grad[...] = 5.0  # left over from an earlier step: replaced, not reused
    held = [r.grad for r in replica.parameters()]
    zero_replica_gradients(replica)
    assert all(r.grad is not old for r, old in zip(replica.parameters(), held))
    assert all(np.all(old == 5.0) for old in held)
    for r in replica.parameters():
        r.grad = None  # freed, as add_replica_gradients leaves them
    zero_replica_gradients(replica)
    for p, r in pairs(tree, replica):
        assert r.grad.shape == p.data.shape and r.grad.dtype == p.data.dtype
        assert not np.any(r.grad)
        assert not np.shares_memory(r.grad, p.grad)
    assert np.all(tree.first.weight.grad == 3.0)


def test_add_replica_gradients_sums_in_place_and_frees():
    tree = Tree()
    rng = np.random.default_rng(0)
    replica = replicate(tree)
    zero_replica_gradients(replica)
    expected = []
    grads = []
    for p, r in pairs(tree, replica):
        p.grad[...] = rng.standard_normal(p.shape)
        r.grad[...] = rng.standard_normal(p.shape)
        expected.append(p.grad + r.grad)
        grads.append(p.grad)
    add_replica_gradients(tree, replica)
    for (p, r), want, grad in zip(pairs(tree, replica), expected, grads):
        np.testing.assert_allclose(p.grad, want, rtol=1e-15)
        assert p.grad is grad  # in place: views held by an optimizer stay valid
        assert r.grad is None


def test_part_count_follows_the_setting_and_the_size_of_the_pass(monkeypatch):
    from numpyllm.nn import parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: 3)
    assert parallel.part_count(5, 1, 1) == 5  # an explicit count is used whatever the size
    assert parallel.part_count(1, 10**6, 512) == 1
    small = parallel.MIN_SPLIT_WORK // 64 - 1
    assert parallel.part_count("auto", small, 64) == 1  # below MIN_SPLIT_WORK: not split
    assert parallel.part_count("auto", small + 1, 64) == 3


def test_synced_replicas_are_made_once_kept_and_follow_the_module():
    tree = Tree()
    object.__setattr__(tree, "_replicas", [])
    first = synced_replicas(tree, tree._replicas, 2)
    assert len(first) == 2 and tree._replicas == first
    assert all(r._replicas == [] and r._replicas is not tree._replicas for r in first)
    assert synced_replicas(tree, tree._replicas, 1) == first[:1]  # kept, not made again
    tree.first.weight.data = np.zeros((2, 3))  # rebound, as an optimizer may
    tree.eval()
    again = synced_replicas(tree, tree._replicas, 3)
    assert again[:2] == first and len(tree._replicas) == 3
    for replica in again:
        assert replica.first.weight.data is tree.first.weight.data
        assert not replica.training
