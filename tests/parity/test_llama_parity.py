"""numpyllm's Llama against transformers' LlamaForCausalLM (and Mistral, Qwen2), on random
perturbed weights.

Each example draws a small config (grouped-query, multi-query or multi-head attention, tied or
untied head, odd vocabularies, rope_theta from 3 to 1e6, the Llama / Mistral / Qwen2 layouts),
a padded batch and labels, builds the transformers model (dropout 0, eval mode), perturbs every
parameter, converts it with numpyllm.hf's Llama mapping and checks the logits at every real
position, the loss, every parameter's gradient against torch autograd, greedy generation
token by token, and checkpoint folders both ways.

float64. transformers computes three things in float32 whatever the model's dtype: the RMS
norm (``hidden_states.to(torch.float32)``), the rotary tables (``inv_freq`` and the angles
are float32) and eager attention's softmax. For float64 inputs each is a cast *down*, so
transformers' float64 Llama carries float32 rounding (``test_float64_is_float32_in_transformers``
pins this). The float64 reference is transformers with the norm and the rotary tables
computed in the input's dtype (``float64_reference``) and sdpa attention; everything else is
transformers' code unchanged. float32 runs transformers as it is, with eager attention.
"""

from __future__ import annotations

import contextlib
import importlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from numpyllm.hf import llama as hf_llama
from numpyllm.hf import load_llama
from numpyllm.models.llama import Llama, LlamaConfig
from tests.parity.conftest import (
    FLOAT32,
    FLOAT64,
    PRECISIONS,
    SKIP_TORCH,
    SKIP_TRANSFORMERS,
    assert_causal_loss_and_grads,
    assert_close,
    assert_mapping_exact,
    decided_steps,
    max_abs_diff,
    padding_masks,
    perturb_numpy,
    perturb_torch,
    to_numpy,
    torch_state,
)

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)

FAMILIES = {  # model_type -> (config class, causal-LM class, class-name prefix)
    "llama": ("LlamaConfig", "LlamaForCausalLM", "Llama"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "Mistral"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2"),
}


def _norm_in_input_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rope_in_input_dtype(self, x, position_ids):
    dim = self.inv_freq.shape[0] * 2
    base = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@contextlib.contextmanager
def float64_reference(enabled: bool):
    """Within the block, every family's RMS norm and rotary tables keep float64 in float64."""
    if not enabled:
        yield
        return
    saved = []
    for model_type, (_, _, prefix) in FAMILIES.items():
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        for name, patch in (("RMSNorm", _norm_in_input_dtype),
                            ("RotaryEmbedding", _rope_in_input_dtype)):  # fmt: skip
            cls = getattr(module, prefix + name)
            saved.append((cls, cls.forward))
            cls.forward = patch
    try:
        yield
    finally:
        for cls, forward in saved:
            cls.forward = forward


@st.composite
def llama_cases(draw, max_batch: int = 3, padded: bool = True, families=tuple(FAMILIES)):
    kv_heads = draw(st.integers(1, 2))
    heads = kv_heads * draw(st.sampled_from([1, 2, 3]))  # MHA, GQA; kv_heads 1 is MQA
    head_dim = draw(st.sampled_from([2, 4]))
    cfg = dict(
        vocab_size=draw(st.integers(3, 37)),
        hidden_size=heads * head_dim,
        intermediate_size=draw(st.integers(1, 12)),
        num_hidden_layers=draw(st.integers(1, 2)),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=16,
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
        rope_theta=draw(st.sampled_from([10000.0, 3.0, 1e6])),
        tie_word_embeddings=draw(st.booleans()),
    )
    family = draw(st.sampled_from(families))
    batch, seq_len = draw(st.integers(1, max_batch)), draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    ids = rng.integers(0, cfg["vocab_size"], (batch, seq_len))
    mask = padding_masks(draw, st, batch, seq_len) if padded else np.ones_like(ids)
    return family, cfg, ids, mask, draw(st.integers(0, 2**31 - 1))


def make_torch_llama(family: str, cfg: dict, seed: int, dtype, attention: str = "eager"):
    config_name, model_name, _ = FAMILIES[family]
    cfg = dict(cfg)
    theta = cfg.pop("rope_theta")
    config = getattr(transformers, config_name)(
        **cfg, rope_parameters={"rope_type": "default", "rope_theta": theta},
        attention_dropout=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    if family == "mistral":
        config.sliding_window = cfg["max_position_embeddings"]
    config._attn_implementation = attention
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    if not cfg["tie_word_embeddings"] and model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    perturb_torch(model, seed)
    return model.to(dtype)


def converted(theirs, dtype) -> Llama:
    return hf_llama.from_state(theirs.config.to_dict(), torch_state(theirs), dtype)


def tied_names(theirs) -> dict[str, str]:
    return dict(hf_llama.TIED) if theirs.config.tie_word_embeddings else {}


def language_model_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels = ids, -100 where the target or the position predicting it is padding."""
    labels = np.where(mask == 1, ids, -100)
    labels[:, 1:][mask[:, :-1] == 0] = -100
    labels[:, 0] = -100
    return labels


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=6)
@given(case=llama_cases())
def test_logits_loss_and_gradients_match(precision, case):
    family, cfg, ids, mask, seed = case
    labels = language_model_labels(ids, mask)
    assume((labels != -100).any())
    attention = "sdpa" if precision is FLOAT64 else "eager"
    theirs = make_torch_llama(family, cfg, seed, precision.torch_dtype, attention)
    ours = converted(theirs, precision.np_dtype)
    assert ours.config.attention_bias == (family == "qwen2")
    assert ours.config.n_kv_head == cfg["num_key_value_heads"]
    entries = hf_llama.tensor_map(ours.config)
    assert_mapping_exact(entries, ours, theirs, tied_names(theirs))

    out = ours(ids, labels=labels, attention_mask=mask)
    with float64_reference(precision is FLOAT64):
        ref = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    real = mask.astype(bool)
    assert out.logits.dtype == precision.np_dtype
    assert_close(out.logits[real], to_numpy(ref.logits)[real], precision.logits_atol, "logits")
    assert_causal_loss_and_grads(out, ref.logits, labels, ours, theirs, entries, precision)


@pytest.mark.parametrize("seq_len", [300, 600])
def test_long_sequences_through_causal_chunks_and_blocks_match(seq_len):
    """Sequences long enough that causal attention runs in chunks of query rows (T = 300)
    and in blocks with chunked diagonal blocks (T = 600, more than one default block of at
    most 512): float64 logits, loss and every gradient equal transformers' (sdpa: its eager
    attention takes the softmax in float32)."""
    cfg = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq_len,
               rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)  # fmt: skip
    ids = np.random.default_rng(seq_len).integers(0, cfg["vocab_size"], (2, seq_len))
    mask = np.ones_like(ids)
    theirs = make_torch_llama("llama", cfg, seed=3, dtype=FLOAT64.torch_dtype, attention="sdpa")
    ours = converted(theirs, FLOAT64.np_dtype)
    labels = language_model_labels(ids, mask)
    out = ours(ids, labels=labels)
    with float64_reference(True):
        ref = theirs(input_ids=torch.from_numpy(ids))
    assert_close(out.logits, to_numpy(ref.logits), FLOAT64.logits_atol, "logits")
    entries = hf_llama.tensor_map(ours.config)
    assert_causal_loss_and_grads(out, ref.logits, labels, ours, theirs, entries, FLOAT64)


@pytest.mark.parametrize("precision", PRECISIONS)
@settings(max_examples=3)
@given(case=llama_cases(max_batch=2, padded=False), new_tokens=st.integers(1, 6))
def test_greedy_generation_matches(precision, case, new_tokens):
    """Exactly the tokens of transformers' greedy ``generate`` (with its KV cache), and each
    step's logits from numpyllm's incremental decoder."""
    family, cfg, ids, _, seed = case
    attention = "sdpa" if precision is FLOAT64 else "eager"
    theirs = make_torch_llama(family, cfg, seed, precision.torch_dtype, attention)
    ours = converted(theirs, precision.np_dtype)
    with float64_reference(precision is FLOAT64):
        ref = theirs.generate(
            torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
            max_new_tokens=new_tokens, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
        ref_tokens = to_numpy(ref.sequences)
        full = to_numpy(theirs(torch.from_numpy(ref_tokens)).logits)
    ref_logits = [to_numpy(step) for step in ref.logits]

    decided = ids.shape[1] + decided_steps(ref_logits)
    tokens = ours.generate(ids, max_new_tokens=new_tokens)
    np.testing.assert_array_equal(tokens[:, :decided], ref_tokens[:, :decided])

    with ours.incremental_decoder(ids.shape[0], ref_tokens.shape[1]) as decoder:
        step_input = ids
        for step, expected in enumerate(ref_logits):
            logits = decoder.step(step_input)
            position = ids.shape[1] + step - 1
            assert_close(logits, expected, FLOAT32.logits_atol, f"step {step} scores")
            assert_close(logits, full[:, position], precision.logits_atol, f"step {step}")
            step_input = ref_tokens[:, position + 1][:, None]


def test_float64_is_float32_in_transformers():
    """Why the float64 tests patch the norm and the rotary tables: unpatched, transformers'
    float64 Llama differs from numpyllm's by float32 rounding; patched, by float64 rounding."""
    cfg = dict(vocab_size=17, hidden_size=8, intermediate_size=10, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
               rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)  # fmt: skip
    theirs = make_torch_llama("llama", cfg, 11, torch.float64, "sdpa")
    ours = converted(theirs, np.float64)
    ids = np.array([[3, 9, 4, 16, 2, 7, 7, 1]])
    logits = ours(ids).logits
    plain = max_abs_diff(logits, to_numpy(theirs(torch.from_numpy(ids)).logits))
    with float64_reference(True):
        patched = max_abs_diff(logits, to_numpy(theirs(torch.from_numpy(ids)).logits))
    assert patched <= FLOAT64.logits_atol
    assert 10 * FLOAT64.logits_atol < plain <= FLOAT32.logits_atol


# ---------------------------------------------------------------------- checkpoint folders
def _quiet(load):
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return load()
    finally:
        transformers.logging.set_verbosity(verbosity)


@pytest.mark.parametrize(
    "family, tied, kv_heads, shards",
    [("llama", False, 1, False), ("llama", True, 2, True), ("qwen2", True, 1, False),
     ("mistral", False, 2, False)],
)  # fmt: skip
def test_transformers_folder_loads_with_equal_logits(tmp_path, family, tied, kv_heads, shards):
    """LlamaForCausalLM / Qwen2 / Mistral folders written by transformers (one file or
    shards) load with transformers' logits, through load_llama and Llama.from_pretrained."""
    cfg = dict(vocab_size=23, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=16,
               rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=tied)  # fmt: skip
    theirs = make_torch_llama(family, cfg, 5, torch.float32)
    theirs.save_pretrained(tmp_path, max_shard_size="1KB" if shards else "5GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == shards
    ids = np.array([[1, 5, 7, 2, 22, 0]])
    expected = to_numpy(theirs(torch.from_numpy(ids)).logits)
    ours = Llama.from_pretrained(tmp_path)
    assert not ours.training
    assert ours.config.rope_theta == 500.0 and ours.config.tie_word_embeddings == tied
    assert_close(ours(ids).logits, expected, FLOAT32.logits_atol, "from_pretrained logits")
    assert_close(load_llama(tmp_path, dtype=np.float64)(ids).logits, expected,
                 FLOAT32.logits_atol, "float64 load")  # fmt: skip


@pytest.mark.parametrize("tied, kv_heads, bias", [(False, 2, False), (True, 1, False),
                                                  (False, 4, True)])  # fmt: skip
def test_numpyllm_folder_loads_in_transformers_with_equal_logits(tmp_path, tied, kv_heads, bias):
    """save_pretrained writes what LlamaForCausalLM (Qwen2ForCausalLM with biases) loads with
    equal logits, and numpyllm reads it back bit for bit."""
    config = LlamaConfig(vocab_size=19, n_layer=2, n_head=4, d_model=8, max_seq_len=12,
                         n_kv_head=kv_heads, rope_theta=77.0, tie_word_embeddings=tied,
                         attention_bias=bias)  # fmt: skip
    ours = Llama(config, np.random.default_rng(3))
    perturb_numpy(ours, np.random.default_rng(4))
    ours.save_pretrained(tmp_path)
    cls = transformers.Qwen2ForCausalLM if bias else transformers.LlamaForCausalLM
    theirs = _quiet(lambda: cls.from_pretrained(tmp_path, attn_implementation="eager").eval())
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [18, 0, 2, 7, 1, 8, 2, 8]])
    assert_close(to_numpy(theirs(torch.from_numpy(ids)).logits), ours(ids).logits,
                 FLOAT32.logits_atol, "transformers on numpyllm's folder")  # fmt: skip
    again = load_llama(tmp_path)
    for (name, p), (_, q) in zip(ours.named_parameters(), again.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    if not bias:  # the file is a Llama file whatever the reader
        assert theirs.config.model_type == "llama"


def test_unsupported_settings_are_refused_by_name():
    base = dict(model_type="llama", vocab_size=5, hidden_size=4, num_attention_heads=2,
                num_hidden_layers=1, intermediate_size=4)  # fmt: skip
    for extra, words in [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "yarn"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"head_dim": 4}, "head_dim"),
        ({"model_type": "gemma"}, "gemma"),
    ]:
        with pytest.raises(ValueError, match=words):
            hf_llama.config_from_hf({**base, **extra})


def test_mistral_sliding_window_shorter_than_the_sequence_is_refused():
    hf = dict(model_type="mistral", vocab_size=7, hidden_size=4, num_attention_heads=2,
              num_key_value_heads=1, num_hidden_layers=1, intermediate_size=4,
              max_position_embeddings=64, sliding_window=5)  # fmt: skip
    model = Llama(hf_llama.config_from_hf(hf))
    model(np.zeros((1, 5), dtype=np.int64))  # within the window: exact
    with pytest.raises(ValueError, match="sliding_window=5"):
        model(np.zeros((1, 6), dtype=np.int64))
    with pytest.raises(ValueError, match="sliding_window=5"):
        model.generate(np.zeros((1, 4), dtype=np.int64), max_new_tokens=3)
