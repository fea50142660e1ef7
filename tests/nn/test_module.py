"""The Module system: names, tied parameters, state dicts, modes, dtype."""

import numpy as np
import pytest

from numpyllm.nn.module import Module, ModuleList
from numpyllm.nn.parameter import Parameter


class Leaf(Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = Parameter(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))


class Tree(Module):
    def __init__(self):
        super().__init__()
        self.first = Leaf((2, 3))
        self.blocks = ModuleList([Leaf((3,)), Leaf((4,))])
        self.tied = Leaf((1,))
        self.tied.weight = self.first.weight  # the same Parameter under two names


def test_named_parameters_are_dotted_and_tied_weights_listed_once():
    names = [name for name, _ in Tree().named_parameters()]
    assert names == ["first.weight", "blocks.0.weight", "blocks.1.weight"]


def test_num_parameters_counts_tied_once():
    assert Tree().num_parameters() == 6 + 3 + 4


def test_state_dict_round_trip_copies_in_place():
    a, b = Tree(), Tree()
    for p in a.parameters():
        p.data[...] = np.random.default_rng(1).standard_normal(p.shape)
    held = b.first.weight.data  # an optimizer may hold this view
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
    assert b.first.weight.data is held


def test_load_state_dict_strict_errors_name_the_keys():
    model = Tree()
    state = model.state_dict()
    del state["blocks.1.weight"]
    state["extra.weight"] = np.zeros(1, np.float32)
    expected = r"missing keys: blocks\.1\.weight.*unexpected keys: extra"
    with pytest.raises(ValueError, match=expected):
        model.load_state_dict(state)
    model.load_state_dict(state, strict=False)  # non-strict: loads what matches


def test_load_state_dict_shape_mismatch_names_parameter():
    model = Tree()
    state = model.state_dict()
    state["first.weight"] = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"first\.weight.*\(3, 2\).*\(2, 3\)"):
        model.load_state_dict(state)


def test_train_eval_propagate():
    model = Tree()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_and_astype():
    model = Tree()
    for p in model.parameters():
        p.grad += 1.0
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())
    model.astype(np.float64)
    for p in model.parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
    # the tied parameter is still shared after conversion
    assert model.tied.weight is model.first.weight


def test_parameter_rejects_integer_data():
    with pytest.raises(TypeError, match="floating-point"):
        Parameter(np.arange(3))


def test_module_without_super_init_fails_clearly():
    class Broken(Module):
        def __init__(self):
            self.weight = Parameter(np.zeros(1))

    with pytest.raises(RuntimeError, match="super"):
        Broken()
