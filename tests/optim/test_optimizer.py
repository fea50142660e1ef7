"""The base optimizer: groups, flat buffers shared with the parameters, blocks and threads."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import SGD, Adam, AdamW, Optimizer

FACTORIES = {
    "sgd": lambda params: SGD(params, lr=0.1),
    "sgd_nesterov": lambda params: SGD(
        params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01
    ),
    "adam": lambda params: Adam(params, lr=1e-2, weight_decay=0.1),
    "adamw": lambda params: AdamW(params, lr=1e-2, weight_decay=0.1),
}


def make_params(rng, shapes, dtype=np.float64):
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def test_parameters_become_views_of_one_flat_buffer(rng):
    w, b, s = make_params(rng, [(3, 4), (4,), ()])
    before = [w.data.copy(), b.data.copy(), s.data.copy()]
    opt = SGD([w, b, s], lr=0.1)
    assert isinstance(opt, Optimizer)
    np.testing.assert_array_equal(w.data, before[0])  # values kept, shapes kept
    np.testing.assert_array_equal(b.data, before[1])
    np.testing.assert_array_equal(s.data, before[2])
    assert w.data.shape == (3, 4) and s.data.shape == ()
    base = w.data.base
    assert base is not None and base.ndim == 1 and base.size == 12 + 4 + 1
    assert b.data.base is base and s.data.base is base
    assert w.grad.base is b.grad.base and w.grad.base is not base
    assert w.data.flags.writeable and w.data.flags.c_contiguous


def test_writes_to_p_data_are_what_the_optimizer_updates(rng):
    w, b = make_params(rng, [(3, 2), (2,)])
    opt = SGD([w, b], lr=0.5)
    new_w = rng.standard_normal((3, 2))
    w.data[...] = new_w  # e.g. a checkpoint loaded in place after building the optimizer
    w.grad[...] = 1.0
    opt.step()
    np.testing.assert_allclose(w.data, new_w - 0.5, rtol=1e-15)


def test_a_forward_reading_p_data_sees_the_update(rng):
    w, b = make_params(rng, [(4, 3), (3,)])
    x = rng.standard_normal((5, 4))

    def forward():  # the way layers work: read p.data afresh
        return x @ w.data + b.data

    w0, b0 = w.data.copy(), b.data.copy()
    opt = SGD([w, b], lr=0.1)
    gw, gb = rng.standard_normal((4, 3)), rng.standard_normal(3)
    w.grad += gw  # layers accumulate in place
    b.grad += gb
    opt.step()
    np.testing.assert_allclose(forward(), x @ (w0 - 0.1 * gw) + (b0 - 0.1 * gb), rtol=1e-13)


def test_rebound_data_and_grad_are_adopted(rng):
    w, b = make_params(rng, [(2, 2), (2,)])
    opt = SGD([w, b], lr=0.1)
    fresh = rng.standard_normal((2, 2))
    w.data = fresh.copy()  # someone replaced the array instead of writing into it
    b.grad = np.array([1.0, 2.0])
    opt.step()
    np.testing.assert_allclose(w.data, fresh, rtol=1e-15)  # its grad was zero
    np.testing.assert_allclose(b.grad, [1.0, 2.0])
    assert w.data.base is b.data.base and b.grad.base is w.grad.base  # views again
    b_before = b.data.copy()
    opt.step()
    np.testing.assert_allclose(b.data, b_before - 0.1 * np.array([1.0, 2.0]), rtol=1e-15)


def test_rebinding_to_another_shape_or_dtype_raises(rng):
    (w,) = make_params(rng, [(2, 2)])
    opt = Adam([w])
    w.data = w.data.astype(np.float32)
    with pytest.raises(ValueError, match="new optimizer"):
        opt.step()
    (v,) = make_params(rng, [(2, 2)])
    opt = Adam([v])
    v.grad = np.zeros(4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        opt.zero_grad()


def test_zero_grad_zeroes_every_gradient(rng):
    params = make_params(rng, [(3, 3), (3,)])
    opt = Adam(params)
    for p in params:
        p.grad[...] = 5.0
    opt.zero_grad()
    for p in params:
        np.testing.assert_array_equal(p.grad, 0.0)


def test_parameters_outside_the_optimizer_are_untouched(rng):
    inside, outside = make_params(rng, [(3,), (3,)])
    outside_before = outside.data.copy()
    opt = SGD([inside], lr=0.1)
    inside.grad[...] = 1.0
    outside.grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(outside.data, outside_before)
    assert outside.data.base is None


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_mixed_dtypes_in_a_group_each_keep_their_dtype(rng, name):
    shapes = [(3, 2), (5,), (2, 2)]
    dtypes = [np.float32, np.float64, np.float32]
    values = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    mixed = [Parameter(v.astype(d)) for v, d in zip(values, dtypes)]
    separate = [Parameter(v.astype(d)) for v, d in zip(values, dtypes)]
    opt_mixed = FACTORIES[name](mixed)
    opts = [FACTORIES[name]([separate[0], separate[2]]), FACTORIES[name]([separate[1]])]
    for step_grads in grads:
        for p, q, g in zip(mixed, separate, step_grads):
            p.grad[...] = g
            q.grad[...] = g
        opt_mixed.step()
        for opt in opts:
            opt.step()
    for p, q, d in zip(mixed, separate, dtypes):
        assert p.data.dtype == d and p.grad.dtype == d
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    block_size=st.integers(1, 9),
    num_threads=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocks_and_threads_give_the_same_bits_as_one_pass(
    name, sizes, block_size, num_threads, seed
):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(n) for n in sizes]
    one_pass = [Parameter(v.copy()) for v in values]
    blocked = [Parameter(v.copy()) for v in values]
    opt_one = FACTORIES[name](one_pass)
    opt_blocked = FACTORIES[name](blocked)
    opt_blocked.block_size = block_size
    opt_blocked.num_threads = num_threads
    for _ in range(3):
        for p, q in zip(one_pass, blocked):
            p.grad[...] = q.grad[...] = rng.standard_normal(p.shape)
        opt_one.step()
        opt_blocked.step()
    for p, q in zip(one_pass, blocked):
        np.testing.assert_array_equal(p.data, q.data)


def test_threads_are_used_for_large_segments(rng):
    params = make_params(rng, [(64, 8), (40,)])
    opt = AdamW(params)
    opt.block_size, opt.num_threads = 8, 2
    for p in params:
        p.grad[...] = 1.0
    opt.step()
    assert opt._pool is not None  # the threaded path ran (its result is checked above)


def test_a_parameter_in_two_groups_raises(rng):
    w, b = make_params(rng, [(2, 2), (2,)])
    with pytest.raises(ValueError, match="group 0 and in group 1"):
        SGD([{"params": [w, b]}, {"params": [w], "lr": 0.01}], lr=0.1)


def test_a_parameter_twice_in_one_group_raises(rng):
    (w,) = make_params(rng, [(2, 2)])
    with pytest.raises(ValueError, match="twice"):
        Adam([w, w])


def test_bad_params_arguments_raise(rng):
    (w,) = make_params(rng, [(2, 2)])
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    with pytest.raises(ValueError, match="empty"):
        Adam([{"params": []}])
    with pytest.raises(TypeError, match="wrap it in a list"):
        Adam(w)
    with pytest.raises(TypeError, match="ndarray"):
        Adam([np.zeros(3)])
    with pytest.raises(TypeError, match="mixture"):
        Adam([w, {"params": []}])
    with pytest.raises(ValueError, match="'params'"):
        Adam([{"lr": 0.1}])
    w.grad = np.zeros(3)
    with pytest.raises(ValueError, match="grad has shape"):
        Adam([w])


def test_groups_take_defaults_and_keep_overrides(rng):
    w, b = make_params(rng, [(2, 2), (2,)])
    user_group = {"params": [b], "weight_decay": 0.0}
    opt = AdamW([{"params": [w]}, user_group], lr=0.5, weight_decay=0.2)
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[0]["lr"] == 0.5
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["params"] == [b]
    assert user_group == {"params": [b], "weight_decay": 0.0}  # the caller's dict is not changed


def test_changing_group_lr_between_steps_is_used(rng):
    w, b = make_params(rng, [(2,), (2,)])
    opt = SGD([{"params": [w]}, {"params": [b]}], lr=0.1)
    w0, b0 = w.data.copy(), b.data.copy()
    opt.param_groups[1]["lr"] = 0.0
    w.grad[...] = b.grad[...] = 1.0
    opt.step()
    np.testing.assert_allclose(w.data, w0 - 0.1, rtol=1e-15)
    np.testing.assert_array_equal(b.data, b0)
