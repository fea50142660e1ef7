"""Every command runs on folders transformers wrote, found by name in a local Hugging Face
cache built in tmp_path: generate (GPT-2, a distilled GPT-2 layout, T5), eval (GPT-2, BERT as
a masked LM) and finetune (GPT-2), each with the folder's own tokenizer, and with
transformers' numbers where there is one to compare."""

from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from numpyllm.cli import main
from numpyllm.cli.evaluate import evaluate_masked
from numpyllm.data import TokenDataset
from numpyllm.tokenizer import Tokenizer
from tests.parity.conftest import SKIP_TORCH, SKIP_TRANSFORMERS, perturb_torch

torch = pytest.importorskip("torch", reason=SKIP_TORCH)
transformers = pytest.importorskip("transformers", reason=SKIP_TRANSFORMERS)

TEXT = "the cat sat on the mat. a dog ran after the cat, and the cat ran up a tree.\n" * 3


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def snapshot_of(hub, repo: str):
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    return folder / "snapshots" / "0123abcd"


def save_hf_tokenizer(folder, specials: dict[str, str]) -> Tokenizer:
    """A character tokenizer saved by transformers itself (its own json files)."""
    ours = Tokenizer.char_level(TEXT, special_tokens=tuple(specials.values()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=ours.backend, **specials)
    fast.save_pretrained(folder)
    return Tokenizer.load(folder)


def run(capsys, *argv: str) -> str:
    status = main(list(argv))
    out = capsys.readouterr()
    assert status == 0, out.err
    return out.out


def tiny_gpt2(folder, vocab: int, seed: int):
    config = transformers.GPT2Config(vocab_size=vocab, n_layer=2, n_head=2, n_embd=16,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    perturb_torch(model, seed, std=0.3)
    model.save_pretrained(folder)
    return model


def greedy_text(model, tokenizer: Tokenizer, prompt: str, new: int) -> str:
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None,
                             pad_token_id=0)  # fmt: skip
    return tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


@pytest.mark.parametrize("layout", ["transformers", "distilled"])
def test_generate_and_eval_on_a_cached_gpt2(hub, tmp_path, capsys, layout):
    folder = snapshot_of(hub, "gpt2")
    tok = save_hf_tokenizer(folder, {"eos_token": "<|endoftext|>", "unk_token": "<unk>"})
    theirs = tiny_gpt2(folder, tok.vocab_size, seed=1)
    if layout == "distilled":  # the hub's distilgpt2 / gpt2 files: no prefix, mask buffers
        state = load_file(str(folder / "model.safetensors"))
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        for i in range(2):
            state[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    out = run(capsys, "generate", "gpt2", "--prompt", "the cat", "--greedy",
              "--max-new-tokens", "12")  # fmt: skip
    assert out == "the cat" + greedy_text(theirs, tok, "the cat", 12) + "\n"

    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = run(capsys, "eval", "gpt2", "--data", str(data), "--seq-len", "16")
    loss = float(re.search(r"loss\s+([\d.]+)", out).group(1))
    windows = TokenDataset(TEXT, tok, cache_dir=tmp_path / "c", val_fraction=0.0)
    total = count = 0.0
    for batch in windows.iter_windows("train", 16, 16):
        with torch.no_grad():
            got = theirs(torch.tensor(batch), labels=torch.tensor(batch)).loss.item()
        total += got * batch.shape[0] * (batch.shape[1] - 1)
        count += batch.shape[0] * (batch.shape[1] - 1)
    assert loss == pytest.approx(total / count, abs=2e-4)


def test_finetune_a_cached_gpt2_writes_a_folder_transformers_loads(hub, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    folder = snapshot_of(hub, "openai-community/gpt2")
    tok = save_hf_tokenizer(folder, {"eos_token": "<|endoftext|>", "unk_token": "<unk>"})
    tiny_gpt2(folder, tok.vocab_size, seed=2)
    data = tmp_path / "data.txt"
    data.write_text(TEXT * 4)
    monkeypatch.chdir(tmp_path)
    out = run(capsys, "finetune", "gpt2", "--data", str(data), "--seq-len", "16",
              "--max-steps", "3", "--disable-tqdm", "--eval-batches", "1")  # fmt: skip
    assert "after       validation loss" in out
    checkpoint = tmp_path / "runs" / "gpt2-finetuned" / "checkpoint-3"  # not inside the cache
    assert checkpoint.is_dir() and not any(hub.rglob("checkpoint-*"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
    assert transformers.AutoTokenizer.from_pretrained(checkpoint).encode("the cat") == tok.encode(
        "the cat", add_special_tokens=False
    )
    assert reloaded.config.n_layer == 2


def test_generate_text_to_text_with_a_cached_t5(hub, capsys):
    folder = snapshot_of(hub, "t5-tiny")
    tok = save_hf_tokenizer(folder, {"pad_token": "<pad>", "eos_token": "</s>",
                                     "unk_token": "<unk>"})  # fmt: skip
    config = transformers.T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=4, d_ff=24,
                                   num_layers=2, num_heads=2, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=16, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1)  # fmt: skip
    torch.manual_seed(3)
    theirs = transformers.T5ForConditionalGeneration(config).eval()
    perturb_torch(theirs, 3, std=0.3)
    theirs.save_pretrained(folder)

    prompt = "translate: the cat"
    out = run(capsys, "generate", "t5-tiny", "--prompt", prompt, "--greedy",
              "--max-new-tokens", "8")  # fmt: skip
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=True)])
    with torch.no_grad():
        expected = theirs.generate(ids, max_new_tokens=8, do_sample=False)
    assert out == tok.decode(expected[0, 1:].tolist(), skip_special_tokens=True) + "\n"


class _TorchBert:
    """transformers' BertForMaskedLM behind the few names evaluate_masked uses."""

    def __init__(self, model, ours) -> None:
        self.model, self.config, self.training = model, ours.config, False
        self.mask_tokens = ours.mask_tokens

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, ids, labels, head):
        with torch.no_grad():
            return self.model(torch.tensor(ids), labels=torch.tensor(labels))


@pytest.mark.filterwarnings("ignore:load_bert. the checkpoint has no")  # a masked-LM file
def test_eval_a_cached_bert_as_a_masked_lm(hub, tmp_path, capsys):
    from numpyllm.checkpoint import load_model

    folder = snapshot_of(hub, "bert-tiny")
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                "sep_token": "[SEP]", "mask_token": "[MASK]"}  # fmt: skip
    tok = save_hf_tokenizer(folder, specials)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, num_hidden_layers=2,
                                     num_attention_heads=2, hidden_size=16, intermediate_size=24,
                                     max_position_embeddings=20)  # fmt: skip
    torch.manual_seed(4)
    theirs = transformers.BertForMaskedLM(config).eval()
    perturb_torch(theirs, 4, std=0.3)
    theirs.save_pretrained(folder)

    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = run(capsys, "eval", "bert-tiny", "--data", str(data), "--seq-len", "16")
    assert "masked-LM" in out
    loss = float(re.search(r"loss\s+([\d.]+)", out).group(1))
    dataset = TokenDataset(TEXT, tok, cache_dir=tmp_path / "c", val_fraction=0.0)
    expected, count, _ = evaluate_masked(
        _TorchBert(theirs, load_model(folder)), tok, dataset, "train", 16
    )
    assert count > 0 and loss == pytest.approx(expected, abs=2e-4)
