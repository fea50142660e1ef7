"""numpyllm's T5 against transformers' T5ForConditionalGeneration, on random perturbed weights.

Each example draws a small T5 config (relu or gated-gelu feed-forward, tied-and-rescaled or
separate output head), a padded encoder batch and labels, builds the transformers model (eager
attention, dropout 0, eval mode), perturbs every parameter, converts it with numpyllm.hf's T5
mapping, and checks the encoder states, logits, loss and every parameter's gradient; greedy
generation gives transformers' tokens and per-step logits.

float64 and T5's norm. transformers' T5LayerNorm computes the variance as
``hidden_states.to(torch.float32).pow(2).mean(-1)``: meant as an upcast from half precision, it
is a cast *down* for float64, so transformers' float64 T5 carries float32 rounding (~1e-7 in
the logits; ``test_float64_norm_is_float32_in_transformers`` pins this). For the float64
comparisons the reference is transformers with that one line computing the variance in the
input's own dtype (``float64_t5_norm``); everything else is transformers' code unchanged.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numpyllm.generation import generate_encoder_decoder
from numpyllm.hf import load_t5
from numpyllm.hf import t5 as hf_t5
from tests.parity.conftest import (
    FLOAT32,
    FLOAT64,
    PRECISIONS,
    SKIP_TORCH,
    SKIP_TRANSFORMERS,
    assert_close,
    assert_grads_match,
    assert_mapping_exact,
    decided_steps,
    max_abs_diff,
    padding_masks,
    perturb_torch,
    to_numpy,
    torch_state,
)

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)
T5LayerNorm = transformers.models.t5.modeling_t5.T5LayerNorm


def _norm_in_input_dtype(self, hidden_states):
    """transformers' T5LayerNorm.forward with the variance in the input's dtype."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def float64_t5_norm(enabled: bool):
    """Within the block, T5LayerNorm keeps float64 inputs in float64 (see the module docstring)."""
    if not enabled:
        yield
        return
    original = T5LayerNorm.forward
    T5LayerNorm.forward = _norm_in_input_dtype
    try:
        yield
    finally:
        T5LayerNorm.forward = original


@st.composite
def t5_cases(draw, max_batch: int = 3):
    n_head = draw(st.integers(1, 3))
    buckets = draw(st.integers(4, 12))
    cfg = dict(
        vocab_size=draw(st.integers(3, 40)),
        d_model=draw(st.integers(4, 12)),
        d_kv=draw(st.integers(1, 4)),
        num_heads=n_head,
        d_ff=draw(st.integers(1, 12)),
        num_layers=draw(st.integers(1, 2)),
        num_decoder_layers=draw(st.integers(1, 2)),
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=draw(st.integers(buckets // 2 + 1, 20)),
        feed_forward_proj=draw(st.sampled_from(["relu", "gated-gelu"])),
        layer_norm_epsilon=draw(st.sampled_from([1e-6, 1e-3])),
    )
    tied = draw(st.booleans())
    batch = draw(st.integers(1, max_batch))
    src_len, tgt_len = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    vocab = cfg["vocab_size"]
    ids = np.array(draw(st.lists(st.integers(0, vocab - 1), min_size=batch * src_len,
                                 max_size=batch * src_len))).reshape(batch, src_len)  # fmt: skip
    mask = padding_masks(draw, st, batch, src_len)
    labels = np.array(draw(st.lists(st.integers(-1, vocab - 1), min_size=batch * tgt_len,
                                    max_size=batch * tgt_len))).reshape(batch, tgt_len)  # fmt: skip
    labels[labels == -1] = -100  # some positions not scored
    seed = draw(st.integers(0, 2**31 - 1))
    return cfg, tied, ids, mask, labels, seed


def make_torch_t5(cfg: dict, tied: bool, seed: int, dtype):
    """A T5ForConditionalGeneration with perturbed weights. ``tied``: the original T5 (head =
    shared embedding, decoder output rescaled); else T5 v1.1's separate, unscaled head."""
    config = transformers.T5Config(
        **cfg, dropout_rate=0.0, tie_word_embeddings=tied, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(config).eval()
    if not tied and model.lm_head.weight is model.shared.weight:
        # transformers 5 keeps the head tied for a fresh model; a v1.1 checkpoint's is its own
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    perturb_torch(model, seed)
    return model.to(dtype)


def tied_names(model) -> dict[str, str]:
    tied = dict(hf_t5.TIED)
    if model.lm_head.weight is model.shared.weight:
        tied[hf_t5.LM_HEAD] = "shared.weight"
    return tied


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=8)
@given(case=t5_cases())
def test_logits_loss_and_gradients_match(precision, case):
    cfg, tied, ids, mask, labels, seed = case
    assume((labels != -100).any())
    theirs = make_torch_t5(cfg, tied, seed, precision.torch_dtype)
    ours = hf_t5.from_state(theirs.config.to_dict(), torch_state(theirs), precision.np_dtype)
    assert ours.config.tie_word_embeddings == tied
    entries = hf_t5.tensor_map(ours.config)
    assert_mapping_exact(entries, ours, theirs, tied_names(theirs))

    out = ours(ids, labels=labels, attention_mask=mask)
    with float64_t5_norm(precision is FLOAT64):
        ref = theirs(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            labels=torch.from_numpy(labels),
        )
        atol = precision.logits_atol
        assert out.logits.dtype == precision.np_dtype
        assert_close(out.encoder_hidden_states, to_numpy(ref.encoder_last_hidden_state), atol,
                     "encoder states")  # fmt: skip
        assert_close(out.logits, to_numpy(ref.logits), atol, "logits")
        assert abs(out.loss - ref.loss.item()) <= atol

        ours.zero_grad()
        ours.backward()
        ref.loss.backward()
    assert_grads_match(entries, ours, theirs, precision.grad_rtol)


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=5)
@given(case=t5_cases(max_batch=2), new_tokens=st.integers(1, 6))
def test_greedy_generation_matches(precision, case, new_tokens):
    """Exactly transformers' greedy tokens (start token, eos 1 then pad 0 for finished rows),
    and each step's logits: against generate's reported scores (which transformers casts to
    float32) to float32 rounding, and against transformers' forward over the generated
    sequence at full precision."""
    cfg, tied, ids, mask, _, seed = case
    # transformers 5's generate sizes its decoder cache by num_layers (the encoder's depth),
    # and fails with an IndexError when the decoder is deeper: keep the two depths equal here
    cfg = {**cfg, "num_decoder_layers": cfg["num_layers"]}
    theirs = make_torch_t5(cfg, tied, seed, precision.torch_dtype)
    ours = hf_t5.from_state(theirs.config.to_dict(), torch_state(theirs), precision.np_dtype)
    src, src_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with float64_t5_norm(precision is FLOAT64):
        ref = theirs.generate(
            src, attention_mask=src_mask, max_new_tokens=new_tokens, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        ref_tokens = to_numpy(ref.sequences)
        full = to_numpy(
            theirs(input_ids=src, attention_mask=src_mask,
                   decoder_input_ids=ref.sequences).logits
        )  # fmt: skip
    ref_logits = [to_numpy(step) for step in ref.logits]

    decided = 1 + decided_steps(ref_logits)  # the start token, then the decided steps
    tokens = generate_encoder_decoder(ours, ids, attention_mask=mask, max_new_tokens=new_tokens)
    if decided == ref_tokens.shape[1]:
        assert tokens.shape == ref_tokens.shape
    np.testing.assert_array_equal(tokens[:, :decided], ref_tokens[:, :decided])
    if hasattr(ours, "generate"):
        again = ours.generate(ids, attention_mask=mask, max_new_tokens=new_tokens)
        np.testing.assert_array_equal(again[:, :decided], ref_tokens[:, :decided])

    encoded = ours.encode(ids, attention_mask=mask)
    past = None
    for step, expected in enumerate(ref_logits):
        out = ours(attention_mask=mask, decoder_input_ids=ref_tokens[:, step : step + 1],
                   encoder_outputs=encoded, past_key_values=past, use_cache=True)  # fmt: skip
        assert_close(out.logits[:, -1], expected, FLOAT32.logits_atol, f"step {step} scores")
        assert_close(out.logits[:, -1], full[:, step], precision.logits_atol, f"step {step}")
        past = out.past_key_values


def test_float64_norm_is_float32_in_transformers():
    """Why the float64 tests patch T5LayerNorm: unpatched, transformers' float64 T5 differs
    from numpyllm's by float32 rounding, not by float64 rounding; patched, they agree."""
    cfg = dict(vocab_size=17, d_model=8, d_kv=2, num_heads=2, d_ff=10, num_layers=1,
               num_decoder_layers=1, relative_attention_num_buckets=8,
               relative_attention_max_distance=12, feed_forward_proj="relu",
               layer_norm_epsilon=1e-6)  # fmt: skip
    theirs = make_torch_t5(cfg, True, 11, torch.float64)
    ours = hf_t5.from_state(theirs.config.to_dict(), torch_state(theirs), np.float64)
    ids, dec = np.array([[3, 9, 4, 16, 2]]), np.array([[0, 5, 8]])
    inputs = dict(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec))
    logits = ours(ids, decoder_input_ids=dec).logits
    plain = max_abs_diff(logits, to_numpy(theirs(**inputs).logits))
    with float64_t5_norm(True):
        patched = max_abs_diff(logits, to_numpy(theirs(**inputs).logits))
    assert patched <= FLOAT64.logits_atol
    assert 10 * FLOAT64.logits_atol < plain <= FLOAT32.logits_atol  # float32 rounding (~1e-7)


def test_from_pretrained_and_load_t5_agree(tmp_path):
    cfg = dict(vocab_size=19, d_model=8, d_kv=2, num_heads=2, d_ff=10, num_layers=2,
               num_decoder_layers=1, relative_attention_num_buckets=8,
               relative_attention_max_distance=12, feed_forward_proj="gated-gelu",
               layer_norm_epsilon=1e-6)  # fmt: skip
    theirs = make_torch_t5(cfg, False, 7, torch.float32)
    theirs.save_pretrained(tmp_path)
    ids, dec = np.array([[3, 9, 4, 18, 2]]), np.array([[0, 5, 8]])
    expected = to_numpy(
        theirs(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec)).logits
    )
    ours = load_t5(tmp_path)
    assert not ours.config.tie_word_embeddings
    assert_close(ours(ids, decoder_input_ids=dec).logits, expected, 1e-4, "load_t5 logits")
    from numpyllm.models.t5 import T5

    if hasattr(T5, "from_pretrained"):
        again = T5.from_pretrained(tmp_path)
        assert_close(again(ids, decoder_input_ids=dec).logits, expected, 1e-4, "from_pretrained")
    if hasattr(ours, "save_pretrained"):  # and back through the model's own method
        ours.save_pretrained(tmp_path / "again")
        cls = transformers.T5ForConditionalGeneration
        theirs_again = cls.from_pretrained(tmp_path / "again").eval()
        inputs = dict(input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec))
        assert_close(to_numpy(theirs_again(**inputs).logits), expected, 1e-4, "saved")
