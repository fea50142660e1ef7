"""Optimizer state dicts: the documented format, exact resumption, and validation on load."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import SGD, Adam, AdamW

SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]


def build(name, params):
    """Two groups with different hyperparameters, parameters 0 and 2 (float32) in group 0."""
    groups = [{"params": [params[0], params[2]]}, {"params": [params[1], params[3]], "lr": 0.02}]
    if name == "sgd":
        groups[1]["weight_decay"] = 0.0
        return SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.01)
    if name == "nesterov":
        return SGD(groups, lr=0.1, momentum=0.5, nesterov=True)
    if name == "adam":
        return Adam(groups, lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)
    groups[1]["weight_decay"] = 0.0
    return AdamW(groups, lr=0.01, weight_decay=0.1)


def fresh_params(seed):
    rng = np.random.default_rng(seed)
    dtypes = [np.float64, np.float64, np.float32, np.float64]
    return [Parameter(rng.standard_normal(s).astype(d)) for s, d in zip(SHAPES, dtypes)]


def run(opt, params, grads):
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad += g
        opt.step()


def through_files(state_dict):
    """What a checkpoint does: arrays to safetensors bytes, everything else to JSON text."""
    blob = save_safetensors(state_dict["state"])
    meta = json.dumps({k: v for k, v in state_dict.items() if k != "state"})
    return {**json.loads(meta), "state": load_safetensors(blob)}


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw"])
@given(before=st.integers(0, 4), after=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_resuming_from_a_state_dict_is_bit_exact(name, before, after, seed):
    rng = np.random.default_rng(seed)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(before + after)]

    params = fresh_params(seed)
    uninterrupted = build(name, params)
    run(uninterrupted, params, grads)

    first = fresh_params(seed)
    opt = build(name, first)
    run(opt, first, grads[:before])
    saved = through_files(opt.state_dict())
    saved_params = [p.data.copy() for p in first]

    resumed_params = [Parameter(v) for v in saved_params]
    resumed = build(name, resumed_params)
    resumed.param_groups[0]["lr"] = 99.0  # overwritten by the load, as torch does
    resumed.load_state_dict(saved)
    run(resumed, resumed_params, grads[before:])

    assert resumed.step_count == uninterrupted.step_count == before + after
    for p, q in zip(params, resumed_params):
        assert p.data.dtype == q.data.dtype
        np.testing.assert_array_equal(p.data, q.data)


def test_format(rng):
    params = fresh_params(0)
    opt = build("adam", params)
    run(opt, params, [[rng.standard_normal(s) for s in SHAPES]] * 2)
    sd = opt.state_dict()
    assert set(sd) == {"step", "param_groups", "state"}
    assert sd["step"] == 2 and type(sd["step"]) is int
    assert sd["param_groups"] == [
        {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-8, "weight_decay": 0.05, "params": [0, 1]},
        {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-8, "weight_decay": 0.05, "params": [2, 3]},
    ]  # numbered in the order the optimizer was given them: group 0's, then group 1's
    json.dumps(sd["param_groups"])  # JSON-ready
    assert sorted(sd["state"]) == sorted(
        f"state.{i}.{name}" for i in range(4) for name in ("exp_avg", "exp_avg_sq")
    )
    in_optimizer_order = [params[0], params[2], params[1], params[3]]
    for i, p in enumerate(in_optimizer_order):
        for name in ("exp_avg", "exp_avg_sq"):
            value = sd["state"][f"state.{i}.{name}"]
            assert value.shape == p.shape and value.dtype == p.dtype
            assert not np.shares_memory(value, p.data)


def test_state_dict_arrays_are_copies(rng):
    params = fresh_params(0)
    opt = build("adamw", params)
    run(opt, params, [[rng.standard_normal(s) for s in SHAPES]])
    sd = opt.state_dict()
    kept = sd["state"]["state.0.exp_avg"].copy()
    run(opt, params, [[rng.standard_normal(s) for s in SHAPES]])
    np.testing.assert_array_equal(sd["state"]["state.0.exp_avg"], kept)


def test_sgd_has_no_momentum_state_before_its_first_step():
    params = fresh_params(0)
    assert build("sgd", params).state_dict()["state"] == {}
    assert SGD(fresh_params(1), lr=0.1).state_dict()["state"] == {}


def test_load_restores_betas_as_a_tuple():
    opt = build("adam", fresh_params(0))
    sd = json.loads(json.dumps({k: v for k, v in opt.state_dict().items() if k != "state"}))
    sd["state"] = opt.state_dict()["state"]
    sd["param_groups"][1]["betas"] = [0.5, 0.9]
    opt.load_state_dict(sd)
    assert opt.param_groups[1]["betas"] == (0.5, 0.9)


def saved_adam_state():
    params = fresh_params(0)
    opt = build("adam", params)
    run(opt, params, [[np.ones(s) for s in SHAPES]])
    return opt.state_dict()


def test_shape_mismatch_raises_a_clear_error():
    sd = saved_adam_state()
    sd["state"]["state.0.exp_avg"] = np.zeros((3, 4))
    opt = build("adam", fresh_params(1))
    with pytest.raises(ValueError, match=r"state\.0\.exp_avg.*\(3, 4\).*parameter 0.*\(4, 3\)"):
        opt.load_state_dict(sd)
    assert opt.step_count == 0  # nothing was changed by the failed load


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd["state"].pop("state.3.exp_avg_sq"), "missing"),
        (lambda sd: sd["state"].update({"state.9.exp_avg": np.zeros(1)}), "unexpected key"),
        (lambda sd: sd["state"].update({"state.0.momentum": np.zeros((4, 3))}), "unexpected"),
        (lambda sd: sd["param_groups"].pop(), "1 parameter groups"),
        (lambda sd: sd["param_groups"][0].update(params=[0, 2]), "holds parameters"),
        (lambda sd: sd.pop("step"), "missing"),
        (lambda sd: sd.update(step=-1), "step"),
        (lambda sd: sd["param_groups"][0].update(lr=-1.0), "lr"),
        (lambda sd: sd["state"].update({"state.0.exp_avg": np.zeros((4, 3), int)}), "floating"),
    ],
)
def test_bad_state_dicts_raise(corrupt, message):
    sd = saved_adam_state()
    corrupt(sd)
    opt = build("adam", fresh_params(1))
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)


def test_loading_another_optimizers_state_raises():
    sd = saved_adam_state()
    with pytest.raises(ValueError, match="unexpected key"):
        build("sgd", fresh_params(1)).load_state_dict(sd)


def test_loading_a_state_without_momentum_clears_the_buffer():
    # SGD before its first step has no buffer: loading that state restarts momentum (b_1 = g_1)
    params = fresh_params(0)
    opt = build("sgd", params)
    empty = opt.state_dict()
    run(opt, params, [[np.ones(s) for s in SHAPES]])
    opt.load_state_dict(empty)
    assert opt.state_dict()["state"] == {} and opt.step_count == 0
