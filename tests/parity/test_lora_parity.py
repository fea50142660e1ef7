"""numpyllm's LoRA against Hugging Face peft on tiny float64 models: logits with an adapter,
the adapters' gradients against torch autograd, merged against unmerged, and adapter folders
read both ways (peft loads ours, we load peft's)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import numpyllm as nl
from tests.parity.conftest import SKIP_TORCH, SKIP_TRANSFORMERS, to_numpy
from tests.parity.test_t5_parity import float64_t5_norm

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)
peft = pytest.importorskip("peft", reason="the LoRA parity tests compare with peft")

TOL = 1e-9


def hf_gpt2(tmp_path):
    config = transformers.GPT2Config(vocab_size=23, n_layer=2, n_head=2, n_embd=8,
                                     n_positions=12, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    model.save_pretrained(tmp_path / "base")
    ours = nl.GPT.from_pretrained(tmp_path / "base", dtype=np.float64)
    return model, ours


def hf_bert(tmp_path):
    config = transformers.BertConfig(vocab_size=23, hidden_size=8, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=12,
                                     max_position_embeddings=12, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).double().eval()
    model.save_pretrained(tmp_path / "base")
    return model, nl.BERT.from_pretrained(tmp_path / "base", dtype=np.float64)


def hf_t5(tmp_path):
    config = transformers.T5Config(
        vocab_size=23, d_model=8, d_kv=4, d_ff=12, num_layers=2, num_heads=2, dropout_rate=0.0,
        decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).double().eval()
    model.save_pretrained(tmp_path / "base")
    return model, nl.T5.from_pretrained(tmp_path / "base", dtype=np.float64)


def randomize_adapters(pm, seed: int = 1) -> None:
    """B starts at zero; give A and B random values so every term of the update counts."""
    rng = np.random.default_rng(seed)
    for p in pm.trainable_parameters():
        p.data[...] = rng.normal(0.0, 0.3, p.shape)


def torch_logits(model, ids, kind):
    ids_t = torch.tensor(ids)
    if kind == "t5":
        return model(input_ids=ids_t, decoder_input_ids=ids_t).logits
    return model(input_ids=ids_t).logits


def our_logits(model, ids, kind):
    if kind == "t5":
        return model(ids, decoder_input_ids=ids).logits
    return model(ids).logits


MODELS = {
    "gpt2": (hf_gpt2, ["c_attn", "c_proj"]),
    "bert": (hf_bert, ["query", "value", "dense"]),
    "t5": (hf_t5, ["q", "v", "wo"]),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_peft_loads_our_adapter_with_equal_logits_and_merges_alike(kind, tmp_path):
    build, targets = MODELS[kind]
    theirs, ours = build(tmp_path)
    pm = nl.peft.get_peft_model(ours, nl.peft.LoraConfig(r=2, lora_alpha=6, target_modules=targets))
    randomize_adapters(pm)
    pm.save_pretrained(tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(theirs, tmp_path / "adapter").eval()
    ids = np.random.default_rng(0).integers(0, 23, size=(2, 7))
    ours_logits = our_logits(pm.eval(), ids, kind)
    # transformers' T5 norm rounds float64 through float32: kept in float64 here
    in_float64 = float64_t5_norm(True) if kind == "t5" else contextlib.nullcontext()
    with torch.no_grad(), in_float64:
        theirs_logits = to_numpy(torch_logits(loaded, ids, kind))
        theirs_merged = to_numpy(torch_logits(loaded.merge_and_unload(), ids, kind))
    assert np.max(np.abs(ours_logits - theirs_logits)) < TOL

    merged = pm.merge_and_unload()
    assert not any(isinstance(m, nl.nn.lora.LoraLinear) for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())  # as before the adapter
    assert np.max(np.abs(our_logits(merged, ids, kind) - ours_logits)) < TOL
    assert np.max(np.abs(our_logits(merged, ids, kind) - theirs_merged)) < TOL


def test_lora_gradients_equal_torch_autograd(tmp_path):
    theirs, ours = hf_gpt2(tmp_path)
    config = nl.peft.LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn", "c_proj", "c_fc"])
    pm = nl.peft.get_peft_model(ours, config)
    randomize_adapters(pm)
    pm.save_pretrained(tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(theirs, tmp_path / "adapter", is_trainable=True)
    ids = np.random.default_rng(2).integers(0, 23, size=(3, 9))
    out = pm(ids, labels=ids)
    pm.backward()
    logits = loaded(input_ids=torch.tensor(ids)).logits  # float64 (its own loss is float32)
    targets = torch.tensor(ids[:, 1:]).reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 23), targets)
    loss.backward()
    assert abs(out.loss - loss.item()) < TOL
    grads = {name.replace(".default", ""): to_numpy(p.grad)
             for name, p in loaded.named_parameters() if p.requires_grad}  # fmt: skip
    layers = {f"base_model.model.{info.hf}": lora for info, lora in pm.lora_layers()}
    assert len(grads) == 2 * len(layers) == 16
    for prefix, lora in layers.items():
        for part, param in (("lora_A", lora.lora_A), ("lora_B", lora.lora_B)):
            expected = grads[f"{prefix}.{part}.weight"]
            scale = np.max(np.abs(expected))
            assert scale > 1e-3  # every gradient really is exercised
            assert np.max(np.abs(param.grad - expected)) < TOL * max(1.0, scale), prefix
    for name, p in pm.named_parameters():
        assert (p.grad is None) == ("lora_" not in name), name


def test_we_load_a_peft_adapter_with_equal_logits(tmp_path):
    theirs, ours = hf_gpt2(tmp_path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                             init_lora_weights=False, fan_in_fan_out=True)  # fmt: skip
    torch.manual_seed(3)
    theirs_peft = peft.get_peft_model(theirs, config).eval()
    theirs_peft.save_pretrained(tmp_path / "theirs")
    pm = nl.peft.PeftModel.from_pretrained(ours, tmp_path / "theirs")
    assert pm.peft_config.r == 4 and pm.peft_config.scaling == 2.0
    ids = np.random.default_rng(4).integers(0, 23, size=(2, 6))
    with torch.no_grad():
        expected = to_numpy(theirs_peft(input_ids=torch.tensor(ids)).logits)
    assert np.max(np.abs(pm.eval()(ids).logits - expected)) < TOL


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_match_peft_in_file_logits_and_gradients(bias, tmp_path):
    """bias="all" / "lora_only": the same biases train as in peft, under peft's key names in
    the adapter file, with equal logits and equal gradients both ways."""
    theirs, ours = hf_gpt2(tmp_path / "a")
    config = nl.peft.LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn", "c_fc"], bias=bias)
    pm = nl.peft.get_peft_model(ours, config)
    randomize_adapters(pm)  # the trained biases too, so that the file must carry them
    pm.save_pretrained(tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(theirs, tmp_path / "ours", is_trainable=True)
    trained = {name.replace(".default", ""): p
               for name, p in loaded.named_parameters() if p.requires_grad}  # fmt: skip
    assert set(trained) == set(pm.adapter_state_dict())  # same parameters, same names
    ids = np.random.default_rng(2).integers(0, 23, size=(3, 9))
    out = pm(ids, labels=ids)
    pm.backward()
    logits = loaded(input_ids=torch.tensor(ids)).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 23), torch.tensor(ids[:, 1:]).reshape(-1)
    )
    loss.backward()
    assert abs(out.loss - loss.item()) < TOL
    ours_params = dict(pm.trained_biases())
    for info, lora in pm.lora_layers():
        for part in ("lora_A", "lora_B"):
            ours_params[f"base_model.model.{info.hf}.{part}.weight"] = getattr(lora, part)
    assert len(pm.trained_biases()) == (2 * 6 + 1 if bias == "all" else 4)  # + ln_f
    for name, p in trained.items():
        expected = to_numpy(p.grad)
        assert np.max(np.abs(ours_params[name].grad - expected)) < TOL, name

    # and peft's file, biases included, read back by numpyllm
    theirs, ours = hf_gpt2(tmp_path / "b")
    their_config = peft.LoraConfig(
        r=2, lora_alpha=6, target_modules=["c_attn", "c_fc"], bias=bias,
        init_lora_weights=False, fan_in_fan_out=True,
    )  # fmt: skip
    torch.manual_seed(5)
    theirs_peft = peft.get_peft_model(theirs, their_config).eval()
    with torch.no_grad():
        for name, p in theirs_peft.named_parameters():
            if p.requires_grad and name.endswith("bias"):
                p.add_(torch.randn_like(p))  # trained biases differ from the base model's
        expected = to_numpy(theirs_peft(input_ids=torch.tensor(ids)).logits)
    theirs_peft.save_pretrained(tmp_path / "theirs")
    pm = nl.peft.PeftModel.from_pretrained(ours, tmp_path / "theirs")
    assert np.max(np.abs(pm.eval()(ids).logits - expected)) < TOL


def test_bert_trained_biases_cross_to_peft_and_back(tmp_path):
    """bias="all" on BERT: peft's BertForMaskedLM file has no pooler or classifier and
    names the tied output bias twice; both directions still give equal logits."""
    theirs, ours = hf_bert(tmp_path / "a")
    ids = np.random.default_rng(2).integers(0, 23, size=(2, 7))
    config = peft.LoraConfig(r=2, target_modules=["query", "value"], bias="all",
                             init_lora_weights=False)  # fmt: skip
    torch.manual_seed(6)
    theirs_peft = peft.get_peft_model(theirs, config).eval()
    with torch.no_grad():
        for name, p in theirs_peft.named_parameters():
            if p.requires_grad and name.endswith("bias"):
                p.add_(torch.randn_like(p))
        expected = to_numpy(theirs_peft(input_ids=torch.tensor(ids)).logits)
    theirs_peft.save_pretrained(tmp_path / "theirs")
    pm = nl.peft.PeftModel.from_pretrained(ours, tmp_path / "theirs")
    assert np.max(np.abs(pm.eval()(ids).logits - expected)) < TOL

    randomize_adapters(pm, seed=3)  # every trained bias and adapter moves again
    pm.save_pretrained(tmp_path / "ours")
    fresh, _ = hf_bert(tmp_path / "b")
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "ours").eval()
    with torch.no_grad():
        theirs_logits = to_numpy(loaded(input_ids=torch.tensor(ids)).logits)
    assert np.max(np.abs(pm(ids).logits - theirs_logits)) < TOL
