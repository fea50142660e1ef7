"""model.generate for GPT and T5: the KV cache changes the cost, never the tokens."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm import GPT, T5, GPTConfig, T5Config


def perturbed(model, seed):
    """Move every parameter away from its init (zero biases and unit norms hide bugs)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data += rng.standard_normal(p.shape).astype(p.dtype) * 0.3
    return model.eval()


def tiny_gpt(seed=0, max_seq_len=24):
    config = GPTConfig(vocab_size=23, n_layer=2, n_head=2, d_model=16, max_seq_len=max_seq_len)
    return perturbed(GPT(config, rng=np.random.default_rng(seed)), seed)


def tiny_t5(seed=0):
    config = T5Config(vocab_size=19, d_model=16, d_kv=4, d_ff=24, n_layer=2, n_head=2)
    return perturbed(T5(config, rng=np.random.default_rng(seed)), seed)


@given(seed=st.integers(0, 50), batch=st.integers(1, 3), prompt=st.integers(1, 6))
def test_gpt_greedy_with_cache_equals_recomputing(seed, batch, prompt):
    model = tiny_gpt(seed)
    ids = np.random.default_rng(seed).integers(0, 23, size=(batch, prompt))
    cached = model.generate(ids, max_new_tokens=10)
    recomputed = model.generate(ids, max_new_tokens=10, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)
    assert cached.shape == (batch, prompt + 10)
    np.testing.assert_array_equal(cached[:, :prompt], ids)


def test_gpt_greedy_token_is_the_argmax_of_a_full_forward():
    model = tiny_gpt(1)
    ids = np.array([[3, 7, 1]])
    out = model.generate(ids, max_new_tokens=5)
    for t in range(3, 8):
        logits = model(out[:, :t]).logits[:, -1]
        assert out[0, t] == logits.argmax()


@given(seed=st.integers(0, 50), batch=st.integers(1, 3))
def test_t5_greedy_with_cache_equals_recomputing(seed, batch):
    model = tiny_t5(seed)
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 19, size=(batch, 5))
    mask = np.ones_like(ids)
    mask[:, 4:] = rng.integers(0, 2, size=(batch, 1))  # some rows padded at the end
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=-1)
    recomputed = model.generate(
        ids, attention_mask=mask, max_new_tokens=8, eos_token_id=-1, use_cache=False
    )
    np.testing.assert_array_equal(cached, recomputed)
    assert (cached[:, 0] == model.config.decoder_start_token_id).all()


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_gpt(2)
    ids = np.array([[1, 2, 3]])
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.3, top_k=10, top_p=0.9)
    a = model.generate(ids, seed=7, **kwargs)
    b = model.generate(ids, seed=7, **kwargs)
    np.testing.assert_array_equal(a, b)
    others = [model.generate(ids, seed=s, **kwargs) for s in range(8, 12)]
    assert any(not np.array_equal(a, o) for o in others)
    t5 = tiny_t5(2)
    np.testing.assert_array_equal(
        t5.generate(ids, seed=3, **kwargs), t5.generate(ids, seed=3, **kwargs)
    )


def test_eos_stops_and_finished_rows_are_padded():
    model = tiny_gpt(3)
    ids = np.array([[1, 2], [4, 5]])
    free = model.generate(ids, max_new_tokens=6)
    eos = int(free[0, 3])  # the second token row 0 produces
    out = model.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    first = np.flatnonzero(out[0, 2:] == eos)[0] + 2
    assert (out[0, first + 1 :] == 0).all()
    if not (out[1, 2:] == eos).any():
        assert out.shape[1] == 8


def test_context_limit_is_an_error_unless_cropping_is_asked_for():
    model = tiny_gpt(4, max_seq_len=8)
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    with pytest.raises(ValueError, match="context length 8.*crop_context"):
        model.generate(ids, max_new_tokens=5)
    out = model.generate(ids, max_new_tokens=5, crop_context=True)
    assert out.shape == (1, 11)
    # with cropping, each new token is the argmax given the last 8 tokens only
    for t in range(8, 11):
        window = out[:, t - 8 : t] if t > 8 else out[:, :t]
        assert out[0, t] == model(window).logits[0, -1].argmax()


def test_bad_prompts_give_clear_errors():
    model = tiny_gpt(5)
    with pytest.raises(ValueError, match="out of range"):
        model.generate(np.array([[1, 99]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="integer"):
        model.generate(np.array([[0.5, 1.0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="shorter than the prompt"):
        model.generate(np.array([[1, 2, 3]]), max_length=2)


def test_generate_restores_training_mode():
    model = tiny_gpt(6).train()
    model.generate(np.array([[1]]), max_new_tokens=2)
    assert model.training
