"""Embedding: lookup, scatter-add backward with repeated ids, validation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyllm.functional.embedding import embedding_backward, embedding_forward
from numpyllm.gradcheck import gradcheck
from tests.functional.strategies import (
    batch_shapes,
    dtypes,
    random_array,
    random_dout,
    seeds,
)


@st.composite
def ids_and_vocab(draw, max_dims=3, max_side=5):
    vocab = draw(st.integers(1, 8))  # small vocabularies force repeated ids
    shape = draw(batch_shapes(max_dims=max_dims, max_side=max_side))
    ids = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, vocab - 1)))
    return ids, vocab


def naive_scatter_add(ids, dout, vocab):
    dweight = np.zeros((vocab, dout.shape[-1]))
    for position in np.ndindex(ids.shape):
        dweight[ids[position]] += dout[position]
    return dweight


@given(data=ids_and_vocab(), d=st.integers(1, 5), dtype=dtypes(), seed=seeds())
def test_forward_is_row_lookup(data, d, dtype, seed):
    ids, vocab = data
    weight = random_array((vocab, d), seed, dtype)
    out, _ = embedding_forward(ids, weight)
    assert out.shape == ids.shape + (d,) and out.dtype == dtype
    for position in np.ndindex(ids.shape):
        np.testing.assert_array_equal(out[position], weight[ids[position]])


@given(data=ids_and_vocab(), d=st.integers(1, 5), dtype=dtypes(), seed=seeds())
def test_backward_accumulates_repeated_ids(data, d, dtype, seed):
    ids, vocab = data
    _, cache = embedding_forward(ids, random_array((vocab, d), seed, dtype))
    dout = random_dout(ids.shape + (d,), seed, dtype)
    dweight = embedding_backward(dout, cache)
    assert dweight.shape == (vocab, d) and dweight.dtype == dtype
    expected = naive_scatter_add(ids, dout.astype(np.float64), vocab)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dweight, expected, rtol=tol, atol=tol)


@given(data=ids_and_vocab(max_side=4), d=st.integers(1, 4), seed=seeds())
def test_backward_matches_finite_differences(data, d, seed):
    ids, vocab = data
    errors = gradcheck(
        embedding_forward, embedding_backward, {"weight": random_array((vocab, d), seed)},
        kwargs={"ids": ids}, dout=random_dout(ids.shape + (d,), seed),
    )
    assert errors["weight"] < 1e-6, errors


@pytest.mark.parametrize(
    "ids",
    [
        np.full(1000, 3),  # one id repeated 1000 times (a segment of 1000 rows)
        np.arange(1000) % 7,  # every id repeated
        np.random.default_rng(0).integers(0, 50, 3000),  # typical
        np.random.default_rng(1).zipf(1.3, 3000) % 50,  # heavy head, long tail
        np.array([4, 1, 0]),  # no repeats
    ],
)
def test_backward_matches_add_at_on_larger_inputs(ids):
    vocab, d = 50, 6
    _, cache = embedding_forward(ids, np.zeros((vocab, d), dtype=np.float32))
    dout = random_dout(ids.shape + (d,), 3, np.float32)
    expected = np.zeros((vocab, d))
    np.add.at(expected, ids, dout.astype(np.float64))
    np.testing.assert_allclose(embedding_backward(dout, cache), expected, rtol=1e-5, atol=1e-4)


def test_unseen_rows_get_zero_gradient_and_empty_ids_work():
    _, cache = embedding_forward(np.array([[2, 2]]), np.ones((4, 3)))
    dweight = embedding_backward(np.ones((1, 2, 3)), cache)
    np.testing.assert_array_equal(dweight[[0, 1, 3]], 0.0)
    np.testing.assert_array_equal(dweight[2], 2.0)
    out, cache = embedding_forward(np.zeros((0,), dtype=np.int64), np.ones((4, 3)))
    assert out.shape == (0, 3)
    np.testing.assert_array_equal(embedding_backward(np.ones((0, 3)), cache), np.zeros((4, 3)))


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_out_of_range_ids_are_rejected_with_the_id_named(bad):
    ids = np.array([[0, 1], [bad, 2]])
    with pytest.raises(ValueError, match=rf"token id {bad} .*vocabulary of 5"):
        embedding_forward(ids, np.ones((5, 2)))


def test_bad_types_and_shapes_are_rejected():
    with pytest.raises(TypeError, match="integer"):
        embedding_forward(np.array([0.0, 1.0]), np.ones((5, 2)))
    with pytest.raises(ValueError, match="2-D"):
        embedding_forward(np.array([0, 1]), np.ones(5))
