"""numpyllm's training checkpoints are Hugging Face model folders.

A tiny GPT, BERT and T5 each train a few steps with the Trainer; transformers' Auto classes
load the ``checkpoint-<step>`` folder the Trainer wrote and give numpyllm's logits, and
``AutoTokenizer`` loads the tokenizer beside it and gives numpyllm's ids. The other way,
numpyllm's own loader reads the folder back bit for bit and resumes from it.
"""

from __future__ import annotations

import numpy as np
import pytest

from numpyllm.batches import ArrayBatches
from numpyllm.checkpoint import load_checkpoint
from numpyllm.tokenizer import Tokenizer
from numpyllm.trainer import Trainer
from numpyllm.training_args import TrainingArguments
from tests.parity.conftest import FLOAT32, SKIP_TORCH, SKIP_TRANSFORMERS, assert_close, to_numpy

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)

TEXT = "the cat sat on the mat; a dog ran after it. (1 + 2) * 3 = 9!"
SEQ = 12


def tokenizer() -> Tokenizer:
    return Tokenizer.char_level(TEXT)


def train_a_little(model, out, batches, tok) -> str:
    """Two Trainer steps (so weights, optimizer and scheduler moved); the checkpoint path."""
    args = TrainingArguments(out, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                             save_steps=None, eval_batches=1, disable_tqdm=True,
                             seq_len=SEQ)  # fmt: skip
    return Trainer(model, args, train_dataset=batches, tokenizer=tok).train()["checkpoint"]


def auto_load(cls, folder):
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # notes about heads a class does not use
    try:
        return cls.from_pretrained(folder, attn_implementation="eager").eval()
    finally:
        transformers.logging.set_verbosity(verbosity)


def ids_rows(tok: Tokenizer, rows: int = 4) -> np.ndarray:
    ids = np.array(tok.encode(TEXT * 2, add_special_tokens=False))
    return np.stack([ids[i : i + SEQ] for i in range(0, rows * 5, 5)])  # (rows, SEQ)


def assert_tokenizer_matches(folder, tok: Tokenizer) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in (TEXT, "a cat ran", "mat (2)"):
        assert theirs.encode(text, add_special_tokens=False) == tok.encode(
            text, add_special_tokens=False
        )
    assert theirs.eos_token_id == tok.eos_token_id


def test_gpt_training_checkpoint_loads_in_auto_model_for_causal_lm(tmp_path):
    from numpyllm.models.gpt import GPT, GPTConfig

    tok = tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=16,
                       max_seq_len=SEQ, dropout=0.0)  # fmt: skip
    model = GPT(config, np.random.default_rng(0))
    ids = ids_rows(tok)
    folder = train_a_little(model, tmp_path, ArrayBatches({"input_ids": ids, "labels": ids}), tok)

    theirs = auto_load(transformers.AutoModelForCausalLM, folder)
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        expected = to_numpy(theirs(torch.tensor(ids)).logits)
    assert_close(model.eval()(ids).logits, expected, FLOAT32.logits_atol, "GPT logits")
    assert_tokenizer_matches(folder, tok)
    assert theirs.generation_config.eos_token_id == tok.eos_token_id

    loaded = load_checkpoint(folder)
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_bert_training_checkpoint_loads_in_auto_model_for_masked_lm(tmp_path):
    from numpyllm.models.bert import BERT, BertConfig

    tok = tokenizer()
    config = BertConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=16, d_ff=24,
                        max_seq_len=SEQ, dropout=0.0)  # fmt: skip
    model = BERT(config, np.random.default_rng(1))
    ids = ids_rows(tok)
    labels = np.where(np.arange(SEQ) % 3 == 0, ids, -100)
    batches = ArrayBatches({"input_ids": ids, "labels": labels})
    folder = train_a_little(model, tmp_path, batches, tok)

    theirs = auto_load(transformers.AutoModelForMaskedLM, folder)
    assert type(theirs).__name__ == "BertForMaskedLM"
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        expected = to_numpy(theirs(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits)
    got = model.eval()(ids, attention_mask=mask, head="mlm").logits
    assert_close(got, expected, FLOAT32.logits_atol, "BERT masked-LM logits")
    # the folder keeps every head, so a classifier trained further loads too
    classifier = auto_load(transformers.AutoModelForSequenceClassification, folder)
    with torch.no_grad():
        expected = to_numpy(classifier(torch.tensor(ids)).logits)
    got = model(ids, head="classification").logits
    assert_close(got, expected, FLOAT32.logits_atol, "BERT classifier logits")
    assert_tokenizer_matches(folder, tok)


def test_t5_training_checkpoint_loads_in_auto_model_for_seq2seq_lm(tmp_path):
    from numpyllm.models.t5 import T5, T5Config

    tok = tokenizer()
    config = T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=4, d_ff=24, n_layer=2,
                      n_head=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, dropout=0.0)  # fmt: skip
    model = T5(config, np.random.default_rng(2))
    ids = ids_rows(tok)
    batches = ArrayBatches({"input_ids": ids, "labels": ids[:, ::-1].copy()})
    folder = train_a_little(model, tmp_path, batches, tok)

    theirs = auto_load(transformers.AutoModelForSeq2SeqLM, folder)
    assert type(theirs).__name__ == "T5ForConditionalGeneration"
    decoder_ids = ids[:, :7]
    with torch.no_grad():
        expected = to_numpy(
            theirs(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(decoder_ids)).logits
        )
    got = model.eval()(ids, decoder_input_ids=decoder_ids).logits
    assert_close(got, expected, FLOAT32.logits_atol, "T5 logits")
    assert_tokenizer_matches(folder, tok)
