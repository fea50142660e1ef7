"""nl.peft: adapters on GPT, BERT and T5, freezing, merging, the adapter folder, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import numpyllm as nl
from numpyllm.nn.lora import LoraLinear


def gpt(seed: int = 0) -> nl.GPT:
    config = nl.GPTConfig(vocab_size=13, n_layer=2, n_head=2, d_model=8, max_seq_len=10,
                          dropout=0.0)  # fmt: skip
    return nl.GPT(config, rng=np.random.default_rng(seed))


def bert() -> nl.BERT:
    return nl.BERT(nl.BertConfig(vocab_size=13, n_layer=1, n_head=2, d_model=8, d_ff=12,
                                 max_seq_len=9, dropout=0.0))  # fmt: skip


def t5() -> nl.T5:
    return nl.T5(nl.T5Config(vocab_size=13, d_model=8, d_kv=4, d_ff=6, n_layer=1,
                             n_decoder_layer=1, n_head=2, dropout=0.0))  # fmt: skip


def llama() -> nl.Llama:
    return nl.Llama(nl.LlamaConfig(vocab_size=13, n_layer=1, n_head=4, n_kv_head=2, d_model=8,
                                   d_ff=12, max_seq_len=10))  # fmt: skip


IDS = np.random.default_rng(0).integers(0, 13, size=(2, 7))


def test_adapter_starts_as_the_base_model_and_trains_only_lora_matrices():
    model = gpt()
    before = model(IDS).logits.copy()
    pm = nl.peft.get_peft_model(model, nl.peft.LoraConfig(r=2, target_modules=["c_attn"]))
    assert np.array_equal(pm(IDS).logits, before)  # B = 0
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert names == [f"h.{i}.attn.c_attn.lora_{ab}" for i in range(2) for ab in "AB"]
    assert len(pm.trainable_parameters()) == 4
    trainable, total = pm.num_trainable_parameters()
    assert trainable == 2 * (2 * 8 + 24 * 2) and total == model.num_parameters()
    base = {n: p.data.copy() for n, p in pm.named_parameters() if not p.requires_grad}
    opt = nl.optim.AdamW(pm.parameters(), lr=1e-2)  # frozen ones are left out
    for _ in range(3):
        pm(IDS, labels=IDS)
        pm.backward()
        opt.step()
        opt.zero_grad()
    for name, p in pm.named_parameters():
        if name in base:
            assert np.array_equal(p.data, base[name]) and p.grad is None, name
    assert not np.array_equal(pm(IDS).logits, before)  # the adapters moved


@pytest.mark.parametrize("make", [gpt, bert, t5], ids=["gpt", "bert", "t5"])
def test_default_targets_merge_and_round_trip_through_the_adapter_folder(make, tmp_path):
    kwargs = {"decoder_input_ids": IDS} if make is t5 else {}
    model = make()
    pm = nl.peft.get_peft_model(model, nl.peft.LoraConfig(r=3, lora_alpha=4))
    assert pm.lora_layers()
    for p in pm.trainable_parameters():
        p.data[...] = np.random.default_rng(p.size).normal(0, 0.5, p.shape)
    adapted = pm(IDS, **kwargs).logits.copy()
    folder = pm.save_pretrained(tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 3 and config["lora_alpha"] == 4
    merged = pm.merge_and_unload()
    np.testing.assert_allclose(merged(IDS, **kwargs).logits, adapted, rtol=1e-4, atol=1e-5)

    fresh = make()
    loaded = nl.peft.PeftModel.from_pretrained(fresh, folder)
    np.testing.assert_array_equal(loaded(IDS, **kwargs).logits, adapted)


def test_split_batches_and_blocks_give_the_same_adapter_gradients():
    grads = []
    for threads in (1, 2):
        config = nl.peft.LoraConfig(r=2, target_modules=["c_fc", "c_proj"])
        pm = nl.peft.get_peft_model(gpt().astype(np.float64), config)
        for p in pm.trainable_parameters():
            p.data[...] = np.random.default_rng(p.size).normal(0, 0.5, p.shape)
        pm.num_threads = threads  # set on the wrapped model
        pm(IDS, labels=IDS)
        pm.backward()
        grads.append([p.grad.copy() for p in pm.trainable_parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_lora_dropout_trains_and_is_off_in_eval():
    pm = nl.peft.get_peft_model(gpt(), nl.peft.LoraConfig(r=2, lora_dropout=0.5))
    for p in pm.trainable_parameters():
        p.data[...] = 0.3
    pm.train()
    a = pm(IDS, labels=IDS)
    pm.backward()
    assert all(np.abs(p.grad).sum() > 0 for p in pm.trainable_parameters())
    pm.eval()
    assert np.array_equal(pm(IDS).logits, pm(IDS).logits)
    assert not np.array_equal(pm(IDS).logits, a.logits)


def test_bad_configs_and_targets_are_refused():
    with pytest.raises(ValueError, match="r must be an integer >= 1"):
        nl.peft.LoraConfig(r=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        nl.peft.LoraConfig(lora_dropout=-0.1)
    with pytest.raises(ValueError, match="bias must be 'none', 'all' or 'lora_only', got 'some'"):
        nl.peft.LoraConfig(bias="some")
    with pytest.raises(ValueError, match=r"'query' match no linear layer.*c_attn, c_fc, c_proj"):
        nl.peft.get_peft_model(gpt(), nl.peft.LoraConfig(target_modules=["c_attn", "query"]))
    pm = nl.peft.get_peft_model(gpt(), nl.peft.LoraConfig())
    with pytest.raises(ValueError, match="already carries"):
        nl.peft.get_peft_model(pm.base_model, nl.peft.LoraConfig())


def test_adapter_for_another_model_is_refused_and_leaves_the_model_intact(tmp_path):
    pm = nl.peft.get_peft_model(gpt(), nl.peft.LoraConfig(r=2))
    folder = pm.save_pretrained(tmp_path / "a")
    other = nl.GPT(nl.GPTConfig(vocab_size=13, n_layer=2, n_head=2, d_model=12, max_seq_len=10))
    with pytest.raises(ValueError, match="shape"):
        nl.peft.PeftModel.from_pretrained(other, folder)
    assert not any(isinstance(m, LoraLinear) for m in other.modules())
    assert all(p.requires_grad for p in other.parameters())
    with pytest.raises(ValueError, match="target_modules"):  # BERT has no c_attn
        nl.peft.PeftModel.from_pretrained(bert(), folder)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        nl.peft.PeftModel.from_pretrained(gpt(), tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        nl.peft.PeftModel.from_pretrained(gpt(), folder)


@pytest.mark.parametrize("make", [gpt, bert, t5, llama], ids=["gpt", "bert", "t5", "llama"])
def test_adapter_gradients_match_finite_differences(make):
    kwargs = {"decoder_input_ids": IDS} if make is t5 else {}
    pm = nl.peft.get_peft_model(make().astype(np.float64), nl.peft.LoraConfig(r=2, lora_alpha=3))
    for p in pm.trainable_parameters():
        p.data[...] = np.random.default_rng(p.size).normal(0, 0.5, p.shape)
    errors = nl.gradcheck_model(pm, lambda: pm(IDS, labels=IDS, **kwargs).loss)
    assert len(errors) == len(pm.trainable_parameters())  # frozen ones are skipped
    assert max(errors.values()) < 1e-6, errors


def test_recomputed_activations_give_the_same_adapter_gradients():
    grads = []
    for recompute in (False, True):
        config = nl.peft.LoraConfig(r=2, target_modules=["c_attn", "c_proj", "c_fc"])
        pm = nl.peft.get_peft_model(gpt().astype(np.float64), config)
        for p in pm.trainable_parameters():
            p.data[...] = np.random.default_rng(p.size).normal(0, 0.5, p.shape)
        pm.recompute_activations = recompute
        pm(IDS, labels=IDS)
        pm.backward()
        grads.append([p.grad.copy() for p in pm.trainable_parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_adapter_dropout_with_recomputed_activations_draws_the_same_masks(threads):
    """The recomputed forward draws each adapter's dropout mask again from the Generator
    state of the first forward: the gradients are those of the run that kept its caches."""
    grads, losses = [], []
    for recompute in (False, True):
        config = nl.peft.LoraConfig(r=2, target_modules=["c_attn", "c_proj", "c_fc"],
                                    lora_dropout=0.4)  # fmt: skip
        pm = nl.peft.get_peft_model(gpt().astype(np.float64), config,
                                    rng=np.random.default_rng(3))  # fmt: skip
        for p in pm.trainable_parameters():
            p.data[...] = np.random.default_rng(p.size).normal(0, 0.5, p.shape)
        pm.recompute_activations = recompute
        pm.num_threads = threads
        pm.train()
        losses.append(pm(IDS, labels=IDS).loss)
        pm.backward()
        grads.append([p.grad.copy() for p in pm.trainable_parameters()])
    assert losses[0] == losses[1]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_no_input_gradient_is_formed_below_the_lowest_adapter(monkeypatch, threads, dropout):
    """Over frozen embeddings, block 0's c_attn forms dA and dB but no dx (its product with
    the weight); the adapters' gradients are those of a run that forms it (wpe trained)."""
    made_dx: list[LoraLinear] = []
    original = LoraLinear.backward_from_input

    def spy(self, dout, x):
        made_dx.append(self)
        return original(self, dout, x)

    monkeypatch.setattr(LoraLinear, "backward_from_input", spy)
    grads = []
    for train_wpe in (True, False):
        config = nl.peft.LoraConfig(r=2, target_modules=["c_attn", "c_proj"], lora_dropout=dropout)
        pm = nl.peft.get_peft_model(gpt().astype(np.float64), config,
                                    rng=np.random.default_rng(3))  # fmt: skip
        for p in pm.trainable_parameters():
            p.data[...] = np.random.default_rng(p.size).normal(0, 0.5, p.shape)
        pm.wpe.weight.requires_grad = train_wpe
        pm.num_threads = threads
        made_dx.clear()
        pm(IDS, labels=IDS)
        pm.backward()
        lowest = pm.h[0].attn.c_attn
        assert (lowest in made_dx) == train_wpe
        grads.append({name: p.grad.copy() for name, p in pm.named_parameters()
                      if ".lora_" in name})  # fmt: skip
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[1].items():
        np.testing.assert_allclose(g, grads[0][name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("make", [gpt, bert, t5], ids=["gpt", "bert", "t5"])
def test_memory_report_counts_gradients_and_optimizer_state_of_the_adapters_alone(make):
    model = make()
    full = nl.memory_report(model, batch_size=2, seq_len=6, available=None)
    pm = nl.peft.get_peft_model(model, nl.peft.LoraConfig(r=2, bias="lora_only"))
    lora = nl.memory_report(pm, batch_size=2, seq_len=6, available=None)
    trainable = sum(p.data.nbytes for p in pm.trainable_parameters())
    assert lora.gradients == trainable and lora.optimizer == 2 * trainable  # AdamW: m and v
    adapters = sum(p.data.nbytes for name, p in pm.named_parameters() if ".lora_" in name)
    assert lora.parameters == full.parameters + adapters
    assert lora.peak - lora.process < full.peak - full.process
