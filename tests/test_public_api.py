"""The public names DESIGN.md promises, and the README's Python example, run as written."""

import re
from pathlib import Path

import numpy as np

import numpyllm as nl

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_names_exist():
    for name in ("GPT", "GPTConfig", "BERT", "BertConfig", "T5", "T5Config", "SimpleNN",
                 "gradcheck", "optim", "nn", "functional", "Tokenizer", "TokenDataset",
                 "builtin_corpus", "Trainer", "TrainingArguments"):  # fmt: skip
        assert hasattr(nl, name), name
    for name in ("SGD", "Adam", "AdamW", "clip_grad_norm", "LRScheduler"):
        assert hasattr(nl.optim, name), name
    for name in ("LoraConfig", "get_peft_model", "PeftModel"):
        assert hasattr(nl.peft, name), name
    for cls in (nl.GPT, nl.BERT, nl.T5):
        assert callable(cls.from_pretrained) and callable(cls.save_pretrained)
    assert callable(nl.GPT.generate) and callable(nl.T5.generate)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has a Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    out, model, new = namespace["out"], namespace["model"], namespace["new"]
    assert out.logits.shape == (8, 128, 512)
    assert np.isfinite(out.loss) and abs(out.loss - np.log(512)) < 0.5  # untrained: ~ln(V)
    assert new.shape == (1, 66)
    assert (tmp_path / "my-gpt" / "model.safetensors").exists()
    reloaded = nl.GPT.from_pretrained(tmp_path / "my-gpt")
    np.testing.assert_allclose(reloaded(new).logits, model.eval()(new).logits, atol=1e-5)
