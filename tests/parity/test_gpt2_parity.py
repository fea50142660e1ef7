"""numpyllm's GPT against transformers' GPT2LMHeadModel, on random perturbed weights.

Each example draws a small GPT-2 config and a padded batch, builds the transformers model
(eager attention, dropout 0, eval mode), perturbs every parameter, converts it with
numpyllm.hf's GPT-2 mapping, and checks: logits at every real (non-padded) position, the loss,
and every parameter's gradient; greedy generation gives the same tokens, and each step's
logits agree with those transformers' ``generate`` reports.

Padded positions: a query whose every key is padding sees nothing in numpyllm (its attention
output is zero) and a uniform average in transformers; both are meaningless, so logits are
compared only where attention_mask is 1, and labels are -100 wherever the predicting position
or the target is padding, so no loss or gradient flows through such a position.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numpyllm.generation import generate_decoder_only
from numpyllm.hf import gpt2 as hf_gpt2
from numpyllm.hf import load_gpt2
from tests.parity.conftest import (
    FLOAT32,
    PRECISIONS,
    SKIP_TORCH,
    SKIP_TRANSFORMERS,
    assert_causal_loss_and_grads,
    assert_close,
    assert_mapping_exact,
    decided_steps,
    padding_masks,
    perturb_torch,
    to_numpy,
    torch_state,
)

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)

ACTIVATIONS = ["gelu_new", "gelu", "relu", "gelu_pytorch_tanh"]


@st.composite
def gpt2_cases(draw, max_batch: int = 3, padded: bool = True):
    n_head = draw(st.integers(1, 3))
    seq_len = draw(st.integers(2, 8))
    cfg = dict(
        vocab_size=draw(st.integers(3, 40)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        # width >= 4: a LayerNorm over 1 or 2 features has (near) zero gradient, which
        # would turn the gradient comparison into one of rounding noise
        n_embd=n_head * draw(st.integers(-(-4 // n_head), 4)),
        n_positions=seq_len + draw(st.integers(0, 6)),
        n_inner=draw(st.one_of(st.none(), st.integers(1, 12))),
        activation_function=draw(st.sampled_from(ACTIVATIONS)),
        layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3])),
    )
    batch = draw(st.integers(1, max_batch))
    n = batch * seq_len
    tokens = draw(st.lists(st.integers(0, cfg["vocab_size"] - 1), min_size=n, max_size=n))
    ids = np.array(tokens, dtype=np.int64).reshape(batch, seq_len)
    mask = padding_masks(draw, st, batch, seq_len) if padded else np.ones_like(ids)
    seed = draw(st.integers(0, 2**31 - 1))
    return cfg, ids, mask, seed


def make_torch_gpt2(cfg: dict, seed: int, dtype):
    config = transformers.GPT2Config(
        **cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
        eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    perturb_torch(model, seed)
    return model.to(dtype)


def language_model_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels = ids, with -100 where the target is padding or the position predicting it
    (t - 1, after transformers' shift) is padding."""
    labels = np.where(mask == 1, ids, -100)
    labels[:, 1:][mask[:, :-1] == 0] = -100
    labels[:, 0] = -100  # never a target
    return labels


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=8)
@given(case=gpt2_cases())
def test_logits_loss_and_gradients_match(precision, case):
    cfg, ids, mask, seed = case
    labels = language_model_labels(ids, mask)
    assume((labels != -100).any())
    theirs = make_torch_gpt2(cfg, seed, precision.torch_dtype)
    ours = hf_gpt2.from_state(theirs.config.to_dict(), torch_state(theirs), precision.np_dtype)
    entries = hf_gpt2.tensor_map(ours.config)
    assert_mapping_exact(entries, ours, theirs, hf_gpt2.TIED)

    out = ours(ids, labels=labels, attention_mask=mask)
    ref = theirs(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        labels=torch.from_numpy(labels),
    )
    assert out.logits.dtype == precision.np_dtype
    real = mask.astype(bool)
    assert_close(out.logits[real], to_numpy(ref.logits)[real], precision.logits_atol, "logits")
    # transformers' causal-LM loss runs `logits.float()` first: for float64 logits that is a
    # cast DOWN to float32, so its loss carries float32 rounding (~1e-7). The float64 reference
    # is therefore the same shifted cross-entropy computed by torch in the logits' own dtype;
    # transformers' own loss must agree with it to float32 precision.
    ref_loss = assert_causal_loss_and_grads(out, ref.logits, labels, ours, theirs, entries,
                                            precision)  # fmt: skip
    assert abs(ref_loss.item() - ref.loss.item()) <= 1e-5 * max(1.0, abs(ref_loss.item()))


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=5)
@given(case=gpt2_cases(max_batch=2, padded=False), new_tokens=st.integers(1, 6))
def test_greedy_generation_matches(precision, case, new_tokens):
    """Exactly the tokens of transformers' greedy ``generate``, and the same logits per step
    (numpyllm's with its KV cache, transformers' from ``output_logits``)."""
    cfg, ids, _, seed = case
    cfg = {**cfg, "n_positions": ids.shape[1] + new_tokens}
    theirs = make_torch_gpt2(cfg, seed, precision.torch_dtype)
    ours = hf_gpt2.from_state(theirs.config.to_dict(), torch_state(theirs), precision.np_dtype)

    ref = theirs.generate(
        torch.from_numpy(ids), max_new_tokens=new_tokens, do_sample=False,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    ref_tokens = to_numpy(ref.sequences)
    ref_logits = [to_numpy(step) for step in ref.logits]

    decided = ids.shape[1] + decided_steps(ref_logits)
    tokens = generate_decoder_only(ours, ids, max_new_tokens=new_tokens)
    np.testing.assert_array_equal(tokens[:, :decided], ref_tokens[:, :decided])
    if hasattr(ours, "generate"):
        tokens = ours.generate(ids, max_new_tokens=new_tokens)
        np.testing.assert_array_equal(tokens[:, :decided], ref_tokens[:, :decided])

    # Per-step logits, numpyllm stepping with its KV cache and fed the reference tokens.
    # transformers' generate hands out each step's logits cast to float32 (whatever the model's
    # dtype), so they are compared to float32 rounding; the float64 check at full precision is
    # against transformers' own forward over the whole generated sequence.
    full = to_numpy(theirs(torch.from_numpy(ref_tokens)).logits)
    past, step_input = None, ids
    for step, expected in enumerate(ref_logits):
        out = ours(step_input, past_key_values=past, use_cache=True)
        position = ids.shape[1] + step - 1
        assert_close(out.logits[:, -1], expected, FLOAT32.logits_atol, f"step {step} scores")
        assert_close(
            out.logits[:, -1], full[:, position], precision.logits_atol, f"step {step} logits"
        )
        past = out.past_key_values
        step_input = ref_tokens[:, position + 1][:, None]


def test_from_pretrained_and_load_gpt2_agree(tmp_path):
    """The loader reads a folder transformers wrote; GPT.from_pretrained (when the model class
    has it) is the same loader."""
    cfg = dict(vocab_size=11, n_layer=2, n_head=2, n_embd=6, n_positions=9, n_inner=None,
               activation_function="gelu_new", layer_norm_epsilon=1e-5)  # fmt: skip
    theirs = make_torch_gpt2(cfg, 3, torch.float32)
    theirs.save_pretrained(tmp_path)
    ids = np.array([[1, 5, 7, 2, 10]])
    expected = to_numpy(theirs(torch.from_numpy(ids)).logits)
    ours = load_gpt2(tmp_path)
    assert not ours.training
    assert_close(ours(ids).logits, expected, 1e-4, "load_gpt2 logits")
    from numpyllm.models.gpt import GPT

    if hasattr(GPT, "from_pretrained"):
        assert_close(GPT.from_pretrained(tmp_path)(ids).logits, expected, 1e-4, "from_pretrained")
    if hasattr(ours, "save_pretrained"):  # and back through the model's own method
        ours.save_pretrained(tmp_path / "again")
        again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "again").eval()
        assert_close(to_numpy(again(torch.from_numpy(ids)).logits), expected, 1e-4, "saved")
