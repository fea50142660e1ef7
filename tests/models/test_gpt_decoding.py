"""GPTDecoder: incremental decoding with preallocated KV buffers against GPT.forward.

Every property compares the decoder with the model's own forward on the same tokens: the
logits of the last position after each chunk, the cached keys and values, after reset(),
in training mode, after weight updates; then its errors, its BLAS thread policy and the
greedy generation it drives.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.models.gpt_decoding import GPTDecoder
from numpyllm.nn import blas
from tests.models.strategies import small_gpt_configs

F64_TOL = dict(rtol=1e-10, atol=1e-10)
F32_TOL = dict(rtol=1e-5, atol=1e-5)


def perturbed(model: GPT, seed: int) -> GPT:
    """Move every parameter away from its init (zero biases and unit norms hide bugs)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data += rng.standard_normal(p.shape).astype(p.dtype) * 0.3
    return model.eval()


def make_model(config: GPTConfig, seed: int = 0, dtype=np.float64) -> GPT:
    model = GPT(config, rng=np.random.default_rng(seed))
    if dtype != np.float32:
        model.astype(dtype)
    return perturbed(model, seed + 1)


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(vocab_size=11, n_layer=2, n_head=2, d_model=8, max_seq_len=10, dropout=0.0)
    fields.update(overrides)
    return GPTConfig(**fields)


def last_logits(model: GPT, ids: np.ndarray) -> np.ndarray:
    """The reference: GPT.forward on the whole prefix, logits of its last position (B, V)."""
    return model(ids).logits[:, -1]


@st.composite
def decoding_cases(draw) -> dict:
    """A config, a seed, ids (B, L), the decoder's max_len >= L and the chunk ends: the
    sequence is fed as ids[:, 0:ends[0]], ids[:, ends[0]:ends[1]], ..., ends[-1] == L."""
    config = draw(
        small_gpt_configs(vocab=(5, 20), max_seq_len=(4, 12), heads=(1, 2), head_dim=(2, 4))
    )
    length = draw(st.integers(1, config.max_seq_len))
    max_len = draw(st.integers(length, config.max_seq_len))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, length))
    splits = draw(st.lists(st.integers(1, length - 1), unique=True)) if length > 1 else []
    ends = sorted(splits) + [length]
    return dict(config=config, seed=seed, ids=ids, max_len=max_len, ends=ends)


def feed_in_chunks(decoder: GPTDecoder, ids: np.ndarray, ends: list[int]):
    """Yield (end, logits) after feeding each chunk."""
    start = 0
    for end in ends:
        logits = decoder.step(ids[:, start:end])
        assert decoder.length == end
        yield end, logits
        start = end


# ---- logits against GPT.forward ---------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(np.float64, F64_TOL), (np.float32, F32_TOL)])
@given(case=decoding_cases())
def test_chunked_decoding_matches_full_forward_after_each_chunk(dtype, tol, case):
    model = make_model(case["config"], case["seed"], dtype)
    ids = case["ids"]
    decoder = model.incremental_decoder(batch=ids.shape[0], max_len=case["max_len"])
    with decoder:
        for end, logits in feed_in_chunks(decoder, ids, case["ends"]):
            expected = last_logits(model, ids[:, :end])
            assert logits.shape == expected.shape == (ids.shape[0], case["config"].vocab_size)
            assert logits.dtype == dtype
            np.testing.assert_allclose(logits, expected, **tol)


@given(case=decoding_cases())
def test_cached_keys_and_values_equal_forwards_past_key_values(case):
    model = make_model(case["config"], case["seed"])
    ids = case["ids"]
    B, L = ids.shape
    cfg = case["config"]
    decoder = GPTDecoder(model, batch=B, max_len=case["max_len"])
    for _ in feed_in_chunks(decoder, ids, case["ends"]):
        pass
    past = model(ids, use_cache=True).past_key_values
    assert len(decoder.keys) == len(decoder.values) == len(past) == cfg.n_layer
    shape = (B, cfg.n_head, case["max_len"], cfg.head_dim)
    for keys, values, (k, v) in zip(decoder.keys, decoder.values, past):
        assert keys.shape == values.shape == shape
        assert k.shape == (B, cfg.n_head, L, cfg.head_dim)
        np.testing.assert_allclose(keys[:, :, :L], k, **F64_TOL)
        np.testing.assert_allclose(values[:, :, :L], v, **F64_TOL)


@given(case=decoding_cases())
def test_reset_forgets_the_old_sequence(case):
    model = make_model(case["config"], case["seed"])
    ids = case["ids"]
    (B, L), V, max_len = ids.shape, case["config"].vocab_size, case["max_len"]
    rng = np.random.default_rng(case["seed"] + 7)
    # an old sequence filling every column of the buffers, different from ids at each position
    old = rng.integers(0, V, size=(B, max_len))
    old[:, :L] = (ids + rng.integers(1, V, size=(B, L))) % V
    assert (old[:, :L] != ids).all()
    decoder = model.incremental_decoder(batch=B, max_len=max_len)
    decoder.step(old)
    assert decoder.length == max_len
    decoder.reset()
    assert decoder.length == 0
    for end, logits in feed_in_chunks(decoder, ids, case["ends"]):
        np.testing.assert_allclose(logits, last_logits(model, ids[:, :end]), **F64_TOL)


def test_decoder_runs_as_in_evaluation_whatever_the_models_mode():
    model = make_model(tiny_config(dropout=0.5), seed=3).train()
    ids = np.random.default_rng(3).integers(0, 11, size=(2, 7))
    decoder = model.incremental_decoder(batch=2)
    logits = [decoder.step(ids[:, :4]), decoder.step(ids[:, 4:5]), decoder.step(ids[:, 5:])]
    assert model.training  # the decoder does not switch the model's mode
    # dropout is really on in training mode: the forward there differs from eval's
    train_logits = last_logits(model, ids)
    model.eval()
    assert not np.allclose(train_logits, last_logits(model, ids), rtol=1e-3, atol=1e-3)
    for end, got in zip([4, 5, 7], logits):
        np.testing.assert_allclose(got, last_logits(model, ids[:, :end]), **F64_TOL)


@pytest.mark.parametrize("how", ["in_place", "replaced"])
def test_decoder_sees_weight_updates_made_after_it_was_created(how):
    model = make_model(tiny_config(), seed=4)
    ids = np.random.default_rng(4).integers(0, 11, size=(2, 6))
    decoder = model.incremental_decoder(batch=2)
    decoder.step(ids[:, :3])
    before = decoder.step(ids[:, 3:])
    rng = np.random.default_rng(5)
    for p in model.parameters():  # every parameter: embeddings, norms, projections
        noise = rng.standard_normal(p.shape) * 0.3
        if how == "in_place":
            p.data += noise
        else:
            p.data = p.data + noise  # a new array, as an optimizer or a load might leave
    decoder.reset()
    decoder.step(ids[:, :3])
    after = decoder.step(ids[:, 3:])
    expected = last_logits(model, ids)
    assert not np.allclose(before, expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(after, expected, **F64_TOL)


# ---- construction -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_incremental_decoder_allocates_buffers_of_the_models_shape_and_dtype(dtype):
    cfg = tiny_config(n_layer=2, n_head=2, d_model=8, max_seq_len=10)
    model = make_model(cfg, dtype=dtype)
    decoder = model.incremental_decoder(batch=3, max_len=6)
    assert isinstance(decoder, GPTDecoder)
    assert decoder.model is model and decoder.max_len == 6 and decoder.length == 0
    assert len(decoder.keys) == len(decoder.values) == 2
    for buffer in (*decoder.keys, *decoder.values):
        assert buffer.shape == (3, 2, 6, 4) and buffer.dtype == dtype
    default = model.incremental_decoder()
    assert default.max_len == 10 and default.keys[0].shape == (1, 2, 10, 4)


def test_step_accepts_unsigned_ids_and_nested_lists():
    model = make_model(tiny_config(), seed=6)
    ids = np.array([[3, 1, 4], [1, 5, 9]])
    expected = last_logits(model, ids)
    for given_ids in (ids.astype(np.uint8), ids.astype(np.int32), ids.tolist()):
        decoder = model.incremental_decoder(batch=2)
        np.testing.assert_allclose(decoder.step(given_ids), expected, **F64_TOL)


# ---- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_len=0), r"max_len must be in 1 \.\. max_seq_len=10, got 0"),
        (dict(max_len=11), r"max_len must be in 1 \.\. max_seq_len=10, got 11"),
        (dict(batch=0), "batch must be >= 1, got 0"),
        (dict(batch=-2), "batch must be >= 1, got -2"),
    ],
)
def test_bad_decoder_settings_are_refused(kwargs, message):
    model = make_model(tiny_config())
    with pytest.raises(ValueError, match=message):
        GPTDecoder(model, **kwargs)
    with pytest.raises(ValueError, match=message):
        model.incremental_decoder(**kwargs)


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.zeros((3, 2), np.int64), r"integer array \(batch=2, T >= 1\).*shape \(3, 2\)"),
        (np.zeros((1, 2), np.int64), r"batch=2.*shape \(1, 2\)"),
        (np.zeros(2, np.int64), r"batch=2.*shape \(2,\)"),
        (np.zeros((2, 1, 1), np.int64), r"batch=2.*shape \(2, 1, 1\)"),
        (np.zeros((2, 2), np.float64), "integer array.*dtype float64"),
        (np.zeros((2, 2), bool), "integer array.*dtype bool"),
        (np.zeros((2, 0), np.int64), r"T >= 1.*shape \(2, 0\)"),
        (np.array([[1, -1], [2, 3]]), "token id -1 is out of range for vocab_size 11"),
        (np.array([[1, 11], [2, 3]]), "token id 11 is out of range for vocab_size 11"),
        (np.array([[1, 2], [40, 3]]), "token id 40 is out of range for vocab_size 11"),
    ],
)
def test_bad_ids_are_refused_and_leave_the_decoder_usable(ids, message):
    model = make_model(tiny_config(), seed=8)
    good = np.array([[1, 2, 3], [4, 5, 6]])
    decoder = model.incremental_decoder(batch=2)
    decoder.step(good[:, :2])
    with pytest.raises(ValueError, match=message):
        decoder.step(ids)
    assert decoder.length == 2
    # the refused step left the cache as it was
    np.testing.assert_allclose(decoder.step(good[:, 2:]), last_logits(model, good), **F64_TOL)


def test_overflowing_max_len_is_refused_and_length_is_unchanged():
    model = make_model(tiny_config(), seed=9)
    ids = np.random.default_rng(9).integers(0, 11, size=(1, 6))
    decoder = model.incremental_decoder(batch=1, max_len=5)
    with pytest.raises(ValueError, match=r"0 cached \+ 6 new tokens exceed .*max_len=5.*reset"):
        decoder.step(ids)
    assert decoder.length == 0
    decoder.step(ids[:, :4])
    with pytest.raises(ValueError, match=r"4 cached \+ 2 new tokens exceed .*max_len=5"):
        decoder.step(ids[:, 4:6])
    assert decoder.length == 4
    np.testing.assert_allclose(decoder.step(ids[:, 4:5]), last_logits(model, ids[:, :5]), **F64_TOL)
    assert decoder.length == 5
    with pytest.raises(ValueError, match=r"5 cached \+ 1 new tokens exceed"):
        decoder.step(ids[:, 5:6])
    assert decoder.length == 5
    decoder.reset()
    np.testing.assert_allclose(
        decoder.step(ids[:, 1:6]), last_logits(model, ids[:, 1:6]), **F64_TOL
    )


# ---- BLAS threads -----------------------------------------------------------------------
def largest_block_weight(cfg: GPTConfig) -> int:
    """c_attn is (d, 3d), c_fc (d, d_ff), c_proj (d, d) and (d_ff, d)."""
    return max(cfg.d_model * 3 * cfg.d_model, cfg.d_model * cfg.d_ff)


def test_auto_blas_threads_is_one_for_a_small_model_and_blas_own_for_a_large_one(monkeypatch):
    cfg = tiny_config(d_model=8, d_ff=40, vocab_size=11)  # c_fc / c_proj: 320 elements
    model = make_model(cfg)
    assert model.blas_threads == "auto"
    assert largest_block_weight(cfg) == 320
    decoder = model.incremental_decoder()
    assert decoder._blas_threads() == 1
    monkeypatch.setattr(blas, "LARGE_WEIGHT", 321)
    assert decoder._blas_threads() == 1
    monkeypatch.setattr(blas, "LARGE_WEIGHT", 320)  # >= LARGE_WEIGHT: BLAS's own
    assert decoder._blas_threads() is None
    monkeypatch.setattr(blas, "LARGE_WEIGHT", 8)
    assert decoder._blas_threads() is None


def test_auto_blas_threads_counts_the_tied_head(monkeypatch):
    cfg = tiny_config(d_model=8, d_ff=40, vocab_size=400)  # wte / head: 3200 elements
    decoder = make_model(cfg).incremental_decoder()
    monkeypatch.setattr(blas, "LARGE_WEIGHT", 3200)  # above every block weight
    assert decoder._blas_threads() is None
    monkeypatch.setattr(blas, "LARGE_WEIGHT", 3201)
    assert decoder._blas_threads() == 1


@pytest.mark.parametrize("setting", [1, 2, 3, None])
def test_explicit_blas_threads_setting_is_used_as_it_is(monkeypatch, setting):
    model = make_model(tiny_config())
    model.blas_threads = setting
    decoder = model.incremental_decoder()
    assert decoder._blas_threads() == setting
    monkeypatch.setattr(blas, "LARGE_WEIGHT", 1)  # would be None under "auto"
    assert decoder._blas_threads() == setting


def blas_thread_counts() -> list[int]:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_context_manager_limits_blas_to_one_thread_and_restores_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not blas_thread_counts():
        pytest.skip("threadpoolctl finds no BLAS library")
    model = make_model(tiny_config(), seed=10)
    ids = np.array([[1, 2, 3]])
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        outside = blas_thread_counts()
        assert outside and all(n == 2 for n in outside)
        decoder = model.incremental_decoder()
        with decoder as entered:
            assert entered is decoder
            assert all(n == 1 for n in blas_thread_counts())
            np.testing.assert_allclose(decoder.step(ids), last_logits(model, ids), **F64_TOL)
        assert blas_thread_counts() == outside
        # restored on an exception too, and the decoder can be entered again
        with pytest.raises(RuntimeError, match="boom"), decoder:
            assert all(n == 1 for n in blas_thread_counts())
            raise RuntimeError("boom")
        assert blas_thread_counts() == outside
        with decoder:
            assert all(n == 1 for n in blas_thread_counts())
            with decoder:  # nested: the inner exit restores the outer limit, not BLAS's own
                assert all(n == 1 for n in blas_thread_counts())
            assert all(n == 1 for n in blas_thread_counts())
        assert blas_thread_counts() == outside
        model.blas_threads = None  # BLAS as it is
        with model.incremental_decoder():
            assert blas_thread_counts() == outside


# ---- generation -------------------------------------------------------------------------
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    prompt=st.integers(1, 9),
    extra=st.integers(1, 6),
    use_cache=st.booleans(),
)
def test_cropped_greedy_generation_equals_a_brute_force_loop(seed, batch, prompt, extra, use_cache):
    context = 5
    cfg = tiny_config(vocab_size=13, max_seq_len=context, n_layer=2, n_head=2, d_model=8)
    model = make_model(cfg, seed)
    ids = np.random.default_rng(seed).integers(0, 13, size=(batch, prompt))
    budget = max(context - prompt, 0) + extra  # prompt + budget > context: the window slides
    out = model.generate(ids, max_new_tokens=budget, crop_context=True, use_cache=use_cache)
    expected = ids
    for _ in range(budget):
        window = expected[:, -context:]
        token = last_logits(model, window).argmax(axis=-1)
        expected = np.concatenate([expected, token[:, None]], axis=1)
    np.testing.assert_array_equal(out, expected)


@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), prompt=st.integers(1, 4))
def test_greedy_generation_within_the_context_equals_a_brute_force_loop(seed, batch, prompt):
    cfg = tiny_config(vocab_size=13, max_seq_len=8)
    model = make_model(cfg, seed)
    ids = np.random.default_rng(seed).integers(0, 13, size=(batch, prompt))
    budget = 8 - prompt  # fills the context exactly: the decoder's max_len
    out = model.generate(ids, max_new_tokens=budget)
    expected = ids
    for _ in range(budget):
        token = last_logits(model, expected).argmax(axis=-1)
        expected = np.concatenate([expected, token[:, None]], axis=1)
    np.testing.assert_array_equal(out, expected)
